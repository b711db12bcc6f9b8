//! Who runs in the mesh and which pods are enrolled: the workload model, the sources that
//! produce it (`file`: a local YAML file, watched; `kubernetes`: the API server's
//! namespaces, pods, Services and EndpointSlices, watched), where this node's pods run
//! (`sandboxes`, for every source: a pod's network namespace and cgroup found by its UID,
//! with `sandbox`), and the cluster-wide view the proxy looks destinations up in
//! (`directory`). Enrollment consumes the latest [`WorkloadSet`] and never looks at where
//! it came from.
pub mod directory;
pub mod file;
pub mod kubernetes;
pub mod sandbox;
pub mod sandboxes;
pub mod service;

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

pub use service::{Endpoint, PodPort, Service, ServiceKey, ServicePort, TargetPort};

/// How a workload's traffic is meshed.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Captured by this node's agent.
    #[default]
    Node,
    /// Known (e.g. as a destination) but not captured.
    None,
    /// Meshed by its own sidecar (`outrider sidecar`): not captured by the node agent,
    /// but in the mesh — reached through the tunnel on its port 15008.
    Sidecar,
}

/// Whether an enrolled pod accepts plaintext from outside the mesh.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Plaintext is served (as Istio's default PeerAuthentication).
    #[default]
    Permissive,
    /// Only mutual-TLS tunnels are served; plaintext is refused.
    Strict,
}

/// Where the app of an enrolled pod sees connections delivered to it come from.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SourceIp {
    /// The client's own IP, as ztunnel delivers (`127.0.0.6` / `::1` where the kernel
    /// refuses it).
    #[default]
    Client,
    /// Always `127.0.0.6` (IPv6 `::1`), as Istio's sidecars deliver; nothing is set up
    /// in the pod's namespace for it.
    Loopback,
}

/// Mesh settings of one Kubernetes namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSettings {
    #[serde(default)]
    pub mtls: MtlsMode,
    #[serde(default, skip_serializing_if = "is_default")]
    pub source_ip: SourceIp,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// One pod, as enrollment needs it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    /// The node the pod runs on. Pods of other nodes are known as destinations only;
    /// unset means this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The pod's UID; a new UID under the same name is a new pod.
    #[serde(default)]
    pub uid: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// The pod's labels (policies select workloads by them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// The pod's network namespace, e.g. `/var/run/netns/cni-…` or `/proc/<pid>/ns/net`.
    /// Empty: not known yet — for a pod of this node in node mode named by `uid`, the
    /// agent finds it on the node (`sandboxes`).
    #[serde(default)]
    pub netns: PathBuf,
    /// The pod's cgroup (informational here; capture is by network namespace).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    #[serde(default)]
    pub mode: Mode,
    /// The pod's named container ports, so that a Service's named `targetPort` resolves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PodPort>,
}

fn default_service_account() -> String {
    "default".to_string()
}

/// `namespace/name`, unique on a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Workload {
    pub fn key(&self) -> WorkloadKey {
        WorkloadKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

impl Workload {
    /// The workload's name in metrics: its `app` (or `app.kubernetes.io/name`) label, as
    /// pods of one Deployment share it, else the pod's name.
    pub fn workload_name(&self) -> &str {
        self.labels
            .get("app")
            .or_else(|| self.labels.get("app.kubernetes.io/name"))
            .map(String::as_str)
            .unwrap_or(&self.name)
    }

    /// True when the pod runs on `node` (or the source did not say where it runs).
    pub fn runs_on(&self, node: &str) -> bool {
        self.node.as_deref().is_none_or(|n| n == node)
    }
}

/// Everything a source knows: pods (this node's and, as destinations, other nodes'),
/// and per-namespace settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSet {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, NamespaceSettings>,
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// Kubernetes Services: cluster IPs, ports and endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
}

impl WorkloadSet {
    /// Both sets in one: `self`'s namespace settings, workloads and services win over
    /// `other`'s of the same name.
    pub fn merged(&self, other: &WorkloadSet) -> WorkloadSet {
        let mut namespaces = other.namespaces.clone();
        namespaces.extend(self.namespaces.clone());
        let mut workloads = self.workloads.clone();
        let mine: std::collections::HashSet<WorkloadKey> =
            self.workloads.iter().map(Workload::key).collect();
        workloads.extend(
            other
                .workloads
                .iter()
                .filter(|w| !mine.contains(&w.key()))
                .cloned(),
        );
        let mut services = self.services.clone();
        let my_services: std::collections::HashSet<ServiceKey> =
            self.services.iter().map(Service::key).collect();
        services.extend(
            other
                .services
                .iter()
                .filter(|s| !my_services.contains(&s.key()))
                .cloned(),
        );
        WorkloadSet {
            namespaces,
            workloads,
            services,
        }
    }

    /// The mTLS mode of `namespace` (permissive unless set).
    pub fn mtls(&self, namespace: &str) -> MtlsMode {
        self.namespaces
            .get(namespace)
            .map(|n| n.mtls)
            .unwrap_or_default()
    }
}
