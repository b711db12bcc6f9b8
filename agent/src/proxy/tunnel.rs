//! HBONE for one pod, both ends. Client: outbound connections to pods in the mesh go as
//! one HTTP/2 `CONNECT` stream each, over a pooled mutual-TLS connection from this pod
//! (its namespace, its IP, its identity's certificate) to the destination pod's `:15008`;
//! the destination must present the identity the workload source names. Server: the
//! pod's `:15008` listener terminates mutual TLS as the pod's identity, learns the peer's
//! verified identity, and delivers each CONNECT to the app over the pod's loopback.
//! Handshake failures are refused with one clear log line; other connections carry on.
//! A tunnel connection takes no new stream once a certificate of its handshake expires
//! (GOAWAY; the streams under way run on), so the client dials again with current ones.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use http::StatusCode;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

use super::{
    authorize,
    copy::Abort,
    deliver,
    destination::{self, Arrival},
    hbone::{self, Baggage, ConnectRequest, H2Stream, Handler, Inbound, TraceParent},
    pod::{self, PodProxy, TUNNEL_PORT},
};
use crate::{
    identity::{SpiffeId, TlsFailure, x509},
    telemetry::{access::Transport, metrics::ServiceName, refusals::Reason},
};

/// Tunnels of one pod are pooled by the pod's own identity (a tunnel keeps the
/// certificate it was opened with: after a change of service account, new connections
/// open new tunnels), the destination's identity and IP.
pub type PoolKey = (SpiffeId, SpiffeId, IpAddr);

impl Abort for H2Stream {
    fn abort(&mut self) {
        self.reset();
    }
}

/// Opens a tunnel stream from `pod` to `dst`, whose pod must prove it is `peer_id`;
/// `service` names the Service dialed, if any, for the destination's metrics.
pub async fn open(
    pod: &PodProxy,
    dst: SocketAddr,
    peer_id: &SpiffeId,
    service: Option<&str>,
) -> io::Result<H2Stream> {
    let record = pod.record();
    let key = (record.id.clone(), peer_id.clone(), dst.ip());
    let mut request = ConnectRequest::new(dst)
        .with_traceparent(TraceParent::random())
        .with_baggage(Baggage {
            namespace: Some(record.workload.namespace.clone()),
            workload: Some(("pod".to_string(), record.workload.name.clone())),
            destination_service: service.map(str::to_string),
            ..Baggage::default()
        });
    if let Some(ip) = record
        .workload
        .ips
        .iter()
        .find(|ip| ip.is_ipv4() == dst.is_ipv4())
    {
        request = request.with_source(*ip);
    }
    let stream = pod
        .pool
        .connect(&key, &request, || dial(pod, &record.id, dst.ip(), peer_id))
        .await
        .map_err(|e| e.into_io())?;
    tracing::debug!(pod = %pod.key, %dst, stream = stream.id(), "tunnel stream opened");
    Ok(stream)
}

/// A new mutual-TLS connection from `pod`, as `id`, to `ip:15008`.
async fn dial(
    pod: &PodProxy,
    id: &SpiffeId,
    ip: IpAddr,
    peer_id: &SpiffeId,
) -> io::Result<TlsStream<TcpStream>> {
    let addr = SocketAddr::new(ip, TUNNEL_PORT);
    let shared = &pod.shared;
    // A pod just enrolled may not have its certificate yet.
    tokio::time::timeout(shared.connect_timeout, shared.identity.manager().ready(id))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no certificate for {id} yet"),
            )
        })?
        .map_err(io::Error::other)?;
    let config = shared
        .identity
        .client_config(id, peer_id)
        .map_err(io::Error::other)?;
    let socket = pod.netns.tcp_socket(addr, shared.mark)?;
    let tcp = super::connect_with_timeout(socket, addr, shared.connect_timeout).await?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        shared.tls_handshake_timeout,
        TlsConnector::from(config).connect(ServerName::IpAddress(ip.into()), tcp),
    )
    .await
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake with {addr} timed out"),
        )
    })?
    .map_err(|e| tls_error(addr, &e))?;
    tracing::info!(pod = %pod.key, peer = %peer_id, %addr, "tunnel connected");
    Ok(tls)
}

fn tls_error(addr: SocketAddr, err: &io::Error) -> io::Error {
    let detail = TlsFailure::from_io(err)
        .map(|f| f.to_string())
        .unwrap_or_else(|| err.to_string());
    io::Error::new(
        err.kind(),
        format!("TLS handshake with {addr} failed: {detail}"),
    )
}

/// The pod's `:15008` listener.
pub async fn serve(listener: TcpListener, pod: Arc<PodProxy>) {
    pod::accept_loop(listener, pod, "inbound", handle).await;
}

async fn handle(tcp: TcpStream, peer: SocketAddr, pod: Arc<PodProxy>) {
    let refused = |error: String| {
        tracing::warn!(pod = %pod.key, %peer, %error, "tunnel refused");
        pod.shared
            .connections
            .metrics()
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
            () = sleep_or_never(left) => tracing::debug!(pod = %pod.key, %peer,
                "tunnel connection takes no new stream: a certificate of its handshake expired"),
        }
    };
    if let Err(err) = hbone::serve(tls, &settings, handler, shutdown).await {
        tracing::warn!(pod = %pod.key, %peer, error = %err, "tunnel ended with an error");
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
    fn arrival(&self, inbound: &Inbound) -> Arrival {
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
            transport: Transport::Hbone,
            src: self.peer,
            dst: inbound.authority,
            peer: Some(self.peer_id.clone()),
            service,
            kubelet_probe: false,
        }
    }
}

impl Handler for Deliver {
    type Upstream = (TcpStream, Instant);

    async fn open(&self, inbound: &Inbound) -> Result<Self::Upstream, StatusCode> {
        let started = Instant::now();
        let arrival = self.arrival(inbound);
        let dst = inbound.authority;
        let refuse = |status: StatusCode, why: Reason, reason: String| {
            destination::log_refused(&self.pod, &arrival, started.elapsed(), why, reason);
            status
        };
        // What the peer claims in `forwarded`, for the log only.
        let claimed_src = inbound.request().source;
        tracing::debug!(pod = %self.pod.key, peer = %self.peer_id, src = %self.peer,
            claimed_src = ?claimed_src, %dst, stream = inbound.stream_id, "CONNECT");
        if !self.pod.owns(dst.ip()) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                Reason::NotThePods,
                format!("CONNECT to {dst}, which is not an address of this pod"),
            ));
        }
        // The agent's own ports are not the app's: 503, as ztunnel answers a CONNECT to
        // its ports (its `SelfCall`).
        if self.pod.shared.reserved_ports.contains(&dst.port()) {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::ReservedPort,
                format!(
                    "CONNECT to {dst}: port {} is reserved for the agent",
                    dst.port()
                ),
            ));
        }
        if !authorize::needs_http(&self.pod) {
            let peer = authorize::Peer {
                identity: Some(&self.peer_id),
                ip: arrival.src.ip(),
            };
            if let Err(reason) = authorize::check(&self.pod, peer, dst.port(), None) {
                return Err(refuse(StatusCode::FORBIDDEN, Reason::Policy, reason));
            }
        }
        match deliver::to_app(&self.pod, self.peer, dst, deliver::Via::Tunnel).await {
            Ok(app) => Ok((app, started)),
            Err(err) => Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::AppUnreachable,
                err.to_string(),
            )),
        }
    }

    async fn serve(&self, inbound: Inbound, stream: H2Stream, (app, started): Self::Upstream) {
        destination::serve(&self.pod, self.arrival(&inbound), stream, app, started).await;
    }
}
