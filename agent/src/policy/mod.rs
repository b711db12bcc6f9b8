//! Authorization policy: Istio's `AuthorizationPolicy`, as YAML files today and as the
//! Kubernetes custom resource `security.outrider.io/v1alpha1` later, and the compiled
//! matcher the proxy asks per connection or HTTP request, whose pure-L4 DENY part also
//! feeds the kernel.
//!
//! `model` is the resource, `values` its checked scalars, `crd` its Kubernetes definition
//! (and the conversion of a watched resource), `validate` the checks across fields, `load`
//! reads files, `error` says what is wrong and where. `compile` turns a policy into
//! `matchers`, `index` finds the policies that can select a workload, `set` holds it all as
//! a [`PolicySet`]; `evaluate` decides a request, `kernel` derives the denials the source's
//! kernel can enforce. `tests/` checks the whole against Istio's
//! semantics.
//!
//! # Semantics
//!
//! Istio's, from its references ("Authorization Policy", `security/v1beta1` API; the
//! "Authorization on TCP traffic" task; istiod's validation and RBAC generation):
//!
//! - **Decision.** A matching DENY policy denies. Else, if no ALLOW policy selects the
//!   workload, allow. Else an ALLOW policy must match, or deny. AUDIT policies that match
//!   are reported in the [`Decision`] and change nothing. (`CUSTOM` is not supported.)
//! - **Scope.** A policy applies to workloads of its namespace; in the root namespace
//!   (`policy.rootNamespace`, default `outrider-system`), to workloads of every namespace.
//!   `selector.matchLabels` narrows it to workloads with all those labels (no wildcards).
//! - **Rules.** A policy matches when one of its rules does. No rules: it matches nothing,
//!   so an ALLOW policy without rules denies everything it selects ("allow nothing");
//!   `rules: [{}]` matches everything. A DENY policy without rules is refused, as istiod
//!   refuses it (it would deny nothing).
//! - **Within a rule**, `from` entries are OR'ed, `to` entries are OR'ed, and both must
//!   match (absent: any). Within a source or operation, fields are AND'ed, a field's values
//!   OR'ed, and a `notX` field excludes its values. An empty list is an absent field (as
//!   in Istio's protobuf); `from: []`, `to: []`, an empty source or operation and empty
//!   values are refused, as istiod refuses them.
//! - **Strings** (principals, namespaces, methods, paths, hosts): exact `abc`, prefix
//!   `abc*`, suffix `*abc`, or `*` for any non-empty value. Methods and paths are
//!   case-sensitive.
//! - **Hosts** ignore case and match the `Host`/`:authority` as sent, port included, as
//!   Istio's `HostMatcher` does: `web.shop` matches `Host: web.shop` only (not
//!   `web.shop:8080`), `web.shop:*` any port, `admin.shop:8080` that port, `*.shop` a
//!   host without port. (The proxy refuses a request with several `Host` headers, and
//!   turns an absolute-form target's authority into its `Host`.)
//! - **Paths** are matched without their query string, as the caller passes them: the
//!   proxy normalizes every HTTP request's path before asking (`proxy::http::path`:
//!   percent-decoding of unreserved characters, dot segments removed, slashes merged;
//!   `%2F`, `%5C`, `..;`, `\` and control characters refused with 400) and the app
//!   receives that same path. [`PolicySet::evaluate`] itself does not normalize.
//! - **Principals** are the peer's SPIFFE ID without `spiffe://`; `cluster.local` as the
//!   trust domain of a `<td>/ns/<ns>/sa/<sa>` principal means the mesh's trust domain.
//!   A plaintext peer has no principal and no namespace: `principals`/`namespaces` never
//!   match it, `notPrincipals`/`notNamespaces` always do (Envoy's `authenticated` matcher
//!   is false without TLS, so its negation is true) — a DENY with `notPrincipals: ["*"]`
//!   refuses plaintext, Istio's way to require mutual TLS.
//! - **IP blocks** match the connection's source address; **ports** its destination port.
//! - **TCP traffic and HTTP-only fields** (`methods`, `paths`, `hosts` and their `not`
//!   forms), for a request without `http`: an ALLOW rule using one never matches (istiod
//!   drops the rule; if that leaves no ALLOW rule, TCP traffic to the workload is denied),
//!   while a DENY or AUDIT rule ignores them and matches on its other fields — `{ports:
//!   ["9000"], methods: ["GET"]}` denies all TCP traffic to port 9000, and `{methods:
//!   ["GET"]}` alone denies all TCP traffic ("Istio doesn't understand the HTTP-only fields
//!   while creating a DENY rule for tcp port and due to its restrictive nature it denies
//!   all the traffic"). An HTTP request is matched on every field.
//!   [`PolicySet::is_http_sensitive`] tells the proxy when parsing HTTP can change a
//!   decision.
//!
//! # Choices where Istio leaves room
//!
//! - A `*` anywhere but alone, first or last is refused (Istio would match it literally,
//!   or, in namespaces, as a regular expression). Paths must start with `/` (or `*`) and
//!   may not hold `?`, `#`, path templates (`{*}`) or regular-expression syntax.
//!   Principals written with `spiffe://` are refused (they could never match).
//! - Ports are 1–65535 (istiod takes `"0"`, which no connection has); YAML numbers are
//!   accepted besides Istio's strings. IP blocks ignore host bits, as Envoy does.
//! - `metadata.namespace` is required in files. Unknown fields and unsupported Istio fields
//!   (`when`, `requestPrincipals`, `remoteIpBlocks`, `targetRef`, `provider`) are refused.
//! - When several policies match, the one reported is the first found (see
//!   [`PolicySet::evaluate`]); the decision itself doesn't depend on it.
mod compile;
pub mod crd;
mod error;
mod evaluate;
mod index;
mod kernel;
mod load;
mod matchers;
pub mod model;
mod set;
pub mod source;
mod validate;
pub mod values;

#[cfg(test)]
mod tests;

pub use error::{Origin, PolicyError};
pub use evaluate::{Audits, Decision, Http, Reason, Request, RuleRef, Source, WorkloadRef};
pub use kernel::{DestinationRef, KernelDenial, SourcePod};
pub use load::parse_yaml;
pub use model::{
    Action, AuthorizationPolicy, AuthorizationPolicyResource, AuthorizationPolicySpec,
};
pub use set::PolicySet;
/// Kubernetes name rules, for whoever else takes names (the admin API).
pub(crate) use validate::{check_name, check_namespace};
