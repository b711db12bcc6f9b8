//! Outbound: the app's own connections, steered by the kernel to the pod's `:15001`
//! listeners. For each: find its original destination, route it ([`super::route`]: a
//! Service's cluster IP becomes one of its endpoints), then dial — to a pod in the mesh
//! (any node) through a mutual-TLS tunnel to that pod's agent (`tunnel`), requiring its
//! identity; anywhere else in plaintext, from inside the pod (so the destination sees the
//! pod's IP) with the agent's mark (so it is not steered again). A Service endpoint that
//! fails before any byte moved is followed by the next. Then copy, and log.
use std::{io, net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::{TcpListener, TcpStream};

use super::{
    balance::Lease,
    connections::NewConnection,
    hbone::H2Stream,
    pod::{self, PodProxy},
    relay::{RequestHook, relay},
    route::{self, Route, Target},
    tunnel,
};
use crate::{
    identity::SpiffeId,
    telemetry::{
        access::{self, Direction, Transport},
        metrics::{Reporter, ServiceName, TcpLabels},
    },
    workloads::service::SessionAffinity,
};

pub async fn serve(listener: TcpListener, pod: Arc<PodProxy>) {
    pod::accept_loop(listener, pod, "outbound", handle).await;
}

/// A dialed upstream.
enum Upstream {
    /// A stream of a tunnel to a pod in the mesh, which proved this identity.
    Tunnel(H2Stream, SpiffeId),
    Plain(TcpStream),
}

async fn handle(app: TcpStream, peer: SocketAddr, pod: Arc<PodProxy>) {
    let started = Instant::now();
    let _ = app.set_nodelay(true);
    let Some(dst) = pod
        .shared
        .steering
        .outbound_dst(pod.netns.cookie(), &app, peer)
    else {
        super::reset(app);
        tracing::warn!(pod = %pod.key, %peer, "outbound connection without an original destination (not a steered connection); reset");
        return;
    };
    // The pod as it is now, for the whole connection.
    let record = pod.record();
    // The source as the destination sees it: the pod's IP, with the app's port.
    let src = record
        .workload
        .ips
        .iter()
        .find(|ip| ip.is_ipv4() == dst.is_ipv4())
        .map(|ip| SocketAddr::new(*ip, peer.port()))
        .unwrap_or(peer);
    let source = route::Source {
        node: Some(record.workload.node.as_deref().unwrap_or(&pod.shared.node)),
        ip: src.ip(),
    };
    let shared = &pod.shared;
    let routed = route::route(
        source,
        dst,
        &shared.directory,
        &*shared.balancer,
        &mut rand::rng(),
    );
    // The Service dialed, named in metrics and the log (also when it has no route).
    let service = match &routed {
        Ok(route) => route.service().map(|s| ServiceName::of(s)),
        Err(_) => shared
            .directory
            .service_at(dst.ip())
            .map(|s| ServiceName::of(&s)),
    };
    let (dialed, lease) = match &routed {
        Ok(route) => dial_any(&pod, route, src).await,
        Err(no_route) => (
            Err((
                dst,
                io::Error::new(io::ErrorKind::NotFound, no_route.to_string()),
            )),
            None,
        ),
    };
    let (upstream_addr, destination, transport, peer_identity) = match &dialed {
        Ok((addr, Upstream::Tunnel(_, id))) => {
            let mut party = pod.party_at(addr.ip(), Some(id));
            party.principal = id.to_string();
            (*addr, party, Transport::Hbone, Some(id.to_string()))
        }
        Ok((addr, Upstream::Plain(_))) => (
            *addr,
            pod.party_at(addr.ip(), None),
            Transport::Plaintext,
            None,
        ),
        Err((addr, _)) => (
            *addr,
            pod.party_at(addr.ip(), None),
            Transport::Plaintext,
            None,
        ),
    };
    let labels = TcpLabels::new(
        Reporter::Source,
        pod.party(),
        destination,
        transport == Transport::Hbone,
    )
    .with_service(service.as_ref());
    let registration = shared.connections.register(NewConnection {
        pod: pod.key.clone(),
        direction: Direction::Outbound,
        transport,
        src,
        dst: upstream_addr,
        peer_identity,
        labels,
        guard: None,
    });
    let conn = &registration.connection;
    let hook = RequestHook {
        conn: conn.clone(),
        metrics: shared.connections.metrics().clone(),
        local_identity: record.id.to_string(),
        guard: None,
    };
    let buffer = shared.buffer_bytes;
    let result = match dialed {
        Ok((_, Upstream::Tunnel(stream, _))) => {
            relay(app, stream, buffer, hook, shared.http.clone()).await
        }
        Ok((_, Upstream::Plain(upstream))) => {
            relay(app, upstream, buffer, hook, shared.http.clone()).await
        }
        Err((_, err)) => {
            // Refuse the app's connection as the destination refused ours.
            super::reset(app);
            Err(err)
        }
    };
    drop(lease);
    access::log_connection(conn, record.id.as_str(), started.elapsed(), result.err());
}

/// Dials the route's targets in order until one answers (a Service's endpoint that fails
/// before any byte moved is followed by the next); returns the address dialed last, and
/// for a Service the lease that counts the connection against its endpoint.
async fn dial_any(
    pod: &PodProxy,
    route: &Route,
    src: SocketAddr,
) -> (
    Result<(SocketAddr, Upstream), (SocketAddr, io::Error)>,
    Option<Lease>,
) {
    let targets = route.targets();
    let mut failed = None;
    for (attempt, target) in targets.iter().enumerate() {
        let lease = route
            .service()
            .map(|_| pod.shared.balancer.lease(target.addr.ip()));
        match dial(pod, target, route.service().map(|s| s.fqdn.as_str())).await {
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
            Err(err) => {
                if let Some(service) = route.service()
                    && attempt + 1 < targets.len()
                {
                    tracing::info!(pod = %pod.key, service = %service.fqdn, endpoint = %target.addr,
                        error = %err, "service endpoint failed before any byte moved; trying the next");
                }
                failed = Some((target.addr, err));
            }
        }
    }
    let failed = failed.unwrap_or_else(|| {
        let addr = targets.first().map(|t| t.addr).unwrap_or(src);
        (addr, io::Error::other("no endpoint to dial"))
    });
    (Err(failed), None)
}

/// One target: through the tunnel to a pod in the mesh (its identity required), else
/// plaintext. `service` is the Service dialed, passed on to the destination.
async fn dial(pod: &PodProxy, target: &Target, service: Option<&str>) -> io::Result<Upstream> {
    match &target.mesh {
        Some(dest) => {
            let id = pod
                .shared
                .identity
                .workload_id(&dest.namespace, &dest.service_account)
                .map_err(|e| io::Error::other(format!("destination {}: {e}", dest.key())))?;
            let stream = tunnel::open(pod, target.addr, &id, service).await?;
            Ok(Upstream::Tunnel(stream, id))
        }
        None => Ok(Upstream::Plain(connect(pod, target.addr).await?)),
    }
}

async fn connect(pod: &PodProxy, dst: SocketAddr) -> io::Result<TcpStream> {
    let socket = pod.netns.tcp_socket(dst, pod.shared.mark)?;
    super::connect_with_timeout(socket, dst, pod.shared.connect_timeout).await
}
