//! Inbound plaintext: connections from outside the mesh to the pod's ports, handed to
//! the pod's `:15006` listener by the `sk_lookup` program. The local address is where
//! the client was going. Strict mode refuses them (a reset), except the kubelet's own
//! health probes as the kernel marked them (`probes`), whatever their source address;
//! permissive mode delivers them to the app.
use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::{
    super::{
        authorize, deliver,
        error::Refusal,
        pod::{self, PodProxy},
    },
    Arrival,
};
use crate::{
    telemetry::{facts::Transport, refusals::Reason},
    workloads::MtlsMode,
};

pub async fn serve(listener: TcpListener, pod: Arc<PodProxy>) {
    pod::accept_loop(listener, pod, "inbound", handle).await;
}

/// One plaintext arrival, in its own span (pod, connection id).
async fn handle(client: TcpStream, peer: SocketAddr, pod: Arc<PodProxy>) {
    let id = pod.shared.connections.next_id();
    let span = tracing::info_span!("inbound", pod = %pod.key, id);
    arrive(client, peer, pod, id).instrument(span).await;
}

async fn arrive(client: TcpStream, peer: SocketAddr, pod: Arc<PodProxy>, id: u64) {
    let started = Instant::now();
    let Ok(dst) = pod.shared.steering.inbound_dst(&client) else {
        return super::super::reset(client);
    };
    let strict = pod.mtls() == MtlsMode::Strict;
    let probe = strict && pod.owns(dst.ip()) && kubelet_probe(&pod, peer, dst).await;
    let arrival = Arrival {
        id,
        transport: Transport::Plaintext,
        src: peer,
        dst,
        peer: None,
        service: None,
        kubelet_probe: probe,
        started,
    };
    let refuse = |client, refusal: Refusal| {
        super::super::reset(client);
        super::refuse(&pod, &arrival, &refusal);
    };
    if !pod.owns(dst.ip()) {
        // Reached the listener directly (not through sk_lookup): nothing to deliver.
        let reason = format!("{dst} is not an address of the pod");
        return refuse(client, Refusal::new(Reason::NotThePods, reason));
    }
    if strict && !probe {
        let reason = "plaintext refused: the namespace requires mutual TLS (strict)";
        return refuse(client, Refusal::new(Reason::StrictPlaintext, reason));
    }
    if !authorize::needs_http(&pod) {
        let peer = authorize::Peer {
            identity: None,
            ip: peer.ip(),
        };
        if let Err(denial) = authorize::check(&pod, peer, dst.port(), None) {
            return refuse(client, denial);
        }
    }
    match deliver::to_app(&pod, peer, dst, deliver::Via::Plaintext).await {
        Ok(app) => super::serve(&pod, arrival, client, app).await,
        Err(err) => refuse(
            client,
            Refusal::new(Reason::AppUnreachable, err.to_string()),
        ),
    }
}

/// True when the connection from `peer` to `dst` is one of the kubelet's probes.
async fn kubelet_probe(pod: &PodProxy, peer: SocketAddr, dst: SocketAddr) -> bool {
    match &pod.shared.kubelet {
        Some(kubelet) => kubelet.take(peer, dst).await,
        None => false,
    }
}
