//! One policy compiled for matching: its selector, and rules whose fields are precompiled
//! matchers; and how a request matches a rule — Istio's semantics, including what
//! HTTP-only fields do to TCP traffic (told in `policy`'s module documentation).
use std::{collections::BTreeMap, net::IpAddr};

use super::{
    matchers::{IpSet, PortSet, StrMatcher},
    model::{Action, AuthorizationPolicy, Operation, Rule, Source as SourceSpec},
    values::Principal,
};
use crate::policy::evaluate::{Http, Request, Source};

/// The trust domain Istio treats as "the local trust domain" in principals.
const CLUSTER_LOCAL: &str = "cluster.local";

#[derive(Debug)]
pub(super) struct CompiledPolicy {
    /// `namespace/name`.
    pub key: Box<str>,
    pub action: Action,
    /// All must be on the workload; empty selects every workload in scope.
    pub selector: Box<[(Box<str>, Box<str>)]>,
    /// The part of `selector` the index does not check (it files the policy under one
    /// label pair): usually nothing.
    pub selector_rest: Box<[(Box<str>, Box<str>)]>,
    pub rules: Box<[CompiledRule]>,
    /// The destination ports some rule can match (`None`: any), to skip the policy with
    /// one look-up.
    ports: Option<PortSet>,
    /// Some rule uses an HTTP-only field.
    pub http: bool,
}

#[derive(Debug)]
pub(super) struct CompiledRule {
    /// OR'ed; empty matches any source.
    pub from: Box<[SourceMatcher]>,
    /// OR'ed; empty matches any operation.
    pub to: Box<[OperationMatcher]>,
    /// Some operation uses an HTTP-only field.
    pub http: bool,
}

#[derive(Debug)]
pub(super) struct SourceMatcher {
    principals: Option<StrMatcher>,
    not_principals: Option<StrMatcher>,
    namespaces: Option<StrMatcher>,
    not_namespaces: Option<StrMatcher>,
    ip_blocks: Option<IpSet>,
    not_ip_blocks: Option<IpSet>,
}

#[derive(Debug)]
pub(super) struct OperationMatcher {
    pub ports: Option<PortSet>,
    pub not_ports: Option<PortSet>,
    methods: Option<StrMatcher>,
    not_methods: Option<StrMatcher>,
    paths: Option<StrMatcher>,
    not_paths: Option<StrMatcher>,
    hosts: Option<StrMatcher>,
    not_hosts: Option<StrMatcher>,
}

impl CompiledPolicy {
    pub fn new(policy: &AuthorizationPolicy, trust_domain: &str) -> Self {
        let spec = &policy.spec;
        let selector: Box<[(Box<str>, Box<str>)]> = spec
            .selector
            .iter()
            .flat_map(|s| &s.match_labels)
            .map(|(k, v)| (Box::from(k.as_str()), Box::from(v.as_str())))
            .collect();
        let rules: Box<[CompiledRule]> = spec
            .rules
            .iter()
            .map(|r| CompiledRule::new(r, trust_domain))
            .collect();
        Self {
            key: policy.key().into(),
            action: spec.action,
            selector_rest: selector.clone(),
            selector,
            ports: reachable_ports(&rules),
            http: rules.iter().any(|r| r.http),
            rules,
        }
    }

    /// Whether the policy applies to a workload with `labels`, given that the index
    /// found it for that workload (the index checks the namespace and one label pair).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector_rest
            .iter()
            .all(|(k, v)| labels.get(&**k).is_some_and(|l| **l == **v))
    }

    /// The index of the first rule that matches.
    pub(crate) fn first_match(&self, request: &Request<'_>) -> Option<usize> {
        if let Some(ports) = &self.ports
            && !ports.contains(request.port)
        {
            return None;
        }
        self.rules
            .iter()
            .position(|r| r.matches(request, self.action))
    }
}

impl CompiledRule {
    fn new(rule: &Rule, trust_domain: &str) -> Self {
        let from: Box<[SourceMatcher]> = rule
            .from
            .iter()
            .flatten()
            .map(|f| SourceMatcher::new(&f.source, trust_domain))
            .collect();
        let to: Box<[OperationMatcher]> = rule
            .to
            .iter()
            .flatten()
            .map(|t| OperationMatcher::new(&t.operation))
            .collect();
        Self {
            from,
            to,
            http: rule.has_http_fields(),
        }
    }

    /// Istio, for TCP traffic (no HTTP request): an ALLOW rule with an HTTP-only field is
    /// dropped, so it never matches; a DENY or AUDIT rule drops its HTTP-only fields (and
    /// only them), so it matches more.
    pub fn matches(&self, request: &Request<'_>, action: Action) -> bool {
        if self.http && request.http.is_none() && action == Action::Allow {
            return false;
        }
        (self.to.is_empty() || self.to.iter().any(|o| o.matches(request)))
            && self.source_matches(&request.source)
    }

    pub(crate) fn source_matches(&self, source: &Source<'_>) -> bool {
        self.from.is_empty() || self.from.iter().any(|s| s.matches(source))
    }
}

impl SourceMatcher {
    fn new(source: &SourceSpec, trust_domain: &str) -> Self {
        let principals = |list: &[Principal]| {
            let rewritten: Vec<String> = list
                .iter()
                .map(|p| local_trust_domain(p.as_str(), trust_domain))
                .collect();
            StrMatcher::new(
                rewritten.iter().map(|p| super::values::split_pattern(p)),
                false,
            )
        };
        Self {
            principals: principals(&source.principals),
            not_principals: principals(&source.not_principals),
            namespaces: StrMatcher::new(source.namespaces.iter().map(|p| p.kind()), false),
            not_namespaces: StrMatcher::new(source.not_namespaces.iter().map(|p| p.kind()), false),
            ip_blocks: IpSet::new(source.ip_blocks.iter().map(|b| b.net())),
            not_ip_blocks: IpSet::new(source.not_ip_blocks.iter().map(|b| b.net())),
        }
    }

    /// Principal and namespace come from the peer's certificate: a plaintext peer has
    /// neither, so `principals`/`namespaces` don't match it and `notPrincipals`/
    /// `notNamespaces` do (Envoy's `authenticated` matcher is false without TLS).
    pub fn matches(&self, source: &Source<'_>) -> bool {
        field(&self.principals, &self.not_principals, source.principal)
            && field(&self.namespaces, &self.not_namespaces, source.namespace)
            && ip_field(&self.ip_blocks, &self.not_ip_blocks, source.ip)
    }
}

impl OperationMatcher {
    fn new(op: &Operation) -> Self {
        let strings = |list: &[super::values::Pattern], ignore_case| {
            StrMatcher::new(list.iter().map(|p| p.kind()), ignore_case)
        };
        let paths = |list: &[super::values::PathPattern]| {
            StrMatcher::new(list.iter().map(|p| p.kind()), false)
        };
        Self {
            ports: PortSet::new(op.ports.iter().map(|p| p.get())),
            not_ports: PortSet::new(op.not_ports.iter().map(|p| p.get())),
            methods: strings(&op.methods, false),
            not_methods: strings(&op.not_methods, false),
            paths: paths(&op.paths),
            not_paths: paths(&op.not_paths),
            hosts: strings(&op.hosts, true),
            not_hosts: strings(&op.not_hosts, true),
        }
    }

    /// For TCP traffic the HTTP-only fields are skipped here; `CompiledRule::matches` has
    /// already refused ALLOW rules that have them.
    fn matches(&self, request: &Request<'_>) -> bool {
        if !self.port_matches(request.port) {
            return false;
        }
        match request.http {
            None => true,
            Some(Http { method, path, host }) => {
                field(&self.methods, &self.not_methods, Some(method))
                    && field(&self.paths, &self.not_paths, Some(path))
                    && field(&self.hosts, &self.not_hosts, Some(host))
            }
        }
    }

    pub(crate) fn port_matches(&self, port: u16) -> bool {
        self.ports.as_ref().is_none_or(|p| p.contains(port))
            && !self.not_ports.as_ref().is_some_and(|p| p.contains(port))
    }
}

/// The union of the ports the rules list, when every operation of every rule lists some;
/// else `None` (a rule may match any port).
fn reachable_ports(rules: &[CompiledRule]) -> Option<PortSet> {
    let mut ports = Vec::new();
    for rule in rules {
        if rule.to.is_empty() {
            return None;
        }
        for op in &rule.to {
            ports.extend_from_slice(op.ports.as_ref()?.ports());
        }
    }
    PortSet::new(ports)
}

/// A field and its `not` form: the value must match one of `yes` (when set) and none of
/// `no`. An absent value matches no pattern.
fn field(yes: &Option<StrMatcher>, no: &Option<StrMatcher>, value: Option<&str>) -> bool {
    if let Some(yes) = yes
        && !value.is_some_and(|v| yes.matches(v))
    {
        return false;
    }
    if let Some(no) = no
        && value.is_some_and(|v| no.matches(v))
    {
        return false;
    }
    true
}

fn ip_field(yes: &Option<IpSet>, no: &Option<IpSet>, ip: IpAddr) -> bool {
    yes.as_ref().is_none_or(|s| s.contains(ip)) && !no.as_ref().is_some_and(|s| s.contains(ip))
}

/// Istio reads `cluster.local` in a principal as "the local trust domain": a principal of
/// the form `cluster.local/ns/<ns>/sa/<sa>` (five `/`-separated parts, patterns allowed)
/// is rewritten to the mesh's trust domain. Others are kept as written.
fn local_trust_domain(principal: &str, trust_domain: &str) -> String {
    if trust_domain != CLUSTER_LOCAL
        && principal.split('/').count() == 5
        && let Some(rest) = principal.strip_prefix(CLUSTER_LOCAL)
        && rest.starts_with('/')
    {
        return format!("{trust_domain}{rest}");
    }
    principal.to_string()
}

#[cfg(test)]
mod tests {
    use super::super::values::PatternKind;
    use super::*;

    #[test]
    fn cluster_local_means_the_mesh_trust_domain() {
        assert_eq!(
            local_trust_domain("cluster.local/ns/a/sa/b", "example.org"),
            "example.org/ns/a/sa/b"
        );
        assert_eq!(
            local_trust_domain("cluster.local/ns/a/sa/*", "example.org"),
            "example.org/ns/a/sa/*"
        );
        assert_eq!(
            local_trust_domain("other.td/ns/a/sa/b", "example.org"),
            "other.td/ns/a/sa/b"
        );
        assert_eq!(
            local_trust_domain("cluster.local/*", "example.org"),
            "cluster.local/*"
        );
        assert_eq!(
            local_trust_domain("*/ns/a/sa/b", "example.org"),
            "*/ns/a/sa/b"
        );
        assert_eq!(
            local_trust_domain("cluster.local/ns/a/sa/b", "cluster.local"),
            "cluster.local/ns/a/sa/b"
        );
    }

    #[test]
    fn a_field_and_its_not_form() {
        let m = |p: &str| StrMatcher::new([super::super::values::split_pattern(p)], false);
        assert!(field(&None, &None, None));
        assert!(field(&m("a"), &None, Some("a")));
        assert!(!field(&m("a"), &None, Some("b")));
        assert!(!field(&m("*"), &None, None), "absent never matches");
        assert!(field(&None, &m("a"), None), "absent is not excluded");
        assert!(!field(&None, &m("a"), Some("a")));
        assert!(!field(&m("a*"), &m("ab"), Some("ab")));
        assert!(field(&m("a*"), &m("ab"), Some("ac")));
    }

    #[test]
    fn pattern_kinds_reach_the_matcher() {
        let kinds: Vec<PatternKind> = ["a", "a*", "*a", "*"]
            .iter()
            .map(|p| super::super::values::split_pattern(p).0)
            .collect();
        assert_eq!(
            kinds,
            [
                PatternKind::Exact,
                PatternKind::Prefix,
                PatternKind::Suffix,
                PatternKind::Any
            ]
        );
    }
}
