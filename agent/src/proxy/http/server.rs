//! One proxied HTTP connection. HTTP/1 goes the lean way (`h1`) until a request needs
//! more (an upgrade, say); then, and for HTTP/2, hyper serves the client (HTTP/1 with upgrades, or
//! HTTP/2), each request goes through the [`Proxy`] service to the app's client
//! connection. The two connections live and die together: when the app's ends, the
//! client's is shut down gracefully (HTTP/1: after the response in flight; HTTP/2:
//! GOAWAY, streams in flight finish); when the client's ends, the app's is dropped.
use std::{
    future::Future,
    pin::{Pin, pin},
    sync::Arc,
};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    Hook, HttpError, HttpVersion, Settings,
    revoke::{H1Revocation, StreamExecutor},
    service::Proxy,
    settings::MIN_BUF_SIZE,
    upgrade::Upgrades,
    upstream::{Closed, Upstream},
};

/// Proxies HTTP between `client` (which speaks `version`, as [`detect`](super::detect)
/// found) and `app`, calling `hook` for each request, until either connection ends or
/// `shutdown` resolves (then gracefully: requests in flight finish). HTTP/1 takes the
/// lean path (`h1`), which hands what it does not serve itself back to hyper; HTTP/2 is
/// hyper's.
///
/// Returns when the client connection is done, upgraded streams (WebSocket) included;
/// an error says why it ended badly (e.g. a malformed request, answered with 400).
pub async fn serve<C, A, H>(
    client: C,
    app: A,
    version: HttpVersion,
    hook: Arc<H>,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HttpError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Hook + ?Sized,
{
    match version {
        HttpVersion::Http1 => super::h1::serve(client, app, hook, settings, shutdown).await,
        HttpVersion::Http2 => serve_hyper(client, app, version, hook, settings, shutdown).await,
    }
}

/// [`serve`] with hyper on both ends (HTTP/2, and HTTP/1 from a request the lean path
/// hands over).
pub(super) async fn serve_hyper<C, A, H>(
    client: C,
    app: A,
    version: HttpVersion,
    hook: Arc<H>,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HttpError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Hook + ?Sized,
{
    let (upstream, closed) = Upstream::handshake(app, version, settings)
        .await
        .map_err(|source| HttpError::AppHandshake { version, source })?;
    let upgrades = Arc::new(Upgrades::default());
    let h1_revocation = Arc::new(H1Revocation::default());
    let proxy = Proxy::new(
        hook,
        upstream,
        version,
        settings.clone(),
        upgrades.clone(),
        h1_revocation.clone(),
    );
    let io = TokioIo::new(client);
    let mut shutdown = pin!(shutdown);
    let (result, stopped) = match version {
        HttpVersion::Http1 => {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(settings.header_read_timeout)
                .max_buf_size(settings.max_buf_size.max(MIN_BUF_SIZE))
                // A client that half-closes after its request still gets the response.
                .half_close(true)
                .preserve_header_case(true)
                // The app's `Date` (or none) goes through as it is.
                .auto_date_header(false)
                .serve_connection(io, proxy)
                .with_upgrades();
            drive(
                conn,
                |conn| conn.graceful_shutdown(),
                closed,
                shutdown.as_mut(),
                &upgrades,
                h1_revocation.revoked(),
            )
            .await
        }
        HttpVersion::Http2 => {
            let conn = http2::Builder::new(StreamExecutor)
                .timer(TokioTimer::new())
                .max_concurrent_streams(settings.max_concurrent_streams)
                .auto_date_header(false)
                .serve_connection(io, proxy);
            drive(
                conn,
                |conn| conn.graceful_shutdown(),
                closed,
                shutdown.as_mut(),
                &upgrades,
                std::future::pending(),
            )
            .await
        }
    };
    // An upgraded connection lives on until its streams end, or the agent closes it.
    if stopped {
        upgrades.abort();
    } else {
        tokio::select! {
            () = upgrades.finished() => {}
            () = shutdown.as_mut() => upgrades.abort(),
        }
    }
    result.map_err(|source| HttpError::Client { version, source })
}

/// Polls the client connection to its end, shutting it down gracefully when `shutdown`
/// resolves or the app's connection ends (unless that was an upgrade taking it over),
/// and at once when `revoked` resolves (HTTP/1: its running request was revoked).
/// Also returns whether `shutdown` resolved.
async fn drive<F, G>(
    conn: F,
    mut graceful: G,
    app_closed: Closed,
    shutdown: impl Future<Output = ()>,
    upgrades: &Upgrades,
    revoked: impl Future<Output = ()>,
) -> (hyper::Result<()>, bool)
where
    F: Future<Output = hyper::Result<()>>,
    G: FnMut(Pin<&mut F>),
{
    let mut conn = pin!(conn);
    let mut shutdown = pin!(shutdown);
    let mut app_closed = pin!(app_closed);
    let mut revoked = pin!(revoked);
    let mut app_open = true;
    let mut shutting_down = false;
    let mut stopped = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => return (result, stopped),
            () = &mut revoked => {
                tracing::debug!("HTTP/1 request revoked: closing its connection");
                return (Ok(()), stopped);
            }
            () = &mut shutdown, if !stopped => {
                stopped = true;
                if !shutting_down {
                    shutting_down = true;
                    graceful(conn.as_mut());
                }
            }
            ended = &mut app_closed, if app_open => {
                app_open = false;
                if !upgrades.pending() {
                    match ended {
                        Ok(Err(err)) => tracing::debug!(error = %err, "app connection failed"),
                        _ => tracing::debug!("app connection closed"),
                    }
                    if !shutting_down {
                        shutting_down = true;
                        graceful(conn.as_mut());
                    }
                }
            }
        }
    }
}
