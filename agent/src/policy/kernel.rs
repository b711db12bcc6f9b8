//! The part of DENY policies a *source* node can enforce in the kernel, failing
//! `connect()` before anything leaves the pod: for one local source pod and the mesh's
//! destination workloads, the (destination IP, port or any port) pairs that the
//! destination's agent would deny whatever the connection carries. Which rules count is
//! told on [`PolicySet::kernel_denials`].
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    ops::ControlFlow,
};

use super::{PolicySet, compile::CompiledRule, evaluate::Source, matchers::canonical_ip};

/// A pod of this node that connects.
#[derive(Clone, Copy, Debug)]
pub struct SourcePod<'a> {
    /// Its SPIFFE ID without `spiffe://` (`cluster.local/ns/shop/sa/client`).
    pub principal: Option<&'a str>,
    /// The namespace in that ID.
    pub namespace: Option<&'a str>,
    /// Its addresses (one per family for a dual-stack pod).
    pub ips: &'a [IpAddr],
}

/// A workload of the mesh (any node) that pods may connect to.
#[derive(Clone, Copy, Debug)]
pub struct DestinationRef<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub ips: &'a [IpAddr],
}

/// Connections to `ip` on `port` (`None`: every port) are denied. IPv4-mapped IPv6
/// destination addresses are given as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelDenial {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

#[derive(Debug)]
enum Ports {
    Any,
    Some(BTreeSet<u16>),
}

impl Ports {
    fn add(&mut self, other: &Ports) {
        match (&mut *self, other) {
            (Ports::Any, _) => {}
            (_, Ports::Any) => *self = Ports::Any,
            (Ports::Some(mine), Ports::Some(theirs)) => mine.extend(theirs),
        }
    }
}

impl PolicySet {
    /// What `source` may be refused in the kernel when it connects to `destinations`.
    /// Sorted by address, then port; an address denied on every port (`port: None`) has no
    /// other entry.
    ///
    /// A DENY rule yields kernel denials for a destination when all of these hold:
    /// - its policy selects the destination (its namespace or the root namespace, and its
    ///   selector);
    /// - it has no HTTP-only field (`methods`, `paths`, `hosts` or a `not` form): over HTTP
    ///   such a rule denies only some requests, and the kernel cannot tell what will be sent;
    /// - its `from` is absent or matches the source pod. The source's agent knows all the
    ///   destination's agent will see of it: its principal and namespace (the pod's own
    ///   certificate) and its address (the pod's own IP, as the agent connects from inside
    ///   the pod). A pod with several addresses of the destination address's family must
    ///   match with each of them;
    /// - its `to` is absent (any port), or has an operation with `ports` (those, less its
    ///   `notPorts`) or with neither (any port). An operation with only `notPorts` ("every
    ///   port but …") is no finite list and is left to the destination's agent; the other
    ///   operations of the rule still count.
    ///
    /// ALLOW policies yield none (their "nothing matched, deny" default stays with the
    /// destination's agent), nor do AUDIT policies. A connection refused here never reaches
    /// the destination, which therefore neither logs nor audits it: the source should.
    /// Pass only destinations in the mesh: outside it no agent enforces policy.
    pub fn kernel_denials(
        &self,
        source: &SourcePod<'_>,
        destinations: &[DestinationRef<'_>],
    ) -> Vec<KernelDenial> {
        let mut denied: BTreeMap<IpAddr, Ports> = BTreeMap::new();
        for dest in destinations {
            let _ = self.index.visit(dest.namespace, dest.labels, |bucket| {
                for &i in &bucket.deny {
                    let policy = self.policy(i);
                    if !policy.selects(dest.labels) {
                        continue;
                    }
                    for rule in policy.rules.iter().filter(|r| !r.http) {
                        let Some(ports) = l4_ports(rule) else {
                            continue;
                        };
                        for ip in dest.ips.iter().map(|ip| canonical_ip(*ip)) {
                            if source_always_matches(rule, source, ip) {
                                denied
                                    .entry(ip)
                                    .or_insert_with(|| Ports::Some(BTreeSet::new()))
                                    .add(&ports);
                            }
                        }
                    }
                }
                ControlFlow::<()>::Continue(())
            });
        }
        let mut out = Vec::new();
        for (ip, ports) in denied {
            match ports {
                Ports::Any => out.push(KernelDenial { ip, port: None }),
                Ports::Some(ports) => out.extend(ports.into_iter().map(|port| KernelDenial {
                    ip,
                    port: Some(port),
                })),
            }
        }
        out
    }
}

/// The ports a rule without HTTP-only fields denies whatever the source; `None` when it
/// can't be written as a finite list (or is empty).
fn l4_ports(rule: &CompiledRule) -> Option<Ports> {
    if rule.to.is_empty() {
        return Some(Ports::Any);
    }
    let mut ports = BTreeSet::new();
    for op in &rule.to {
        match (&op.ports, &op.not_ports) {
            (None, None) => return Some(Ports::Any),
            (Some(listed), _) => ports.extend(
                listed
                    .ports()
                    .iter()
                    .copied()
                    .filter(|p| op.port_matches(*p)),
            ),
            (None, Some(_)) => {}
        }
    }
    (!ports.is_empty()).then_some(Ports::Some(ports))
}

/// Whether the rule's `from` matches the source pod connecting to `dest`, with each of
/// its addresses of that family (the one the kernel will pick is not known yet).
fn source_always_matches(rule: &CompiledRule, pod: &SourcePod<'_>, dest: IpAddr) -> bool {
    let mut ips = pod
        .ips
        .iter()
        .map(|ip| canonical_ip(*ip))
        .filter(|ip| ip.is_ipv4() == dest.is_ipv4())
        .peekable();
    if ips.peek().is_none() {
        return false;
    }
    ips.all(|ip| {
        rule.source_matches(&Source {
            principal: pod.principal,
            namespace: pod.namespace,
            ip,
        })
    })
}
