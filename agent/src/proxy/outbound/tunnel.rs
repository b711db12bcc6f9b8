//! The client end of HBONE: an outbound connection to a pod in the mesh goes as one
//! HTTP/2 `CONNECT` stream, over a pooled mutual-TLS connection from this pod (its
//! namespace, its IP, its identity's certificate) to the destination pod's `:15008`,
//! which must present the identity the workload source names. The server end is
//! `inbound::tunnel`.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::super::{
    copy::Side,
    error::Error,
    hbone::{Baggage, Coalesced, ConnectRequest, H2Stream, TraceParent},
    pod::{PodProxy, TUNNEL_PORT},
};
use crate::identity::{SpiffeId, TlsFailure};

/// Tunnels of one pod are pooled by the pod's own identity (a tunnel keeps the
/// certificate it was opened with: after a change of service account, new connections
/// open new tunnels), the destination's identity and IP.
pub type PoolKey = (SpiffeId, SpiffeId, IpAddr);

/// A tunnel stream's DATA frames are what the copy reads and writes: nothing is copied
/// between them and the TCP side.
impl Side for H2Stream {
    fn abort(&mut self) {
        self.reset();
    }

    fn poll_read_bytes(
        &mut self,
        cx: &mut Context<'_>,
        _buf: &mut BytesMut,
        _max: usize,
    ) -> Poll<io::Result<Bytes>> {
        // The DATA as received; its size is the sender's.
        H2Stream::poll_read_bytes(self, cx)
    }

    fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        H2Stream::poll_write_bytes(self, cx, data)
    }
}

/// Opens a tunnel stream from `pod` to `dst`, whose pod must prove it is `peer_id`;
/// `service` names the Service dialed, if any, for the destination's metrics.
pub async fn open(
    pod: &PodProxy,
    dst: SocketAddr,
    peer_id: &SpiffeId,
    service: Option<&str>,
) -> Result<H2Stream, Error> {
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
    let dial = || async {
        dial(pod, &record.id, dst.ip(), peer_id)
            .await
            .map_err(Error::into_io)
    };
    let stream = pod.pool.connect(&key, &request, dial).await?;
    tracing::debug!(%dst, stream = stream.id(), "tunnel stream opened");
    Ok(stream)
}

/// A new mutual-TLS connection from `pod`, as `id`, to `ip:15008`.
async fn dial(
    pod: &PodProxy,
    id: &SpiffeId,
    ip: IpAddr,
    peer_id: &SpiffeId,
) -> Result<Coalesced<TlsStream<TcpStream>>, Error> {
    let addr = SocketAddr::new(ip, TUNNEL_PORT);
    let shared = &pod.shared;
    // A pod just enrolled may not have its certificate yet.
    let no_certificate = || Error::NoCertificate { id: id.clone() };
    tokio::time::timeout(shared.connect_timeout, shared.identity.manager().ready(id))
        .await
        .map_err(|_| no_certificate())?
        .map_err(|_| no_certificate())?;
    let config = shared
        .identity
        .client_config(id, peer_id)
        .map_err(|e| Error::TlsConfig {
            id: id.clone(),
            detail: e.to_string(),
        })?;
    let socket = pod
        .netns
        .tcp_socket(addr, shared.mark)
        .map_err(Error::Connect)?;
    let tcp = super::super::connect_with_timeout(socket, addr, shared.connect_timeout)
        .await
        .map_err(Error::Connect)?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        shared.tls_handshake_timeout,
        TlsConnector::from(config).connect(ServerName::IpAddress(ip.into()), tcp),
    )
    .await
    .map_err(|_| Error::TlsTimeout { addr })?
    .map_err(|e| tls_error(addr, &e))?;
    tracing::info!(peer = %peer_id, %addr, "tunnel connected");
    Ok(Coalesced::new(tls))
}

/// A failed handshake with `addr`, with what TLS said went wrong.
pub fn tls_error(addr: SocketAddr, err: &io::Error) -> Error {
    let detail = TlsFailure::from_io(err)
        .map(|f| f.to_string())
        .unwrap_or_else(|| err.to_string());
    Error::Tls { addr, detail }
}
