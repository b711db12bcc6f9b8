//! Outbound: the app's own connections, steered by the kernel to the pod's `:15001`
//! listeners. For each: find its original destination; to a pod in the mesh (any node)
//! it goes through a mutual-TLS tunnel to that pod's agent (`tunnel`); anywhere else it
//! goes on in plaintext, from inside the pod (so the destination sees the pod's IP) with
//! the agent's mark (so it is not steered again). Then copy, and log.
use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use tokio::net::{TcpListener, TcpStream};

use super::{
    copy::{self, Counters},
    pod::{self, PodProxy},
    tunnel,
};
use crate::telemetry::access::{self, ConnectionRecord, Direction, Transport};

pub async fn serve(listener: TcpListener, pod: Arc<PodProxy>) {
    pod::accept_loop(listener, pod, handle).await;
}

async fn handle(app: TcpStream, peer: SocketAddr, pod: Arc<PodProxy>) {
    let started = Instant::now();
    let counters = Counters::default();
    let _ = app.set_nodelay(true);
    let dst = pod.shared.orig_dst.lookup(pod.netns.cookie(), peer);
    let dest = dst
        .and_then(|d| pod.shared.directory.lookup(d.ip()))
        .filter(|d| d.in_mesh());
    let mut src = peer;
    let mut dst_identity = None;
    let transport = if dest.is_some() {
        Transport::Hbone
    } else {
        Transport::Plaintext
    };
    let result = match (dst, &dest) {
        (None, _) => {
            super::reset(app);
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no original destination recorded (not a steered connection)",
            ))
        }
        (Some(dst), Some(dest)) => {
            let peer_id = pod
                .shared
                .identity
                .workload_id(&dest.namespace, &dest.service_account);
            match peer_id {
                Err(err) => {
                    super::reset(app);
                    Err(io::Error::other(format!(
                        "destination {}: {err}",
                        dest.key()
                    )))
                }
                Ok(peer_id) => {
                    dst_identity = Some(peer_id.to_string());
                    if let Some(ip) = pod
                        .workload
                        .ips
                        .iter()
                        .find(|ip| ip.is_ipv4() == dst.is_ipv4())
                    {
                        src = SocketAddr::new(*ip, peer.port());
                    }
                    match tunnel::open(&pod, dst, &peer_id).await {
                        Ok(stream) => {
                            copy::bidirectional(app, stream, pod.shared.buffer_bytes, &counters)
                                .await
                        }
                        Err(err) => {
                            super::reset(app);
                            Err(err)
                        }
                    }
                }
            }
        }
        (Some(dst), None) => match connect(&pod, dst).await {
            Ok(upstream) => {
                if let Ok(local) = upstream.local_addr() {
                    src = local;
                }
                copy::bidirectional(app, upstream, pod.shared.buffer_bytes, &counters).await
            }
            Err(err) => {
                // Refuse the app's connection as the destination refused ours.
                super::reset(app);
                Err(err)
            }
        },
    };
    access::log(&ConnectionRecord {
        pod: &pod.key,
        direction: Direction::Outbound,
        transport,
        src,
        dst,
        src_identity: Some(pod.id.as_str()),
        dst_identity: dst_identity.as_deref(),
        bytes_sent: counters.forward.load(Ordering::Relaxed),
        bytes_received: counters.backward.load(Ordering::Relaxed),
        duration: started.elapsed(),
        error: result.err().map(|e| e.to_string()),
    });
}

async fn connect(pod: &PodProxy, dst: SocketAddr) -> io::Result<TcpStream> {
    let socket = pod.netns.tcp_socket(dst, pod.shared.mark)?;
    super::connect_with_timeout(socket, dst, pod.shared.connect_timeout).await
}
