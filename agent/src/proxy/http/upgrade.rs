//! HTTP/1 upgrades (`Connection: Upgrade`, e.g. WebSocket, and `CONNECT`): the request
//! goes to the app like any other; if the app switches protocols (`101`, or a 2xx to a
//! CONNECT) the client gets that response, then both connections are handed over by
//! hyper and spliced byte for byte until both directions end. The exchange is reported
//! then, with the bytes each way.
//!
//! An offer to upgrade to `h2c` is taken out of the request (the app answers in
//! HTTP/1.1): HTTP/2 spliced as bytes would escape per-request policy (h2c smuggling).
//! WebSocket and other upgrades are decided on their upgrade request, then opaque.
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Failure, Hook, exchange::Exchange};

/// A client connection's upgrade: whether one is with the app, and its splice once it
/// runs, which the connection's [`serve`](super::serve) waits for (so the connection
/// stays registered, counted and re-checked while its upgraded streams live).
#[derive(Default)]
pub(super) struct Upgrades {
    pending: AtomicBool,
    splice: Mutex<Option<tokio::task::JoinHandle<()>>>,
    abort: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Upgrades {
    /// An upgrade request is with the app (or no longer is).
    pub(super) fn set_pending(&self, pending: bool) {
        self.pending.store(pending, Ordering::Relaxed);
    }

    /// An upgrade request is with the app: its connection ending is no reason to end
    /// the client's.
    pub(super) fn pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// Runs the splice of an upgraded connection.
    pub(super) fn spawn(&self, splice: impl Future<Output = ()> + Send + 'static) {
        let task = tokio::spawn(tracing::Instrument::in_current_span(splice));
        *crate::sync::lock(&self.abort) = Some(task.abort_handle());
        *crate::sync::lock(&self.splice) = Some(task);
    }

    /// Ends the upgraded connection's splice (if any): both its streams are dropped.
    pub(super) fn abort(&self) {
        if let Some(task) = crate::sync::lock(&self.abort).take() {
            task.abort();
        }
    }

    /// Resolves when the upgraded connection's splice (if any) has ended.
    pub(super) async fn finished(&self) {
        let task = crate::sync::lock(&self.splice).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// True for a request that asks to leave HTTP/1 if the app agrees.
pub(super) fn is_upgrade_request(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::CONNECT
        || (headers.contains_key(header::UPGRADE)
            && tokens(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade")))
}

/// Takes an `Upgrade: h2c` offer (with `HTTP2-Settings` and their `Connection`
/// options) out of `headers`; true if there was one.
pub(super) fn refuse_h2c(headers: &mut HeaderMap) -> bool {
    let offers_h2c = tokens(headers, &header::UPGRADE).any(|t| t.eq_ignore_ascii_case("h2c"));
    if !offers_h2c {
        return false;
    }
    headers.remove(header::UPGRADE);
    headers.remove("http2-settings");
    let kept: Vec<String> = tokens(headers, &header::CONNECTION)
        .filter(|t| !t.eq_ignore_ascii_case("upgrade") && !t.eq_ignore_ascii_case("http2-settings"))
        .map(str::to_owned)
        .collect();
    headers.remove(header::CONNECTION);
    if let Ok(value) = HeaderValue::from_str(&kept.join(", "))
        && !kept.is_empty()
    {
        headers.insert(header::CONNECTION, value);
    }
    true
}

/// The comma-separated tokens of a header's values.
fn tokens<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// True when the app's answer switches the connection to another protocol.
pub(super) fn is_upgrade_response(method: &Method, status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS || (method == Method::CONNECT && status.is_success())
}

/// Waits for both upgrades, then copies both ways until both directions end, or until
/// the hook revokes the request (then both are closed).
pub(super) async fn splice<H: Hook + ?Sized>(
    client: OnUpgrade,
    app: OnUpgrade,
    exchange: Exchange<H>,
) {
    let (client, app) = tokio::join!(client, app);
    let (client, app) = match (client, app) {
        (Ok(client), Ok(app)) => (client, app),
        (client, app) => {
            let failure = if app.is_err() {
                Failure::UpstreamReset
            } else {
                Failure::DownstreamReset
            };
            tracing::debug!(
                client = ?client.err(),
                app = ?app.err(),
                "upgrade did not complete"
            );
            exchange.finish_upgraded(0, 0, Some(failure));
            return;
        }
    };
    let mut client = Metered::new(TokioIo::new(client));
    let mut app = Metered::new(TokioIo::new(app));
    let revoked = exchange.revoked();
    let copied = tokio::io::copy_bidirectional(&mut client, &mut app);
    let result = match &revoked {
        None => copied.await,
        Some(revoked) => tokio::select! {
            result = copied => result,
            // Both upgraded connections are dropped (closed) on return.
            () = revoked.cancelled() => {
                tracing::debug!("upgraded connection revoked");
                exchange.finish_upgraded(client.read, app.read, Some(Failure::Revoked));
                return;
            }
        },
    };
    let failure = match &result {
        Ok(_) => None,
        Err(_) if app.failed => Some(Failure::UpstreamReset),
        Err(_) => Some(Failure::DownstreamReset),
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "upgraded connection failed");
    }
    exchange.finish_upgraded(client.read, app.read, failure);
}

/// A stream that counts the bytes read from it and remembers whether it failed.
struct Metered<S> {
    inner: S,
    read: u64,
    failed: bool,
}

impl<S> Metered<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            read: 0,
            failed: false,
        }
    }

    fn note<T>(&mut self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(_)) = &polled {
            self.failed = true;
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.read += (buf.filled().len() - before) as u64;
        }
        this.note(polled)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note(polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.note(polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.note(polled)
    }
}
