//! What happens to one request: its target is normalized when the settings say so (a
//! request that cannot be is answered 400, the hook told); the hook decides; a denied request gets the hook's
//! answer (in HTTP/1 after reading away a small body, so the connection can go on); a
//! forwarded one goes to the app with its head as received (method, target as normalized, `Host` or
//! `:authority`, headers, header case in HTTP/1) and its body streamed; the app's
//! response comes back the same way. When the app fails before answering, the client
//! gets 503 (connection failed or closed: `UC`) or 502 (not HTTP: `UPE`), and in
//! HTTP/1 the connection is closed after it, since the app's is gone. A request the
//! hook leased ([`Verdict::Leased`]) and then revoked is reset wherever it is: waiting
//! for the app's answer (the service fails: hyper resets the HTTP/2 stream or closes the
//! HTTP/1 connection), in either body (see `body`), or upgraded (see `upgrade`).
//!
//! `Expect: 100-continue` needs nothing special: hyper answers `100 Continue` to the
//! client when the body is first read, which is when the request goes to the app (a
//! denied request's body is not read, so no `100`); the header goes on to the app, whose
//! own `100` hyper's client skips.
use std::{future::Future, pin::Pin, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{
    Failure, Hook, HttpVersion, RequestInfo, Settings, Verdict,
    body::{BodyError, RequestBody, ResponseBody, Revoked},
    exchange::{BodyProgress, Exchange},
    revoke, target, upgrade,
    upstream::Upstream,
};

/// The body of our 503 when the app's connection failed or closed before its answer
/// (Envoy's words, as Istio's clients see them).
pub(super) const UPSTREAM_RESET: &[u8] =
    b"upstream connect error or disconnect/reset before headers. reset reason: connection termination";
/// The body of our 502 when the app's answer was not HTTP.
pub(super) const UPSTREAM_PROTOCOL: &[u8] = b"upstream protocol error";

/// The service hyper calls for each request of one client connection.
pub(super) struct Proxy<H: Hook + ?Sized>(Arc<Shared<H>>);

struct Shared<H: Hook + ?Sized> {
    hook: Arc<H>,
    upstream: Upstream,
    version: HttpVersion,
    settings: Settings,
    upgrades: Arc<upgrade::Upgrades>,
    /// HTTP/1: ends the connection when its running request is revoked.
    h1_revocation: Arc<revoke::H1Revocation>,
}

impl<H: Hook + ?Sized> Proxy<H> {
    pub(super) fn new(
        hook: Arc<H>,
        upstream: Upstream,
        version: HttpVersion,
        settings: Settings,
        upgrades: Arc<upgrade::Upgrades>,
        h1_revocation: Arc<revoke::H1Revocation>,
    ) -> Self {
        Self(Arc::new(Shared {
            hook,
            upstream,
            version,
            settings,
            upgrades,
            h1_revocation,
        }))
    }
}

impl<H: Hook + ?Sized> hyper::service::Service<Request<Incoming>> for Proxy<H> {
    type Response = Response<ResponseBody<H>>;
    /// Only [`Revoked`].
    type Error = BodyError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BodyError>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move { shared.handle(request).await })
    }
}

impl<H: Hook + ?Sized> Shared<H> {
    async fn handle(
        &self,
        mut request: Request<Incoming>,
    ) -> Result<Response<ResponseBody<H>>, BodyError> {
        let started = Instant::now();
        let normalized = match self.settings.normalize {
            Some(escaped_slashes) => target::normalize(&mut request, self.version, escaped_slashes),
            None => Ok(()),
        };
        let info = RequestInfo::from_request(&request);
        let progress = Arc::new(BodyProgress::default());
        let verdict = match normalized {
            Ok(()) => self.hook.on_request(&info),
            Err(err) => {
                self.hook.on_invalid(&info, &err);
                Verdict::bad_request(&err)
            }
        };
        let head = info.method == Method::HEAD;
        // Dropped unfinished (this future dropped: the client went away before the
        // response's head), the exchange reports itself.
        let exchange = Exchange::new(self.hook.clone(), info, started, progress.clone());
        let lease = match verdict {
            Verdict::Forward => None,
            Verdict::Leased(lease) => Some(lease),
            Verdict::Deny { status, body } => {
                return Ok(self
                    .deny(request, status, body, head, exchange, &progress)
                    .await);
            }
        };
        let exchange = exchange.leased(lease);
        let revoked = exchange.revoked();
        if let Some(revoked) = &revoked {
            // Reset even when nothing polls the request (a slow client): `revoke`.
            match self.version {
                HttpVersion::Http1 => self.h1_revocation.watch(revoked),
                HttpVersion::Http2 => revoke::stream_revoked_by(revoked),
            }
        }

        if self.version == HttpVersion::Http1 && upgrade::refuse_h2c(request.headers_mut()) {
            tracing::debug!(path = request.uri().path(), "h2c upgrade offer removed");
        }
        let upgrade = (self.version == HttpVersion::Http1
            && upgrade::is_upgrade_request(request.method(), request.headers()))
        .then(|| hyper::upgrade::on(&mut request));
        if self.version == HttpVersion::Http2 && request.uri().authority().is_none() {
            // No `:authority` (the client sent `Host` instead): h2 then sends `:scheme`
            // `http` and the path, as it does for a forwarded HTTP/1 request.
            *request.version_mut() = Version::HTTP_11;
        }
        let method = request.method().clone();
        self.upgrades.set_pending(upgrade.is_some());
        let request = request.map(|body| RequestBody::new(body, progress.clone(), revoked.clone()));

        let sent = match &revoked {
            None => self.upstream.send(request).await,
            Some(revoked) => tokio::select! {
                sent = self.upstream.send(request) => sent,
                () = revoked.cancelled() => {
                    self.upgrades.set_pending(false);
                    exchange.finish(0, Some(Failure::Revoked));
                    return Err(Box::new(Revoked));
                }
            },
        };
        let mut response = match sent {
            Ok(response) => response,
            Err(err) => {
                self.upgrades.set_pending(false);
                return Ok(self.failed(&err, &progress, head, exchange));
            }
        };
        let status = response.status();
        let exchange = exchange.answered(status);
        if let Some(client) = upgrade {
            if upgrade::is_upgrade_response(&method, status) {
                let app = hyper::upgrade::on(&mut response);
                self.upgrades.spawn(upgrade::splice(client, app, exchange));
                return Ok(response.map(|_| ResponseBody::full(Bytes::new(), None)));
            }
            self.upgrades.set_pending(false);
        }
        Ok(response.map(|body| ResponseBody::stream(body, exchange)))
    }

    /// Answers a request the hook denied with `status` and `body`, after reading its
    /// HTTP/1 body away when that can be done (else the connection closes after it).
    async fn deny(
        &self,
        request: Request<Incoming>,
        status: StatusCode,
        body: Bytes,
        head: bool,
        exchange: Exchange<H>,
        progress: &BodyProgress,
    ) -> Response<ResponseBody<H>> {
        let expects_continue = request
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let drained = self
            .drain(request.into_body(), expects_continue, progress)
            .await;
        let exchange = exchange.answered(status).denied();
        let mut response = plain(status, body, head, Some(exchange));
        if !drained {
            close(&mut response);
        }
        response
    }

    /// The app failed `request` before its response's head.
    fn failed(
        &self,
        err: &hyper::Error,
        progress: &BodyProgress,
        head: bool,
        exchange: Exchange<H>,
    ) -> Response<ResponseBody<H>> {
        let (status, failure, text): (_, _, &'static [u8]) = if progress.failed() {
            // hyper's client reports a failed request body as its own error; the client
            // is gone.
            (
                super::hook::client_closed(),
                Failure::DownstreamReset,
                b"request body failed",
            )
        } else if err.is_parse() {
            (
                StatusCode::BAD_GATEWAY,
                Failure::UpstreamProtocol,
                UPSTREAM_PROTOCOL,
            )
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Failure::UpstreamReset,
                UPSTREAM_RESET,
            )
        };
        tracing::debug!(error = %err, %status, flag = failure.flags().as_str(), "request failed");
        let mut response = plain(status, Bytes::from_static(text), head, None);
        // Report now: the failure is known, and the body's end would report none.
        let sent = if head { 0 } else { text.len() as u64 };
        exchange.answered(status).finish(sent, Some(failure));
        if self.version == HttpVersion::Http1 {
            close(&mut response);
        }
        response
    }

    /// Reads a denied HTTP/1 request's body away, within the settings' bounds, so that the
    /// connection can carry the next request. False when it could not (too big, too slow,
    /// or waiting for `100 Continue`, which a denied request does not get).
    async fn drain(
        &self,
        mut body: Incoming,
        expects_continue: bool,
        progress: &BodyProgress,
    ) -> bool {
        use http_body::Body as _;
        if self.version != HttpVersion::Http1 || body.is_end_stream() {
            return true;
        }
        if expects_continue {
            return false;
        }
        let limit = self.settings.deny_drain_bytes as u64;
        if body.size_hint().lower() > limit {
            return false;
        }
        let drain = async {
            loop {
                match body.frame().await {
                    None => return true,
                    Some(Err(_)) => return false,
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            progress.add(data.len());
                        }
                        if progress.bytes() > limit {
                            return false;
                        }
                    }
                }
            }
        };
        tokio::time::timeout(self.settings.deny_drain_timeout, drain)
            .await
            .unwrap_or(false)
    }
}

/// A `text/plain` response of our own; without its body (but with its length) to a
/// `HEAD` request.
fn plain<H: Hook + ?Sized>(
    status: StatusCode,
    body: Bytes,
    head: bool,
    exchange: Option<Exchange<H>>,
) -> Response<ResponseBody<H>> {
    let length = body.len();
    let body = if head { Bytes::new() } else { body };
    let mut response = Response::new(ResponseBody::full(body, exchange));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// Asks hyper to close the HTTP/1 connection after this response.
fn close<B>(response: &mut Response<B>) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}
