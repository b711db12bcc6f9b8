//! The agent's HTTP endpoint on the node (`telemetry.metricsAddr`, default
//! `0.0.0.0:15020`): `/metrics` in Prometheus' text format, and `/healthz/ready`, which
//! answers 200 once the kernel programs are attached and the first workload set is
//! enrolled (503 before). Reachable from the network, so bounded: at most
//! `telemetry.maxConnections` connections at once (more are closed at accept), and a
//! connection that sends no complete request head within `telemetry.requestTimeoutMs`
//! is closed.
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
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::metrics::Metrics;
use crate::config::TelemetryConfig;

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
    config: &TelemetryConfig,
    inherited: Option<std::os::fd::OwnedFd>,
    endpoint: Endpoint,
) -> std::io::Result<Running> {
    let addr = config.metrics_addr;
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
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let max = config.max_connections;
    let timeout = std::time::Duration::from_millis(config.request_timeout_ms);
    let task = tokio::spawn(async move {
        let mut refused: u64 = 0;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refused += 1;
                // One line per power of two, not one per connection.
                if refused.is_power_of_two() {
                    tracing::warn!(%peer, refused, limit = max,
                        "metrics endpoint: connection limit reached; connection closed");
                }
                drop(stream);
                continue;
            };
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let endpoint = endpoint.clone();
                    async move { Ok::<_, Infallible>(respond(&endpoint, req)) }
                });
                let served = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(err) = served.as_ref()
                    && err.is_timeout()
                {
                    tracing::debug!(%peer, error = %err, "metrics endpoint: no request in time; closed");
                }
                drop(slot);
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    async fn endpoint(max_connections: usize, request_timeout_ms: u64) -> Running {
        let config = TelemetryConfig {
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_connections,
            request_timeout_ms,
            ..TelemetryConfig::default()
        };
        start(
            &config,
            None,
            Endpoint {
                metrics: Arc::new(Metrics::default()),
                before_scrape: Box::new(|| {}),
                ready: Arc::new(AtomicBool::new(true)),
            },
        )
        .await
        .unwrap()
    }

    /// Reads until the server closes; how long that took.
    async fn until_closed(conn: &mut TcpStream) -> Duration {
        let started = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("the endpoint kept the connection open for 20 s"),
            }
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn a_connection_without_a_complete_request_is_closed_after_the_timeout() {
        let running = endpoint(4, 300).await;
        // Silent.
        let mut silent = TcpStream::connect(running.addr).await.unwrap();
        let took = until_closed(&mut silent).await;
        assert!(took >= Duration::from_millis(250), "closed after {took:?}");
        // Half a request head, then nothing (slowloris).
        let mut slow = TcpStream::connect(running.addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let took = until_closed(&mut slow).await;
        assert!(took >= Duration::from_millis(250), "closed after {took:?}");
        // A real scrape is served.
        let response = get(running.addr, "/healthz/ready").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed_at_once_and_slots_come_back() {
        let running = endpoint(2, 60_000).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(TcpStream::connect(running.addr).await.unwrap());
        }
        // Let the endpoint accept both before the third arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = TcpStream::connect(running.addr).await.unwrap();
        let took = until_closed(&mut third).await;
        assert!(
            took < Duration::from_secs(5),
            "the connection over the limit was held {took:?} (its request timeout is 60 s)"
        );
        // The held ones were not disturbed: each can still be served.
        let mut first = held.remove(0);
        first
            .write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        first.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        drop(first);
        // Its slot came back.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let response = get(running.addr, "/healthz/ready").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
}
