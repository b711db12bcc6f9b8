//! Inbound: connections arriving at an enrolled pod, however they came — `plaintext`
//! (from outside the mesh, handed to the pod's `:15006` by the `sk_lookup` program) or
//! through a `tunnel` (HBONE on `:15008`, the peer's identity verified). Each arrival is
//! first checked where it came in (strict mTLS, the pod's own address, policy when the
//! pod's policies do not look at HTTP) — a refusal is recorded at once ([`refuse`]) —
//! then delivered to the app (`deliver`) and served here, the same for both ([`serve`]):
//!
//! 1. **register** with the live connections and its [`Guard`], which decides it and
//!    again whenever what decides it changes (`enforce`);
//! 2. **relay** (`relay`): the protocol is detected first; HTTP is proxied request by
//!    request, each one's target normalized (the app gets the path policy checks) and
//!    decided (403 for a denied one, the connection lives on); anything else is decided
//!    as TCP;
//! 3. **record**: the registration's end goes to telemetry's recorder.
pub mod plaintext;
pub mod tunnel;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::TcpStream;

use super::{
    connections::NewConnection,
    copy::Side,
    enforce::Guard,
    error::Refusal,
    http,
    pod::PodProxy,
    relay::{RequestHook, relay},
};
use crate::{
    identity::SpiffeId,
    telemetry::{
        facts::{ConnectionFacts, Direction, Ending, Transport},
        metrics::{Reporter, ServiceName, TcpLabels},
    },
};

/// A connection arriving at a pod.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// Its connection id ([`Registry::next_id`](super::connections::Registry::next_id)).
    pub id: u64,
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
    /// When it was accepted.
    pub started: Instant,
}

impl Arrival {
    /// What telemetry knows of it.
    fn facts(&self, pod: &PodProxy) -> ConnectionFacts {
        ConnectionFacts {
            pod: pod.key.clone(),
            direction: Direction::Inbound,
            transport: self.transport,
            src: self.src,
            dst: self.dst,
            src_identity: self.peer.as_ref().map(|p| p.to_string()),
            dst_identity: Some(pod.record().id.to_string()),
        }
    }

    /// What is registered for it, with its guard.
    pub(crate) fn registration(&self, pod: &PodProxy, guard: Arc<Guard>) -> NewConnection {
        NewConnection {
            id: self.id,
            facts: self.facts(pod),
            labels: self.labels(pod),
            guard: Some(guard),
        }
    }

    /// Its labels in Istio's TCP metrics.
    fn labels(&self, pod: &PodProxy) -> TcpLabels {
        TcpLabels::new(
            Reporter::Destination,
            pod.party_at(self.src.ip(), self.peer.as_ref()),
            pod.party(),
            self.transport == Transport::Hbone,
        )
        .with_service(self.service.as_ref())
    }
}

/// Serves an arrival (already allowed at the connection level when the pod's policies
/// do not look at HTTP), its app connected.
pub async fn serve<S>(pod: &Arc<PodProxy>, arrival: Arrival, client: S, app: TcpStream)
where
    S: Side + Send + 'static,
{
    // 1. register
    let guard = Guard::new(pod, &arrival);
    let new = arrival.registration(pod, guard.clone());
    let registration = pod.shared.connections.register(new);
    // 2. relay
    let conn = registration.connection.clone();
    let hook = RequestHook::new(conn, pod.shared.connections.recorder(), Some(guard));
    let settings = http::Settings {
        normalize: Some(pod.shared.escaped_slashes),
        ..pod.shared.http.clone()
    };
    let result = relay(client, app, pod.shared.buffer_bytes, hook, settings).await;
    // 3. record
    registration.finish(result);
}

/// Records an arrival refused before anything was copied: a refusal, a connection
/// opened and closed with its flags, its access line.
pub fn refuse(pod: &PodProxy, arrival: &Arrival, refusal: &Refusal) {
    let ending = Ending {
        bytes_sent: 0,
        bytes_received: 0,
        duration: arrival.started.elapsed(),
        failure: Some(refusal.failure()),
    };
    pod.shared.connections.recorder().refused_connection(
        &arrival.facts(pod),
        Some(arrival.labels(pod)),
        refusal.why,
        &ending,
    );
}
