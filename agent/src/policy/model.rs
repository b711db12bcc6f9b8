//! The `AuthorizationPolicy` resource as people write it: the YAML file format and, as is,
//! the Kubernetes custom resource `security.outrider.io/v1alpha1`: its spec is
//! [`AuthorizationPolicySpec`], whose `kube::CustomResource` derive makes the resource type
//! [`AuthorizationPolicyResource`] and, from the `JsonSchema` derives below, the definition's
//! schema (see `crd`). Field docs become the schema's descriptions.
//!
//! Fields follow Istio's `security.istio.io/v1` `AuthorizationPolicy`; unsupported ones
//! (`when`, `requestPrincipals`, `remoteIpBlocks`, `targetRef(s)`, `provider`, action
//! `CUSTOM`) are refused as unknown rather than silently ignored.
use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    validate,
    values::{IpBlock, PathPattern, Pattern, Port, Principal},
};

pub const GROUP: &str = "security.outrider.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "security.outrider.io/v1alpha1";
pub const KIND: &str = "AuthorizationPolicy";

/// One policy object (one YAML document).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Always [`API_VERSION`].
    #[serde(deserialize_with = "validate::de_api_version")]
    pub api_version: String,
    /// Always [`KIND`].
    #[serde(deserialize_with = "validate::de_kind")]
    pub kind: String,
    pub metadata: Metadata,
    /// Absent is `{}`: an ALLOW policy with no rules (Istio's "allow nothing").
    #[serde(default, deserialize_with = "validate::de_spec")]
    pub spec: AuthorizationPolicySpec,
}

impl AuthorizationPolicy {
    /// A policy object with the right `apiVersion` and `kind`.
    pub fn new(namespace: &str, name: &str, spec: AuthorizationPolicySpec) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            metadata: Metadata {
                name: name.to_string(),
                namespace: namespace.to_string(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
            },
            spec,
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }
}

/// The part of Kubernetes' `ObjectMeta` a policy file carries.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// A DNS subdomain (lowercase letters, digits, `-`, `.`; at most 253).
    #[serde(deserialize_with = "validate::de_name")]
    pub name: String,
    /// A DNS label. Required (files have no "current namespace").
    #[serde(deserialize_with = "validate::de_namespace")]
    pub namespace: String,
    /// Informational; never used to select anything.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What a policy says: where it applies, what it does, and which requests it matches.
// The `kube` attributes repeat GROUP, VERSION and KIND as literals (a derive cannot read
// constants); a test in `crd` checks that they agree.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema, CustomResource)]
#[kube(
    group = "security.outrider.io",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    root = "AuthorizationPolicyResource",
    namespaced,
    plural = "authorizationpolicies",
    singular = "authorizationpolicy",
    shortname = "orap",
    category = "outrider",
    doc = "Outrider's authorization policy: Istio's AuthorizationPolicy (security.istio.io/v1) \
           with the ALLOW, DENY and AUDIT actions.",
    derive = "PartialEq",
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Absent (or empty): every workload of the policy's namespace, or of the mesh for a
    /// policy in the root namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// ALLOW (the default), DENY or AUDIT (report matches, change nothing).
    #[serde(default)]
    pub action: Action,
    /// A request matches the policy when it matches at least one rule. No rules: matches
    /// nothing (an ALLOW policy then denies everything it selects; a DENY policy without
    /// rules is refused, as Istio's validation does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// Selects workloads by labels: all of `matchLabels` must be on the workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default, deserialize_with = "validate::de_match_labels")]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Allow a request only if it matches (when any ALLOW policy selects the workload).
    #[default]
    Allow,
    /// Deny a request if it matches; wins over ALLOW.
    Deny,
    /// Report the request when it matches; never changes the decision.
    Audit,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        })
    }
}

/// Matches when one of `from` and one of `to` match. An empty rule `{}` matches
/// everything.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Absent: any source. Present, it must not be empty.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "validate::de_nonempty_from"
    )]
    pub from: Option<Vec<RuleFrom>>,
    /// Absent: any operation. Present, it must not be empty.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "validate::de_nonempty_to"
    )]
    pub to: Option<Vec<RuleTo>>,
}

/// An entry of `from` (Istio's `Rule.From`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    #[serde(deserialize_with = "validate::de_source")]
    pub source: Source,
}

/// An entry of `to` (Istio's `Rule.To`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    #[serde(deserialize_with = "validate::de_operation")]
    pub operation: Operation,
}

/// Who sends the request. Fields are AND'ed, values of a field OR'ed; `notX` excludes.
/// An empty list is the same as an absent one (as in Istio's protobuf); a source with
/// every list empty is refused.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// The peer's SPIFFE ID without `spiffe://`. Needs mutual TLS: a plaintext peer has
    /// no principal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<Principal>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<Principal>,
    /// The namespace in the peer's SPIFFE ID. Needs mutual TLS too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Pattern>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<Pattern>,
    /// The connection's source address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<IpBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<IpBlock>,
}

impl Source {
    pub fn is_empty(&self) -> bool {
        self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.ip_blocks.is_empty()
            && self.not_ip_blocks.is_empty()
    }
}

/// What the request does. Same AND/OR/`not` rules as a source. `methods`, `paths` and
/// `hosts` (and their `not` forms) exist only for HTTP: on plain TCP traffic an ALLOW rule
/// using one never matches, while a DENY or AUDIT rule ignores them (see the `policy` module
/// documentation).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// The destination port of the connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<Port>,
    /// HTTP only. Case-sensitive (`GET`, `POST`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<Pattern>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<Pattern>,
    /// HTTP only. Matched against the path without its query string.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathPattern>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<PathPattern>,
    /// HTTP only. The `Host`/`:authority` as sent (with its port, if any), ignoring case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Pattern>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<Pattern>,
}

impl Operation {
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.not_ports.is_empty() && !self.has_http_fields()
    }

    /// Whether it uses a field that only HTTP requests have.
    pub(crate) fn has_http_fields(&self) -> bool {
        !(self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty()
            && self.hosts.is_empty()
            && self.not_hosts.is_empty())
    }
}

impl Rule {
    /// Whether any operation uses a field that only HTTP requests have.
    pub(crate) fn has_http_fields(&self) -> bool {
        self.to
            .iter()
            .flatten()
            .any(|to| to.operation.has_http_fields())
    }
}
