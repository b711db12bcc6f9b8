//! Tests over loopback TCP: a test proxy (accept, connect to the app, [`detect`], then
//! [`serve`] or copy), test apps (hyper HTTP/1 and HTTP/2 servers, raw TCP ones), a hook
//! that denies `/deny*`, leases `/lease*` (the test revokes them) and records reports,
//! and bodies made of a known pattern.
mod detection;
mod failures;
mod hook;
mod http1;
mod http2;
mod lean;
mod revoke;
mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use super::{
    DetectSettings, Hook, HttpVersion, Protocol, Reason, Report, RequestInfo, Settings, Verdict,
    detect, serve,
};
use support::{Pattern, PatternBody};

/// Denies `/deny*`, leases `/lease*`, records every request and report.
#[derive(Default)]
struct TestHook {
    seen: Mutex<Vec<RequestInfo>>,
    reports: Mutex<Option<mpsc::UnboundedSender<Report>>>,
    /// What revokes each leased request, in order.
    leases: Mutex<Vec<tokio_util::sync::CancellationToken>>,
}

impl Hook for TestHook {
    fn on_request(&self, request: &RequestInfo) -> Verdict {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(request.clone());
        }
        if request.path().starts_with("/deny") {
            Verdict::rbac_denied()
        } else if request.path().starts_with("/lease") {
            let token = tokio_util::sync::CancellationToken::new();
            self.leases.lock().unwrap().push(token.clone());
            Verdict::Leased(super::Lease::new(token, None))
        } else {
            Verdict::Forward
        }
    }

    fn on_complete(&self, report: Report) {
        if let Some(tx) = self.reports.lock().unwrap().as_ref() {
            let _ = tx.send(report);
        }
    }
}

/// How the proxy handled one connection.
#[derive(Debug)]
struct Handled {
    protocol: Protocol,
    reason: Reason,
    detect_time: Duration,
    /// `Err(bad_request, message)`.
    result: Result<(), (bool, String)>,
}

/// The test proxy in front of one app.
struct TestProxy {
    addr: SocketAddr,
    hook: Arc<TestHook>,
    reports: mpsc::UnboundedReceiver<Report>,
    handled: mpsc::UnboundedReceiver<Handled>,
}

impl TestProxy {
    async fn start(app: SocketAddr) -> Self {
        Self::with(app, DetectSettings::default()).await
    }

    async fn with(app: SocketAddr, detect_settings: DetectSettings) -> Self {
        Self::with_settings(app, detect_settings, Settings::default()).await
    }

    async fn with_settings(
        app: SocketAddr,
        detect_settings: DetectSettings,
        settings: Settings,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let hook = Arc::new(TestHook {
            reports: Mutex::new(Some(reports_tx)),
            ..TestHook::default()
        });
        let (handled_tx, handled) = mpsc::unbounded_channel();
        let hook2 = hook.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let app = TcpStream::connect(app).await.unwrap();
                let (hook, handled_tx, detect_settings, settings) = (
                    hook2.clone(),
                    handled_tx.clone(),
                    detect_settings.clone(),
                    settings.clone(),
                );
                tokio::spawn(async move {
                    let started = Instant::now();
                    let detected = detect(client, app, &detect_settings).await;
                    let detect_time = started.elapsed();
                    let result = match detected.protocol.http() {
                        Some(version) => serve(
                            detected.client,
                            detected.app,
                            version,
                            hook,
                            &settings,
                            std::future::pending(),
                        )
                        .await
                        .map_err(|e| (e.is_bad_request(), e.to_string())),
                        None => {
                            let (mut client, mut app) = (detected.client, detected.app);
                            tokio::io::copy_bidirectional(&mut client, &mut app)
                                .await
                                .map(drop)
                                .map_err(|e| (false, e.to_string()))
                        }
                    };
                    let _ = handled_tx.send(Handled {
                        protocol: detected.protocol,
                        reason: detected.reason,
                        detect_time,
                        result,
                    });
                });
            }
        });
        Self {
            addr,
            hook,
            reports,
            handled,
        }
    }

    async fn report(&mut self) -> Report {
        tokio::time::timeout(Duration::from_secs(10), self.reports.recv())
            .await
            .expect("a report within 10 s")
            .expect("the hook is alive")
    }

    async fn handled(&mut self) -> Handled {
        tokio::time::timeout(Duration::from_secs(10), self.handled.recv())
            .await
            .expect("the connection handled within 10 s")
            .expect("the proxy is alive")
    }

    fn seen(&self) -> Vec<RequestInfo> {
        self.hook.seen.lock().unwrap().clone()
    }

    /// Revokes every request leased so far.
    fn revoke(&self) {
        for token in self.hook.leases.lock().unwrap().iter() {
            token.cancel();
        }
    }
}

type AppBody = BoxBody<Bytes, hyper::Error>;

fn full(bytes: impl Into<Bytes>) -> AppBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The test app's answers: `/echo` streams the request body back, `/big/<n>` sends `n`
/// pattern bytes, `/hang` never answers, an `Upgrade` request switches to an echo,
/// anything else says what it got. A `/lease` prefix is the hook's business: ignored.
async fn app_service(mut request: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
    let full_path = request.uri().path().to_owned();
    let path = full_path
        .strip_prefix("/lease")
        .unwrap_or(&full_path)
        .to_owned();
    if request.headers().contains_key(http::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
            }
        });
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(http::header::CONNECTION, "upgrade".parse().unwrap());
        headers.insert(http::header::UPGRADE, "echo".parse().unwrap());
        return Ok(response);
    }
    if path == "/hang" {
        std::future::pending::<()>().await;
    }
    if path == "/echo" {
        return Ok(Response::new(request.into_body().boxed()));
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let n = n.parse().unwrap_or(0);
        return Ok(Response::new(
            PatternBody::new(Pattern::new(), n, None).boxed(),
        ));
    }
    let host = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .map(|h| h.to_str().unwrap_or("?").to_owned())
        })
        .unwrap_or_default();
    Ok(Response::new(full(format!(
        "{} {} host={} {:?}",
        request.method(),
        path,
        host,
        request.version()
    ))))
}

/// A hyper app server of `version`; counts the connections it accepted.
async fn app(version: HttpVersion) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let io = TokioIo::new(tcp);
            tokio::spawn(async move {
                let service = service_fn(app_service);
                let _ = match version {
                    HttpVersion::Http1 => {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .with_upgrades()
                            .await
                    }
                    HttpVersion::Http2 => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    }
                };
            });
        }
    });
    (addr, accepted)
}
