//! The server end of HBONE: the pod's `:15008` listener terminates mutual TLS as the
//! pod's identity, learns the peer's verified identity, and delivers each `CONNECT` to
//! the app over the pod's loopback, through the inbound pipeline (`super::serve`).
//! Handshake failures are refused with one clear log line; other connections carry on.
//! A tunnel connection takes no new stream once a certificate of its handshake expires
//! (GOAWAY; the streams under way run on), so the client dials again with current ones.
//! The client end is `outbound::tunnel`.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, Span};

use super::{
    super::{
        authorize, deliver,
        error::{Error, Refusal},
        hbone::{self, H2Stream, Handler, Inbound},
        outbound::tunnel::tls_error,
        pod::{self, PodProxy},
    },
    Arrival,
};
use crate::{
    identity::{SpiffeId, x509},
    telemetry::{facts::Transport, metrics::ServiceName, refusals::Reason},
};

/// The pod's `:15008` listener.
pub async fn serve(listener: TcpListener, pod: Arc<PodProxy>) {
    pod::accept_loop(listener, pod, "inbound", handle).await;
}

/// One tunnel connection, in its own span (pod, peer); each of its streams in a span of
/// its own within it (`hbone::serve`).
async fn handle(tcp: TcpStream, peer: SocketAddr, pod: Arc<PodProxy>) {
    let span = tracing::info_span!("tunnel", pod = %pod.key, %peer);
    accept(tcp, peer, pod).instrument(span).await;
}

async fn accept(tcp: TcpStream, peer: SocketAddr, pod: Arc<PodProxy>) {
    let refused = |error: String| {
        tracing::warn!(%error, "tunnel refused");
        pod.shared
            .connections
            .recorder()
            .refused(&pod.key, "inbound", Reason::Handshake);
    };
    // A pod just enrolled (or just taken over from a previous agent, its listener
    // already accepting) may not have its certificate yet.
    // The identity the pod has now (a change of service account applies to the next
    // handshake).
    let id = pod.record().id.clone();
    let manager = pod.shared.identity.manager();
    let handshake_timeout = pod.shared.tls_handshake_timeout;
    if manager.cert(&id).is_none() {
        match tokio::time::timeout(handshake_timeout, manager.ready(&id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return refused(format!("no certificate: {err}")),
            Err(_) => return refused(format!("no certificate for {id} yet")),
        }
    }
    let config = match pod.shared.identity.server_config(&id) {
        Ok(config) => config,
        Err(err) => return refused(format!("no server configuration: {err}")),
    };
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(handshake_timeout, TlsAcceptor::from(config).accept(tcp))
        .await
    {
        Err(_) => {
            return refused(format!(
                "TLS handshake not finished within {handshake_timeout:?}"
            ));
        }
        Ok(Err(err)) => return refused(tls_error(peer, &err).to_string()),
        Ok(Ok(tls)) => tls,
    };
    let peer_id = match pod.shared.identity.peer_identity(tls.get_ref().1) {
        Ok(id) => id,
        Err(err) => return refused(format!("peer identity: {err}")),
    };
    let handler = Arc::new(Deliver {
        pod: pod.clone(),
        peer,
        peer_id,
    });
    let settings = pod.pool.config().settings.clone();
    // The handshake proved both certificates valid now, not later: when the first of
    // them expires, the connection takes no new stream (its peer then dials again, with
    // a renewed certificate, or fails if there is none, e.g. its CA expired).
    let peer_not_after = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| x509::facts(leaf).ok())
        .map(|facts| facts.not_after);
    let expires = [peer_not_after, manager.not_after(&id)]
        .into_iter()
        .flatten()
        .min();
    let shutdown = async {
        let left = expires.map(|at| at.duration_since(SystemTime::now()).unwrap_or_default());
        tokio::select! {
            () = pod.shared.draining.cancelled() => {}
            () = sleep_or_never(left) => tracing::debug!(
                "tunnel connection takes no new stream: a certificate of its handshake expired"),
        }
    };
    if let Err(err) = hbone::serve(hbone::Coalesced::new(tls), &settings, handler, shutdown).await {
        tracing::warn!(error = %err, "tunnel ended with an error");
    }
}

async fn sleep_or_never(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// Delivers the CONNECTs of one verified peer to the pod's app.
struct Deliver {
    pod: Arc<PodProxy>,
    peer: SocketAddr,
    peer_id: SpiffeId,
}

impl Deliver {
    fn arrival(&self, inbound: &Inbound, id: u64, started: Instant) -> Arrival {
        // The source is the tunnel's TCP peer: the source pod's IP, as tunnels are made
        // from inside the pod (ours, ztunnel's in-pod mode, sidecars). `forwarded` is
        // only what the peer claims and decides nothing: any holder of a mesh
        // certificate can write it.
        let request = inbound.request();
        // The Service the source says it dialed, believed only when this pod is one of
        // its endpoints (a peer cannot label its traffic with another Service).
        let service = request
            .baggage
            .destination_service
            .and_then(|fqdn| self.pod.shared.directory.service_named(&fqdn))
            .filter(|s| s.has_endpoint(inbound.authority.ip()))
            .map(|s| ServiceName::of(&s));
        Arrival {
            id,
            transport: Transport::Hbone,
            src: self.peer,
            dst: inbound.authority,
            peer: Some(self.peer_id.clone()),
            service,
            kubelet_probe: false,
            started,
        }
    }

    /// Decides on one CONNECT and connects to the app, or the status to refuse it with.
    async fn open_stream(&self, arrival: &Arrival) -> Result<TcpStream, StatusCode> {
        let dst = arrival.dst;
        let refuse = |status: StatusCode, refusal: Refusal| {
            super::refuse(&self.pod, arrival, &refusal);
            status
        };
        if !self.pod.owns(dst.ip()) {
            let reason = format!("CONNECT to {dst}, which is not an address of this pod");
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                Refusal::new(Reason::NotThePods, reason),
            ));
        }
        // The agent's own ports are not the app's: 503, as ztunnel answers a CONNECT to
        // its ports (its `SelfCall`).
        if self.pod.shared.reserved_ports.contains(&dst.port()) {
            let reason = format!(
                "CONNECT to {dst}: port {} is reserved for the agent",
                dst.port()
            );
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                Refusal::new(Reason::ReservedPort, reason),
            ));
        }
        if !authorize::needs_http(&self.pod) {
            let peer = authorize::Peer {
                identity: Some(&self.peer_id),
                ip: arrival.src.ip(),
            };
            if let Err(denial) = authorize::check(&self.pod, peer, dst.port(), None) {
                return Err(refuse(StatusCode::FORBIDDEN, denial));
            }
        }
        deliver::to_app(&self.pod, self.peer, dst, deliver::Via::Tunnel)
            .await
            .map_err(|err| {
                let refusal = Refusal::new(Reason::AppUnreachable, Error::Connect(err).to_string());
                refuse(StatusCode::SERVICE_UNAVAILABLE, refusal)
            })
    }
}

impl Handler for Deliver {
    /// The app's connection, the arrival, and the span of the stream's connection.
    type Upstream = (TcpStream, Arrival, Span);

    async fn open(&self, inbound: &Inbound) -> Result<Self::Upstream, StatusCode> {
        let started = Instant::now();
        let id = self.pod.shared.connections.next_id();
        let span = tracing::info_span!("inbound", id, stream = inbound.stream_id);
        let arrival = self.arrival(inbound, id, started);
        // What the peer claims in `forwarded`, for the log only.
        let claimed_src = inbound.request().source;
        let opened = async {
            tracing::debug!(peer = %self.peer_id, claimed_src = ?claimed_src,
                dst = %arrival.dst, "CONNECT");
            self.open_stream(&arrival).await
        };
        let app = opened.instrument(span.clone()).await?;
        Ok((app, arrival, span))
    }

    async fn serve(&self, _inbound: Inbound, stream: H2Stream, upstream: Self::Upstream) {
        let (app, arrival, span) = upstream;
        super::serve(&self.pod, arrival, stream, app)
            .instrument(span)
            .await;
    }
}
