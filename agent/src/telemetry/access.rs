//! Access logs: one line per connection, through tracing under the target `access`
//! (filter it with e.g. `RUST_LOG=info,access=off`; `log.format: json` makes each line a
//! JSON object with the fields below).
use std::{net::SocketAddr, time::Duration};

/// Which way a connection went, seen from the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
        }
    }
}

/// A finished (or failed) connection.
#[derive(Debug)]
pub struct ConnectionRecord<'a> {
    /// `namespace/name` of the enrolled pod.
    pub pod: &'a str,
    pub direction: Direction,
    /// Where the app connected from; for outbound, the source the destination saw (the
    /// pod's IP) once the upstream connection is up, else the app's address.
    pub src: SocketAddr,
    /// The original destination.
    pub dst: Option<SocketAddr>,
    /// Bytes from the pod's app to the destination.
    pub bytes_sent: u64,
    /// Bytes from the destination to the pod's app.
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
    match &record.error {
        None => tracing::info!(
            target: "access",
            pod = record.pod,
            direction = record.direction.as_str(),
            src = %record.src,
            dst = %dst,
            bytes_sent = record.bytes_sent,
            bytes_received = record.bytes_received,
            duration_ms,
            "connection"
        ),
        Some(error) => tracing::warn!(
            target: "access",
            pod = record.pod,
            direction = record.direction.as_str(),
            src = %record.src,
            dst = %dst,
            bytes_sent = record.bytes_sent,
            bytes_received = record.bytes_received,
            duration_ms,
            error = error.as_str(),
            "connection"
        ),
    }
}
