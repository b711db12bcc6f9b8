//! What the Kubernetes source keeps of each object: only the fields the mesh needs, so a
//! large cluster costs little memory (a pod record is its names, UID, node, service
//! account, labels, IPs and named TCP ports), and how the records become a
//! [`WorkloadSet`]. Services and EndpointSlices have their own records (`services`).
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use k8s_openapi::api::core::v1::{Namespace, Pod};

use crate::workloads::{
    Mode, MtlsMode, NamespaceSettings, PodPort, SourceIp, Workload, WorkloadSet,
};

/// The namespace label that enrolls its pods, and the pod annotation that overrides it.
pub(crate) const MODE_KEY: &str = "outrider.io/mode";
/// The namespace label choosing its mTLS mode: `strict` or `permissive` (default).
pub(crate) const MTLS_KEY: &str = "outrider.io/mtls";

/// The namespace label choosing where deliveries to its pods come from: `client`
/// (default: the client's IP) or `loopback` (127.0.0.6).
pub(crate) const SOURCE_IP_KEY: &str = "outrider.io/source-ip";

/// How a namespace or pod asks to be meshed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meshing {
    /// Captured by the node agent.
    Node,
    /// A sidecar meshes it (the node agent keeps out).
    Sidecar,
    /// Not meshed.
    None,
}

impl Meshing {
    /// `node`, `sidecar` or `none`; anything else is `None` and logged by the caller.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "node" => Some(Meshing::Node),
            "sidecar" => Some(Meshing::Sidecar),
            "none" => Some(Meshing::None),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceRecord {
    pub meshing: Option<Meshing>,
    pub mtls: MtlsMode,
    pub source_ip: SourceIp,
}

impl NamespaceRecord {
    pub(crate) fn from_object(ns: &Namespace) -> (String, Self) {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let labels = ns.metadata.labels.as_ref();
        let get = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
        let meshing = get(MODE_KEY).and_then(|v| {
            let parsed = Meshing::parse(v);
            if parsed.is_none() {
                tracing::warn!(namespace = %name, value = v, "label {MODE_KEY}: not node, sidecar or none; ignored");
            }
            parsed
        });
        let mtls = match get(MTLS_KEY) {
            Some("strict") => MtlsMode::Strict,
            Some("permissive") | None => MtlsMode::Permissive,
            Some(other) => {
                tracing::warn!(namespace = %name, value = other, "label {MTLS_KEY}: not strict or permissive; permissive");
                MtlsMode::Permissive
            }
        };
        let source_ip = match get(SOURCE_IP_KEY) {
            Some("loopback") => SourceIp::Loopback,
            Some("client") | None => SourceIp::Client,
            Some(other) => {
                tracing::warn!(namespace = %name, value = other, "label {SOURCE_IP_KEY}: not client or loopback; client");
                SourceIp::Client
            }
        };
        (
            name,
            NamespaceRecord {
                meshing,
                mtls,
                source_ip,
            },
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    /// The pod's `outrider.io/mode` annotation.
    pub meshing: Option<Meshing>,
    /// Its containers' named TCP ports (for Services' named `targetPort`s).
    pub ports: Vec<PodPort>,
}

impl PodRecord {
    /// The record of a pod that can take part in the mesh: `None` for pods on the host
    /// network (their IP is the node's), finished pods, and pods without an IP yet.
    pub(crate) fn from_object(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref()?;
        if spec.host_network == Some(true)
            || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
            || meta.deletion_timestamp.is_some()
        {
            return None;
        }
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(
                status
                    .pod_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<IpAddr>().ok()),
            );
        }
        if ips.is_empty() {
            return None;
        }
        let name = meta.name.clone()?;
        let meshing = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(MODE_KEY))
            .and_then(|v| {
                let parsed = Meshing::parse(v);
                if parsed.is_none() {
                    tracing::warn!(pod = %name, value = %v, "annotation {MODE_KEY}: not node, sidecar or none; ignored");
                }
                parsed
            });
        Some(PodRecord {
            namespace: meta.namespace.clone()?,
            name,
            uid: meta.uid.clone().unwrap_or_default(),
            node: spec.node_name.clone(),
            service_account: spec
                .service_account_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            labels: meta.labels.clone().unwrap_or_default(),
            ips,
            meshing,
            ports: named_ports(spec),
        })
    }

    /// The annotation, else the namespace's label, else not meshed.
    pub(crate) fn meshing(&self, namespaces: &HashMap<String, NamespaceRecord>) -> Meshing {
        self.meshing
            .or_else(|| namespaces.get(&self.namespace).and_then(|n| n.meshing))
            .unwrap_or(Meshing::None)
    }
}

/// The named TCP ports of a pod's containers.
fn named_ports(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<PodPort> {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| matches!(p.protocol.as_deref(), None | Some("TCP")))
        .filter_map(|p| {
            let name = p.name.clone().filter(|n| !n.is_empty())?;
            let port = u16::try_from(p.container_port).ok().filter(|p| *p != 0)?;
            Some(PodPort {
                name: Some(name),
                container_port: port,
            })
        })
        .collect()
}

/// The workload set of the cluster as this node's agent needs it. Pods come with their
/// UID and no sandbox: `workloads::sandboxes` finds where this node's run.
pub fn workload_set(
    namespaces: &HashMap<String, NamespaceRecord>,
    pods: &HashMap<(String, String), PodRecord>,
) -> WorkloadSet {
    let mut workloads: Vec<Workload> = pods
        .values()
        .map(|p| {
            let mode = match p.meshing(namespaces) {
                Meshing::Node => Mode::Node,
                Meshing::Sidecar => Mode::Sidecar,
                Meshing::None => Mode::None,
            };
            Workload {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                node: p.node.clone(),
                uid: p.uid.clone(),
                service_account: p.service_account.clone(),
                labels: p.labels.clone(),
                ips: p.ips.clone(),
                netns: Default::default(),
                cgroup: None,
                mode,
                ports: p.ports.clone(),
            }
        })
        .collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let namespaces = namespaces
        .iter()
        .filter(|(_, n)| n.mtls != MtlsMode::Permissive || n.source_ip != SourceIp::Client)
        .map(|(name, n)| {
            let settings = NamespaceSettings {
                mtls: n.mtls,
                source_ip: n.source_ip,
            };
            (name.clone(), settings)
        })
        .collect();
    WorkloadSet {
        namespaces,
        workloads,
        services: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn web(annotations: serde_json::Value) -> Pod {
        pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                         "labels": {"app": "web"}, "annotations": annotations},
            "spec": {"nodeName": "node-a", "serviceAccountName": "web",
                     "containers": [{"name": "app", "ports": [
                         {"name": "http", "containerPort": 8080},
                         {"containerPort": 9000},
                         {"name": "dns", "containerPort": 53, "protocol": "UDP"}]},
                         {"name": "metrics", "ports": [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5",
                       "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]}
        }))
    }

    fn namespace(labels: serde_json::Value) -> (String, NamespaceRecord) {
        NamespaceRecord::from_object(
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "shop", "labels": labels}
            }))
            .unwrap(),
        )
    }

    fn set(ns: (String, NamespaceRecord), pods: &[Pod]) -> WorkloadSet {
        let namespaces = HashMap::from([ns]);
        let pods = pods
            .iter()
            .filter_map(PodRecord::from_object)
            .map(|p| ((p.namespace.clone(), p.name.clone()), p))
            .collect();
        workload_set(&namespaces, &pods)
    }

    #[test]
    fn the_namespace_label_enrolls_and_the_annotation_overrides_it() {
        let labelled = || namespace(serde_json::json!({"outrider.io/mode": "node"}));
        let s = set(labelled(), &[web(serde_json::json!({}))]);
        assert_eq!(s.workloads[0].mode, Mode::Node);
        assert_eq!(s.workloads[0].ips.len(), 2);
        assert_eq!(s.workloads[0].service_account, "web");
        assert_eq!(s.workloads[0].node.as_deref(), Some("node-a"));
        // Named TCP container ports of every container; unnamed and UDP ones are not kept.
        let ports: Vec<(Option<&str>, u16)> = s.workloads[0]
            .ports
            .iter()
            .map(|p| (p.name.as_deref(), p.container_port))
            .collect();
        assert_eq!(ports, [(Some("http"), 8080), (Some("metrics"), 9090)]);
        // No sandbox yet: enrollment waits for it.
        assert!(s.workloads[0].netns.as_os_str().is_empty());
        let s = set(
            labelled(),
            &[web(serde_json::json!({"outrider.io/mode": "none"}))],
        );
        assert_eq!(s.workloads[0].mode, Mode::None);
        let s = set(
            labelled(),
            &[web(serde_json::json!({"outrider.io/mode": "sidecar"}))],
        );
        assert_eq!(
            s.workloads[0].mode,
            Mode::Sidecar,
            "a sidecar keeps the node agent out, and the pod in the mesh"
        );
        let plain = namespace(serde_json::json!({}));
        let s = set(
            plain,
            &[web(serde_json::json!({"outrider.io/mode": "node"}))],
        );
        assert_eq!(s.workloads[0].mode, Mode::Node);
        // A value we do not know is ignored: the namespace decides.
        let s = set(
            namespace(serde_json::json!({})),
            &[web(serde_json::json!({"outrider.io/mode": "yes"}))],
        );
        assert_eq!(s.workloads[0].mode, Mode::None);
    }

    #[test]
    fn strict_namespaces_are_carried_and_host_network_or_finished_pods_are_not() {
        let s = set(
            namespace(serde_json::json!({"outrider.io/mtls": "strict"})),
            &[web(serde_json::json!({}))],
        );
        assert_eq!(s.mtls("shop"), MtlsMode::Strict);
        assert_eq!(s.namespaces["shop"].source_ip, SourceIp::Client);
        let s = set(
            namespace(serde_json::json!({"outrider.io/source-ip": "loopback"})),
            &[web(serde_json::json!({}))],
        );
        assert_eq!(s.namespaces["shop"].source_ip, SourceIp::Loopback);
        assert_eq!(s.mtls("shop"), MtlsMode::Permissive);
        let mut host = web(serde_json::json!({}));
        host.spec.as_mut().unwrap().host_network = Some(true);
        assert!(PodRecord::from_object(&host).is_none());
        let mut done = web(serde_json::json!({}));
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(PodRecord::from_object(&done).is_none());
        let mut pending = web(serde_json::json!({}));
        pending.status.as_mut().unwrap().pod_ips = None;
        pending.status.as_mut().unwrap().pod_ip = None;
        assert!(PodRecord::from_object(&pending).is_none(), "no IP yet");
    }
}
