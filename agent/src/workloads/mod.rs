//! Who runs on this node and which of them are enrolled: the workload model, and the
//! sources that produce it (`file`: a local YAML file, watched). Enrollment consumes the
//! latest [`WorkloadSet`] and never looks at where it came from.
pub mod file;

use std::{fmt, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// How a workload's traffic is meshed.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Captured by this node's agent.
    #[default]
    Node,
    /// Known (e.g. as a destination) but not captured.
    None,
}

/// One pod, as enrollment needs it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    /// The pod's UID; a new UID under the same name is a new pod.
    #[serde(default)]
    pub uid: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// The pod's network namespace, e.g. `/var/run/netns/cni-…` or `/proc/<pid>/ns/net`.
    pub netns: PathBuf,
    /// The pod's cgroup (informational here; capture is by network namespace).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    #[serde(default)]
    pub mode: Mode,
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

/// Every workload a source knows, in the source's order.
pub type WorkloadSet = Vec<Workload>;
