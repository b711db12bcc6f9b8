//! Asking the current policies about a connection or an HTTP request arriving at an
//! enrolled pod, with what the destination's agent knows of the peer: its verified
//! identity (tunnels only), its address, the port. Matching AUDIT policies are logged
//! (`audit`) whatever the verdict.
use std::net::IpAddr;

use super::{
    error::Refusal,
    pod::{PodProxy, PodRecord},
};
use crate::{
    identity::SpiffeId,
    policy::{Http, Request, Source, WorkloadRef},
    telemetry::refusals::Reason,
};

/// What the destination's agent knows of a peer.
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    pub identity: Option<&'a SpiffeId>,
    pub ip: IpAddr,
}

/// `Err`: denied by policy, with the reason a person reads in the access log.
pub type Verdict = Result<(), Refusal>;

/// The policies' verdict for `peer` reaching `pod` on `port` (`http`: one request).
pub fn check(pod: &PodProxy, peer: Peer<'_>, port: u16, http: Option<Http<'_>>) -> Verdict {
    let policy = pod.shared.policies();
    let principal = peer
        .identity
        .map(|id| id.as_str().trim_start_matches("spiffe://"));
    let request = Request {
        source: Source {
            principal,
            namespace: peer.identity.map(|id| id.namespace()),
            ip: peer.ip,
        },
        port,
        http,
    };
    let record = pod.record();
    let decision = policy.evaluate(&workload_ref(&record), &request);
    for audit in decision.audits.iter() {
        tracing::info!(
            pod = %pod.key,
            policy = audit.policy,
            rule = audit.rule,
            source = %peer.ip,
            principal = principal.unwrap_or(""),
            port,
            method = http.map(|h| h.method).unwrap_or(""),
            path = http.map(|h| h.path).unwrap_or(""),
            allowed = decision.allowed,
            "audit"
        );
    }
    if decision.allowed {
        Ok(())
    } else {
        Err(Refusal::new(
            Reason::Policy,
            format!("RBAC: access denied ({})", decision.reason),
        ))
    }
}

/// True when a policy selecting the pod looks at HTTP requests, so that connections to
/// it must be parsed as HTTP before they can be decided.
pub fn needs_http(pod: &PodProxy) -> bool {
    pod.shared
        .policies()
        .is_http_sensitive(&workload_ref(&pod.record()))
}

/// The pod as policies select it: by its labels as they are now.
fn workload_ref(record: &PodRecord) -> WorkloadRef<'_> {
    WorkloadRef {
        namespace: &record.workload.namespace,
        labels: &record.workload.labels,
    }
}
