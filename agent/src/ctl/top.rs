//! `outriderctl top`: a live per-pod view of traffic, like `linkerd viz top`. It polls
//! ListWorkloads every interval and shows rates from the difference of two samples'
//! counters; in place on a terminal, frame after frame (a blank line after each) in a
//! pipe, one JSON object per frame with `-o json`.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use outrider_proto::admin::v1::{EnrollmentState, ListWorkloadsRequest, Workload};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::output::{self, Format, Table};
use super::workloads::CountersView;
use super::{Ctx, NamespacedName, human};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Only this pod.
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "namespace")]
    pod: Option<NamespacedName>,
    /// Only pods in this namespace.
    #[arg(short, long, value_name = "NAMESPACE")]
    namespace: Option<String>,
    /// Seconds between samples (and frames).
    #[arg(long, default_value = "2", value_parser = super::parse_seconds, value_name = "SECONDS")]
    interval: Duration,
    /// Stop after this many frames.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    iterations: Option<u64>,
}

/// The pods' counters at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    pods: BTreeMap<(String, String), PodSample>,
}

#[derive(Debug, Clone)]
struct PodSample {
    uid: String,
    counters: CountersView,
}

impl Sample {
    /// The pods that are enrolled or have counted something, at `at`.
    fn new(workloads: Vec<Workload>, at: Instant) -> Self {
        let pods = workloads
            .into_iter()
            .filter_map(|w| {
                let counters = w.counters.map(CountersView::from).unwrap_or_default();
                let enrolled = w.state == EnrollmentState::Enrolled as i32;
                let pod = PodSample {
                    uid: w.uid,
                    counters,
                };
                (enrolled || counters != CountersView::default())
                    .then_some(((w.namespace, w.name), pod))
            })
            .collect();
        Sample { at, pods }
    }
}

/// One frame: `-o json` prints it as one line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopFrameView {
    /// When the frame's second sample was taken (RFC 3339, UTC).
    pub time: String,
    /// Seconds between the two samples the rates come from.
    pub interval_seconds: f64,
    /// Busiest first (bytes per second, both ways), then by namespace and name.
    pub pods: Vec<TopPodView>,
}

/// One pod's row. Rates are null when the pod has no earlier sample (new, re-enrolled).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopPodView {
    pub namespace: String,
    pub name: String,
    pub connections_active: u64,
    pub new_connections_per_second: Option<f64>,
    pub bytes_sent_per_second: Option<f64>,
    pub bytes_received_per_second: Option<f64>,
    pub requests_per_second: Option<f64>,
    /// Failed connections and failed requests per second.
    pub errors_per_second: Option<f64>,
    /// Failed connections and failed requests since enrollment.
    pub errors: u64,
}

fn errors(c: &CountersView) -> u64 {
    c.connections_failed.saturating_add(c.requests_failed)
}

/// `(now - before) / seconds`; none when the counter went back (a reset).
fn per_second(before: u64, now: u64, seconds: f64) -> Option<f64> {
    (now >= before && seconds > 0.0).then(|| (now - before) as f64 / seconds)
}

/// The rows of the frame between samples `before` and `now`.
pub(crate) fn frame(before: &Sample, now: &Sample) -> Vec<TopPodView> {
    let seconds = now.at.saturating_duration_since(before.at).as_secs_f64();
    let mut rows: Vec<TopPodView> = now
        .pods
        .iter()
        .map(|((namespace, name), pod)| {
            let c = &pod.counters;
            let earlier = before
                .pods
                .get(&(namespace.clone(), name.clone()))
                .filter(|earlier| earlier.uid == pod.uid)
                .map(|earlier| earlier.counters);
            let rate = |counter: fn(&CountersView) -> u64| {
                earlier.and_then(|e| per_second(counter(&e), counter(c), seconds))
            };
            TopPodView {
                namespace: namespace.clone(),
                name: name.clone(),
                connections_active: c.connections_active,
                new_connections_per_second: rate(|c| c.connections_total),
                bytes_sent_per_second: rate(|c| c.bytes_sent),
                bytes_received_per_second: rate(|c| c.bytes_received),
                requests_per_second: rate(|c| c.requests_total),
                errors_per_second: rate(errors),
                errors: errors(c),
            }
        })
        .collect();
    let busy = |row: &TopPodView| {
        row.bytes_sent_per_second.unwrap_or(0.0) + row.bytes_received_per_second.unwrap_or(0.0)
    };
    rows.sort_by(|a, b| {
        busy(b)
            .total_cmp(&busy(a))
            .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    });
    rows
}

fn table(rows: &[TopPodView]) -> String {
    let mut table = Table::new([
        "NAMESPACE",
        "NAME",
        "CONNS",
        "NEW-CONNS/s",
        "SENT/s",
        "RECEIVED/s",
        "REQ/s",
        "ERR/s",
        "ERRORS",
    ]);
    let count = |rate: Option<f64>| rate.map(|r| format!("{r:.1}")).unwrap_or_default();
    let bytes = |rate: Option<f64>| rate.map(human::byte_rate).unwrap_or_default();
    for row in rows {
        table.row([
            row.namespace.clone(),
            row.name.clone(),
            row.connections_active.to_string(),
            count(row.new_connections_per_second),
            bytes(row.bytes_sent_per_second),
            bytes(row.bytes_received_per_second),
            count(row.requests_per_second),
            count(row.errors_per_second),
            row.errors.to_string(),
        ]);
    }
    table.render()
}

pub async fn run(ctx: &mut Ctx, args: TopArgs) -> Result<()> {
    let namespace = match (&args.pod, &args.namespace) {
        (Some(pod), _) => pod.namespace.clone(),
        (None, Some(namespace)) => namespace.clone(),
        (None, None) => String::new(),
    };
    let in_place = ctx.format == Format::Table && ctx.terminal;
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut before = sample(ctx, &namespace, args.pod.as_ref()).await?;
    if let Some(pod) = &args.pod
        && before.pods.is_empty()
    {
        bail!("no pod {pod} among the agent's enrolled pods");
    }
    if in_place {
        ctx.print("\x1b[2J\x1b[H(first rates after one interval)")?;
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut frames = 0u64;
    while args.iterations.is_none_or(|limit| frames < limit) {
        let next = async {
            ticker.tick().await;
            sample(ctx, &namespace, args.pod.as_ref()).await
        };
        let now = tokio::select! {
            interrupted = &mut ctrl_c => {
                interrupted?;
                break;
            }
            now = next => now?,
        };
        let rows = frame(&before, &now);
        let text = match ctx.format {
            Format::Table if in_place => in_place_frame(&table(&rows), rows.len(), args.interval),
            Format::Table => format!("{}\n", table(&rows)),
            format => {
                let view = TopFrameView {
                    time: OffsetDateTime::now_utc()
                        .format(&Rfc3339)
                        .unwrap_or_default(),
                    interval_seconds: now.at.saturating_duration_since(before.at).as_secs_f64(),
                    pods: rows,
                };
                output::render_item(format, &view, |_| String::new())?
            }
        };
        ctx.print(&text)?;
        frames += 1;
        before = now;
    }
    Ok(())
}

async fn sample(ctx: &mut Ctx, namespace: &str, pod: Option<&NamespacedName>) -> Result<Sample> {
    let mut client = ctx.client().await?;
    let request = ListWorkloadsRequest {
        namespace: namespace.to_string(),
    };
    let mut workloads = ctx
        .call("ListWorkloads", client.list_workloads(request))
        .await?
        .workloads;
    if let Some(pod) = pod {
        workloads.retain(|w| w.namespace == pod.namespace && w.name == pod.name);
    }
    Ok(Sample::new(workloads, Instant::now()))
}

/// The frame drawn over the previous one: cursor home, each line cleared to its end, the
/// rest of the screen cleared.
fn in_place_frame(table: &str, pods: usize, interval: Duration) -> String {
    let now = OffsetDateTime::now_utc();
    let title = format!(
        "outriderctl top: {pods} pods, every {}, {:02}:{:02}:{:02} UTC (Ctrl-C quits)",
        human::span(interval),
        now.hour(),
        now.minute(),
        now.second()
    );
    let mut text = String::from("\x1b[H");
    for line in std::iter::once(title.as_str())
        .chain(std::iter::once(""))
        .chain(table.lines())
    {
        text.push_str(line);
        text.push_str("\x1b[K\n");
    }
    text.push_str("\x1b[J");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::workloads::tests::workload;
    use outrider_proto::admin::v1::WorkloadCounters;

    fn counters(
        total: u64,
        sent: u64,
        received: u64,
        requests: u64,
        failed: u64,
    ) -> WorkloadCounters {
        WorkloadCounters {
            connections_active: 2,
            connections_total: total,
            connections_failed: failed,
            bytes_sent: sent,
            bytes_received: received,
            requests_total: requests,
            requests_failed: failed,
            ..Default::default()
        }
    }

    #[test]
    fn rates_come_from_the_difference_of_two_samples() {
        let start = Instant::now();
        let before = Sample::new(
            vec![
                workload("default", "client", counters(10, 1000, 500, 100, 1)),
                workload("default", "server", counters(10, 0, 0, 0, 0)),
                workload("apps", "restarted", counters(50, 9000, 9000, 0, 0)),
            ],
            start,
        );
        let mut restarted = workload("apps", "restarted", counters(1, 10, 10, 0, 0));
        restarted.uid = "another".into();
        let mut quiet = workload("kube-system", "dns", WorkloadCounters::default());
        quiet.state = EnrollmentState::NotEnrolled as i32;
        let now = Sample::new(
            vec![
                workload(
                    "default",
                    "client",
                    counters(14, 1000 + 2 * 4096, 500 + 2048, 120, 4),
                ),
                workload("default", "server", counters(10, 0, 0, 0, 0)),
                workload("default", "new", counters(3, 100, 100, 0, 0)),
                restarted,
                quiet,
            ],
            start + Duration::from_secs(2),
        );
        let rows = frame(&before, &now);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        // Busiest first; pods without rates count as idle; then by namespace and name.
        assert_eq!(names, ["client", "restarted", "new", "server"]);
        assert_eq!(
            rows[0],
            TopPodView {
                namespace: "default".into(),
                name: "client".into(),
                connections_active: 2,
                new_connections_per_second: Some(2.0),
                bytes_sent_per_second: Some(4096.0),
                bytes_received_per_second: Some(1024.0),
                requests_per_second: Some(10.0),
                errors_per_second: Some(3.0),
                errors: 8,
            }
        );
        assert_eq!(rows[1].bytes_sent_per_second, None, "another uid: no rates");
        assert_eq!(rows[2].requests_per_second, None, "no earlier sample");
        assert_eq!(rows[3].bytes_sent_per_second, Some(0.0));
        assert_eq!(
            table(&rows),
            "NAMESPACE  NAME       CONNS  NEW-CONNS/s  SENT/s  RECEIVED/s  REQ/s  ERR/s  ERRORS\n\
             default    client     2      2.0          4.0KiB  1.0KiB      10.0   3.0    8\n\
             apps       restarted  2      -            -       -           -      -      0\n\
             default    new        2      -            -       -           -      -      0\n\
             default    server     2      0.0          0B      0B          0.0    0.0    0\n"
        );
    }

    #[test]
    fn a_counter_going_back_has_no_rate() {
        assert_eq!(per_second(10, 4, 1.0), None);
        assert_eq!(per_second(4, 10, 0.0), None);
        assert_eq!(per_second(4, 10, 2.0), Some(3.0));
    }

    #[test]
    fn frame_json_field_names() {
        let view = TopFrameView {
            time: "2025-03-04T05:00:00Z".into(),
            interval_seconds: 2.0,
            pods: vec![TopPodView {
                namespace: "default".into(),
                name: "client".into(),
                connections_active: 1,
                new_connections_per_second: Some(0.5),
                bytes_sent_per_second: Some(10.0),
                bytes_received_per_second: None,
                requests_per_second: Some(0.0),
                errors_per_second: Some(0.0),
                errors: 3,
            }],
        };
        assert_eq!(
            serde_json::to_value(&view).unwrap(),
            serde_json::json!({
                "time": "2025-03-04T05:00:00Z",
                "intervalSeconds": 2.0,
                "pods": [{
                    "namespace": "default",
                    "name": "client",
                    "connectionsActive": 1,
                    "newConnectionsPerSecond": 0.5,
                    "bytesSentPerSecond": 10.0,
                    "bytesReceivedPerSecond": null,
                    "requestsPerSecond": 0.0,
                    "errorsPerSecond": 0.0,
                    "errors": 3
                }]
            })
        );
    }

    #[test]
    fn in_place_frames_redraw_from_home() {
        let text = in_place_frame("A  B\n1  2\n", 1, Duration::from_secs(2));
        assert!(
            text.starts_with("\x1b[Houtriderctl top: 1 pods, every 2s, "),
            "{text:?}"
        );
        assert!(
            text.ends_with("\x1b[K\nA  B\x1b[K\n1  2\x1b[K\n\x1b[J"),
            "{text:?}"
        );
    }
}
