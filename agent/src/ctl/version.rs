//! `outriderctl version`: this client's version and the agent's (GetVersion).
use anyhow::Result;
use outrider_proto::admin::v1::{GetVersionRequest, GetVersionResponse};
use serde::Serialize;
use time::OffsetDateTime;

use super::Ctx;
use super::human;
use super::output::{Format, Table};

/// `-o json|yaml` of `version`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    pub client: ClientVersionView,
    pub agent: AgentVersionView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientVersionView {
    pub version: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentVersionView {
    pub version: String,
    pub node_name: String,
    pub instance: String,
    /// RFC 3339, as the agent gives it.
    pub started: String,
    pub kernel: String,
}

impl From<GetVersionResponse> for AgentVersionView {
    fn from(v: GetVersionResponse) -> Self {
        AgentVersionView {
            version: v.version,
            node_name: v.node_name,
            instance: v.instance,
            started: v.started,
            kernel: v.kernel,
        }
    }
}

const CLIENT_VERSION: &str = crate::VERSION;

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let agent = async {
        let mut client = ctx.client().await?;
        ctx.call("GetVersion", client.get_version(GetVersionRequest {}))
            .await
    }
    .await;
    let agent = match agent {
        Ok(agent) => agent,
        Err(err) => {
            // As kubectl does: the client's version still, then why the agent's is missing.
            if ctx.format == Format::Table {
                let mut listing = Table::key_values();
                listing.pair("Client version", CLIENT_VERSION);
                // Best effort: the error below is what matters.
                let _ = ctx.print(&listing.render());
            }
            return Err(err);
        }
    };
    let view = VersionView {
        client: ClientVersionView {
            version: CLIENT_VERSION.to_string(),
        },
        agent: agent.into(),
    };
    ctx.emit(&view, |v| table(v, OffsetDateTime::now_utc()))
}

fn table(view: &VersionView, now: OffsetDateTime) -> String {
    let mut listing = Table::key_values();
    listing.pair("Client version", &view.client.version);
    listing.pair("Agent version", &view.agent.version);
    listing.pair("Node", &view.agent.node_name);
    listing.pair("Instance", &view.agent.instance);
    listing.pair("Started", human::with_relative(&view.agent.started, now));
    listing.pair("Kernel", &view.agent.kernel);
    listing.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> VersionView {
        VersionView {
            client: ClientVersionView {
                version: "0.1.0".into(),
            },
            agent: GetVersionResponse {
                version: "0.1.0".into(),
                node_name: "node-a".into(),
                instance: "t1".into(),
                started: "2025-03-04T05:00:00Z".into(),
                kernel: "6.8.0".into(),
            }
            .into(),
        }
    }

    #[test]
    fn version_listing_and_json() {
        let now = human::parse_rfc3339("2025-03-04T05:05:03Z").unwrap();
        assert_eq!(
            table(&view(), now),
            "Client version:  0.1.0\n\
             Agent version:   0.1.0\n\
             Node:            node-a\n\
             Instance:        t1\n\
             Started:         2025-03-04T05:00:00Z (5m3s ago)\n\
             Kernel:          6.8.0\n"
        );
        let json = serde_json::to_value(view()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "client": {"version": "0.1.0"},
                "agent": {
                    "version": "0.1.0",
                    "nodeName": "node-a",
                    "instance": "t1",
                    "started": "2025-03-04T05:00:00Z",
                    "kernel": "6.8.0"
                }
            })
        );
    }
}
