//! Moving a registered connection's bytes, whichever side it is on: the protocol is
//! detected first (without waiting on server-first protocols); HTTP is proxied request by
//! request through a [`RequestHook`] (policy at the destination, counting and logging
//! everywhere), anything else is copied. Both end up in the connection's counters, and
//! the agent can close it at any time (its cancel token).
use std::{
    io,
    sync::{Arc, atomic::Ordering::Relaxed},
};

use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    connections::Connection,
    copy::{self, Abort},
    http::{self, DetectSettings, Hook, Report, RequestInfo, Verdict},
};
use crate::telemetry::{access, metrics::Metrics};

/// What decides HTTP requests (e.g. policy); `None` forwards everything.
pub type Decide = Box<dyn Fn(&RequestInfo) -> Option<String> + Send + Sync>;

/// Counts, logs and (with `decide`) decides the HTTP requests of one connection.
pub struct RequestHook {
    pub conn: Arc<Connection>,
    pub metrics: Arc<Metrics>,
    /// The enrolled pod's SPIFFE ID, for the request's log line.
    pub local_identity: String,
    /// Returns the reason to deny a request (403), or `None` to forward it.
    pub decide: Option<Decide>,
}

impl Hook for RequestHook {
    fn on_request(&self, request: &RequestInfo, _headers: &::http::HeaderMap) -> Verdict {
        match self.decide.as_ref().and_then(|decide| decide(request)) {
            None => Verdict::Forward,
            Some(reason) => {
                tracing::debug!(pod = %self.conn.pod, %reason, path = request.path(), "request denied");
                Verdict::rbac_denied()
            }
        }
    }

    fn on_complete(&self, report: Report) {
        self.conn
            .counters
            .forward
            .fetch_add(report.request_bytes, Relaxed);
        self.conn
            .counters
            .backward
            .fetch_add(report.response_bytes, Relaxed);
        // Istio's `request_protocol` is "http" for HTTP/1.x and HTTP/2 alike.
        let labels =
            self.conn
                .metrics
                .labels
                .http("http", report.status.as_u16(), report.response_flags());
        self.metrics.request(
            &labels,
            report.duration.as_secs_f64() * 1000.0,
            report.request_bytes,
            report.response_bytes,
        );
        self.conn.request_done(report.status.as_u16());
        access::log_request(&self.conn, &self.local_identity, &report);
    }
}

/// Relays between `client` (the side that opened the connection) and `upstream`.
/// `opaque_check` decides a connection that turns out not to be HTTP (`Err`: the reason
/// to refuse it; both ends are then reset).
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    buffer: usize,
    hook: RequestHook,
    opaque_check: impl FnOnce() -> Result<(), String>,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Abort + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Abort + Unpin + Send + 'static,
{
    let conn = hook.conn.clone();
    let detected = http::detect(client, upstream, &DetectSettings::default()).await;
    match detected.protocol.http() {
        None => {
            let (mut client, mut upstream) = (detected.client, detected.app);
            if let Err(reason) = opaque_check() {
                client.abort();
                upstream.abort();
                conn.close(reason);
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, "refused"));
            }
            copy::bidirectional(
                client,
                upstream,
                buffer,
                &conn.counters,
                conn.cancel_token(),
            )
            .await
        }
        Some(version) => http::serve(
            detected.client,
            detected.app,
            version,
            Arc::new(hook),
            &http::Settings::default(),
            conn.cancel_token().clone().cancelled_owned(),
        )
        .await
        .map_err(|e| io::Error::other(e.to_string())),
    }
}
