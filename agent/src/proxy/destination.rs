//! The destination side of a connection to an enrolled pod, however it arrived — through
//! a tunnel (the peer's identity verified) or in plaintext: the policy decision, delivery
//! to the app, copying while registered (so that the agent can close it if a policy
//! change denies it later), and the access log line.
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
    copy::{self, Abort},
    pod::PodProxy,
};
use crate::{
    identity::SpiffeId,
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

/// Copies between the client side and the app until the connection ends, registered
/// meanwhile, then logs it.
pub async fn serve<S>(pod: &Arc<PodProxy>, arrival: Arrival, client: S, app: TcpStream, started: Instant)
where
    S: AsyncRead + AsyncWrite + Abort + Unpin,
{
    let registration = pod.shared.connections.register(NewConnection {
        pod: pod.key.clone(),
        direction: Direction::Inbound,
        transport: arrival.transport,
        src: arrival.src,
        dst: arrival.dst,
        peer_identity: arrival.peer.as_ref().map(|p| p.to_string()),
    });
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
