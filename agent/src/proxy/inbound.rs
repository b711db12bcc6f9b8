//! Inbound plaintext: connections from outside the mesh to the pod's ports, handed to
//! the pod's `:15006` listener by the `sk_lookup` program. The local address is where
//! the client was going. Strict mode refuses them (a reset), except the kubelet's own
//! health probes as the kernel marked them (`probes`), whatever their source address;
//! permissive mode delivers them to the app.
use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::{TcpListener, TcpStream};

use super::{
    authorize, deliver,
    destination::{self, Arrival},
    pod::{self, PodProxy},
};
use crate::{
    telemetry::{access::Transport, refusals::Reason},
    workloads::MtlsMode,
};

pub async fn serve(listener: TcpListener, pod: Arc<PodProxy>) {
    pod::accept_loop(listener, pod, "inbound", handle).await;
}

async fn handle(client: TcpStream, peer: SocketAddr, pod: Arc<PodProxy>) {
    let started = Instant::now();
    let Ok(dst) = pod.shared.steering.inbound_dst(&client) else {
        return super::reset(client);
    };
    let strict = pod.mtls() == MtlsMode::Strict;
    let probe = strict && pod.owns(dst.ip()) && kubelet_probe(&pod, peer, dst).await;
    let arrival = Arrival {
        transport: Transport::Plaintext,
        src: peer,
        dst,
        peer: None,
        service: None,
        kubelet_probe: probe,
    };
    let refuse = |client, why: Reason, reason: String| {
        super::reset(client);
        destination::log_refused(&pod, &arrival, started.elapsed(), why, reason);
    };
    if !pod.owns(dst.ip()) {
        // Reached the listener directly (not through sk_lookup): nothing to deliver.
        return refuse(
            client,
            Reason::NotThePods,
            format!("{dst} is not an address of the pod"),
        );
    }
    if strict && !probe {
        return refuse(
            client,
            Reason::StrictPlaintext,
            "plaintext refused: the namespace requires mutual TLS (strict)".into(),
        );
    }
    if !authorize::needs_http(&pod) {
        let peer = authorize::Peer {
            identity: None,
            ip: peer.ip(),
        };
        if let Err(reason) = authorize::check(&pod, peer, dst.port(), None) {
            return refuse(client, Reason::Policy, reason);
        }
    }
    match deliver::to_app(&pod, peer, dst, deliver::Via::Plaintext).await {
        Ok(app) => destination::serve(&pod, arrival, client, app, started).await,
        Err(err) => refuse(client, Reason::AppUnreachable, err.to_string()),
    }
}

/// True when the connection from `peer` to `dst` is one of the kubelet's probes.
async fn kubelet_probe(pod: &PodProxy, peer: SocketAddr, dst: SocketAddr) -> bool {
    match &pod.shared.kubelet {
        Some(kubelet) => kubelet.take(peer, dst).await,
        None => false,
    }
}
