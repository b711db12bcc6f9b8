//! The destination side of a connection to an enrolled pod, however it arrived — through
//! a tunnel (the peer's identity verified) or in plaintext: delivery to the app, copying
//! while registered with its [`Guard`] (which decides it, and again whenever what decides
//! it changes: `enforce`), and the access log line. The protocol is detected first: HTTP
//! is proxied request by request, each one decided (403 for a denied one, the connection
//! lives on); anything else is decided as TCP. Every HTTP request's target is normalized
//! first, so the app gets the path policy checks.
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
    connections::NewConnection,
    copy::Abort,
    enforce::Guard,
    http,
    pod::PodProxy,
    relay::{RequestHook, relay},
};
use crate::{
    identity::SpiffeId,
    telemetry::{
        access::{self, ConnectionRecord, Direction, Transport},
        metrics::{Reporter, ServiceName, TcpLabels},
        refusals::Reason,
    },
};

/// A connection arriving at a pod.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub transport: Transport,
    /// Where it came from: the TCP peer — for tunnels the source pod's IP (never what
    /// the `forwarded` header claims), for plaintext the client's address.
    pub src: SocketAddr,
    /// The pod's address and port it is for.
    pub dst: SocketAddr,
    /// The peer's verified identity (tunnels only).
    pub peer: Option<SpiffeId>,
    /// The Service the source dialed, as its agent says (tunnels only) and only when
    /// this pod is one of its endpoints.
    pub service: Option<ServiceName>,
    /// Plaintext the kernel marked as the kubelet's (a probe), which a strict pod serves.
    pub kubelet_probe: bool,
}

/// Serves an arrival (already allowed at the connection level when the pod's policies
/// do not look at HTTP): HTTP is decided request by request, anything else as TCP, and
/// both again whenever what decides them changes.
pub async fn serve<S>(
    pod: &Arc<PodProxy>,
    arrival: Arrival,
    client: S,
    app: TcpStream,
    started: Instant,
) where
    S: AsyncRead + AsyncWrite + Abort + Unpin + Send + 'static,
{
    let id = pod.record().id.clone();
    let guard = Guard::new(pod, &arrival);
    let registration = register(pod, &arrival, guard.clone());
    let conn = registration.connection.clone();
    let hook = RequestHook {
        conn: conn.clone(),
        metrics: pod.shared.connections.metrics().clone(),
        local_identity: id.to_string(),
        guard: Some(guard),
    };
    let settings = http::Settings {
        normalize: Some(pod.shared.escaped_slashes),
        ..pod.shared.http.clone()
    };
    let result = relay(client, app, pod.shared.buffer_bytes, hook, settings).await;
    access::log_connection(&conn, id.as_str(), started.elapsed(), result.err());
}

fn register<'a>(
    pod: &'a PodProxy,
    arrival: &Arrival,
    guard: Arc<Guard>,
) -> super::connections::Registration<'a> {
    let labels = TcpLabels::new(
        Reporter::Destination,
        pod.party_at(arrival.src.ip(), arrival.peer.as_ref()),
        pod.party(),
        arrival.transport == Transport::Hbone,
    )
    .with_service(arrival.service.as_ref());
    pod.shared.connections.register(NewConnection {
        pod: pod.key.clone(),
        direction: Direction::Inbound,
        transport: arrival.transport,
        src: arrival.src,
        dst: arrival.dst,
        peer_identity: arrival.peer.as_ref().map(|p| p.to_string()),
        labels,
        guard: Some(guard),
    })
}

/// Logs an arrival that was refused before anything was copied.
pub fn log_refused(
    pod: &PodProxy,
    arrival: &Arrival,
    duration: Duration,
    why: Reason,
    reason: String,
) {
    pod.shared
        .connections
        .metrics()
        .refused(&pod.key, "inbound", why);
    let record = pod.record();
    access::log(&ConnectionRecord {
        pod: &pod.key,
        direction: Direction::Inbound,
        transport: arrival.transport,
        src: arrival.src,
        dst: Some(arrival.dst),
        src_identity: arrival.peer.as_ref().map(|p| p.as_str()),
        dst_identity: Some(record.id.as_str()),
        workloads: None,
        bytes_sent: 0,
        bytes_received: 0,
        duration,
        error: Some(reason),
    });
}
