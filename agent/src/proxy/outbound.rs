//! Outbound: the app's own connections, steered by the kernel to the pod's `:15001`
//! listeners. For each: find its original destination; to a pod in the mesh (any node)
//! it goes through a mutual-TLS tunnel to that pod's agent (`tunnel`); anywhere else it
//! goes on in plaintext, from inside the pod (so the destination sees the pod's IP) with
//! the agent's mark (so it is not steered again). Then copy, and log.
use std::{io, net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::{TcpListener, TcpStream};

use super::{
    connections::NewConnection,
    pod::{self, PodProxy},
    relay::{RequestHook, relay},
    tunnel,
};
use crate::{
    identity::SpiffeId,
    telemetry::{
        access::{self, Direction, Transport},
        metrics::{Reporter, TcpLabels},
    },
};

pub async fn serve(listener: TcpListener, pod: Arc<PodProxy>) {
    pod::accept_loop(listener, pod, handle).await;
}

/// Where a connection goes.
enum Route {
    /// Through a tunnel to a pod in the mesh that must prove this identity.
    Mesh(SpiffeId),
    /// Straight to the destination.
    Passthrough,
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
    // The source as the destination sees it: the pod's IP, with the app's port.
    let src = pod
        .workload
        .ips
        .iter()
        .find(|ip| ip.is_ipv4() == dst.is_ipv4())
        .map(|ip| SocketAddr::new(*ip, peer.port()))
        .unwrap_or(peer);
    let route = match pod
        .shared
        .directory
        .lookup(dst.ip())
        .filter(|d| d.in_mesh())
    {
        None => Ok(Route::Passthrough),
        Some(dest) => pod
            .shared
            .identity
            .workload_id(&dest.namespace, &dest.service_account)
            .map(Route::Mesh)
            .map_err(|e| format!("destination {}: {e}", dest.key())),
    };
    let (transport, peer_identity, destination) = match &route {
        Ok(Route::Mesh(id)) => {
            let mut party = pod.party_at(dst.ip(), Some(id));
            party.principal = id.to_string();
            (Transport::Hbone, Some(id.to_string()), party)
        }
        _ => (Transport::Plaintext, None, pod.party_at(dst.ip(), None)),
    };
    let labels = TcpLabels::new(
        Reporter::Source,
        pod.party(),
        destination,
        transport == Transport::Hbone,
    );
    let registration = pod.shared.connections.register(NewConnection {
        pod: pod.key.clone(),
        direction: Direction::Outbound,
        transport,
        src,
        dst,
        peer_identity,
        labels,
    });
    let conn = &registration.connection;
    let hook = RequestHook {
        conn: conn.clone(),
        metrics: pod.shared.connections.metrics().clone(),
        local_identity: pod.id.to_string(),
        decide: None,
    };
    let buffer = pod.shared.buffer_bytes;
    let result = match route {
        Err(reason) => {
            super::reset(app);
            Err(io::Error::other(reason))
        }
        Ok(Route::Mesh(peer_id)) => match tunnel::open(&pod, dst, &peer_id).await {
            Ok(stream) => relay(app, stream, buffer, hook, || Ok(())).await,
            Err(err) => {
                super::reset(app);
                Err(err)
            }
        },
        Ok(Route::Passthrough) => match connect(&pod, dst).await {
            Ok(upstream) => relay(app, upstream, buffer, hook, || Ok(())).await,
            Err(err) => {
                // Refuse the app's connection as the destination refused ours.
                super::reset(app);
                Err(err)
            }
        },
    };
    access::log_connection(conn, pod.id.as_str(), started.elapsed(), result.err());
}

async fn connect(pod: &PodProxy, dst: SocketAddr) -> io::Result<TcpStream> {
    let socket = pod.netns.tcp_socket(dst, pod.shared.mark)?;
    super::connect_with_timeout(socket, dst, pod.shared.connect_timeout).await
}
