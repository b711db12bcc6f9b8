//! Outbound: the app's own connections, steered by the kernel to the pod's `:15001`
//! listeners. One connection, top-down ([`handle`]):
//!
//! 1. **accept**: its original destination, from the kernel (`steering`);
//! 2. **route** ([`route::route`], a pure function): a Service's cluster IP becomes its
//!    endpoints, in the order to try them;
//! 3. **connect** ([`connect`]): to a pod in the mesh (any node) through a mutual-TLS
//!    tunnel to that pod's agent (`tunnel`), requiring its identity; anywhere else in
//!    plaintext, from inside the pod (so the destination sees the pod's IP) with the
//!    agent's mark (so it is not steered again). A Service endpoint that fails before
//!    any byte moved is followed by the next;
//! 4. **register** with the live connections, labelled with the endpoint connected (so
//!    it comes after connect);
//! 5. **relay** (`relay`): HTTP request by request, anything else copied;
//! 6. **record**: the registration's end (`Registration::finish`) goes to telemetry's
//!    recorder, metrics and the access line at once.
pub mod tunnel;

use std::{net::SocketAddr, sync::Arc};

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::{
    balance::Lease,
    connections::NewConnection,
    error::Error,
    hbone::H2Stream,
    pod::{self, PodProxy, PodRecord},
    relay::{RequestHook, relay},
    route::{self, Route, Target},
};
use crate::{
    identity::SpiffeId,
    telemetry::{
        facts::{ConnectionFacts, Direction, Transport},
        metrics::{Reporter, ServiceName, TcpLabels},
    },
    workloads::service::SessionAffinity,
};

pub async fn serve(listener: TcpListener, pod: Arc<PodProxy>) {
    pod::accept_loop(listener, pod, "outbound", handle).await;
}

/// A connected upstream.
enum Upstream {
    /// A stream of a tunnel to a pod in the mesh, which proved this identity.
    Tunnel(H2Stream, SpiffeId),
    Plain(TcpStream),
}

/// One outbound connection, in its own span (pod, connection id).
async fn handle(app: TcpStream, peer: SocketAddr, pod: Arc<PodProxy>) {
    let id = pod.shared.connections.next_id();
    let span = tracing::info_span!("outbound", pod = %pod.key, id);
    proxy(app, peer, &pod, id).instrument(span).await;
}

async fn proxy(app: TcpStream, peer: SocketAddr, pod: &PodProxy, id: u64) {
    let _ = app.set_nodelay(true);
    let shared = &pod.shared;
    // 1. accept
    let Some(dst) = shared.steering.outbound_dst(pod.netns.cookie(), &app, peer) else {
        super::reset(app);
        tracing::warn!(%peer, error = %Error::NoOriginalDestination, "outbound connection reset");
        return;
    };
    // The pod as it is now, for the whole connection; the source as the destination
    // sees it: the pod's IP, with the app's port.
    let record = pod.record();
    let src = record
        .workload
        .ips
        .iter()
        .find(|ip| ip.is_ipv4() == dst.is_ipv4())
        .map(|ip| SocketAddr::new(*ip, peer.port()))
        .unwrap_or(peer);
    // 2. route
    let source = route::Source {
        node: Some(record.workload.node.as_deref().unwrap_or(&shared.node)),
        ip: src.ip(),
    };
    let routed = route::route(
        source,
        dst,
        &shared.directory,
        &*shared.balancer,
        &mut rand::rng(),
    );
    // 3. connect
    let (connected, lease) = match &routed {
        Ok(route) => connect(pod, route, src).await,
        Err(no_route) => {
            let failed = Failed {
                addr: dst,
                peer: None,
                error: no_route.clone().into(),
            };
            (Err(failed), None)
        }
    };
    // 4. register (also a connection that failed: it is counted and logged as such)
    let service = match &routed {
        Ok(route) => route.service().map(|s| ServiceName::of(s)),
        Err(_) => shared
            .directory
            .service_at(dst.ip())
            .map(|s| ServiceName::of(&s)),
    };
    let new = register(pod, &record, id, src, &connected, service.as_ref());
    let registration = shared.connections.register(new);
    let conn = &registration.connection;
    // 5. relay
    let result = match connected {
        Ok((_, upstream)) => {
            let hook = RequestHook::new(conn.clone(), shared.connections.recorder(), None);
            let buffer = shared.buffer_bytes;
            match upstream {
                Upstream::Tunnel(stream, _) => {
                    relay(app, stream, buffer, hook, shared.http.clone()).await
                }
                Upstream::Plain(upstream) => {
                    relay(app, upstream, buffer, hook, shared.http.clone()).await
                }
            }
        }
        Err(failed) => {
            // Refuse the app's connection as the destination refused ours.
            super::reset(app);
            Err(failed.error)
        }
    };
    drop(lease);
    // 6. record
    registration.finish(result);
}

/// What the connection is, once connected (or not): labelled with the endpoint and the
/// identity it reached.
fn register(
    pod: &PodProxy,
    record: &PodRecord,
    id: u64,
    src: SocketAddr,
    connected: &Connected,
    service: Option<&ServiceName>,
) -> NewConnection {
    // A failed connection is labelled as it was tried: through the tunnel, to the
    // identity required (as ztunnel labels it before connecting).
    let (dst, peer_id) = match connected {
        Ok((addr, Upstream::Tunnel(_, peer_id))) => (*addr, Some(peer_id)),
        Ok((addr, Upstream::Plain(_))) => (*addr, None),
        Err(failed) => (failed.addr, failed.peer.as_ref()),
    };
    let transport = match peer_id {
        Some(_) => Transport::Hbone,
        None => Transport::Plaintext,
    };
    let mut destination = pod.party_at(dst.ip(), peer_id);
    if let Some(peer_id) = peer_id {
        destination.principal = peer_id.to_string();
    }
    let labels = TcpLabels::new(
        Reporter::Source,
        pod.party(),
        destination,
        transport == Transport::Hbone,
    )
    .with_service(service);
    NewConnection {
        id,
        facts: ConnectionFacts {
            pod: pod.key.clone(),
            direction: Direction::Outbound,
            transport,
            src,
            dst,
            src_identity: Some(record.id.to_string()),
            dst_identity: peer_id.map(|p| p.to_string()),
        },
        labels,
        guard: None,
    }
}

/// The upstream connected and its address, or the last one tried and why it failed.
type Connected = Result<(SocketAddr, Upstream), Failed>;

/// The last target tried, and why it failed.
struct Failed {
    addr: SocketAddr,
    /// The identity it was to prove (a pod in the mesh), when known.
    peer: Option<SpiffeId>,
    error: Error,
}

/// Connects to the route's targets in order until one answers (a Service's endpoint that
/// fails before any byte moved is followed by the next); for a Service, with the lease
/// that counts the connection against its endpoint.
async fn connect(pod: &PodProxy, route: &Route, src: SocketAddr) -> (Connected, Option<Lease>) {
    let targets = route.targets();
    let mut failed = None;
    for (attempt, target) in targets.iter().enumerate() {
        let lease = route
            .service()
            .map(|_| pod.shared.balancer.lease(target.addr.ip()));
        match connect_to(pod, target, route.service().map(|s| s.fqdn.as_str())).await {
            Ok(upstream) => {
                if let Route::Service { service, vip, .. } = route
                    && service.session_affinity == SessionAffinity::ClientIp
                {
                    pod.shared
                        .balancer
                        .remember(vip.ip(), vip.port(), src.ip(), target.addr.ip());
                }
                return (Ok((target.addr, upstream)), lease);
            }
            Err((peer, error)) => {
                if let Some(service) = route.service()
                    && attempt + 1 < targets.len()
                {
                    tracing::info!(service = %service.fqdn, endpoint = %target.addr,
                        %error, "service endpoint failed before any byte moved; trying the next");
                }
                failed = Some(Failed {
                    addr: target.addr,
                    peer,
                    error,
                });
            }
        }
    }
    let failed = failed.unwrap_or_else(|| Failed {
        addr: targets.first().map(|t| t.addr).unwrap_or(src),
        peer: None,
        error: Error::NoEndpoint,
    });
    (Err(failed), None)
}

/// One target: through the tunnel to a pod in the mesh (its identity required), else
/// plaintext. `service` is the Service dialed, passed on to the destination. A failure
/// comes with the identity that was required, if any.
async fn connect_to(
    pod: &PodProxy,
    target: &Target,
    service: Option<&str>,
) -> Result<Upstream, (Option<SpiffeId>, Error)> {
    match &target.mesh {
        Some(dest) => {
            let id = pod
                .shared
                .identity
                .workload_id(&dest.namespace, &dest.service_account)
                .map_err(|source| {
                    let destination = dest.key();
                    (
                        None,
                        Error::DestinationIdentity {
                            destination,
                            source,
                        },
                    )
                })?;
            match tunnel::open(pod, target.addr, &id, service).await {
                Ok(stream) => Ok(Upstream::Tunnel(stream, id)),
                Err(error) => Err((Some(id), error)),
            }
        }
        None => {
            let socket = pod
                .netns
                .tcp_socket(target.addr, pod.shared.mark)
                .map_err(|e| (None, Error::Connect(e)))?;
            super::connect_with_timeout(socket, target.addr, pod.shared.connect_timeout)
                .await
                .map(Upstream::Plain)
                .map_err(|e| (None, Error::Connect(e)))
        }
    }
}
