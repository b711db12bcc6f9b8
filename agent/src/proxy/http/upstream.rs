//! The app's end: one hyper client connection, of the client's HTTP version, over the
//! app stream the caller opened. HTTP/1 sends one request at a time (the next waits until
//! the previous response was read to its end: keep-alive); HTTP/2 multiplexes. The
//! connection is driven by its own task, which says when it ended.
use hyper::{
    Request, Response,
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{Mutex, oneshot},
};

use super::{HttpVersion, Settings, body::RequestBody, settings::MIN_BUF_SIZE};

pub(super) enum Upstream {
    Http1(Mutex<http1::SendRequest<RequestBody>>),
    Http2(http2::SendRequest<RequestBody>),
}

/// How the app connection ended: `Ok` when closed cleanly (by either side) or upgraded.
pub(super) type Closed = oneshot::Receiver<hyper::Result<()>>;

impl Upstream {
    /// Sets up the client connection on `app` and starts driving it.
    pub(super) async fn handshake<A>(
        app: A,
        version: HttpVersion,
        settings: &Settings,
    ) -> hyper::Result<(Self, Closed)>
    where
        A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (closed_tx, closed) = oneshot::channel();
        let io = TokioIo::new(app);
        let upstream = match version {
            HttpVersion::Http1 => {
                let (send, conn) = http1::Builder::new()
                    .preserve_header_case(true)
                    .max_buf_size(settings.max_buf_size.max(MIN_BUF_SIZE))
                    .handshake(io)
                    .await?;
                tokio::spawn(async move {
                    let _ = closed_tx.send(conn.with_upgrades().await);
                });
                Self::Http1(Mutex::new(send))
            }
            HttpVersion::Http2 => {
                let (send, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await?;
                tokio::spawn(async move {
                    let _ = closed_tx.send(conn.await);
                });
                Self::Http2(send)
            }
        };
        Ok((upstream, closed))
    }

    /// Sends `request` to the app; resolves with the response's head.
    pub(super) async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> hyper::Result<Response<Incoming>> {
        match self {
            Self::Http1(send) => {
                let pending = {
                    let mut send = send.lock().await;
                    send.ready().await?;
                    send.send_request(request)
                };
                pending.await
            }
            Self::Http2(send) => {
                let mut send = send.clone();
                send.ready().await?;
                send.send_request(request).await
            }
        }
    }
}
