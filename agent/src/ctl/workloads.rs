//! `outriderctl workloads`: the pods of the agent's node (ListWorkloads) and one pod in
//! full (`workloads get NAMESPACE/NAME`, GetWorkload); the workload views `top` reuses.
use std::collections::BTreeMap;

use anyhow::Result;
use outrider_proto::admin::v1::{
    EnrollmentState, GetWorkloadRequest, ListWorkloadsRequest, Mode, Workload, WorkloadCounters,
};
use serde::Serialize;
use time::OffsetDateTime;

use super::output::Table;
use super::{Ctx, NamespacedName, human};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkloadsArgs {
    #[command(subcommand)]
    command: Option<WorkloadsCommand>,
    /// Only pods in this namespace.
    #[arg(short, long, value_name = "NAMESPACE")]
    namespace: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum WorkloadsCommand {
    /// One pod in full: identity, certificate, all its counters, its labels.
    Get {
        /// The pod, as NAMESPACE/NAME.
        #[arg(value_name = "NAMESPACE/NAME")]
        pod: NamespacedName,
    },
}

/// `-o json|yaml` of `workloads`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadListView {
    pub workloads: Vec<WorkloadView>,
}

/// One pod: `-o json|yaml` of `workloads get`, and the items of `workloads`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    pub ips: Vec<String>,
    /// `node`, `none`, `sidecar` (`unspecified`, `unknown`).
    pub mode: &'static str,
    /// `enrolled`, `failed`, `not-enrolled` (`unspecified`, `unknown`).
    pub state: &'static str,
    /// Why enrollment failed; null unless it did.
    pub error: Option<String>,
    /// The SPIFFE ID.
    pub identity: Option<String>,
    /// RFC 3339; null unless enrolled.
    pub enrolled_since: Option<String>,
    /// RFC 3339; null until a certificate is issued.
    pub certificate_expiry: Option<String>,
    pub counters: CountersView,
    pub labels: BTreeMap<String, String>,
}

/// A pod's totals since it was enrolled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CountersView {
    pub connections_active: u64,
    pub connections_total: u64,
    pub connections_failed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub requests_total: u64,
    pub requests_failed: u64,
    pub kernel_tx_bytes: u64,
    pub kernel_rx_bytes: u64,
    pub kernel_tx_packets: u64,
    pub kernel_rx_packets: u64,
}

impl From<WorkloadCounters> for CountersView {
    fn from(c: WorkloadCounters) -> Self {
        CountersView {
            connections_active: c.connections_active,
            connections_total: c.connections_total,
            connections_failed: c.connections_failed,
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            requests_total: c.requests_total,
            requests_failed: c.requests_failed,
            kernel_tx_bytes: c.kernel_tx_bytes,
            kernel_rx_bytes: c.kernel_rx_bytes,
            kernel_tx_packets: c.kernel_tx_packets,
            kernel_rx_packets: c.kernel_rx_packets,
        }
    }
}

pub(crate) fn mode_name(mode: i32) -> &'static str {
    match Mode::try_from(mode) {
        Ok(Mode::Node) => "node",
        Ok(Mode::None) => "none",
        Ok(Mode::Sidecar) => "sidecar",
        Ok(Mode::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

pub(crate) fn state_name(state: i32) -> &'static str {
    match EnrollmentState::try_from(state) {
        Ok(EnrollmentState::Enrolled) => "enrolled",
        Ok(EnrollmentState::Failed) => "failed",
        Ok(EnrollmentState::NotEnrolled) => "not-enrolled",
        Ok(EnrollmentState::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

/// `None` for an empty string: the API's "not set".
pub(super) fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

impl From<Workload> for WorkloadView {
    fn from(w: Workload) -> Self {
        WorkloadView {
            mode: mode_name(w.mode),
            state: state_name(w.state),
            namespace: w.namespace,
            name: w.name,
            uid: w.uid,
            service_account: w.service_account,
            ips: w.ips,
            error: non_empty(w.error),
            identity: non_empty(w.identity),
            enrolled_since: non_empty(w.enrolled_since),
            certificate_expiry: non_empty(w.certificate_expiry),
            counters: w.counters.map(CountersView::from).unwrap_or_default(),
            labels: w.labels.into_iter().collect(),
        }
    }
}

/// The pods, ordered by namespace and name.
pub(crate) fn list_view(workloads: Vec<Workload>) -> WorkloadListView {
    let mut workloads: Vec<WorkloadView> = workloads.into_iter().map(Into::into).collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    WorkloadListView { workloads }
}

pub async fn run(ctx: &mut Ctx, args: WorkloadsArgs) -> Result<()> {
    let mut client = ctx.client().await?;
    match args.command {
        None => {
            let request = ListWorkloadsRequest {
                namespace: args.namespace.unwrap_or_default(),
            };
            let response = ctx
                .call("ListWorkloads", client.list_workloads(request))
                .await?;
            let view = list_view(response.workloads);
            ctx.emit(&view, |v| list_table(v, OffsetDateTime::now_utc()))
        }
        Some(WorkloadsCommand::Get { pod }) => {
            let request = GetWorkloadRequest {
                namespace: pod.namespace,
                name: pod.name,
            };
            let workload = ctx
                .call("GetWorkload", client.get_workload(request))
                .await?;
            let view = WorkloadView::from(workload);
            ctx.emit(&view, |v| detail_table(v, OffsetDateTime::now_utc()))
        }
    }
}

fn opt(text: &Option<String>) -> &str {
    text.as_deref().unwrap_or("")
}

fn list_table(view: &WorkloadListView, now: OffsetDateTime) -> String {
    let mut table = Table::new([
        "NAMESPACE",
        "NAME",
        "MODE",
        "STATE",
        "IDENTITY",
        "IPS",
        "ENROLLED",
        "CERT-EXPIRY",
        "CONNS",
        "SENT",
        "RECEIVED",
        "ERROR",
    ]);
    for w in &view.workloads {
        table.row([
            w.namespace.clone(),
            w.name.clone(),
            w.mode.to_string(),
            w.state.to_string(),
            opt(&w.identity).to_string(),
            w.ips.join(","),
            human::age(opt(&w.enrolled_since), now),
            human::time_left(opt(&w.certificate_expiry), now, "expired"),
            w.counters.connections_active.to_string(),
            human::bytes(w.counters.bytes_sent),
            human::bytes(w.counters.bytes_received),
            opt(&w.error).to_string(),
        ]);
    }
    table.render()
}

/// `1.2MiB (1258291)`; plain `512B` below a KiB.
fn exact_bytes(n: u64) -> String {
    if n < 1024 {
        human::bytes(n)
    } else {
        format!("{} ({n})", human::bytes(n))
    }
}

fn detail_table(w: &WorkloadView, now: OffsetDateTime) -> String {
    let c = &w.counters;
    let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut listing = Table::key_values();
    listing.pair("Namespace", &w.namespace);
    listing.pair("Name", &w.name);
    listing.pair("UID", &w.uid);
    listing.pair("Service account", &w.service_account);
    listing.pair("IPs", w.ips.join(", "));
    listing.pair("Mode", w.mode);
    listing.pair("State", w.state);
    listing.pair("Error", opt(&w.error));
    listing.pair("Identity", opt(&w.identity));
    listing.pair(
        "Enrolled since",
        human::with_relative(opt(&w.enrolled_since), now),
    );
    listing.pair(
        "Certificate expiry",
        human::with_relative(opt(&w.certificate_expiry), now),
    );
    listing.pair("Labels", labels.join(", "));
    listing.pair("Connections active", c.connections_active.to_string());
    listing.pair("Connections total", c.connections_total.to_string());
    listing.pair("Connections failed", c.connections_failed.to_string());
    listing.pair("Bytes sent", exact_bytes(c.bytes_sent));
    listing.pair("Bytes received", exact_bytes(c.bytes_received));
    listing.pair("Requests total", c.requests_total.to_string());
    listing.pair("Requests failed", c.requests_failed.to_string());
    listing.pair("Kernel TX bytes", exact_bytes(c.kernel_tx_bytes));
    listing.pair("Kernel RX bytes", exact_bytes(c.kernel_rx_bytes));
    listing.pair("Kernel TX packets", c.kernel_tx_packets.to_string());
    listing.pair("Kernel RX packets", c.kernel_rx_packets.to_string());
    listing.render()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn workload(namespace: &str, name: &str, counters: WorkloadCounters) -> Workload {
        Workload {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            service_account: "default".into(),
            ips: vec!["10.0.0.5".into(), "fd00::5".into()],
            mode: Mode::Node as i32,
            state: EnrollmentState::Enrolled as i32,
            error: String::new(),
            identity: format!("spiffe://cluster.local/ns/{namespace}/sa/default"),
            enrolled_since: "2025-03-04T05:00:00Z".into(),
            certificate_expiry: "2025-03-05T05:00:00Z".into(),
            counters: Some(counters),
            labels: [("app".to_string(), name.to_string())].into(),
        }
    }

    #[test]
    fn enums_read_as_lowercase_words() {
        assert_eq!(mode_name(Mode::Node as i32), "node");
        assert_eq!(mode_name(Mode::None as i32), "none");
        assert_eq!(mode_name(Mode::Sidecar as i32), "sidecar");
        assert_eq!(mode_name(0), "unspecified");
        assert_eq!(mode_name(42), "unknown");
        assert_eq!(state_name(EnrollmentState::Enrolled as i32), "enrolled");
        assert_eq!(state_name(EnrollmentState::Failed as i32), "failed");
        assert_eq!(
            state_name(EnrollmentState::NotEnrolled as i32),
            "not-enrolled"
        );
        assert_eq!(state_name(-1), "unknown");
    }

    #[test]
    fn workload_json_field_names() {
        let mut w = workload("default", "client", WorkloadCounters::default());
        w.counters = None;
        w.certificate_expiry.clear();
        let json = serde_json::to_value(WorkloadView::from(w)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "namespace": "default",
                "name": "client",
                "uid": "uid-client",
                "serviceAccount": "default",
                "ips": ["10.0.0.5", "fd00::5"],
                "mode": "node",
                "state": "enrolled",
                "error": null,
                "identity": "spiffe://cluster.local/ns/default/sa/default",
                "enrolledSince": "2025-03-04T05:00:00Z",
                "certificateExpiry": null,
                "counters": {
                    "connectionsActive": 0, "connectionsTotal": 0, "connectionsFailed": 0,
                    "bytesSent": 0, "bytesReceived": 0,
                    "requestsTotal": 0, "requestsFailed": 0,
                    "kernelTxBytes": 0, "kernelRxBytes": 0,
                    "kernelTxPackets": 0, "kernelRxPackets": 0
                },
                "labels": {"app": "client"}
            })
        );
    }

    #[test]
    fn list_table_is_sorted_and_human() {
        let now = human::parse_rfc3339("2025-03-04T05:05:03Z").unwrap();
        let counters = WorkloadCounters {
            connections_active: 3,
            bytes_sent: 1_258_291,
            bytes_received: 512,
            ..Default::default()
        };
        let mut failed = workload("apps", "server", WorkloadCounters::default());
        failed.state = EnrollmentState::Failed as i32;
        failed.error = "netns gone".into();
        failed.identity.clear();
        failed.enrolled_since.clear();
        failed.certificate_expiry.clear();
        failed.ips.truncate(1);
        let view = list_view(vec![workload("default", "client", counters), failed]);
        assert_eq!(
            list_table(&view, now),
            "NAMESPACE  NAME    MODE  STATE     IDENTITY                                      IPS               ENROLLED  CERT-EXPIRY  CONNS  SENT    RECEIVED  ERROR\n\
             apps       server  node  failed    -                                             10.0.0.5          -         -            0      0B      0B        netns gone\n\
             default    client  node  enrolled  spiffe://cluster.local/ns/default/sa/default  10.0.0.5,fd00::5  5m3s      23h54m       3      1.2MiB  512B      -\n"
        );
    }

    #[test]
    fn detail_lists_every_counter_and_label() {
        let now = human::parse_rfc3339("2025-03-04T05:05:03Z").unwrap();
        let counters = WorkloadCounters {
            connections_total: 7,
            kernel_rx_packets: 99,
            bytes_sent: 2048,
            ..Default::default()
        };
        let text = detail_table(&workload("default", "client", counters).into(), now);
        assert!(text.contains("Connections total:   7\n"), "{text}");
        assert!(text.contains("Kernel RX packets:   99\n"), "{text}");
        assert!(
            text.contains("Bytes sent:          2.0KiB (2048)\n"),
            "{text}"
        );
        assert!(text.contains("Labels:              app=client\n"), "{text}");
        assert!(
            text.contains("Enrolled since:      2025-03-04T05:00:00Z (5m3s ago)\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 23);
    }
}
