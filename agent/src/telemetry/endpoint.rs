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

/// Binds `addr` now (so a busy port stops the agent at start) and serves in the
/// background.
pub async fn start(addr: SocketAddr, endpoint: Endpoint) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("metrics endpoint {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    let endpoint = Arc::new(endpoint);
    tokio::spawn(async move {
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
    Ok(bound)
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
