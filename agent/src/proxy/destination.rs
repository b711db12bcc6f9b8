//! The destination side of a connection to an enrolled pod, however it arrived — through
//! a tunnel (the peer's identity verified) or in plaintext: the policy decision, delivery
//! to the app, copying while registered (so that the agent can close it if a policy
//! change denies it later), and the access log line. When a policy looks at HTTP
//! requests, the connection's protocol is detected first: HTTP is proxied request by
//! request, each one decided (403 for a denied one, the connection lives on); anything
//! else is decided once, as TCP.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{
    authorize::{self, Peer},
    connections::{Connection, NewConnection},
    copy::{self, Abort},
    http::{self, DetectSettings, Hook, Report, RequestInfo},
    pod::PodProxy,
};
use crate::{
    identity::SpiffeId,
    policy,
    telemetry::access::{self, ConnectionRecord, Direction, Transport},
};

/// A connection arriving at a pod.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub transport: Transport,
    /// Where it came from: the source pod's IP for tunnels (from `forwarded`), the
    /// client's address for plaintext.
    pub src: SocketAddr,
    /// The pod's address and port it is for.
    pub dst: SocketAddr,
    /// The peer's verified identity (tunnels only).
    pub peer: Option<SpiffeId>,
}

impl Arrival {
    fn peer(&self) -> Peer<'_> {
        Peer {
            identity: self.peer.as_ref(),
            ip: self.src.ip(),
        }
    }
}

/// Serves an arrival already allowed at the connection level (or whose decision waits
/// for its requests): when the pod's policies look at HTTP, detect the protocol and
/// decide HTTP request by request, anything else once; otherwise copy.
pub async fn serve<S>(
    pod: &Arc<PodProxy>,
    arrival: Arrival,
    client: S,
    app: TcpStream,
    started: Instant,
) where
    S: AsyncRead + AsyncWrite + Abort + Unpin + Send + 'static,
{
    if !authorize::needs_http(pod) {
        return copy_registered(pod, arrival, client, app, started).await;
    }
    let detected = http::detect(client, app, &DetectSettings::default()).await;
    let Some(version) = detected.protocol.http() else {
        // Not HTTP: decided as TCP, where HTTP-only rules are treated as Istio does.
        let (mut client, mut app) = (detected.client, detected.app);
        if let Err(reason) = authorize::check(pod, arrival.peer(), arrival.dst.port(), None) {
            client.abort();
            app.abort();
            return log_refused(pod, &arrival, started.elapsed(), reason);
        }
        return copy_registered(pod, arrival, client, app, started).await;
    };
    let registration = register(pod, &arrival);
    let conn = registration.connection.clone();
    let hook = Arc::new(RequestPolicy {
        pod: pod.clone(),
        arrival: arrival.clone(),
        conn: conn.clone(),
    });
    let result = http::serve(
        detected.client,
        detected.app,
        version,
        hook,
        &http::Settings::default(),
        conn.cancel_token().clone().cancelled_owned(),
    )
    .await;
    let error = result.err().map(|e| std::io::Error::other(e.to_string()));
    access::log_connection(&conn, pod.id.as_str(), started.elapsed(), error);
}

/// Decides each HTTP request of one connection, and counts and logs it.
struct RequestPolicy {
    pod: Arc<PodProxy>,
    arrival: Arrival,
    conn: Arc<Connection>,
}

impl Hook for RequestPolicy {
    fn on_request(&self, request: &RequestInfo, _headers: &::http::HeaderMap) -> http::Verdict {
        let req = policy::Http {
            method: request.method.as_str(),
            path: request.path(),
            host: request.host().unwrap_or(""),
        };
        match authorize::check(
            &self.pod,
            self.arrival.peer(),
            self.arrival.dst.port(),
            Some(req),
        ) {
            Ok(()) => http::Verdict::Forward,
            Err(reason) => {
                tracing::debug!(pod = %self.pod.key, %reason, "request denied");
                http::Verdict::rbac_denied()
            }
        }
    }

    fn on_complete(&self, report: Report) {
        use std::sync::atomic::Ordering::Relaxed;
        self.conn
            .counters
            .forward
            .fetch_add(report.request_bytes, Relaxed);
        self.conn
            .counters
            .backward
            .fetch_add(report.response_bytes, Relaxed);
        access::log_request(&self.conn, self.pod.id.as_str(), &report);
    }
}

fn register<'a>(pod: &'a PodProxy, arrival: &Arrival) -> super::connections::Registration<'a> {
    pod.shared.connections.register(NewConnection {
        pod: pod.key.clone(),
        direction: Direction::Inbound,
        transport: arrival.transport,
        src: arrival.src,
        dst: arrival.dst,
        peer_identity: arrival.peer.as_ref().map(|p| p.to_string()),
    })
}

/// Copies between the client side and the app until the connection ends, registered
/// meanwhile, then logs it.
async fn copy_registered<C, A>(
    pod: &Arc<PodProxy>,
    arrival: Arrival,
    client: C,
    app: A,
    started: Instant,
) where
    C: AsyncRead + AsyncWrite + Abort + Unpin,
    A: AsyncRead + AsyncWrite + Abort + Unpin,
{
    let registration = register(pod, &arrival);
    let conn = &registration.connection;
    let result = copy::bidirectional(
        client,
        app,
        pod.shared.buffer_bytes,
        &conn.counters,
        conn.cancel_token(),
    )
    .await;
    access::log_connection(conn, pod.id.as_str(), started.elapsed(), result.err());
}

/// Logs an arrival that was refused before anything was copied.
pub fn log_refused(pod: &PodProxy, arrival: &Arrival, duration: Duration, reason: String) {
    access::log(&ConnectionRecord {
        pod: &pod.key,
        direction: Direction::Inbound,
        transport: arrival.transport,
        src: arrival.src,
        dst: Some(arrival.dst),
        src_identity: arrival.peer.as_ref().map(|p| p.as_str()),
        dst_identity: Some(pod.id.as_str()),
        bytes_sent: 0,
        bytes_received: 0,
        duration,
        error: Some(reason),
    });
}
