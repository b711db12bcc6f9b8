//! The server end of one accepted tunnel connection: the client preface, the HTTP/2
//! handshake, then each request on its own task. A request must be `CONNECT` to an
//! `ip:port` (else 400, and the other streams carry on); the caller's [`Handler`] opens
//! the upstream or names the status to refuse with, and after the 200 moves the bytes.
use std::{future::Future, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use super::{ConnectRequest, H2Stream, HboneError, Settings, preface::expect_preface};

/// One CONNECT a server received.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Where the client wants to go (`:authority`).
    pub authority: SocketAddr,
    pub headers: HeaderMap,
    /// The HTTP/2 stream id, for logs.
    pub stream_id: u32,
}

impl Inbound {
    /// The HBONE headers read back (`forwarded` source, `baggage`, `traceparent`).
    pub fn request(&self) -> ConnectRequest {
        ConnectRequest::from_parts(self.authority, &self.headers)
    }
}

/// Why a request on a tunnel is refused with 400 before any handler sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadConnect {
    #[error("not a CONNECT: {method} {uri}")]
    NotConnect { method: String, uri: String },
    #[error("the authority {0:?} is not an ip:port")]
    Authority(String),
    /// `[fe80::1%2]:80`: Rust's parser takes a zone, but an authority cannot carry one
    /// (RFC 3986; our clients never send it), and it would choose the interface the
    /// destination pod's connection leaves by.
    #[error("the authority {0:?} names an IPv6 zone")]
    Zone(String),
}

/// What a tunnel makes of one request: a `CONNECT` whose `:authority` is an `ip:port`
/// becomes the [`Inbound`] its handler sees (and the request's body, the tunnel's
/// bytes); anything else is refused.
pub fn parse_connect<B>(request: Request<B>, stream_id: u32) -> Result<(Inbound, B), BadConnect> {
    if request.method() != Method::CONNECT {
        return Err(BadConnect::NotConnect {
            method: request.method().to_string(),
            uri: request.uri().to_string(),
        });
    }
    let authority = request.uri().authority().map(|a| a.as_str());
    let Some(addr) = authority.and_then(|a| a.parse::<SocketAddr>().ok()) else {
        return Err(BadConnect::Authority(
            authority.unwrap_or_default().to_string(),
        ));
    };
    if let SocketAddr::V6(v6) = addr
        && v6.scope_id() != 0
    {
        return Err(BadConnect::Zone(authority.unwrap_or_default().to_string()));
    }
    let (parts, body) = request.into_parts();
    let inbound = Inbound {
        authority: addr,
        headers: parts.headers,
        stream_id,
    };
    Ok((inbound, body))
}

/// What a server does with each CONNECT. One handler serves a whole connection, each
/// stream on its own task.
pub trait Handler: Send + Sync + 'static {
    /// What a CONNECT is spliced to, e.g. a `TcpStream` to the destination.
    type Upstream: Send + 'static;

    /// Decides on one CONNECT: the upstream to splice it to, or the status to refuse it
    /// with (e.g. 403 by policy, 502 when the upstream refused the connection, 503).
    fn open(
        &self,
        inbound: &Inbound,
    ) -> impl Future<Output = Result<Self::Upstream, StatusCode>> + Send;

    /// Runs once the 200 is sent: moves the bytes between `stream` and `upstream` (and
    /// logs what it moved). Dropping `stream` before both directions ended resets it.
    fn serve(
        &self,
        inbound: Inbound,
        stream: H2Stream,
        upstream: Self::Upstream,
    ) -> impl Future<Output = ()> + Send;
}

/// Serves one accepted connection (a TLS stream with ALPN `h2`) until the client closes
/// it, or `shutdown` resolves: then GOAWAY, and the streams under way run to their end
/// before this returns (drop the future to cut them off). A connection that does not start with the HTTP/2 preface is
/// refused at once with [`HboneError::NotHttp2`].
pub async fn serve<T, H>(
    io: T,
    settings: &Settings,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HboneError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let io = expect_preface(io, settings.handshake_timeout).await?;
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame_size)
        .max_header_list_size(settings.max_header_list_size)
        .max_send_buffer_size(settings.max_send_buffer)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_concurrent_reset_streams(super::settings::RESET_STREAMS_REMEMBERED)
        .copy_data_frames_below(super::settings::COPIED_DATA_BELOW);
    let mut conn = tokio::time::timeout(
        settings.handshake_timeout,
        builder.handshake::<_, Bytes>(io),
    )
    .await
    .map_err(|_| HboneError::HandshakeTimeout(settings.handshake_timeout))?
    .map_err(|e| HboneError::Handshake(Arc::new(e)))?;
    tokio::pin!(shutdown);
    let ping = conn.ping_pong();
    let silent = async {
        match ping {
            Some(ping) => {
                super::keepalive::watch(
                    ping,
                    settings.keepalive_interval,
                    settings.keepalive_timeout,
                )
                .await
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(silent);
    let mut draining = false;
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            why = &mut silent => return Err(HboneError::PeerSilent(why)),
            () = &mut shutdown, if !draining => {
                tracing::debug!("HBONE server connection draining");
                conn.graceful_shutdown();
                draining = true;
                continue;
            }
        };
        match next {
            None => return Ok(()),
            Some(Ok((request, respond))) => {
                let handler = handler.clone();
                let max_chunk = settings.max_write_chunk;
                // Boxed: the stream's future is large, and moved once instead of twice.
                tokio::spawn(
                    Box::pin(handle(request, respond, handler, max_chunk)).in_current_span(),
                );
            }
            // The client closed the connection politely.
            Some(Err(e)) if e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR) => {
                return Ok(());
            }
            Some(Err(e)) => return Err(HboneError::Connection(Arc::new(e))),
        }
    }
}

async fn handle<H: Handler>(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    handler: Arc<H>,
    max_chunk: usize,
) {
    let stream_id = respond.stream_id().as_u32();
    let (inbound, body) = match parse_connect(request, stream_id) {
        Ok(parsed) => parsed,
        Err(refused) => {
            tracing::info!(stream = stream_id, "HBONE request refused (400): {refused}");
            refuse(&mut respond, StatusCode::BAD_REQUEST);
            return;
        }
    };
    match handler.open(&inbound).await {
        Err(status) => refuse(&mut respond, status),
        Ok(upstream) => {
            let ok = Response::builder().status(StatusCode::OK).body(());
            match ok.map(|ok| respond.send_response(ok, false)) {
                Ok(Ok(send)) => {
                    let stream = H2Stream::new(send, body, max_chunk, None);
                    handler.serve(inbound, stream, upstream).await;
                }
                Ok(Err(e)) => tracing::debug!(
                    stream = stream_id,
                    error = %e,
                    "HBONE CONNECT abandoned by the client before the 200"
                ),
                Err(e) => tracing::warn!(error = %e, "HBONE: building the 200 failed"),
            }
        }
    }
}

/// Answers with `status` and ends the stream (the request body is reset by h2 with
/// NO_ERROR, as HTTP/2 wants for an early response).
fn refuse(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    // Anything but an error status would read as success (or be invalid) to the client.
    let status = if status.is_client_error() || status.is_server_error() {
        status
    } else {
        tracing::warn!(%status, "HBONE handler refused with a non-error status; sending 500");
        StatusCode::INTERNAL_SERVER_ERROR
    };
    match Response::builder().status(status).body(()) {
        Ok(response) => {
            if let Err(e) = respond.send_response(response, true) {
                tracing::debug!(error = %e, %status, "HBONE: sending the refusal failed");
            }
        }
        Err(e) => tracing::warn!(error = %e, "HBONE: building the refusal failed"),
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, Request};

    use super::{BadConnect, parse_connect};

    fn parse(method: Method, uri: &str) -> Result<std::net::SocketAddr, BadConnect> {
        let request = Request::builder().method(method).uri(uri).body(()).unwrap();
        parse_connect(request, 1).map(|(inbound, ())| inbound.authority)
    }

    #[test]
    fn a_connect_to_an_ip_and_port_is_taken() {
        assert_eq!(
            parse(Method::CONNECT, "10.0.0.1:80"),
            Ok("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            parse(Method::CONNECT, "[fd00::1]:80"),
            Ok("[fd00::1]:80".parse().unwrap())
        );
    }

    #[test]
    fn other_requests_and_authorities_are_refused() {
        assert!(matches!(
            parse(Method::GET, "http://10.0.0.1:80/"),
            Err(BadConnect::NotConnect { .. })
        ));
        for authority in ["example.com:80", "10.0.0.1", "10.0.0.1:99999"] {
            assert!(
                matches!(
                    parse(Method::CONNECT, authority),
                    Err(BadConnect::Authority(_))
                ),
                "{authority}"
            );
        }
        // Found by fuzzing (hbone_connect): a zone reached the app's connect.
        assert_eq!(
            parse(Method::CONNECT, "[fe80::1%2]:80"),
            Err(BadConnect::Zone("[fe80::1%2]:80".into()))
        );
    }
}
