//! Access logs: one line per connection, through tracing under the target `access`
//! (filter it with e.g. `RUST_LOG=info,access=off`; `log.format: json` makes each line a
//! JSON object with the fields below).
//!
//! Byte fields are named from the client's side, whichever agent logs the line:
//! `bytes_sent` is client → server (the opener to its destination), `bytes_received` is
//! server → client, both as the app's socket carried them (HTTP heads included). The
//! admin API's `Connection` says the same; Istio's metrics name them the other way round
//! (`istio_tcp_received_bytes_total` is client → server).
use std::{io, net::SocketAddr, sync::atomic::Ordering, time::Duration};

use super::metrics::TcpLabels;
use crate::proxy::connections::Connection;

/// Which way a connection went, seen from the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Opened by the pod's app.
    Outbound,
    /// Opened to the pod's app.
    Inbound,
}

/// How the bytes crossed the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// As the app sent them.
    Plaintext,
    /// Inside the mutual-TLS HTTP/2 tunnel (HBONE).
    Hbone,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Plaintext => "plaintext",
            Transport::Hbone => "hbone",
        }
    }
}

/// A finished (or failed) connection.
#[derive(Debug)]
pub struct ConnectionRecord<'a> {
    /// `namespace/name` of the enrolled pod whose agent logs it.
    pub pod: &'a str,
    pub direction: Direction,
    pub transport: Transport,
    /// Where the connection came from, as the receiving side saw it.
    pub src: SocketAddr,
    /// The original destination.
    pub dst: Option<SocketAddr>,
    /// SPIFFE IDs, where known.
    pub src_identity: Option<&'a str>,
    pub dst_identity: Option<&'a str>,
    /// Workload names and namespaces of both ends, where known (as in metrics).
    pub workloads: Option<&'a TcpLabels>,
    /// Bytes client → server: what the connection's opener sent its destination (the
    /// request direction; Istio's `istio_tcp_received_bytes_total`).
    pub bytes_sent: u64,
    /// Bytes server → client: what the opener received back (the response direction;
    /// Istio's `istio_tcp_sent_bytes_total`).
    pub bytes_received: u64,
    pub duration: Duration,
    pub error: Option<String>,
}

pub fn log(record: &ConnectionRecord<'_>) {
    let dst = record
        .dst
        .map(|d| d.to_string())
        .unwrap_or_else(|| "unknown".into());
    let duration_ms = record.duration.as_secs_f64() * 1000.0;
    let src_identity = record.src_identity.unwrap_or("");
    let dst_identity = record.dst_identity.unwrap_or("");
    let w = |f: fn(&TcpLabels) -> &str| record.workloads.map(f).unwrap_or("unknown");
    let src_workload = w(|l| &l.source_workload);
    let src_namespace = w(|l| &l.source_workload_namespace);
    let dst_workload = w(|l| &l.destination_workload);
    let dst_namespace = w(|l| &l.destination_workload_namespace);
    let dst_service = w(|l| &l.destination_service);
    match &record.error {
        None => tracing::info!(
            target: "access",
            pod = record.pod,
            direction = record.direction.as_str(),
            transport = record.transport.as_str(),
            src = %record.src,
            dst = %dst,
            src_workload,
            src_namespace,
            dst_workload,
            dst_namespace,
            dst_service,
            src_identity,
            dst_identity,
            bytes_sent = record.bytes_sent,
            bytes_received = record.bytes_received,
            duration_ms,
            "connection"
        ),
        Some(error) => tracing::warn!(
            target: "access",
            pod = record.pod,
            direction = record.direction.as_str(),
            transport = record.transport.as_str(),
            src = %record.src,
            dst = %dst,
            src_workload,
            src_namespace,
            dst_workload,
            dst_namespace,
            dst_service,
            src_identity,
            dst_identity,
            bytes_sent = record.bytes_sent,
            bytes_received = record.bytes_received,
            duration_ms,
            error = error.as_str(),
            "connection"
        ),
    }
}

/// Logs a proxied connection as it ends. `local_identity` is the enrolled pod's SPIFFE ID;
/// the peer's comes from the connection. An error is replaced by the agent's reason when
/// the agent closed the connection itself.
pub fn log_connection(
    conn: &Connection,
    local_identity: &str,
    duration: Duration,
    error: Option<io::Error>,
) {
    conn.ended(error.is_some());
    let peer = conn.peer_identity.as_deref();
    let (src_identity, dst_identity) = match conn.direction {
        Direction::Outbound => (Some(local_identity), peer),
        Direction::Inbound => (peer, Some(local_identity)),
    };
    log(&ConnectionRecord {
        pod: &conn.pod,
        direction: conn.direction,
        transport: conn.transport,
        src: conn.src,
        dst: Some(conn.dst),
        src_identity,
        dst_identity,
        workloads: Some(&conn.metrics.labels),
        bytes_sent: conn.counters.forward.load(Ordering::Relaxed),
        bytes_received: conn.counters.backward.load(Ordering::Relaxed),
        duration,
        error: error.map(|e| conn.closed_because().unwrap_or_else(|| e.to_string())),
    });
}

/// Logs one HTTP request of a proxied connection (`request` lines sit beside the
/// connection's own line).
pub fn log_request(conn: &Connection, local_identity: &str, report: &crate::proxy::http::Report) {
    let peer = conn.peer_identity.as_deref().unwrap_or("");
    let (src_identity, dst_identity) = match conn.direction {
        Direction::Outbound => (local_identity, peer),
        Direction::Inbound => (peer, local_identity),
    };
    let l = &conn.metrics.labels;
    tracing::info!(
        target: "access",
        pod = %conn.pod,
        direction = conn.direction.as_str(),
        transport = conn.transport.as_str(),
        src = %conn.src,
        dst = %conn.dst,
        src_workload = %l.source_workload,
        src_namespace = %l.source_workload_namespace,
        dst_workload = %l.destination_workload,
        dst_namespace = %l.destination_workload_namespace,
        dst_service = %l.destination_service,
        src_identity,
        dst_identity,
        method = %report.request.method,
        path = report.request.path(),
        authority = report.request.authority.as_deref().unwrap_or(""),
        protocol = ?report.request.version,
        status = report.status.as_u16(),
        request_bytes = report.request_bytes,
        response_bytes = report.response_bytes,
        duration_ms = report.duration.as_secs_f64() * 1000.0,
        denied = report.denied,
        response_flags = report.response_flags(),
        "request"
    );
}
