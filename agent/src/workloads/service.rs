//! Kubernetes Services in the workload model: a Service's cluster IPs and ports, and the
//! endpoints behind it — chosen by a label `selector` over the set's pods, or listed
//! explicitly (`endpoints`, as the Kubernetes source fills them from EndpointSlices). Both
//! sources produce [`Service`]; [`super::directory`] resolves them into what the proxy
//! routes by.
//!
//! ```yaml
//! services:
//!   - namespace: shop
//!     name: web
//!     clusterIPs: [10.96.0.10, "fd00:96::10"]   # none: a headless Service
//!     ports:
//!       - {name: http, port: 80, targetPort: http}   # targetPort: a number or a pod port's name
//!     selector: {app: web}                       # or explicit `endpoints:`
//!     internalTrafficPolicy: Cluster             # Cluster (default) | Local
//!     sessionAffinity: None                      # None (default) | ClientIP
//!   - namespace: shop
//!     name: legacy
//!     clusterIPs: [10.96.0.11]
//!     ports: [{port: 5432, targetPort: 5432}]
//!     endpoints:
//!       - {ip: 198.19.9.20, node: node-b, ready: true, ports: {"": 5432}}
//! ```
use std::{collections::BTreeMap, fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

/// One Kubernetes Service.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// The Service's virtual addresses (IPv4 and/or IPv6); empty for a headless Service.
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<IpAddr>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Pods whose labels include all of these back the Service (`Service.spec.selector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// The endpoints, listed (from EndpointSlices, or by hand); with a `selector` as well,
    /// these win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<Endpoint>>,
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
}

/// One port of a Service.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Optional when the Service has one port (as in Kubernetes); endpoints' port maps
    /// are keyed by it ("" when unnamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    /// Where the endpoint listens; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<TargetPort>,
}

impl ServicePort {
    /// The key of this port in an endpoint's port map ("" when unnamed).
    pub fn key(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    pub fn target(&self) -> TargetPort {
        self.target_port
            .clone()
            .unwrap_or(TargetPort::Number(self.port))
    }
}

/// A Service port's `targetPort`: a number, or the name of a container port of the pod.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(s) => f.write_str(s),
        }
    }
}

/// One endpoint (one address) of a Service, as an EndpointSlice lists it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// The node the endpoint runs on (for `internalTrafficPolicy: Local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The pod behind it (`namespace/name`), when known; informational — the pod is
    /// found by IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// EndpointSlice conditions. `serving` defaults to `ready`.
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    #[serde(default)]
    pub terminating: bool,
    /// Service port name ("" when unnamed) → the endpoint's port, as an EndpointSlice
    /// resolves named target ports per endpoint. A port missing here falls back to the
    /// Service port's `targetPort` (a number, or a name looked up in the pod's `ports`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
}

fn yes() -> bool {
    true
}

impl Endpoint {
    pub fn serving(&self) -> bool {
        self.serving.unwrap_or(self.ready)
    }
}

/// `internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    /// Any ready endpoint of the cluster.
    #[default]
    Cluster,
    /// Only endpoints on the client's node; none there means no route.
    Local,
}

/// `sessionAffinity`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub enum SessionAffinity {
    #[default]
    None,
    /// Connections from one client IP go to the same endpoint while it stays usable
    /// (Kubernetes' default timeout: 10800 s).
    #[serde(rename = "ClientIP")]
    ClientIp,
}

/// A named container port of a pod (`Pod.spec.containers[].ports[]`), for named
/// `targetPort`s.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: u16,
}

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Service {
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// `name.namespace.svc.<cluster domain>`, as Istio's `destination_service` label.
    pub fn fqdn(&self, cluster_domain: &str) -> String {
        fqdn(&self.namespace, &self.name, cluster_domain)
    }
}

/// `name.namespace.svc.<cluster domain>`.
pub fn fqdn(namespace: &str, name: &str, cluster_domain: &str) -> String {
    format!("{name}.{namespace}.svc.{cluster_domain}")
}
