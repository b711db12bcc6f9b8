//! The lean HTTP/1 path: one task, one buffer a side, no re-encoding. Each request's head
//! is parsed in place ([`head`]), normalized and put to the hook as the hyper path does,
//! then its bytes go to the app as they came (only the request line is rewritten when
//! normalizing changed the target); the body follows by its own framing ([`framing`]),
//! while the app's response is read the same way and sent back. The connection stays open
//! between exchanges when both sides say so, and pipelined requests wait in the buffer.
//!
//! What this path does not serve itself it hands to hyper (`server::serve_hyper`) at a
//! request boundary, with the request's bytes put back in front of the client stream:
//! upgrades (WebSocket, h2c offers), `CONNECT`, `Expect: 100-continue`, and targets not
//! in origin form. Everything the hyper path promises holds here too, with the same
//! reports: a denied request's body is read away (within bounds) so the connection goes
//! on; an app that fails before its answer gives 503 (`UC`) or 502 (`UPE`) and the
//! connection closes; a revoked request closes the connection; graceful shutdown lets
//! the exchange in flight finish; the header read timeout bounds heads and idle time.
mod framing;
mod head;
#[cfg(test)]
mod tests;

use std::{
    future::{Future, poll_fn},
    io,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use bytes::{Buf, BytesMut};
use http::{Method, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::{io::poll_read_buf, sync::CancellationToken};

use self::{
    framing::Body,
    head::{Framing, RequestHead},
};
pub use self::{framing::BodyError, head::HeadError};
use super::{
    Failure, Hook, HttpError, HttpVersion, Prefixed, RequestInfo, Settings, Verdict,
    exchange::{BodyProgress, Exchange},
    server, target,
};
use crate::proxy::watched::Watched;

/// Each side's reads start this big and double while they fill, up to `MAX_READ`.
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;

/// Proxies HTTP/1 between `client` and `app` as `server::serve` promises.
pub(super) async fn serve<C, A, H>(
    client: C,
    app: A,
    hook: Arc<H>,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HttpError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Hook + ?Sized,
{
    let mut shutdown = pin!(shutdown);
    let mut conn = Conn {
        client,
        app,
        cbuf: Inbox::new(),
        abuf: Inbox::new(),
        max_head: settings.max_buf_size.max(super::settings::MIN_BUF_SIZE),
        stopping: false,
        client_eof: false,
    };
    let ended = loop {
        match conn
            .next_request(shutdown.as_mut(), settings.header_read_timeout)
            .await
        {
            Next::Request(head) => {
                match conn
                    .exchange(head, &hook, settings, shutdown.as_mut())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => break Ok(()),
                    Err(err) => break Err(err),
                }
            }
            Next::Handoff => {
                let Conn {
                    client, app, cbuf, ..
                } = conn;
                let client = Prefixed::new(cbuf.bytes.freeze(), client);
                return server::serve_hyper(
                    client,
                    app,
                    HttpVersion::Http1,
                    hook,
                    settings,
                    shutdown,
                )
                .await;
            }
            Next::Invalid(err) => {
                let answer = plain(err.status(), b"", false, true, Version::HTTP_11);
                let _ = conn.client.write_all(&answer).await;
                break Err(HttpError::Request(err.into()));
            }
            Next::End(result) => break result,
        }
    };
    conn.close().await;
    ended
}

/// What waiting for the next request gave.
enum Next {
    Request(RequestHead),
    /// A request the hyper path serves (it and the rest of the connection).
    Handoff,
    /// A request that is not valid HTTP/1: answered 400 (or 431), then the connection ends.
    Invalid(HeadError),
    /// The connection ends here: the client closed or went silent too long, the app
    /// closed, or the agent is shutting down.
    End(Result<(), HttpError>),
}

/// Why an exchange could not go on.
#[derive(Debug)]
enum Broke {
    /// The client failed: reading it or writing to it, or its body's framing.
    Client(HttpError),
    /// The app closed or failed (I/O), before or during its response.
    App(HttpError),
    /// The app's response was not valid HTTP/1.
    AppProtocol(HttpError),
}

impl Broke {
    fn client_io(err: io::Error) -> Self {
        Self::Client(HttpError::Io(err))
    }

    fn app_io(err: io::Error) -> Self {
        Self::App(HttpError::Io(err))
    }
}

struct Conn<C, A> {
    client: C,
    app: A,
    /// Client bytes read and not yet forwarded: a head being read, body bytes, pipelined
    /// requests.
    cbuf: Inbox,
    /// App bytes read and not yet forwarded.
    abuf: Inbox,
    max_head: usize,
    /// The agent is shutting down: no request after the one in flight.
    stopping: bool,
    /// The client half-closed: no request after the one in flight.
    client_eof: bool,
}

impl<C, A> Conn<C, A>
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    /// Reads the next request head, watching the app (which must stay silent while idle)
    /// and the agent's shutdown.
    async fn next_request(
        &mut self,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
        timeout: Duration,
    ) -> Next {
        if self.stopping {
            return Next::End(Ok(()));
        }
        let deadline = tokio::time::sleep(timeout);
        let mut deadline = pin!(deadline);
        loop {
            if !self.cbuf.is_empty() {
                match head::request(&self.cbuf, self.max_head) {
                    Ok(Some(head)) if head.handoff => return Next::Handoff,
                    Ok(Some(head)) => return Next::Request(head),
                    Ok(None) => {}
                    Err(err) => return Next::Invalid(err),
                }
            }
            if self.client_eof {
                return Next::End(if self.cbuf.is_empty() {
                    Ok(())
                } else {
                    Err(HttpError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed in the middle of a request head",
                    )))
                });
            }
            tokio::select! {
                read = read_more(&mut self.client, &mut self.cbuf) => match read {
                    Ok(0) => self.client_eof = true,
                    Ok(_) => {}
                    Err(err) => return Next::End(Err(HttpError::Io(err))),
                },
                read = read_more(&mut self.app, &mut self.abuf) => {
                    // Between exchanges the app has nothing to say: it closed, failed or
                    // broke the protocol; the client's connection ends with it.
                    if !matches!(read, Ok(0)) {
                        tracing::debug!(?read, "the app spoke between requests");
                    }
                    return Next::End(Ok(()));
                }
                () = shutdown.as_mut() => {
                    self.stopping = true;
                    return Next::End(Ok(()));
                }
                () = deadline.as_mut() => {
                    return Next::End(Err(HttpError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request head within the header read timeout",
                    ))));
                }
            }
        }
    }

    /// One exchange, its head parsed at the start of `cbuf`. True when the connection
    /// can carry the next.
    async fn exchange<H: Hook + ?Sized>(
        &mut self,
        head: RequestHead,
        hook: &Arc<H>,
        settings: &Settings,
        shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool, HttpError> {
        let started = Instant::now();
        let mut info = RequestInfo {
            method: head.method.clone(),
            uri: head.uri.clone(),
            authority: head
                .host
                .clone()
                .map(|r| String::from_utf8_lossy(&self.cbuf[r]).into_owned()),
            version: head.version,
        };
        let normalized = match settings.normalize {
            None => Ok(None),
            Some(escaped_slashes) => {
                target::normalize_origin(&info.method, &info.uri, head.hosts, escaped_slashes)
            }
        };
        let mut line = None;
        let verdict = match normalized {
            Ok(normal) => {
                if let Some(uri) = normal {
                    line = Some(request_line(&info.method, &uri, head.version));
                    info.uri = uri;
                }
                hook.on_request(&info)
            }
            Err(err) => {
                hook.on_invalid(&info, &err);
                Verdict::bad_request(&err)
            }
        };
        let progress = Arc::new(BodyProgress::default());
        let exchange = Exchange::new(hook.clone(), info, started, progress.clone());
        let lease = match verdict {
            Verdict::Forward => None,
            Verdict::Leased(lease) => Some(lease),
            Verdict::Deny { status, body } => {
                return self
                    .deny(&head, status, &body, exchange, &progress, settings)
                    .await;
            }
        };
        let exchange = exchange.leased(lease);
        let revoked = exchange.revoked();
        let head_len = match line {
            None => head.len,
            Some(line) => {
                // The new request line, then the headers (and whatever follows) as received.
                let mut rewritten = BytesMut::with_capacity(self.cbuf.len() + line.len());
                rewritten.extend_from_slice(&line);
                rewritten.extend_from_slice(&self.cbuf[head.line_end..]);
                self.cbuf.bytes = rewritten;
                line.len() + head.len - head.line_end
            }
        };
        // The head and what of the body came with it go out in one write.
        // (Broken framing among those bytes: the app gets nothing of the request.)
        let mut request = Body::new(head.framing);
        let with_head = match request.advance(&self.cbuf[head_len..]) {
            Ok(n) => n,
            Err(err) => {
                progress.fail();
                let err = HttpError::Request(err.into());
                return self
                    .broke(Broke::Client(err), None, 0, exchange, &head.method)
                    .await;
            }
        };
        progress.add(request.data() as usize);
        let mut exchanging = Exchanging {
            request,
            request_out: Outgoing {
                ready: head_len + with_head,
                unflushed: false,
            },
            request_done: false,
            app_write_failed: false,
            progress: &progress,
            response: Response::Head,
            response_out: Outgoing::default(),
            method: &head.method,
            max_head: self.max_head,
        };
        let outcome = self.run(&mut exchanging, revoked.as_ref(), shutdown).await;
        let sent = exchanging.sent();
        match outcome {
            Ok((status, keep_alive)) => {
                exchange.answered(status).finish(sent, None);
                Ok(keep_alive
                    && exchanging.request_done
                    && head.keep_alive
                    && !self.stopping
                    && !self.client_eof)
            }
            Err(Outcome::Revoked(status)) => {
                tracing::debug!("HTTP/1 request revoked: closing its connection");
                exchange
                    .answered(status)
                    .finish(sent, Some(Failure::Revoked));
                Ok(false)
            }
            Err(Outcome::Broke(status, broke)) => {
                self.broke(broke, status, sent, exchange, &head.method)
                    .await
            }
        }
    }

    /// Reports and answers (when the client can still be) an exchange that broke; the
    /// connection ends.
    async fn broke<H: Hook + ?Sized>(
        &mut self,
        broke: Broke,
        status: Option<StatusCode>,
        sent: u64,
        exchange: Exchange<H>,
        method: &Method,
    ) -> Result<bool, HttpError> {
        tracing::debug!(?broke, "HTTP/1 exchange failed");
        match (broke, status) {
            (Broke::Client(err), status) => {
                let status = status.unwrap_or_else(super::client_closed);
                exchange
                    .answered(status)
                    .finish(sent, Some(Failure::DownstreamReset));
                Err(err)
            }
            // The response had begun: the client's is cut off.
            (Broke::App(err) | Broke::AppProtocol(err), Some(status)) => {
                exchange
                    .answered(status)
                    .finish(sent, Some(Failure::UpstreamReset));
                Err(err)
            }
            (Broke::App(_), None) => {
                self.failed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Failure::UpstreamReset,
                    super::service::UPSTREAM_RESET,
                    exchange,
                    method,
                )
                .await
            }
            (Broke::AppProtocol(_), None) => {
                self.failed(
                    StatusCode::BAD_GATEWAY,
                    Failure::UpstreamProtocol,
                    super::service::UPSTREAM_PROTOCOL,
                    exchange,
                    method,
                )
                .await
            }
        }
    }

    /// The app failed before its response's head: the client gets `status`, and the
    /// connection ends.
    async fn failed<H: Hook + ?Sized>(
        &mut self,
        status: StatusCode,
        failure: Failure,
        text: &[u8],
        exchange: Exchange<H>,
        method: &Method,
    ) -> Result<bool, HttpError> {
        let head_only = method == Method::HEAD;
        let answer = plain(status, text, head_only, true, Version::HTTP_11);
        let sent = if head_only { 0 } else { text.len() as u64 };
        exchange.answered(status).finish(sent, Some(failure));
        let _ = self.client.write_all(&answer).await;
        Ok(false)
    }

    /// Answers a request the hook denied, after reading its body away when that can be
    /// done within bounds (else the connection closes after the answer).
    async fn deny<H: Hook + ?Sized>(
        &mut self,
        head: &RequestHead,
        status: StatusCode,
        body: &[u8],
        exchange: Exchange<H>,
        progress: &BodyProgress,
        settings: &Settings,
    ) -> Result<bool, HttpError> {
        self.cbuf.advance(head.len);
        let drained = self.drain(head.framing, progress, settings).await;
        let keep = drained && head.keep_alive && !self.stopping;
        let head_only = head.method == Method::HEAD;
        let exchange = exchange.answered(status).denied();
        let answer = plain(status, body, head_only, !keep, head.version);
        match self.client.write_all(&answer).await {
            Ok(()) => {
                let sent = if head_only { 0 } else { body.len() as u64 };
                exchange.finish(sent, None);
                Ok(keep)
            }
            Err(err) => {
                exchange.finish(0, Some(Failure::DownstreamReset));
                Err(HttpError::Io(err))
            }
        }
    }

    /// Reads a denied request's body away: false when it is bigger than the settings
    /// allow, too slow, or broken.
    async fn drain(
        &mut self,
        framing: Framing,
        progress: &BodyProgress,
        settings: &Settings,
    ) -> bool {
        let limit = settings.deny_drain_bytes as u64;
        if matches!(framing, Framing::Length(n) if n > limit) {
            return false;
        }
        let mut body = Body::new(framing);
        let drain = async {
            loop {
                let before = body.data();
                let Ok(n) = body.advance(&self.cbuf) else {
                    return false;
                };
                self.cbuf.advance(n);
                progress.add((body.data() - before) as usize);
                if body.is_done() {
                    return true;
                }
                if body.data() > limit {
                    return false;
                }
                match read_more(&mut self.client, &mut self.cbuf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(settings.deny_drain_timeout, drain)
            .await
            .unwrap_or(false)
    }

    /// Drives one exchange to its end: the request's head and body to the app while
    /// the response comes back. `Ok`: the response's status, and whether the app keeps
    /// the connection.
    async fn run(
        &mut self,
        x: &mut Exchanging<'_>,
        revoked: Option<&CancellationToken>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(StatusCode, bool), Outcome> {
        let revocation = revoked.map(|t| Watched::new(t.cancelled()));
        let mut revocation = pin!(revocation);
        let stopping = &mut self.stopping;
        let (client, app) = (&mut self.client, &mut self.app);
        let (cbuf, abuf) = (&mut self.cbuf, &mut self.abuf);
        poll_fn(|cx| {
            if let Some(revoked) = revocation.as_mut().as_pin_mut()
                && revoked.poll(cx).is_ready()
            {
                return Poll::Ready(Err(Outcome::Revoked(x.status())));
            }
            if !*stopping && shutdown.as_mut().poll(cx).is_ready() {
                *stopping = true;
            }
            if !x.request_done
                && !x.app_write_failed
                && let Poll::Ready(result) = x.poll_request(cx, client, app, cbuf)
            {
                match result {
                    Ok(()) => x.request_done = true,
                    // The app may still answer (an early response): read on.
                    Err(Broke::App(err)) => {
                        tracing::debug!(error = %err, "the app stopped taking the request");
                        x.app_write_failed = true;
                    }
                    Err(broke) => return Poll::Ready(Err(Outcome::Broke(x.status_sent(), broke))),
                }
            }
            x.poll_response(cx, app, client, abuf)
                .map_err(|broke| Outcome::Broke(x.status_sent(), broke))
        })
        .await
    }

    /// Ends both connections politely (write shutdown), whatever state they are in.
    async fn close(&mut self) {
        let _ = self.client.shutdown().await;
        let _ = self.app.shutdown().await;
    }
}

/// How an exchange ended early.
enum Outcome {
    /// The hook revoked it: the connection closes. The status the client was sent, if any.
    Revoked(StatusCode),
    /// The status the client was sent, if any.
    Broke(Option<StatusCode>, Broke),
}

/// Where the response is.
enum Response {
    /// Reading its head (interim `1xx` heads go through as they come).
    Head,
    /// Its head is known; its body is on its way (or, done, being flushed).
    Body {
        status: StatusCode,
        body: Body,
        keep_alive: bool,
    },
}

/// The state of one exchange in flight.
struct Exchanging<'a> {
    request: Body,
    /// To the app: bytes at the front of `cbuf`.
    request_out: Outgoing,
    request_done: bool,
    /// The app stopped taking the request (it may still answer).
    app_write_failed: bool,
    progress: &'a BodyProgress,
    response: Response,
    /// To the client: bytes at the front of `abuf`.
    response_out: Outgoing,
    method: &'a Method,
    max_head: usize,
}

impl Exchanging<'_> {
    /// The response's status once its head is known (to the client once written).
    fn status_sent(&self) -> Option<StatusCode> {
        match &self.response {
            Response::Head => None,
            Response::Body { status, .. } => Some(*status),
        }
    }

    fn status(&self) -> StatusCode {
        self.status_sent().unwrap_or_else(super::client_closed)
    }

    /// Response body bytes sent to the client (counted as they are framed; the last
    /// write may still be in flight when the exchange breaks).
    fn sent(&self) -> u64 {
        match &self.response {
            Response::Head => 0,
            Response::Body { body, .. } => body.data(),
        }
    }

    /// Moves the request (head, then body) from the client to the app.
    fn poll_request<C, A>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        app: &mut A,
        cbuf: &mut Inbox,
    ) -> Poll<Result<(), Broke>>
    where
        C: AsyncRead + Unpin,
        A: AsyncWrite + Unpin,
    {
        loop {
            ready!(self.request_out.poll_write(cx, app, cbuf)).map_err(Broke::app_io)?;
            if self.request.is_done() {
                ready!(self.request_out.poll_flush(cx, app)).map_err(Broke::app_io)?;
                return Poll::Ready(Ok(()));
            }
            if !cbuf.is_empty() {
                let before = self.request.data();
                self.request_out.ready = self
                    .request
                    .advance(cbuf)
                    .map_err(|e| Broke::Client(HttpError::Request(e.into())))?;
                self.progress.add((self.request.data() - before) as usize);
                continue;
            }
            ready!(self.request_out.poll_flush(cx, app)).map_err(Broke::app_io)?;
            match ready!(poll_read_more(cx, client, cbuf)) {
                Ok(0) => {
                    self.progress.fail();
                    let err = self.request.eof().map_or_else(
                        |e| HttpError::Request(e.into()),
                        |()| HttpError::Io(io::ErrorKind::UnexpectedEof.into()),
                    );
                    return Poll::Ready(Err(Broke::Client(err)));
                }
                Ok(_) => {}
                Err(err) => {
                    self.progress.fail();
                    return Poll::Ready(Err(Broke::client_io(err)));
                }
            }
        }
    }

    /// Moves the response (interim heads, the head, the body) from the app to the client.
    fn poll_response<A, C>(
        &mut self,
        cx: &mut Context<'_>,
        app: &mut A,
        client: &mut C,
        abuf: &mut Inbox,
    ) -> Poll<Result<(StatusCode, bool), Broke>>
    where
        A: AsyncRead + Unpin,
        C: AsyncWrite + Unpin,
    {
        loop {
            ready!(self.response_out.poll_write(cx, client, abuf)).map_err(Broke::client_io)?;
            match &mut self.response {
                Response::Body {
                    status,
                    body,
                    keep_alive,
                } => {
                    if body.is_done() {
                        let done = (*status, *keep_alive);
                        ready!(self.response_out.poll_flush(cx, client))
                            .map_err(Broke::client_io)?;
                        return Poll::Ready(Ok(done));
                    }
                    if !abuf.is_empty() {
                        self.response_out.ready = body
                            .advance(abuf)
                            .map_err(|e| Broke::AppProtocol(HttpError::Response(e.into())))?;
                        continue;
                    }
                }
                Response::Head => {
                    if !abuf.is_empty() {
                        match head::response(abuf, self.max_head, self.method) {
                            Ok(None) => {}
                            Ok(Some(head)) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                                // Upgrades go the hyper path: this request offered none.
                                return Poll::Ready(Err(Broke::AppProtocol(HttpError::Response(
                                    HeadError::UnexpectedUpgrade.into(),
                                ))));
                            }
                            Ok(Some(head)) => {
                                self.response_out.ready = head.len;
                                if !head.status.is_informational() {
                                    // The head and what of the body came with it go out
                                    // in one write.
                                    let mut body = Body::new(head.framing);
                                    self.response_out.ready +=
                                        body.advance(&abuf[head.len..]).map_err(|e| {
                                            Broke::AppProtocol(HttpError::Response(e.into()))
                                        })?;
                                    self.response = Response::Body {
                                        status: head.status,
                                        body,
                                        keep_alive: head.keep_alive,
                                    };
                                }
                                continue;
                            }
                            Err(err) => {
                                return Poll::Ready(Err(Broke::AppProtocol(HttpError::Response(
                                    err.into(),
                                ))));
                            }
                        }
                    }
                }
            }
            ready!(self.response_out.poll_flush(cx, client)).map_err(Broke::client_io)?;
            match ready!(poll_read_more(cx, app, abuf)) {
                Ok(0) => {
                    if let Response::Body { body, .. } = &mut self.response
                        && body.eof().is_ok()
                    {
                        continue;
                    }
                    return Poll::Ready(Err(Broke::app_io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the app closed before the end of its response",
                    ))));
                }
                Ok(_) => {}
                Err(err) => return Poll::Ready(Err(Broke::app_io(err))),
            }
        }
    }
}

/// What made a request or a response invalid: its head or its body's framing.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error(transparent)]
    Body(#[from] BodyError),
}

fn nonzero(n: usize) -> io::Result<usize> {
    if n == 0 {
        Err(io::ErrorKind::WriteZero.into())
    } else {
        Ok(n)
    }
}

/// One direction's bytes cleared to go: the first `ready` of its inbox, checked by the
/// framing; and whether the receiving side has writes to flush.
#[derive(Default)]
struct Outgoing {
    ready: usize,
    unflushed: bool,
}

impl Outgoing {
    /// Writes the bytes that are ready to `w`, taking them from `inbox`.
    fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
        inbox: &mut Inbox,
    ) -> Poll<io::Result<()>> {
        while self.ready > 0 {
            let n =
                ready!(Pin::new(&mut *w).poll_write(cx, &inbox[..self.ready])).and_then(nonzero)?;
            inbox.advance(n);
            self.ready -= n;
            self.unflushed = true;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<()>> {
        if self.unflushed {
            ready!(Pin::new(w).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// One side's bytes read and not yet forwarded, and how much its next read asks for:
/// it starts at `FIRST_READ` and doubles (to `MAX_READ`) while reads fill it, so small
/// exchanges stay small and bulk bodies move in big reads.
struct Inbox {
    bytes: BytesMut,
    read_size: usize,
}

impl Inbox {
    fn new() -> Self {
        Self {
            bytes: BytesMut::with_capacity(FIRST_READ),
            read_size: FIRST_READ,
        }
    }
}

impl std::ops::Deref for Inbox {
    type Target = BytesMut;

    fn deref(&self) -> &BytesMut {
        &self.bytes
    }
}

impl std::ops::DerefMut for Inbox {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.bytes
    }
}

/// Reads into `inbox`'s spare room, making room first.
fn poll_read_more<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    r: &mut R,
    inbox: &mut Inbox,
) -> Poll<io::Result<usize>> {
    let want = inbox.read_size;
    if inbox.bytes.capacity() - inbox.bytes.len() < want {
        inbox.bytes.reserve(want);
    }
    let n = ready!(poll_read_buf(Pin::new(r), cx, &mut inbox.bytes))?;
    if n >= want {
        inbox.read_size = (want * 2).min(MAX_READ);
    }
    Poll::Ready(Ok(n))
}

async fn read_more<R: AsyncRead + Unpin>(r: &mut R, inbox: &mut Inbox) -> io::Result<usize> {
    poll_fn(|cx| poll_read_more(cx, r, inbox)).await
}

/// `METHOD target HTTP/1.x\r\n`.
fn request_line(method: &Method, uri: &Uri, version: Version) -> Vec<u8> {
    let version = if version == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    format!("{method} {uri} {version}\r\n").into_bytes()
}

/// A `text/plain` response of our own (a deny, a failure): without its body (but with
/// its length) to a `HEAD` request; `close` says the connection ends after it (an
/// HTTP/1.0 client is told when it does not).
fn plain(
    status: StatusCode,
    body: &[u8],
    head_only: bool,
    close: bool,
    version: Version,
) -> Vec<u8> {
    let connection = match (close, version) {
        (true, _) => "connection: close\r\n",
        (false, Version::HTTP_10) => "connection: keep-alive\r\n",
        (false, _) => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{connection}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}
