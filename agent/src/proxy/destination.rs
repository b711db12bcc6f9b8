//! The destination side of a connection to an enrolled pod, however it arrived — through
//! a tunnel (the peer's identity verified) or in plaintext: the policy decision, delivery
//! to the app, copying while registered (so that the agent can close it if a policy
//! change denies it later), and the access log line. When a policy looks at HTTP
//! requests, the connection's protocol is detected first: HTTP is proxied request by
//! request, each one decided (403 for a denied one, the connection lives on); anything
//! else is decided once, as TCP. Every HTTP request's target is normalized first, whether
//! or not a policy looks at it, so the app gets the path policy would check.
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
    connections::NewConnection,
    copy::Abort,
    http::{self, RequestInfo},
    pod::PodProxy,
    relay::{Decide, RequestHook, relay},
};
use crate::{
    identity::SpiffeId,
    policy,
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
/// for its protocol): HTTP is decided request by request when the pod's policies look at
/// HTTP, anything else once, as TCP.
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
    let registration = register(pod, &arrival);
    let conn = registration.connection.clone();
    let decide: Option<Decide> = authorize::needs_http(pod).then(|| {
        let (pod, arrival) = (pod.clone(), arrival.clone());
        Box::new(move |request: &RequestInfo| {
            // The path as normalized (the app gets the same), the authority as sent.
            let http = policy::Http {
                method: request.method.as_str(),
                path: request.path(),
                host: request.authority.as_deref().unwrap_or(""),
            };
            authorize::check(&pod, arrival.peer(), arrival.dst.port(), Some(http)).err()
        }) as Decide
    });
    let needs_http = decide.is_some();
    let hook = RequestHook {
        conn: conn.clone(),
        metrics: pod.shared.connections.metrics().clone(),
        local_identity: id.to_string(),
        decide,
    };
    // Not HTTP: decided as TCP (HTTP-only rules as Istio treats them), unless that was
    // done before the connection was accepted.
    let opaque_check = || {
        if needs_http {
            authorize::check(pod, arrival.peer(), arrival.dst.port(), None)
        } else {
            Ok(())
        }
    };
    let settings = http::Settings {
        normalize: Some(pod.shared.escaped_slashes),
        ..Default::default()
    };
    let result = relay(
        client,
        app,
        pod.shared.buffer_bytes,
        hook,
        settings,
        opaque_check,
    )
    .await;
    access::log_connection(&conn, id.as_str(), started.elapsed(), result.err());
}

fn register<'a>(pod: &'a PodProxy, arrival: &Arrival) -> super::connections::Registration<'a> {
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
