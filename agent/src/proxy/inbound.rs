//! Inbound plaintext: connections from outside the mesh to the pod's ports, handed to
//! the pod's `:15006` listener by the `sk_lookup` program. The local address is where
//! the client was going. Strict mode refuses them (a reset), except from the node itself
//! (kubelet's health probes); permissive mode delivers them to the app.
use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use tokio::net::{TcpListener, TcpStream};

use super::{
    copy::{self, Counters},
    deliver,
    pod::{self, PodProxy},
};
use crate::{
    telemetry::access::{self, ConnectionRecord, Direction, Transport},
    workloads::MtlsMode,
};

pub async fn serve(listener: TcpListener, pod: Arc<PodProxy>) {
    pod::accept_loop(listener, pod, handle).await;
}

async fn handle(client: TcpStream, peer: SocketAddr, pod: Arc<PodProxy>) {
    let started = Instant::now();
    let counters = Counters::default();
    let dst = client.local_addr().ok();
    let result = match dst {
        None => Err(io::Error::other("no local address")),
        Some(dst) if !pod.owns(dst.ip()) => {
            // Reached the listener directly (not through sk_lookup): nothing to deliver.
            super::reset(client);
            Err(io::Error::other(format!(
                "{dst} is not an address of the pod"
            )))
        }
        Some(_)
            if pod.mtls() == MtlsMode::Strict && !pod.shared.node_addrs.contains(&peer.ip()) =>
        {
            super::reset(client);
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "plaintext refused: the namespace requires mutual TLS (strict)",
            ))
        }
        Some(dst) => match deliver::to_app(&pod, dst).await {
            Ok(app) => copy::bidirectional(client, app, pod.shared.buffer_bytes, &counters).await,
            Err(err) => {
                super::reset(client);
                Err(err)
            }
        },
    };
    access::log(&ConnectionRecord {
        pod: &pod.key,
        direction: Direction::Inbound,
        transport: Transport::Plaintext,
        src: peer,
        dst,
        src_identity: None,
        dst_identity: Some(pod.id.as_str()),
        bytes_sent: counters.forward.load(Ordering::Relaxed),
        bytes_received: counters.backward.load(Ordering::Relaxed),
        duration: started.elapsed(),
        error: result.err().map(|e| e.to_string()),
    });
}
