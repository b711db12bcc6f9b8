//! Prometheus metrics with the names and labels of Istio's standard metrics, so that
//! existing dashboards and alerts work: TCP connections and bytes, and for HTTP the
//! request count, duration and sizes — each reported by the source's agent
//! (`reporter="source"`) and by the destination's (`reporter="destination"`). Labels name
//! workloads, identities and outcomes, never a connection, so cardinality stays bounded by
//! the mesh's size.
//!
//! The TCP byte counters mean what Istio's (and ztunnel's) mean, for both reporters:
//! `istio_tcp_received_bytes_total` counts the bytes received during the request (client
//! → server), `istio_tcp_sent_bytes_total` the bytes sent during the response (server →
//! client). They count every connection's bytes on the app's socket (HTTP heads
//! included, TLS and tunnel framing not), include connections still open (flushed at
//! each scrape), and both exist from the connection's opening, at zero.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::{
    facts::ResponseFlags,
    refusals::{Reason, RefusalLabels},
};

/// Who reports a connection or request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// The labels of Istio's TCP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    /// The Service dialed, `name.namespace.svc.<cluster domain>` ("unknown" when the
    /// connection went to a pod's own address).
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// The labels of Istio's HTTP metrics: the TCP ones plus the response code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    /// The Service dialed, `name.namespace.svc.<cluster domain>` ("unknown" when the
    /// connection went to a pod's own address).
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: &'static str,
    pub response_code: String,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// A Service as metrics and access logs name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceName {
    /// `name.namespace.svc.<cluster domain>`.
    pub fqdn: String,
    pub name: String,
    pub namespace: String,
}

impl ServiceName {
    pub fn of(service: &crate::workloads::directory::ResolvedService) -> Self {
        Self {
            fqdn: service.fqdn.clone(),
            name: service.key.name.clone(),
            namespace: service.key.namespace.clone(),
        }
    }
}

/// One end of a connection, as metrics name it ("unknown" where not known).
#[derive(Clone, Debug)]
pub struct Party {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
}

impl Party {
    pub fn unknown() -> Self {
        Self {
            workload: "unknown".into(),
            namespace: "unknown".into(),
            principal: "unknown".into(),
        }
    }
}

impl TcpLabels {
    pub fn new(reporter: Reporter, source: Party, destination: Party, mutual_tls: bool) -> Self {
        Self {
            reporter: reporter.as_str(),
            source_workload: source.workload,
            source_workload_namespace: source.namespace,
            source_principal: source.principal,
            destination_workload: destination.workload,
            destination_workload_namespace: destination.namespace,
            destination_principal: destination.principal,
            destination_service: "unknown".into(),
            destination_service_name: "unknown".into(),
            destination_service_namespace: "unknown".into(),
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: if mutual_tls { "mutual_tls" } else { "none" },
        }
    }

    /// Labels the connection with the Service it was sent to (Istio's
    /// `destination_service*`).
    pub fn with_service(mut self, service: Option<&ServiceName>) -> Self {
        if let Some(s) = service {
            self.destination_service = s.fqdn.clone();
            self.destination_service_name = s.name.clone();
            self.destination_service_namespace = s.namespace.clone();
        }
        self
    }

    /// The HTTP labels of a request carried by this connection.
    pub fn http(&self, protocol: &'static str, code: u16, flags: &'static str) -> HttpLabels {
        HttpLabels {
            reporter: self.reporter,
            source_workload: self.source_workload.clone(),
            source_workload_namespace: self.source_workload_namespace.clone(),
            source_principal: self.source_principal.clone(),
            destination_workload: self.destination_workload.clone(),
            destination_workload_namespace: self.destination_workload_namespace.clone(),
            destination_principal: self.destination_principal.clone(),
            destination_service: self.destination_service.clone(),
            destination_service_name: self.destination_service_name.clone(),
            destination_service_namespace: self.destination_service_namespace.clone(),
            request_protocol: protocol,
            response_code: code.to_string(),
            response_flags: flags,
            connection_security_policy: self.connection_security_policy,
        }
    }
}

/// The labels of the kernel's per-pod counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
}

/// Istio's buckets for durations (ms) and sizes (bytes).
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
const SIZE_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

type HistogramFamily = Family<HttpLabels, Histogram, fn() -> Histogram>;

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub tcp_sent_bytes: Family<TcpLabels, Counter>,
    pub tcp_received_bytes: Family<TcpLabels, Counter>,
    pub requests: Family<HttpLabels, Counter>,
    pub request_duration: HistogramFamily,
    pub request_bytes: HistogramFamily,
    pub response_bytes: HistogramFamily,
    /// What crossed each enrolled pod's network interface, counted in the kernel.
    pub pod_sent_bytes: Family<PodLabels, Counter>,
    pub pod_received_bytes: Family<PodLabels, Counter>,
    pub pod_sent_packets: Family<PodLabels, Counter>,
    pub pod_received_packets: Family<PodLabels, Counter>,
    /// Connections and requests refused, per pod and reason (`telemetry::refusals`).
    pub refusals: Family<RefusalLabels, Counter>,
    /// The series of each label set of connections seen, by its labels.
    tcp: RwLock<HashMap<TcpLabels, Arc<TcpSeries>, foldhash::fast::RandomState>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let tcp_sent_bytes = Family::<TcpLabels, Counter>::default();
        let tcp_received_bytes = Family::<TcpLabels, Counter>::default();
        let requests = Family::<HttpLabels, Counter>::default();
        let request_duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let request_bytes: HistogramFamily = Family::new_with_constructor(size_histogram);
        let response_bytes: HistogramFamily = Family::new_with_constructor(size_histogram);
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent during the response (server to client), as the app's socket carried them",
            tcp_sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received during the request (client to server), as the app's socket carried them",
            tcp_received_bytes.clone(),
        );
        registry.register("istio_requests", "HTTP requests", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "HTTP request durations in milliseconds",
            request_duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "HTTP request body sizes in bytes",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "HTTP response body sizes in bytes",
            response_bytes.clone(),
        );
        let pod_sent_bytes = Family::<PodLabels, Counter>::default();
        let pod_received_bytes = Family::<PodLabels, Counter>::default();
        let pod_sent_packets = Family::<PodLabels, Counter>::default();
        let pod_received_packets = Family::<PodLabels, Counter>::default();
        for (name, help, family) in [
            (
                "outrider_pod_sent_bytes",
                "Bytes (IP packet lengths) the pod sent on its interface, counted in the kernel",
                &pod_sent_bytes,
            ),
            (
                "outrider_pod_received_bytes",
                "Bytes (IP packet lengths) the pod received on its interface, counted in the kernel",
                &pod_received_bytes,
            ),
            (
                "outrider_pod_sent_packets",
                "Packets the pod sent on its interface, counted in the kernel",
                &pod_sent_packets,
            ),
            (
                "outrider_pod_received_packets",
                "Packets the pod received on its interface, counted in the kernel",
                &pod_received_packets,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "outrider_refusals",
            "Connections and requests the agent refused, per pod and reason",
            refusals.clone(),
        );
        Self {
            registry,
            refusals,
            pod_sent_bytes,
            pod_received_bytes,
            pod_sent_packets,
            pod_received_packets,
            tcp_opened,
            tcp_closed,
            tcp_sent_bytes,
            tcp_received_bytes,
            requests,
            request_duration,
            request_bytes,
            response_bytes,
            tcp: RwLock::default(),
        }
    }
}

/// The series one label set of connections counts into, found once per connection
/// instead of hashing the label set into each family at each step (six lookups, each a
/// SipHash of thirteen labels and a comparison of them: about 2 % of the agent's CPU per
/// connection). Its counters are the families' own (series are never removed from a
/// family), so what it counts is what the registry exports.
#[derive(Debug)]
struct TcpSeries {
    labels: TcpLabels,
    opened: Counter,
    sent: Counter,
    received: Counter,
    /// Closed without response flags: made at the first such close, so that a label set
    /// whose connections all failed exports no `-` series.
    closed: OnceLock<Counter>,
    /// The request series of this label set seen so far, one per response code and
    /// flags (a handful).
    requests: Mutex<Vec<RequestSeries>>,
}

/// A connection's metrics: its series, and how much of its bytes were counted so far.
#[derive(Debug)]
pub struct ConnectionMetrics {
    series: Arc<TcpSeries>,
    /// Client → server bytes already in `istio_tcp_received_bytes_total`.
    counted_to_server: AtomicU64,
    /// Server → client bytes already in `istio_tcp_sent_bytes_total`.
    counted_to_client: AtomicU64,
    /// The request series this connection's last request went to.
    last_request: Mutex<Option<RequestSeries>>,
}

/// The four metrics of one HTTP request series (a connection's labels, a response code
/// and flags), held by the connection for its next request: most requests of a
/// connection get the same answer, and a hit skips building the label set and four
/// hashed lookups (about 1.5 % of the agent's CPU per request). Series are never removed
/// from their families, so a held handle is always the one the registry exports.
#[derive(Clone, Debug)]
struct RequestSeries {
    code: u16,
    flags: &'static str,
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl ConnectionMetrics {
    /// The labels the connection's series carry.
    pub fn labels(&self) -> &TcpLabels {
        &self.series.labels
    }
}

/// How much of `total` (a running total, read at some moment) is not yet in the
/// counter, marking it counted. Flushes race (a scrape, the connection closing): each
/// adds only what lies beyond the largest total any flush has seen, so a total read
/// earlier adds nothing and no byte is counted twice.
fn uncounted(counted: &AtomicU64, total: u64) -> u64 {
    total.saturating_sub(counted.fetch_max(total, Ordering::Relaxed))
}

impl Metrics {
    /// Counts a connection opened with `labels`, and makes both its byte series (at
    /// zero, as ztunnel does), so that dashboards see them before the first byte.
    pub fn opened(&self, labels: TcpLabels) -> ConnectionMetrics {
        let series = self.tcp_series(labels);
        series.opened.inc();
        ConnectionMetrics {
            series,
            counted_to_server: AtomicU64::new(0),
            counted_to_client: AtomicU64::new(0),
            last_request: Mutex::new(None),
        }
    }

    /// The series of `labels`, made (in every TCP family but the closed one) if new.
    fn tcp_series(&self, labels: TcpLabels) -> Arc<TcpSeries> {
        if let Some(series) = crate::sync::read(&self.tcp).get(&labels).cloned() {
            return series;
        }
        let mut known = crate::sync::write(&self.tcp);
        known
            .entry(labels)
            .or_insert_with_key(|labels| {
                Arc::new(TcpSeries {
                    opened: self.tcp_opened.get_or_create(labels).clone(),
                    sent: self.tcp_sent_bytes.get_or_create(labels).clone(),
                    received: self.tcp_received_bytes.get_or_create(labels).clone(),
                    closed: OnceLock::new(),
                    requests: Mutex::new(Vec::new()),
                    labels: labels.clone(),
                })
            })
            .clone()
    }

    /// Adds what the connection moved since the last flush. `to_server` (client →
    /// server, Istio's "received") and `to_client` (server → client, Istio's "sent") are
    /// its running totals.
    pub fn flush(&self, conn: &ConnectionMetrics, to_server: u64, to_client: u64) {
        let new_to_server = uncounted(&conn.counted_to_server, to_server);
        let new_to_client = uncounted(&conn.counted_to_client, to_client);
        if new_to_server > 0 {
            conn.series.received.inc_by(new_to_server);
        }
        if new_to_client > 0 {
            conn.series.sent.inc_by(new_to_client);
        }
    }

    /// Counts a connection closed, with its last bytes (as [`flush`](Self::flush)) and
    /// its response flags (`istio_tcp_connections_closed_total` carries them, as
    /// ztunnel's does; the opened and byte series keep `-`).
    pub fn closed(
        &self,
        conn: &ConnectionMetrics,
        to_server: u64,
        to_client: u64,
        flags: ResponseFlags,
    ) {
        self.flush(conn, to_server, to_client);
        let series = &conn.series;
        match flags {
            ResponseFlags::None => series
                .closed
                .get_or_init(|| self.tcp_closed.get_or_create(&series.labels).clone())
                .inc(),
            flags => {
                let labels = TcpLabels {
                    response_flags: flags.as_str(),
                    ..series.labels.clone()
                };
                self.tcp_closed.get_or_create(&labels).inc()
            }
        };
    }

    /// Counts one HTTP request of `conn`, answered `code` with `flags`.
    pub fn request(
        &self,
        conn: &ConnectionMetrics,
        code: u16,
        flags: &'static str,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let mut last = crate::sync::lock(&conn.last_request);
        let series = match &mut *last {
            Some(series) if series.code == code && series.flags == flags => series,
            held => held.insert(self.request_series(&conn.series, code, flags)),
        };
        series.requests.inc();
        series.duration.observe(duration_ms);
        series.request_bytes.observe(request_bytes as f64);
        series.response_bytes.observe(response_bytes as f64);
    }

    /// The series of requests on connections of `tcp`, answered `code` with `flags`,
    /// made if new.
    fn request_series(&self, tcp: &TcpSeries, code: u16, flags: &'static str) -> RequestSeries {
        let mut known = crate::sync::lock(&tcp.requests);
        if let Some(series) = known.iter().find(|s| s.code == code && s.flags == flags) {
            return series.clone();
        }
        let labels = tcp.labels.http("http", code, flags);
        let series = RequestSeries {
            code,
            flags,
            requests: self.requests.get_or_create(&labels).clone(),
            duration: self.request_duration.get_or_create(&labels).clone(),
            request_bytes: self.request_bytes.get_or_create(&labels).clone(),
            response_bytes: self.response_bytes.get_or_create(&labels).clone(),
        };
        known.push(series.clone());
        series
    }

    /// Counts a refusal protecting `pod` (`namespace/name`).
    pub fn refused(&self, pod: &str, direction: &'static str, reason: Reason) {
        self.refused_many(pod, direction, reason, 1);
    }

    /// Counts `n` refusals at once (e.g. what the kernel counted since the last look).
    pub fn refused_many(&self, pod: &str, direction: &'static str, reason: Reason, n: u64) {
        let (namespace, pod) = pod.split_once('/').unwrap_or(("", pod));
        self.refusals
            .get_or_create(&RefusalLabels {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                direction,
                reason: reason.as_str(),
            })
            .inc_by(n);
    }

    /// Adds a pod's kernel counters' growth since the last call (`last`, updated).
    pub fn pod_counters(&self, labels: &PodLabels, last: &mut [u64; 4], now: [u64; 4]) {
        let families = [
            &self.pod_sent_bytes,
            &self.pod_received_bytes,
            &self.pod_sent_packets,
            &self.pod_received_packets,
        ];
        for ((family, last), now) in families.into_iter().zip(last.iter_mut()).zip(now) {
            let delta = now.saturating_sub(*last);
            *last = now;
            if delta > 0 {
                family.get_or_create(labels).inc_by(delta);
            }
        }
    }

    /// The Prometheus text exposition format (0.0.4), which every scraper and promtool
    /// read: prometheus-client writes OpenMetrics, whose counter families are named
    /// without `_total` and which ends with `# EOF`; both are adjusted here.
    pub fn encode(&self) -> String {
        let mut open_metrics = String::new();
        if let Err(err) =
            prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry)
        {
            tracing::error!(error = %err, "encoding metrics");
        }
        to_prometheus_text(&open_metrics)
    }
}

/// OpenMetrics text → Prometheus text 0.0.4: counter families take their samples'
/// `_total` name in `# HELP`/`# TYPE`, and `# EOF` goes.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> TcpLabels {
        TcpLabels {
            reporter: Reporter::Source.as_str(),
            source_workload: "client".into(),
            source_workload_namespace: "shop".into(),
            source_principal: "spiffe://cluster.local/ns/shop/sa/client".into(),
            destination_workload: "db".into(),
            destination_workload_namespace: "data".into(),
            destination_principal: "spiffe://cluster.local/ns/data/sa/db".into(),
            destination_service: "unknown".into(),
            destination_service_name: "unknown".into(),
            destination_service_namespace: "unknown".into(),
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: "mutual_tls",
        }
    }

    /// A connection holds its last request series: requests with another answer must
    /// still land in their own series, and a series held by one connection must be the
    /// one another connection with the same labels counts into.
    #[test]
    fn requests_land_in_their_series_whatever_the_connection_held_before() {
        let metrics = Metrics::default();
        let first = metrics.opened(labels());
        let second = metrics.opened(labels());
        for (conn, code, flags) in [
            (&first, 200, "-"),
            (&first, 200, "-"),
            (&first, 503, "UC"),
            (&first, 200, "-"),
            (&first, 503, "-"),
            (&second, 200, "-"),
        ] {
            metrics.request(conn, code, flags, 1.0, 0, 10);
        }
        let text = metrics.encode();
        let count = |code: &str, flags: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("istio_requests_total{")
                        && l.contains(&format!("response_code=\"{code}\""))
                        && l.contains(&format!("response_flags=\"{flags}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or_else(|| panic!("no {code} {flags} series in:\n{text}"))
                .to_string()
        };
        assert_eq!(count("200", "-"), "4", "{text}");
        assert_eq!(count("503", "UC"), "1", "{text}");
        assert_eq!(count("503", "-"), "1", "{text}");
        let sizes = text
            .lines()
            .find(|l| {
                l.starts_with("istio_response_bytes_count{") && l.contains("response_code=\"200\"")
            })
            .unwrap_or_else(|| panic!("no response size count in:\n{text}"));
        assert!(sizes.ends_with(" 4"), "{sizes}");
    }

    /// Connections find their series by their labels once: the same labels must count
    /// into one series, other labels into their own, and a request series made for one
    /// connection must be the one the next connection with those labels counts into.
    #[test]
    fn connections_with_the_same_labels_share_series_and_others_get_their_own() {
        let metrics = Metrics::default();
        let other = TcpLabels {
            destination_workload: "cache".into(),
            ..labels()
        };
        let (a, b, c) = (
            metrics.opened(labels()),
            metrics.opened(labels()),
            metrics.opened(other.clone()),
        );
        metrics.closed(&a, 10, 1, ResponseFlags::None);
        metrics.closed(&b, 20, 2, ResponseFlags::None);
        metrics.closed(&c, 300, 3, ResponseFlags::None);
        metrics.request(&a, 200, "-", 1.0, 0, 1);
        metrics.request(&b, 200, "-", 1.0, 0, 1);
        metrics.request(&c, 200, "-", 1.0, 0, 1);
        let text = metrics.encode();
        let value = |name: &str, workload: &str| -> Vec<String> {
            text.lines()
                .filter(|l| {
                    l.starts_with(&format!("{name}{{"))
                        && l.contains(&format!("destination_workload=\"{workload}\""))
                })
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
                .collect()
        };
        for (name, db, cache) in [
            ("istio_tcp_connections_opened_total", "2", "1"),
            ("istio_tcp_connections_closed_total", "2", "1"),
            ("istio_tcp_received_bytes_total", "30", "300"),
            ("istio_tcp_sent_bytes_total", "3", "3"),
            ("istio_requests_total", "2", "1"),
        ] {
            assert_eq!(value(name, "db"), [db], "{name} of db in:\n{text}");
            assert_eq!(value(name, "cache"), [cache], "{name} of cache in:\n{text}");
        }
    }

    #[test]
    fn connections_and_requests_are_exposed_with_istio_names_and_labels() {
        let metrics = Metrics::default();
        let conn = metrics.opened(labels());
        metrics.flush(&conn, 100, 10);
        metrics.flush(&conn, 150, 10);
        metrics.closed(&conn, 200, 30, ResponseFlags::None);
        metrics.request(&conn, 200, "-", 3.0, 10, 2000);
        let text = metrics.encode();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains("reporter=\"source\""))
                .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
                .to_string()
        };
        assert!(line("istio_tcp_connections_opened_total").ends_with(" 1"));
        assert!(line("istio_tcp_connections_closed_total").ends_with(" 1"));
        // Istio's direction: received is client → server, sent is server → client.
        assert!(
            line("istio_tcp_received_bytes_total").ends_with(" 200"),
            "{text}"
        );
        assert!(line("istio_tcp_sent_bytes_total").ends_with(" 30"));
        let requests = line("istio_requests_total");
        assert!(requests.contains("response_code=\"200\""), "{requests}");
        assert!(
            requests.contains("destination_principal=\"spiffe://cluster.local/ns/data/sa/db\"")
        );
        assert!(text.contains("istio_request_duration_milliseconds_bucket"));
        assert!(
            text.contains("# TYPE istio_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP istio_tcp_sent_bytes_total "),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
        assert!(text.contains("istio_response_bytes_sum"));
    }

    #[test]
    fn both_byte_series_exist_from_the_opening_at_zero() {
        let metrics = Metrics::default();
        let _conn = metrics.opened(labels());
        let text = metrics.encode();
        for name in [
            "istio_tcp_received_bytes_total{",
            "istio_tcp_sent_bytes_total{",
        ] {
            let line = text
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing in:\n{text}"));
            assert!(line.ends_with(" 0"), "{line}");
        }
    }

    #[test]
    fn racing_flushes_never_count_a_byte_twice() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let conn = std::sync::Arc::new(metrics.opened(labels()));
        // Running totals that grow, read and flushed by several threads at once, each
        // flushing the totals it read (some stale by the time they flush).
        let total = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (metrics, conn, total) = (metrics.clone(), conn.clone(), total.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let now = total.fetch_add(3, Ordering::Relaxed) + 3;
                        metrics.flush(&conn, now, now * 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let end = total.load(Ordering::Relaxed);
        metrics.closed(&conn, end, end * 2, ResponseFlags::None);
        let received = metrics
            .tcp_received_bytes
            .get_or_create(conn.labels())
            .get();
        let sent = metrics.tcp_sent_bytes.get_or_create(conn.labels()).get();
        assert_eq!((received, sent), (end, end * 2));
    }

    #[test]
    fn a_failed_connection_is_closed_with_its_response_flags() {
        let metrics = Metrics::default();
        let conn = metrics.opened(labels());
        metrics.closed(&conn, 5, 0, ResponseFlags::Deny);
        let text = metrics.encode();
        let closed: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_closed_total{"))
            .collect();
        assert_eq!(closed.len(), 1, "{text}");
        assert!(closed[0].contains("response_flags=\"DENY\""), "{text}");
        assert!(closed[0].ends_with(" 1"), "{text}");
        let opened = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .unwrap_or_default();
        assert!(opened.contains("response_flags=\"-\""), "{text}");
    }
}
