//! The agent's HTTP endpoint on the node (`telemetry.metricsAddr`, default
//! `0.0.0.0:15020`): `/metrics` in Prometheus' text format, and `/healthz/ready`, which
//! answers 200 once the kernel programs are attached and the first workload set is
//! enrolled (503 before).
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::metrics::Metrics;

/// What the endpoint serves.
pub struct Endpoint {
    pub metrics: Arc<Metrics>,
    /// Brings counters of live connections up to date; called before each scrape.
    pub before_scrape: Box<dyn Fn() + Send + Sync>,
    pub ready: Arc<AtomicBool>,
}

/// The endpoint, serving in the background until stopped (or dropped).
pub struct Running {
    pub addr: SocketAddr,
    /// A duplicate of the listening socket, to hand over to a new agent.
    pub listener: std::os::fd::OwnedFd,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` now (so a busy port stops the agent at start), or serves on `inherited`
/// (the previous agent's listener, handed over), and serves in the background.
pub async fn start(
    addr: SocketAddr,
    inherited: Option<std::os::fd::OwnedFd>,
    endpoint: Endpoint,
) -> std::io::Result<Running> {
    let inherited = inherited.and_then(|fd| {
        let std = std::net::TcpListener::from(fd);
        match std.local_addr() {
            Ok(local) if local == addr || addr.port() == 0 => {
                std.set_nonblocking(true).ok()?;
                TcpListener::from_std(std).ok()
            }
            other => {
                tracing::warn!(?other, %addr, "not using the previous agent's metrics listener");
                None
            }
        }
    });
    let listener = match inherited {
        Some(listener) => listener,
        None => TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("metrics endpoint {addr}: {e}")))?,
    };
    let bound = listener.local_addr()?;
    let dup = {
        use std::os::fd::AsFd;
        listener.as_fd().try_clone_to_owned()?
    };
    let endpoint = Arc::new(endpoint);
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let endpoint = endpoint.clone();
                    async move { Ok::<_, Infallible>(respond(&endpoint, req)) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    tracing::info!(addr = %bound, "metrics endpoint listening");
    Ok(Running {
        addr: bound,
        listener: dup,
        task,
    })
}

fn respond(endpoint: &Endpoint, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match req.uri().path() {
        "/metrics" => {
            (endpoint.before_scrape)();
            text(
                StatusCode::OK,
                endpoint.metrics.encode(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        "/healthz/ready" if endpoint.ready.load(Ordering::Relaxed) => {
            text(StatusCode::OK, "ready\n".into(), "text/plain")
        }
        "/healthz/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready\n".into(),
            "text/plain",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}
