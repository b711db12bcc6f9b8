//! Refusals: connections and requests the agent turned away (strict mTLS, policy, a
//! hostile path, a reserved port, …), counted per pod and reason in
//! `outrider_refusals_total`, so that an operator sees an attack or a misconfiguration
//! without reading logs. Each refusal is also logged once, by whoever refuses it, with
//! the pod, the peer and the reason (for connections: the access line's `error`).
use prometheus_client::encoding::EncodeLabelSet;

/// Why a connection or request was refused. Its `as_str` is the metric's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Plaintext into a pod of a strict namespace.
    StrictPlaintext,
    /// An authorization policy denied it.
    Policy,
    /// It was addressed to something that is not the pod's (an address or a port).
    NotThePods,
    /// The pod's app could not be reached.
    AppUnreachable,
    /// A tunnel whose peer did not complete mutual TLS with an accepted identity.
    Handshake,
    /// One of the pod's listeners held `proxy.maxConnectionsPerListener` connections.
    ConnectionLimit,
    /// An HTTP request whose path cannot be normalized (or must not be: `%2F`, `..;`),
    /// answered 400 before policy.
    InvalidPath,
    /// An HTTP request whose host is ambiguous (several `Host` headers, or an HTTP/2
    /// `Host` that is not its `:authority`), answered 400 before policy.
    InvalidHost,
    /// A tunnel CONNECT to one of the agent's reserved ports (`capture.reservedPorts`),
    /// which no peer may reach through a tunnel (as ztunnel refuses them).
    ReservedPort,
    /// An app's connect that the kernel refused (`capture.failPolicy: fail-closed`)
    /// because its original destination could not be recorded: a map insert failed.
    KernelMapInsert,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::StrictPlaintext => "strict_plaintext",
            Reason::Policy => "policy",
            Reason::NotThePods => "not_the_pods",
            Reason::AppUnreachable => "app_unreachable",
            Reason::Handshake => "handshake",
            Reason::ConnectionLimit => "connection_limit",
            Reason::InvalidPath => "invalid_path",
            Reason::InvalidHost => "invalid_host",
            Reason::ReservedPort => "reserved_port",
            Reason::KernelMapInsert => "kernel_map_insert",
        }
    }
}

/// The labels of `outrider_refusals_total`: the pod that was protected, which way the
/// connection went (`inbound` | `outbound`), and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub namespace: String,
    pub pod: String,
    pub direction: &'static str,
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;

    #[test]
    fn refusals_are_counted_per_pod_and_reason() {
        let metrics = Metrics::default();
        metrics.refused("shop/web", "inbound", Reason::StrictPlaintext);
        metrics.refused("shop/web", "inbound", Reason::StrictPlaintext);
        metrics.refused("shop/web", "inbound", Reason::Policy);
        metrics.refused("no-slash", "inbound", Reason::Policy);
        metrics.refused("shop/web", "inbound", Reason::InvalidPath);
        metrics.refused("shop/web", "inbound", Reason::InvalidHost);
        let text = metrics.encode();
        assert!(
            text.contains("# TYPE outrider_refusals_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"outrider_refusals_total{namespace="shop",pod="web",direction="inbound",reason="strict_plaintext"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"outrider_refusals_total{namespace="shop",pod="web",direction="inbound",reason="policy"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"outrider_refusals_total{namespace="",pod="no-slash",direction="inbound",reason="policy"} 1"#
            ),
            "{text}"
        );
        for reason in ["invalid_path", "invalid_host"] {
            let line = format!(
                r#"outrider_refusals_total{{namespace="shop",pod="web",direction="inbound",reason="{reason}"}} 1"#
            );
            assert!(text.contains(&line), "{text}");
        }
    }
}
