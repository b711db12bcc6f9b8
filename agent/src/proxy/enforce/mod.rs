//! Policy on live connections, in node and sidecar mode alike (as ztunnel's connection
//! manager does it): every connection into a pod carries a [`Guard`] — who the peer is,
//! where it went, and what runs on it (bytes not yet classified, opaque bytes, or HTTP
//! requests, each one leased while it runs). Whenever what decides them changes — the
//! policies ([`Shared::set_policies`]), the pod's record and so its labels
//! ([`PodProxy::set_record`]), its namespace's mTLS mode ([`Shared::set_workloads`]) —
//! [`recheck`] decides each one again: an opaque connection now denied is closed (both
//! ends reset), a running HTTP request now denied is reset (its HTTP/2 stream, or its
//! HTTP/1 connection), plaintext into a namespace now strict is closed whatever it
//! carries. The next HTTP request is decided when it comes, with what is in force then.
//! Each is logged with the pod, the peer and the reason, and counted as a refusal.
//!
//! No decision can slip between a change and the re-check: a connection's state is set
//! before it is decided (opaque, or a request registered), and a change is stored before
//! the guards are walked, so whichever comes second sees the other.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, Weak},
};

use tokio_util::sync::CancellationToken;

use super::{
    authorize::{self, Peer},
    connections::Connection,
    error::Refusal,
    http::{Lease, RequestInfo},
    inbound::Arrival,
    pod::{PodProxy, Shared},
};
use crate::{
    identity::SpiffeId,
    policy,
    telemetry::{
        facts::{Failure, Transport},
        refusals::Reason,
    },
    workloads::MtlsMode,
};

/// What a connection into a pod was allowed as, to be decided again.
#[derive(Debug)]
pub struct Guard {
    pod: Weak<PodProxy>,
    peer: Option<SpiffeId>,
    ip: IpAddr,
    port: u16,
    transport: Transport,
    /// Plaintext the kubelet sent (a probe): served by a strict pod all the same.
    kubelet_probe: bool,
    state: Mutex<State>,
}

/// What runs on a connection, as far as its guard knows.
#[derive(Debug)]
enum State {
    /// Not classified yet: decided as whatever it turns out to be.
    Detecting,
    /// Opaque bytes, decided as TCP.
    Opaque,
    /// HTTP, decided request by request: the ones running now, by number.
    Http {
        next: u64,
        running: HashMap<u64, Running>,
    },
}

/// An HTTP request under way.
#[derive(Debug)]
struct Running {
    request: RequestInfo,
    revoke: CancellationToken,
}

impl Guard {
    pub fn new(pod: &Arc<PodProxy>, arrival: &Arrival) -> Arc<Self> {
        Arc::new(Self {
            pod: Arc::downgrade(pod),
            peer: arrival.peer.clone(),
            ip: arrival.src.ip(),
            port: arrival.dst.port(),
            transport: arrival.transport,
            kubelet_probe: arrival.kubelet_probe,
            state: Mutex::new(State::Detecting),
        })
    }

    /// The connection turned out not to be HTTP: decided as TCP (HTTP-only rules as
    /// Istio treats them) now, and again on every change.
    pub fn opaque(&self) -> Result<(), Refusal> {
        *crate::sync::lock(&self.state) = State::Opaque;
        self.decide(None)
    }

    /// Decides one HTTP request; allowed, it is leased until its exchange ends, and
    /// reset if a change denies it meanwhile.
    pub fn request(self: &Arc<Self>, request: &RequestInfo) -> Result<Lease, Refusal> {
        let revoke = CancellationToken::new();
        let id = {
            let mut state = crate::sync::lock(&self.state);
            if !matches!(*state, State::Http { .. }) {
                *state = State::Http {
                    next: 0,
                    running: HashMap::new(),
                };
            }
            let State::Http { next, running } = &mut *state else {
                unreachable!("just made HTTP")
            };
            *next += 1;
            running.insert(
                *next,
                Running {
                    request: request.clone(),
                    revoke: revoke.clone(),
                },
            );
            *next
        };
        let release = Release {
            guard: Arc::downgrade(self),
            id,
        };
        self.decide(Some(request))?;
        Ok(Lease::new(revoke, Some(Box::new(release))))
    }

    /// The verdict of what is in force now on the connection (`request`: one of its
    /// HTTP requests).
    fn decide(&self, request: Option<&RequestInfo>) -> Result<(), Refusal> {
        let Some(pod) = self.pod.upgrade() else {
            // The pod is gone: its connections are being closed anyway.
            return Ok(());
        };
        self.strict(&pod)?;
        let http = request.map(|r| policy::Http {
            method: r.method.as_str(),
            path: r.path(),
            host: r.authority.as_deref().unwrap_or(""),
        });
        let peer = Peer {
            identity: self.peer.as_ref(),
            ip: self.ip,
        };
        authorize::check(&pod, peer, self.port, http)
    }

    /// Plaintext into a strict namespace's pod is refused, the kubelet's probes aside.
    fn strict(&self, pod: &PodProxy) -> Result<(), Refusal> {
        if self.transport == Transport::Plaintext
            && !self.kubelet_probe
            && pod.mtls() == MtlsMode::Strict
        {
            return Err(Refusal {
                why: Reason::StrictPlaintext,
                reason: "plaintext refused: the namespace requires mutual TLS (strict)".into(),
            });
        }
        Ok(())
    }

    /// Decides the connection again with what is in force now; closes it or resets its
    /// requests as they are now denied. Returns how many refusals that made.
    fn recheck(&self, conn: &Connection, shared: &Shared) -> usize {
        let Some(pod) = self.pod.upgrade() else {
            return 0;
        };
        let state = crate::sync::lock(&self.state);
        if let Err(refusal) = self.strict(&pod) {
            // Whatever runs on it: revoke its requests, then close it.
            if let State::Http { running, .. } = &*state {
                running.values().for_each(|r| r.revoke.cancel());
            }
            drop(state);
            close(conn, shared, refusal);
            return 1;
        }
        match &*state {
            State::Detecting => 0,
            State::Opaque => match self.decide(None) {
                Ok(()) => 0,
                Err(refusal) => {
                    drop(state);
                    close(conn, shared, refusal);
                    1
                }
            },
            State::Http { running, .. } => {
                let mut refused = 0;
                for r in running.values().filter(|r| !r.revoke.is_cancelled()) {
                    if let Err(refusal) = self.decide(Some(&r.request)) {
                        r.revoke.cancel();
                        refused += 1;
                        let facts = &conn.facts;
                        shared.connections.recorder().refused(
                            &facts.pod,
                            facts.direction.as_str(),
                            refusal.why,
                        );
                        tracing::info!(
                            pod = %facts.pod,
                            id = conn.id,
                            peer = %facts.src,
                            peer_identity = facts.peer_identity().unwrap_or(""),
                            method = %r.request.method,
                            path = r.request.path(),
                            refusal = refusal.why.as_str(),
                            reason = %refusal.reason,
                            "resetting a running request that is now denied"
                        );
                    }
                }
                refused
            }
        }
    }
}

/// Closes a connection that is now refused, and says why.
fn close(conn: &Connection, shared: &Shared, refusal: Refusal) {
    let facts = &conn.facts;
    shared
        .connections
        .recorder()
        .refused(&facts.pod, facts.direction.as_str(), refusal.why);
    tracing::info!(
        pod = %facts.pod,
        id = conn.id,
        src = %facts.src,
        dst = %facts.dst,
        peer_identity = facts.peer_identity().unwrap_or(""),
        refusal = refusal.why.as_str(),
        reason = %refusal.reason,
        "closing a connection that is now refused"
    );
    conn.close(Failure {
        flags: refusal.flags(),
        reason: format!("{}, after a change", refusal.reason),
    });
}

/// Takes a request out of its guard's table when its exchange ends.
struct Release {
    guard: Weak<Guard>,
    id: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some(guard) = self.guard.upgrade() else {
            return;
        };
        if let State::Http { running, .. } = &mut *crate::sync::lock(&guard.state) {
            running.remove(&self.id);
        }
    }
}

/// Decides again every live connection into `pod` (all pods: `None`) with what is in
/// force now. Returns how many connections were closed or requests reset.
pub fn recheck(shared: &Shared, pod: Option<&str>) -> usize {
    let mut refused = 0;
    for conn in shared.connections.guarded() {
        if pod.is_some_and(|p| p != conn.facts.pod) {
            continue;
        }
        if let Some(guard) = &conn.guard {
            refused += guard.recheck(&conn, shared);
        }
    }
    if refused > 0 {
        tracing::info!(
            pod = pod.unwrap_or("*"),
            refused,
            "re-checked live connections"
        );
    }
    refused
}

#[cfg(test)]
mod tests;
