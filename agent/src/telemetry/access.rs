//! Access logs: one line per connection and one per HTTP request, through tracing under
//! the target `access` (filter it with e.g. `RUST_LOG=info,access=off`; `log.format:
//! json` makes each line a JSON object with the fields below). Lines stand alone: they
//! carry every field they need themselves, and are events without a parent span
//! (tracing's JSON formatter still lists the span the connection runs in).
//!
//! Byte fields are named from the client's side, whichever agent logs the line:
//! `bytes_sent` is client → server (the opener to its destination), `bytes_received` is
//! server → client, both as the app's socket carried them (HTTP heads included). The
//! admin API's `Connection` says the same; Istio's metrics name them the other way round
//! (`istio_tcp_received_bytes_total` is client → server).
use super::{
    facts::{ConnectionFacts, Ending, RequestFacts},
    metrics::TcpLabels,
};

/// One access line, at `$level`: the fields every line has (the connection's: pod,
/// direction, transport, addresses, workloads, identities), then `$extra`.
macro_rules! line {
    ($level:ident, $facts:expr, $labels:expr, $message:literal, $($extra:tt)*) => {{
        let (facts, labels): (&ConnectionFacts, Option<&TcpLabels>) = ($facts, $labels);
        let w = |f: fn(&TcpLabels) -> &str| labels.map(f).unwrap_or("unknown");
        tracing::$level!(
            target: "access",
            parent: None,
            pod = %facts.pod,
            direction = facts.direction.as_str(),
            transport = facts.transport.as_str(),
            src = %facts.src,
            dst = %facts.dst,
            src_workload = w(|l| &l.source_workload),
            src_namespace = w(|l| &l.source_workload_namespace),
            dst_workload = w(|l| &l.destination_workload),
            dst_namespace = w(|l| &l.destination_workload_namespace),
            dst_service = w(|l| &l.destination_service),
            src_identity = facts.src_identity.as_deref().unwrap_or(""),
            dst_identity = facts.dst_identity.as_deref().unwrap_or(""),
            $($extra)*
            $message
        )
    }};
}

/// A connection's line, as it ends (or is refused): `info`, or `warn` with `error` when
/// it failed. `labels` are its metrics' (workloads and Service), when it got that far.
pub fn connection(facts: &ConnectionFacts, labels: Option<&TcpLabels>, ending: &Ending) {
    let duration_ms = ending.duration.as_secs_f64() * 1000.0;
    match &ending.failure {
        None => line!(
            info,
            facts,
            labels,
            "connection",
            bytes_sent = ending.bytes_sent,
            bytes_received = ending.bytes_received,
            duration_ms,
            response_flags = "-",
        ),
        Some(failure) => line!(
            warn,
            facts,
            labels,
            "connection",
            bytes_sent = ending.bytes_sent,
            bytes_received = ending.bytes_received,
            duration_ms,
            response_flags = failure.flags.as_str(),
            error = failure.reason.as_str(),
        ),
    }
}

/// One HTTP request of a connection (its line sits beside the connection's own).
pub fn request(facts: &ConnectionFacts, labels: &TcpLabels, request: &RequestFacts<'_>) {
    line!(info, facts, Some(labels), "request",
        method = %request.method,
        path = %request.path,
        authority = %request.authority,
        protocol = %request.protocol,
        status = request.status,
        request_bytes = request.request_bytes,
        response_bytes = request.response_bytes,
        duration_ms = request.duration.as_secs_f64() * 1000.0,
        denied = request.denied,
        response_flags = request.flags.as_str(),
    );
}
