//! `outriderctl connections`: the live proxied connections (ListConnections), and
//! `connections watch`, their open and close events as they happen (WatchConnections).
use anyhow::Result;
use outrider_proto::admin::v1::connection_event::Kind;
use outrider_proto::admin::v1::{
    Connection, ConnectionEvent, Direction, ListConnectionsRequest, Transport,
    WatchConnectionsRequest,
};
use serde::Serialize;
use time::OffsetDateTime;

use super::output::{self, Table};
use super::workloads::non_empty;
use super::{Ctx, NamespacedName, human, rpc};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ConnectionsArgs {
    #[command(subcommand)]
    command: Option<ConnectionsCommand>,
    /// Only connections of this pod.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pod: Option<NamespacedName>,
}

#[derive(Debug, clap::Subcommand)]
enum ConnectionsCommand {
    /// Stream connection events, one line each (one JSON object per line with -o json),
    /// until Ctrl-C, the end of the stream, or --count events.
    Watch {
        /// Only connections of this pod.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        pod: Option<NamespacedName>,
        /// Skip the OPEN events of the connections already live.
        #[arg(long)]
        new_only: bool,
        /// Stop after this many events.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
}

/// `-o json|yaml` of `connections`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionListView {
    pub connections: Vec<ConnectionView>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionView {
    pub id: u64,
    /// `namespace/name` of the enrolled pod.
    pub pod: String,
    /// `outbound`, `inbound` (`unspecified`, `unknown`).
    pub direction: &'static str,
    /// `plaintext`, `hbone` (`unspecified`, `unknown`).
    pub transport: &'static str,
    pub source: String,
    pub destination: String,
    /// The peer's SPIFFE ID; null when none.
    pub peer_identity: Option<String>,
    /// RFC 3339.
    pub opened: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Of both, those the kernel moved socket to socket (`splice`), never copied through
    /// the agent.
    pub bytes_spliced: u64,
}

/// One event of `connections watch` (a line of `-o json`, a document of `-o yaml`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionEventView {
    /// `open`, `close`, `lagged` (`unspecified`, `unknown`).
    pub kind: &'static str,
    /// The connection; on close with its final byte counts. Null on `lagged`.
    pub connection: Option<ConnectionView>,
    /// On close: how long it lived.
    pub duration_ms: Option<f64>,
    /// On close: why the agent closed it; null when an end did.
    pub closed_because: Option<String>,
    /// On lagged: how many events were dropped.
    pub missed: Option<u64>,
}

pub(crate) fn direction_name(direction: i32) -> &'static str {
    match Direction::try_from(direction) {
        Ok(Direction::Outbound) => "outbound",
        Ok(Direction::Inbound) => "inbound",
        Ok(Direction::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

pub(crate) fn transport_name(transport: i32) -> &'static str {
    match Transport::try_from(transport) {
        Ok(Transport::Plaintext) => "plaintext",
        Ok(Transport::Hbone) => "hbone",
        Ok(Transport::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

pub(crate) fn kind_name(kind: i32) -> &'static str {
    match Kind::try_from(kind) {
        Ok(Kind::Open) => "open",
        Ok(Kind::Close) => "close",
        Ok(Kind::Lagged) => "lagged",
        Ok(Kind::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

impl From<Connection> for ConnectionView {
    fn from(c: Connection) -> Self {
        ConnectionView {
            id: c.id,
            pod: c.pod,
            direction: direction_name(c.direction),
            transport: transport_name(c.transport),
            source: c.source,
            destination: c.destination,
            peer_identity: non_empty(c.peer_identity),
            opened: c.opened,
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            bytes_spliced: c.bytes_spliced,
        }
    }
}

impl From<ConnectionEvent> for ConnectionEventView {
    fn from(e: ConnectionEvent) -> Self {
        let kind = Kind::try_from(e.kind).ok();
        let close = kind == Some(Kind::Close);
        ConnectionEventView {
            kind: kind_name(e.kind),
            connection: e.connection.map(Into::into),
            duration_ms: close.then_some(e.duration_ms),
            closed_because: if close {
                non_empty(e.closed_because)
            } else {
                None
            },
            missed: (kind == Some(Kind::Lagged)).then_some(e.missed),
        }
    }
}

pub async fn run(ctx: &mut Ctx, args: ConnectionsArgs) -> Result<()> {
    match args.command {
        None => list(ctx, args.pod).await,
        Some(ConnectionsCommand::Watch {
            pod,
            new_only,
            count,
        }) => watch(ctx, pod, new_only, count).await,
    }
}

async fn list(ctx: &mut Ctx, pod: Option<NamespacedName>) -> Result<()> {
    let mut client = ctx.client().await?;
    let request = ListConnectionsRequest {
        pod: pod.map(|p| p.to_string()).unwrap_or_default(),
    };
    let response = ctx
        .call("ListConnections", client.list_connections(request))
        .await?;
    let mut connections: Vec<ConnectionView> =
        response.connections.into_iter().map(Into::into).collect();
    connections.sort_by_key(|c| c.id);
    let view = ConnectionListView { connections };
    ctx.emit(&view, |v| list_table(v, OffsetDateTime::now_utc()))
}

fn list_table(view: &ConnectionListView, now: OffsetDateTime) -> String {
    let mut table = Table::new([
        "ID",
        "POD",
        "DIRECTION",
        "TRANSPORT",
        "SOURCE",
        "DESTINATION",
        "PEER",
        "AGE",
        "SENT",
        "RECEIVED",
    ]);
    for c in &view.connections {
        table.row([
            c.id.to_string(),
            c.pod.clone(),
            c.direction.to_string(),
            c.transport.to_string(),
            c.source.clone(),
            c.destination.clone(),
            c.peer_identity.clone().unwrap_or_default(),
            human::age(&c.opened, now),
            human::bytes(c.bytes_sent),
            human::bytes(c.bytes_received),
        ]);
    }
    table.render()
}

async fn watch(
    ctx: &mut Ctx,
    pod: Option<NamespacedName>,
    new_only: bool,
    count: Option<u64>,
) -> Result<()> {
    let mut client = ctx.client().await?;
    let request = WatchConnectionsRequest {
        pod: pod.map(|p| p.to_string()).unwrap_or_default(),
        new_only,
    };
    let mut stream = ctx
        .call("WatchConnections", client.watch_connections(request))
        .await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut seen = 0u64;
    while count.is_none_or(|count| seen < count) {
        let event = tokio::select! {
            interrupted = &mut ctrl_c => {
                interrupted?;
                break;
            }
            event = stream.message() => event,
        };
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(status) => return Err(rpc::status_error("WatchConnections", &status)),
        };
        let view = ConnectionEventView::from(event);
        ctx.print(&output::render_item(ctx.format, &view, event_line)?)?;
        seen += 1;
    }
    Ok(())
}

/// `OPEN   17 default/client outbound hbone 10.0.0.5:40312 -> 10.0.1.7:80 spiffe://…`;
/// CLOSE adds `sent=… received=… duration=…ms`, `spliced=…` when the kernel moved some of
/// the bytes itself, and `reason=…` when the agent closed it.
fn event_line(e: &ConnectionEventView) -> String {
    let kind = e.kind.to_uppercase();
    let mut line = match &e.connection {
        Some(c) => format!(
            "{kind:<6} {} {} {} {} {} -> {} {}",
            c.id,
            dash(&c.pod),
            c.direction,
            c.transport,
            dash(&c.source),
            dash(&c.destination),
            c.peer_identity.as_deref().unwrap_or("-"),
        ),
        None => format!("{kind:<6}"),
    };
    if let (Some(c), Some(duration)) = (&e.connection, e.duration_ms) {
        line.push_str(&format!(
            " sent={} received={} duration={duration:.1}ms",
            human::bytes(c.bytes_sent),
            human::bytes(c.bytes_received),
        ));
        if c.bytes_spliced > 0 {
            line.push_str(&format!(" spliced={}", human::bytes(c.bytes_spliced)));
        }
    }
    if let Some(reason) = &e.closed_because {
        line.push_str(&format!(" reason={reason}"));
    }
    if let Some(missed) = e.missed {
        line.push_str(&format!(" missed={missed} (this watch fell behind)"));
    }
    line
}

fn dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> Connection {
        Connection {
            id: 17,
            pod: "default/client".into(),
            direction: Direction::Outbound as i32,
            transport: Transport::Hbone as i32,
            source: "10.0.0.5:40312".into(),
            destination: "10.0.1.7:80".into(),
            peer_identity: "spiffe://cluster.local/ns/default/sa/server".into(),
            opened: "2025-03-04T05:00:00Z".into(),
            bytes_sent: 2048,
            bytes_received: 3,
            bytes_spliced: 0,
        }
    }

    #[test]
    fn enums_read_as_lowercase_words() {
        assert_eq!(direction_name(Direction::Outbound as i32), "outbound");
        assert_eq!(direction_name(Direction::Inbound as i32), "inbound");
        assert_eq!(transport_name(Transport::Hbone as i32), "hbone");
        assert_eq!(transport_name(Transport::Plaintext as i32), "plaintext");
        assert_eq!(transport_name(9), "unknown");
        assert_eq!(kind_name(Kind::Lagged as i32), "lagged");
    }

    #[test]
    fn connection_json_field_names() {
        let mut c = connection();
        c.peer_identity.clear();
        assert_eq!(
            serde_json::to_value(ConnectionView::from(c)).unwrap(),
            serde_json::json!({
                "id": 17,
                "pod": "default/client",
                "direction": "outbound",
                "transport": "hbone",
                "source": "10.0.0.5:40312",
                "destination": "10.0.1.7:80",
                "peerIdentity": null,
                "opened": "2025-03-04T05:00:00Z",
                "bytesSent": 2048,
                "bytesReceived": 3,
                "bytesSpliced": 0
            })
        );
    }

    #[test]
    fn list_table_columns() {
        let now = human::parse_rfc3339("2025-03-04T05:00:42Z").unwrap();
        let view = ConnectionListView {
            connections: vec![connection().into()],
        };
        assert_eq!(
            list_table(&view, now),
            "ID  POD             DIRECTION  TRANSPORT  SOURCE          DESTINATION  PEER                                         AGE  SENT    RECEIVED\n\
             17  default/client  outbound   hbone      10.0.0.5:40312  10.0.1.7:80  spiffe://cluster.local/ns/default/sa/server  42s  2.0KiB  3B\n"
        );
    }

    #[test]
    fn events_as_lines_and_json() {
        let open = ConnectionEvent {
            kind: Kind::Open as i32,
            connection: Some(connection()),
            duration_ms: 0.0,
            closed_because: String::new(),
            missed: 0,
        };
        let open = ConnectionEventView::from(open);
        assert_eq!(
            event_line(&open),
            "OPEN   17 default/client outbound hbone 10.0.0.5:40312 -> 10.0.1.7:80 \
             spiffe://cluster.local/ns/default/sa/server"
        );
        let json = serde_json::to_value(&open).unwrap();
        assert_eq!(json["kind"], "open");
        assert_eq!(json["durationMs"], serde_json::Value::Null);
        assert_eq!(json["connection"]["bytesSent"], 2048);
        let close = ConnectionEventView::from(ConnectionEvent {
            kind: Kind::Close as i32,
            connection: Some(connection()),
            duration_ms: 12.34,
            closed_because: "policy: deny-all".into(),
            missed: 0,
        });
        assert_eq!(
            event_line(&close),
            "CLOSE  17 default/client outbound hbone 10.0.0.5:40312 -> 10.0.1.7:80 \
             spiffe://cluster.local/ns/default/sa/server sent=2.0KiB received=3B \
             duration=12.3ms reason=policy: deny-all"
        );
        let json = serde_json::to_value(&close).unwrap();
        let mut keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "closedBecause",
                "connection",
                "durationMs",
                "kind",
                "missed"
            ]
        );
        assert_eq!(json["durationMs"], 12.34);
        assert_eq!(json["closedBecause"], "policy: deny-all");
        // A bulk transfer the kernel moved itself says how much of it.
        let mut bulk = connection();
        bulk.transport = Transport::Plaintext as i32;
        bulk.peer_identity.clear();
        (bulk.bytes_sent, bulk.bytes_spliced) = (8 << 20, 7 << 20);
        let close = ConnectionEventView::from(ConnectionEvent {
            kind: Kind::Close as i32,
            connection: Some(bulk),
            duration_ms: 40.0,
            closed_because: String::new(),
            missed: 0,
        });
        assert_eq!(
            event_line(&close),
            "CLOSE  17 default/client outbound plaintext 10.0.0.5:40312 -> 10.0.1.7:80 - \
             sent=8.0MiB received=3B duration=40.0ms spliced=7.0MiB"
        );
        assert_eq!(
            serde_json::to_value(&close).unwrap()["connection"]["bytesSpliced"],
            7 << 20
        );
        let lagged = ConnectionEventView::from(ConnectionEvent {
            kind: Kind::Lagged as i32,
            connection: None,
            duration_ms: 0.0,
            closed_because: String::new(),
            missed: 5,
        });
        assert_eq!(
            event_line(&lagged),
            "LAGGED missed=5 (this watch fell behind)"
        );
        assert_eq!(serde_json::to_value(&lagged).unwrap()["missed"], 5);
    }
}
