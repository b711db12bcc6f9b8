//! The one place where traffic becomes telemetry: a connection registered, its bytes so
//! far, its end, each HTTP request and each refusal turn into Istio's metrics and the
//! access line, from plain [`facts`](super::facts). The proxy calls it; it calls nothing
//! of the proxy.
use std::sync::Arc;

use crate::config::AccessLogConfig;

use super::{
    access,
    facts::{ConnectionFacts, Ending, RequestFacts},
    metrics::{ConnectionMetrics, Metrics, TcpLabels},
    refusals::Reason,
};

/// Records connections and requests into the agent's metrics and access log.
#[derive(Clone)]
pub struct Recorder {
    metrics: Arc<Metrics>,
    /// Which access lines are written.
    access: AccessLogConfig,
}

impl Recorder {
    pub fn new(metrics: Arc<Metrics>, access: AccessLogConfig) -> Self {
        Self { metrics, access }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A connection registered with `labels`: counted as opened, both its byte series
    /// made at zero; what it counts into from then on.
    pub fn opened(&self, labels: TcpLabels) -> ConnectionMetrics {
        self.metrics.opened(labels)
    }

    /// A live connection's running byte totals (client → server, server → client).
    pub fn flush(&self, conn: &ConnectionMetrics, to_server: u64, to_client: u64) {
        self.metrics.flush(conn, to_server, to_client);
    }

    /// A registered connection ended: its last bytes, counted as closed with its response
    /// flags, and its access line.
    pub fn closed(&self, facts: &ConnectionFacts, conn: &ConnectionMetrics, ending: &Ending) {
        let flags = ending.failure.as_ref().map(|f| f.flags).unwrap_or_default();
        self.metrics
            .closed(conn, ending.bytes_sent, ending.bytes_received, flags);
        if self.access.connections {
            access::connection(facts, Some(conn.labels()), ending);
        }
    }

    /// A connection refused before anything was copied (not registered): counted as a
    /// refusal of `why`, and as opened and closed with its flags when its `labels` are
    /// known (as Istio's dashboards count a denied connection); its access line.
    pub fn refused_connection(
        &self,
        facts: &ConnectionFacts,
        labels: Option<TcpLabels>,
        why: Reason,
        ending: &Ending,
    ) {
        self.refused(&facts.pod, facts.direction.as_str(), why);
        match labels {
            Some(labels) => {
                let conn = self.metrics.opened(labels);
                self.closed(facts, &conn, ending);
            }
            None if self.access.connections => access::connection(facts, None, ending),
            None => {}
        }
    }

    /// One HTTP request of a connection: Istio's request metrics and, when
    /// `telemetry.accessLog.requests` is on, its access line.
    pub fn request(
        &self,
        facts: &ConnectionFacts,
        conn: &ConnectionMetrics,
        request: &RequestFacts<'_>,
    ) {
        self.metrics.request(
            conn,
            request.status,
            request.flags.as_str(),
            request.duration.as_secs_f64() * 1000.0,
            request.request_bytes,
            request.response_bytes,
        );
        if self.access.requests {
            access::request(facts, conn.labels(), request);
        }
    }

    /// A connection or request refused at `pod` (`namespace/name`), which way it went
    /// (`inbound` | `outbound`) and why; whoever refuses it logs it.
    pub fn refused(&self, pod: &str, direction: &'static str, why: Reason) {
        self.metrics.refused(pod, direction, why);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use serde_json::Value;

    use super::*;
    use crate::telemetry::{
        facts::{Direction, Failure, ResponseFlags, Transport},
        metrics::{Party, Reporter},
    };

    /// What tracing wrote, as JSON lines.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn json(&self) -> Vec<Value> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    /// Runs `f` with tracing writing JSON lines, in a connection's span (an access line
    /// carries its fields itself all the same); returns them.
    fn logged(f: impl FnOnce()) -> Vec<Value> {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let _span = tracing::info_span!("outbound", pod = "shop/client", id = 7).entered();
            f();
        });
        lines.json()
    }

    fn facts() -> ConnectionFacts {
        ConnectionFacts {
            pod: "shop/client".into(),
            direction: Direction::Outbound,
            transport: Transport::Hbone,
            src: "198.19.1.12:40000".parse().unwrap(),
            dst: "198.19.2.11:5432".parse().unwrap(),
            src_identity: Some("spiffe://cluster.local/ns/shop/sa/client".into()),
            dst_identity: Some("spiffe://cluster.local/ns/data/sa/db".into()),
        }
    }

    /// A recorder writing every access line (the tests read them).
    fn every_line() -> Recorder {
        Recorder::new(
            Arc::default(),
            AccessLogConfig {
                connections: true,
                requests: true,
            },
        )
    }

    /// A `GET /` answered 200 with 5 bytes.
    fn ok_request() -> RequestFacts<'static> {
        RequestFacts {
            method: "GET",
            path: "/",
            authority: "db.data",
            protocol: "HTTP/1.1",
            status: 200,
            request_bytes: 0,
            response_bytes: 5,
            duration: Duration::from_millis(1),
            denied: false,
            flags: ResponseFlags::None,
        }
    }

    /// A connection that ended well, 40 bytes sent and 60 received.
    fn clean_ending() -> Ending {
        Ending {
            bytes_sent: 40,
            bytes_received: 60,
            duration: Duration::from_millis(3),
            failure: None,
        }
    }

    fn labels() -> TcpLabels {
        let party = |w: &str, ns: &str| Party {
            workload: w.into(),
            namespace: ns.into(),
            principal: format!("spiffe://cluster.local/ns/{ns}/sa/{w}"),
        };
        TcpLabels::new(
            Reporter::Source,
            party("client", "shop"),
            party("db", "data"),
            true,
        )
    }

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} missing in:\n{text}"))
    }

    #[test]
    fn a_failed_connection_is_one_warn_line_with_its_flags_and_a_closed_count() {
        let recorder = every_line();
        let conn = recorder.opened(labels());
        let ending = Ending {
            bytes_sent: 10,
            bytes_received: 3,
            duration: Duration::from_millis(5),
            failure: Some(Failure {
                flags: ResponseFlags::ConnectFailure,
                reason: "connect 198.19.2.11:5432: refused".into(),
            }),
        };
        let lines = logged(|| recorder.closed(&facts(), &conn, &ending));
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!(l["target"], "access");
        assert_eq!(l["level"], "WARN");
        let f = &l["fields"];
        assert_eq!(f["message"], "connection");
        assert_eq!(f["pod"], "shop/client");
        assert_eq!(f["dst"], "198.19.2.11:5432");
        assert_eq!(f["dst_workload"], "db");
        assert_eq!(f["dst_identity"], "spiffe://cluster.local/ns/data/sa/db");
        assert_eq!(f["bytes_sent"], 10);
        assert_eq!(f["bytes_received"], 3);
        assert_eq!(f["response_flags"], "CONNECT");
        assert_eq!(f["error"], "connect 198.19.2.11:5432: refused");
        let text = recorder.metrics().encode();
        assert!(
            line(&text, "istio_tcp_connections_closed_total{")
                .contains("response_flags=\"CONNECT\""),
            "{text}"
        );
        assert!(line(&text, "istio_tcp_received_bytes_total{").ends_with(" 10"));
    }

    #[test]
    fn a_request_is_counted_with_its_code_and_flags_and_logged_beside_its_connection() {
        let recorder = every_line();
        let conn = recorder.opened(labels());
        let request = RequestFacts {
            method: "GET",
            path: "/private",
            authority: "db.data",
            protocol: "HTTP/1.1",
            status: 403,
            request_bytes: 0,
            response_bytes: 19,
            duration: Duration::from_millis(2),
            denied: true,
            flags: ResponseFlags::None,
        };
        let lines = logged(|| recorder.request(&facts(), &conn, &request));
        let f = &lines[0]["fields"];
        assert_eq!(f["message"], "request");
        assert_eq!(f["pod"], "shop/client");
        assert_eq!(f["path"], "/private");
        assert_eq!(f["status"], 403);
        assert_eq!(f["denied"], true);
        assert_eq!(f["protocol"], "HTTP/1.1");
        let text = recorder.metrics().encode();
        let requests = line(&text, "istio_requests_total{");
        assert!(requests.contains("response_code=\"403\""), "{requests}");
        assert!(requests.contains("reporter=\"source\""), "{requests}");
    }

    #[test]
    fn a_refused_arrival_counts_a_refusal_and_a_denied_connection() {
        let recorder = every_line();
        let facts = ConnectionFacts {
            direction: Direction::Inbound,
            ..facts()
        };
        let ending = Ending {
            bytes_sent: 0,
            bytes_received: 0,
            duration: Duration::ZERO,
            failure: Some(Failure {
                flags: ResponseFlags::Deny,
                reason: "RBAC: access denied (deny-all)".into(),
            }),
        };
        let lines =
            logged(|| recorder.refused_connection(&facts, Some(labels()), Reason::Policy, &ending));
        assert_eq!(lines[0]["fields"]["response_flags"], "DENY");
        let text = recorder.metrics().encode();
        assert!(line(&text, "outrider_refusals_total{").contains("reason=\"policy\""));
        assert!(line(&text, "istio_tcp_connections_opened_total{").ends_with(" 1"));
        let closed = line(&text, "istio_tcp_connections_closed_total{");
        assert!(closed.contains("response_flags=\"DENY\""), "{closed}");
    }

    #[test]
    fn access_lines_off_are_not_written_and_the_metrics_still_count() {
        let recorder = Recorder::new(
            Arc::default(),
            AccessLogConfig {
                connections: false,
                requests: false,
            },
        );
        let conn = recorder.opened(labels());
        let request = ok_request();
        let ending = clean_ending();
        let lines = logged(|| {
            recorder.request(&facts(), &conn, &request);
            recorder.closed(&facts(), &conn, &ending);
            recorder.refused_connection(&facts(), None, Reason::Policy, &ending);
        });
        assert!(lines.is_empty(), "{lines:?}");
        let text = recorder.metrics().encode();
        assert!(
            line(&text, "istio_requests_total{").ends_with(" 1"),
            "{text}"
        );
        assert!(line(&text, "istio_tcp_connections_closed_total{").ends_with(" 1"));
    }

    #[test]
    fn by_default_connections_are_logged_and_requests_are_not() {
        let recorder = Recorder::new(Arc::default(), AccessLogConfig::default());
        let conn = recorder.opened(labels());
        let request = ok_request();
        let ending = clean_ending();
        let lines = logged(|| {
            recorder.request(&facts(), &conn, &request);
            recorder.closed(&facts(), &conn, &ending);
        });
        let messages: Vec<&Value> = lines.iter().map(|l| &l["fields"]["message"]).collect();
        assert_eq!(messages, ["connection"], "{lines:?}");
    }
}
