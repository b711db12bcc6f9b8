//! What a running testbed is made of (`DIR/testbed.json`) and the files of its state
//! directory; the end-to-end tests read it through the library.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::Context;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use outrider::workloads::{PodPort, Service};

/// `DIR/testbed.json`: written at the end of a successful `up`.
pub const STATE_FILE: &str = "testbed.json";
/// `DIR/prefix`: written before anything is created, so `down` can always clean up.
pub const PREFIX_FILE: &str = "prefix";
/// `DIR/<node>/agent.pid`: written as soon as an agent is started.
pub const AGENT_PID_FILE: &str = "agent.pid";

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// Every name the testbed uses starts with it (netns `<prefix>-…`, cgroup `<prefix>`).
    pub prefix: String,
    /// `<cgroup2 mount>/<prefix>`: holds every node, agent and pod.
    pub cgroup_root: PathBuf,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    /// Namespaces in strict mTLS mode (the others are permissive).
    #[serde(default)]
    pub strict_namespaces: Vec<String>,
    /// Namespaces whose pods get deliveries from `127.0.0.6` (`sourceIp: loopback`).
    #[serde(default)]
    pub loopback_namespaces: Vec<String>,
    /// The testbed's root CA (`ca.crt`, `ca.key`), shared by its agents.
    #[serde(default)]
    pub ca_dir: PathBuf,
    /// Authorization policies every agent follows (like the cluster's CRDs): put YAML
    /// files here.
    #[serde(default)]
    pub policy_dir: PathBuf,
    /// Kubernetes Services, with their cluster IPs (IPv4 first); their endpoints are
    /// computed from the pods whenever the workload files are written.
    #[serde(default)]
    pub services: Vec<Service>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    pub name: String,
    /// `/run/netns/<netns_name>`.
    pub netns: PathBuf,
    pub netns_name: String,
    /// The node's address on the fabric (its `eth0`).
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub pod_cidr_v4: Ipv4Net,
    pub pod_cidr_v6: Ipv6Net,
    /// The node's cgroup, where its agent attaches its programs (like `kubepods`).
    pub cgroup: PathBuf,
    pub agent: Option<AgentState>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    pub pid: u32,
    pub config: PathBuf,
    pub log: PathBuf,
    pub workloads: PathBuf,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    pub node: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    /// Captured by its node's agent (node mode).
    pub enrolled: bool,
    /// Meshed by its own sidecar (sidecar mode).
    #[serde(default)]
    pub sidecar: bool,
    /// The sidecar's process, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_pid: Option<u32>,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// `/run/netns/<netns_name>`.
    pub netns: PathBuf,
    pub netns_name: String,
    pub cgroup: PathBuf,
    pub uid: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Named container ports (for Services' named `targetPort`s).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PodPort>,
    /// The pod's readiness (its readiness probe): its endpoints are `ready` (unless
    /// terminating) and `serving`. Changed with `testbed ready`.
    #[serde(default = "yes")]
    pub ready: bool,
    /// Being deleted: its endpoints are `terminating`, not `ready`.
    #[serde(default)]
    pub terminating: bool,
}

fn yes() -> bool {
    true
}

impl PodState {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl State {
    /// Reads `DIR/testbed.json`.
    pub fn load(dir: &Path) -> anyhow::Result<State> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (is there a testbed in {}?)",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid testbed state", path.display()))
    }

    /// Writes `DIR/testbed.json` atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let text =
            serde_json::to_string_pretty(self).context("cannot serialize the testbed state")?;
        write_atomically(&dir.join(STATE_FILE), format!("{text}\n").as_bytes())
    }

    pub fn pod(&self, key: &str) -> Option<&PodState> {
        self.pods.iter().find(|p| p.key() == key)
    }

    /// The Service `namespace/name`.
    pub fn service(&self, key: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.key().to_string() == key)
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// `ns/a, ns/b, …`, for error messages.
    pub fn pod_list(&self) -> String {
        let keys: Vec<String> = self.pods.iter().map(PodState::key).collect();
        if keys.is_empty() {
            "none".to_string()
        } else {
            keys.join(", ")
        }
    }

    /// The state directory of a node: configs, workload file, agent log.
    pub fn node_dir(dir: &Path, node: &str) -> PathBuf {
        dir.join(node)
    }
}

/// Writes `path` by writing a temp file in the same directory and renaming it over.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rename {} to {}", tmp.display(), path.display())
    })
}
