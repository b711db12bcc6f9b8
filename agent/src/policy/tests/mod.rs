//! Behaviour tests of the policy module against Istio's semantics: decisions
//! (`evaluate`), kernel denials (`kernel`), and what is refused and where (`validation`).
mod evaluate;
mod kernel;
mod validation;

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use super::{Decision, Http, PolicySet, Request, Source, WorkloadRef, load::parse_documents};

pub(super) const TD: &str = "cluster.local";
pub(super) const ROOT: &str = "outrider-system";

/// One policy document; `spec` is YAML written from column 0.
pub(super) fn doc(namespace: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: security.outrider.io/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

pub(super) fn set_with(docs: &[String], trust_domain: &str) -> PolicySet {
    let text = docs.join("---\n");
    let items = parse_documents(Path::new("test.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    PolicySet::build(items, trust_domain, ROOT).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn set(docs: &[String]) -> PolicySet {
    set_with(docs, TD)
}

pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A connection over mutual TLS from `principal` (`td/ns/<ns>/sa/<sa>`).
pub(super) fn mtls(principal: &'static str, from: &str, port: u16) -> Request<'static> {
    Request {
        source: Source {
            principal: Some(principal),
            namespace: principal.split('/').nth(2),
            ip: ip(from),
        },
        port,
        http: None,
    }
}

pub(super) fn plaintext(from: &str, port: u16) -> Request<'static> {
    Request {
        source: Source {
            principal: None,
            namespace: None,
            ip: ip(from),
        },
        port,
        http: None,
    }
}

/// The same connection carrying an HTTP request.
pub(super) fn http(
    mut r: Request<'static>,
    method: &'static str,
    path: &'static str,
    host: &'static str,
) -> Request<'static> {
    r.http = Some(Http { method, path, host });
    r
}

pub(super) fn decide<'p>(
    set: &'p PolicySet,
    namespace: &str,
    workload_labels: &[(&str, &str)],
    request: &Request<'_>,
) -> Decision<'p> {
    let labels = labels(workload_labels);
    set.evaluate(
        &WorkloadRef {
            namespace,
            labels: &labels,
        },
        request,
    )
}

pub(super) fn allowed(
    set: &PolicySet,
    namespace: &str,
    workload_labels: &[(&str, &str)],
    request: &Request<'_>,
) -> bool {
    decide(set, namespace, workload_labels, request).allowed
}
