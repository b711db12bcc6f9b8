//! The per-request decision: the request as the proxy sees it, the [`Decision`] with the
//! policy that decided and the AUDIT policies that matched, and the hot path that computes
//! it without allocating (unless more than four AUDIT policies match one request).
use std::{collections::BTreeMap, fmt, net::IpAddr, ops::ControlFlow};

use super::{PolicySet, compile::CompiledPolicy, index::Bucket, matchers::canonical_ip};

/// The workload a request is for (the destination; its agent evaluates).
#[derive(Clone, Copy, Debug)]
pub struct WorkloadRef<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Who sends the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source<'a> {
    /// The peer's SPIFFE ID without `spiffe://` (`cluster.local/ns/shop/sa/client`);
    /// `None` for a plaintext peer.
    pub principal: Option<&'a str>,
    /// The namespace in the peer's SPIFFE ID; `None` for a plaintext peer.
    pub namespace: Option<&'a str>,
    /// The connection's source address (IPv4-mapped IPv6 counts as IPv4).
    pub ip: IpAddr,
}

/// The HTTP request, when the connection carries HTTP and the proxy parsed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Http<'a> {
    pub method: &'a str,
    /// The request path, normalized by the caller (the proxy forwards that same path); a
    /// query string or fragment is ignored.
    pub path: &'a str,
    /// `Host` / `:authority` as sent (with a port if it has one); empty when absent.
    pub host: &'a str,
}

/// A connection (`http: None`: TCP, or HTTP not parsed) or one HTTP request on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub source: Source<'a>,
    /// The destination port.
    pub port: u16,
    pub http: Option<Http<'a>>,
}

/// A rule of a policy: `policy` is `namespace/name`, `rule` its index in `spec.rules`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleRef<'p> {
    pub policy: &'p str,
    pub rule: usize,
}

impl fmt::Display for RuleRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rule {}", self.policy, self.rule)
    }
}

/// Why a request was allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason<'p> {
    /// A DENY policy matched: denied.
    DenyPolicy(RuleRef<'p>),
    /// An ALLOW policy matched (and no DENY did): allowed.
    AllowPolicy(RuleRef<'p>),
    /// ALLOW policies select the workload and none matched: denied.
    NoAllowMatched,
    /// No DENY matched and no ALLOW policy selects the workload: allowed.
    NoAllowPolicies,
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::DenyPolicy(r) => write!(f, "denied by DENY policy {r}"),
            Reason::AllowPolicy(r) => write!(f, "allowed by ALLOW policy {r}"),
            Reason::NoAllowMatched => f.write_str("no ALLOW policy matched"),
            Reason::NoAllowPolicies => f.write_str("no ALLOW policy applies"),
        }
    }
}

/// The AUDIT policies that matched (in evaluation order). Four are kept inline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audits<'p> {
    inline: [Option<RuleRef<'p>>; 4],
    more: Vec<RuleRef<'p>>,
}

impl<'p> Audits<'p> {
    fn push(&mut self, r: RuleRef<'p>) {
        match self.inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(r),
            None => self.more.push(r),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = RuleRef<'p>> + '_ {
        self.inline.iter().flatten().chain(&self.more).copied()
    }

    pub fn len(&self) -> usize {
        self.inline.iter().flatten().count() + self.more.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inline[0].is_none()
    }
}

/// The outcome for one request, borrowing policy names from the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<'p> {
    pub allowed: bool,
    pub reason: Reason<'p>,
    /// AUDIT policies that matched; they never change `allowed`.
    pub audits: Audits<'p>,
}

impl<'p> Decision<'p> {
    /// The `namespace/name` of the policy that decided, if one did.
    pub fn policy(&self) -> Option<&'p str> {
        match self.reason {
            Reason::DenyPolicy(r) | Reason::AllowPolicy(r) => Some(r.policy),
            Reason::NoAllowMatched | Reason::NoAllowPolicies => None,
        }
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "allow" } else { "deny" };
        write!(f, "{verdict}: {}", self.reason)?;
        for (i, a) in self.audits.iter().enumerate() {
            let sep = if i == 0 { "; audited by " } else { ", " };
            write!(f, "{sep}{a}")?;
        }
        Ok(())
    }
}

impl PolicySet {
    /// Decides `request` for `workload`, as Istio does: a matching DENY policy denies;
    /// else, if ALLOW policies select the workload, one of them must match; else allow.
    /// AUDIT policies that match are reported and change nothing.
    ///
    /// When several policies match, the first found decides: the root namespace's
    /// policies before the workload namespace's; within a namespace, those without a
    /// selector before those found through one of the workload's labels; by name within
    /// each of these groups. Then the first matching rule of that policy.
    pub fn evaluate<'p>(
        &'p self,
        workload: &WorkloadRef<'_>,
        request: &Request<'_>,
    ) -> Decision<'p> {
        let mut audits = Audits::default();
        if self.compiled.is_empty() {
            return Decision {
                allowed: true,
                reason: Reason::NoAllowPolicies,
                audits,
            };
        }
        let request = normalize(request);
        let labels = workload.labels;

        let mut denied = None;
        let _ = self.index.visit(workload.namespace, labels, |bucket| {
            if denied.is_none() {
                denied = self.first_match(&bucket.deny, labels, &request);
            }
            for &i in &bucket.audit {
                let p = self.policy(i);
                if p.selects(labels)
                    && let Some(rule) = p.first_match(&request)
                {
                    audits.push(RuleRef {
                        policy: &p.key,
                        rule,
                    });
                }
            }
            ControlFlow::<()>::Continue(())
        });
        if let Some(r) = denied {
            return Decision {
                allowed: false,
                reason: Reason::DenyPolicy(r),
                audits,
            };
        }

        let mut any_allow = false;
        let allowed = self.index.visit(workload.namespace, labels, |bucket| {
            for &i in &bucket.allow {
                let p = self.policy(i);
                if !p.selects(labels) {
                    continue;
                }
                any_allow = true;
                if let Some(rule) = p.first_match(&request) {
                    return ControlFlow::Break(RuleRef {
                        policy: &p.key,
                        rule,
                    });
                }
            }
            ControlFlow::Continue(())
        });
        let (allowed, reason) = match allowed {
            ControlFlow::Break(r) => (true, Reason::AllowPolicy(r)),
            ControlFlow::Continue(()) if any_allow => (false, Reason::NoAllowMatched),
            ControlFlow::Continue(()) => (true, Reason::NoAllowPolicies),
        };
        Decision {
            allowed,
            reason,
            audits,
        }
    }

    /// Whether some policy selecting `workload` uses an HTTP-only field (`methods`,
    /// `paths`, `hosts` or a `not` form): only then must the proxy parse HTTP to decide.
    pub fn is_http_sensitive(&self, workload: &WorkloadRef<'_>) -> bool {
        self.index
            .visit(workload.namespace, workload.labels, |bucket: &Bucket| {
                let hit = bucket.all().any(|i| {
                    let p = self.policy(i);
                    p.http && p.selects(workload.labels)
                });
                if hit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .is_break()
    }

    pub(super) fn policy(&self, i: u32) -> &CompiledPolicy {
        &self.compiled[i as usize]
    }

    /// The first policy of `list` selecting the workload with a matching rule.
    fn first_match(
        &self,
        list: &[u32],
        labels: &BTreeMap<String, String>,
        request: &Request<'_>,
    ) -> Option<RuleRef<'_>> {
        list.iter().find_map(|&i| {
            let p = self.policy(i);
            if !p.selects(labels) {
                return None;
            }
            p.first_match(request).map(|rule| RuleRef {
                policy: &p.key,
                rule,
            })
        })
    }
}

/// The request as matched: canonical source address, path without query or fragment.
fn normalize<'a>(request: &Request<'a>) -> Request<'a> {
    let mut r = *request;
    r.source.ip = canonical_ip(r.source.ip);
    if let Some(http) = &mut r.http
        && let Some(cut) = http.path.find(['?', '#'])
    {
        http.path = &http.path[..cut];
    }
    r
}
