//! The testbed spec (`outrider-testbed testbed up --spec FILE`): which nodes, which pods on
//! each, and which Kubernetes Services in front of them. Parse errors name the file, line
//! and field; checks across entries (unique names, limits, addresses) name the file and
//! field.
//!
//! ```yaml
//! nodes:
//!   - name: node-a
//!     pods:
//!       - {namespace: shop, name: web, serviceAccount: web, enrolled: true,
//!          ports: [{name: http, containerPort: 8080}]}  # named ports, for targetPorts
//!       - {namespace: shop, name: client}     # serviceAccount: default, enrolled: true
//!       - {namespace: shop, name: cart, mode: sidecar}  # node | sidecar | none
//! services:                                   # optional: as in the workload file, but
//!   - namespace: shop                         # without clusterIPs the testbed allocates
//!     name: web                               # one IPv4 and one IPv6 (`clusterIPs: []`
//!     ports: [{name: http, port: 80, targetPort: http}]   # is a headless Service)
//!     selector: {app: web}                    # or explicit `endpoints:`
//! namespaces:                                 # optional: mesh settings per namespace
//!   shop: {mtls: strict}                      # strict | permissive (default)
//! agent:                                      # optional: agent settings for every node
//!   capture: {excludePorts: [53]}             # (same fields as the agent's config file)
//! ```
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    ops::Deref,
    path::Path,
};

use anyhow::bail;
use serde::Deserialize;

use outrider::{
    config::Config,
    workloads::{
        Endpoint, Mode, MtlsMode, NamespaceSettings, PodPort, Service, ServicePort, SourceIp,
        WorkloadSet, file,
        service::{SessionAffinity, TrafficPolicy},
    },
    yaml,
};

/// Node `i` owns 198.19.`i`.0/24, so there are at most 254 nodes.
pub const MAX_NODES: usize = 254;
/// Pod `j` of a node is 198.19.i.`j + 10`, so there are at most 244 pods a node.
pub const MAX_PODS_PER_NODE: usize = 244;
/// Services get addresses `k` = 1… of [`super::plan::SERVICE_CIDR_V4`] (a /24).
pub const MAX_SERVICES: usize = 254;
/// Node names that would collide with the testbed's own names (`<prefix>-fabric`,
/// `DIR/prefix`).
const RESERVED_NODE_NAMES: [&str; 2] = ["fabric", "prefix"];

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub nodes: Vec<NodeSpec>,
    /// Agent settings for every node; the testbed sets the node-specific ones (node name,
    /// instance, workload file, cgroups, JSON logs) on top.
    #[serde(default)]
    pub agent: Option<Config>,
    /// Per-namespace mesh settings, e.g. `shop: {mtls: strict}`.
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceSettings>,
    /// Kubernetes Services; the testbed lists their endpoints in the workload files and
    /// sets kube-proxy-like rules for them in every node.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

/// A Service of the spec: the workload file's [`Service`], except that `clusterIPs` left
/// out means "allocate one IPv4 and one IPv6 address" (an empty list: headless).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Option<Vec<IpAddr>>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    /// Listed endpoints, used as written (`testbed ready` does not change them).
    #[serde(default)]
    pub endpoints: Option<Vec<Endpoint>>,
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
}

impl ServiceSpec {
    /// The Service with these cluster IPs.
    pub fn service(&self, cluster_ips: Vec<IpAddr>) -> Service {
        Service {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            cluster_ips,
            ports: self.ports.clone(),
            selector: self.selector.clone(),
            endpoints: self.endpoints.clone(),
            internal_traffic_policy: self.internal_traffic_policy,
            session_affinity: self.session_affinity,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    pub name: Label,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    pub namespace: Label,
    pub name: Label,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// Shorthand: `false` is `mode: none`.
    #[serde(default = "default_enrolled")]
    pub enrolled: bool,
    /// How the pod is meshed: `node` (captured by its node's agent; the default),
    /// `sidecar` (its own `outrider sidecar`, set up by `outrider sidecar-init`) or `none`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// The pod's labels; default `app: <name>`.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// The pod's named container ports, for Services' named `targetPort`s.
    #[serde(default)]
    pub ports: Vec<PodPort>,
}

fn default_service_account() -> String {
    "default".to_string()
}

fn default_enrolled() -> bool {
    true
}

impl Spec {
    /// Namespaces in strict mTLS mode.
    pub fn strict_namespaces(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .filter(|(_, s)| s.mtls == MtlsMode::Strict)
            .map(|(ns, _)| ns.clone())
            .collect()
    }
}

impl Spec {
    /// Namespaces whose deliveries come from loopback (`sourceIp: loopback`).
    pub fn loopback_namespaces(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .filter(|(_, s)| s.source_ip == SourceIp::Loopback)
            .map(|(ns, _)| ns.clone())
            .collect()
    }
}

impl PodSpec {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// How the pod is meshed (`mode`, else `enrolled`).
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(if self.enrolled {
            Mode::Node
        } else {
            Mode::None
        })
    }
}

/// A DNS label (RFC 1123): 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'.
/// Checked while the string is read, so a bad name is reported with its own line.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label(String);

impl Label {
    fn check(s: &str) -> Result<(), String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{s:?} is not a DNS label (1 to 63 of a-z, 0-9 and '-', not starting or ending with '-')"
            ))
        }
    }
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Label;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a DNS label")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Label, E> {
                Label::check(s).map_err(E::custom)?;
                Ok(Label(s.to_string()))
            }
        }
        de.deserialize_str(Visitor)
    }
}

impl Deref for Label {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Spec {
    /// Reads and checks a spec file.
    pub fn load(path: &Path) -> anyhow::Result<Spec> {
        let spec: Spec = yaml::from_file(path)?;
        spec.validate(path)?;
        Ok(spec)
    }

    /// Parses and checks `text`, the contents of `path`.
    #[cfg(test)]
    pub fn parse(path: &Path, text: &str) -> anyhow::Result<Spec> {
        let spec: Spec = yaml::from_str(path, text)?;
        spec.validate(path)?;
        Ok(spec)
    }

    fn validate(&self, path: &Path) -> anyhow::Result<()> {
        let file = path.display();
        if self.nodes.is_empty() {
            bail!("{file}: nodes: at least one node is needed");
        }
        if self.nodes.len() > MAX_NODES {
            bail!(
                "{file}: nodes: {} nodes, at most {MAX_NODES} are supported",
                self.nodes.len()
            );
        }
        let mut nodes = HashMap::new();
        let mut pods = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if RESERVED_NODE_NAMES.contains(&&*node.name) {
                bail!(
                    "{file}: nodes[{i}].name: {:?} is reserved by the testbed",
                    &*node.name
                );
            }
            if let Some(first) = nodes.insert(&*node.name, i) {
                bail!(
                    "{file}: nodes[{i}].name: node {:?} is listed twice (also nodes[{first}])",
                    &*node.name
                );
            }
            if node.pods.len() > MAX_PODS_PER_NODE {
                bail!(
                    "{file}: nodes[{i}].pods: {} pods, at most {MAX_PODS_PER_NODE} a node are supported",
                    node.pods.len()
                );
            }
            for (j, pod) in node.pods.iter().enumerate() {
                if pod.service_account.is_empty() {
                    bail!("{file}: nodes[{i}].pods[{j}].serviceAccount: must not be empty");
                }
                if !pod.enrolled && pod.mode.is_some_and(|m| m != Mode::None) {
                    bail!(
                        "{file}: nodes[{i}].pods[{j}]: enrolled: false contradicts mode: {:?} (give one of them)",
                        pod.mode()
                    );
                }
                if let Some((fi, fj)) = pods.insert(pod.key(), (i, j)) {
                    bail!(
                        "{file}: nodes[{i}].pods[{j}]: pod {} is listed twice (also nodes[{fi}].pods[{fj}])",
                        pod.key()
                    );
                }
                validate_pod_ports(&pod.ports)
                    .map_err(|e| anyhow::anyhow!("{file}: nodes[{i}].pods[{j}].ports{e}"))?;
            }
        }
        self.validate_services(path)
    }

    /// The workload file's checks (with the spec's file name: the fields are the same),
    /// and cluster IPs clear of the testbed's own node and pod addresses.
    fn validate_services(&self, path: &Path) -> anyhow::Result<()> {
        let set = WorkloadSet {
            services: self
                .services
                .iter()
                .map(|s| s.service(s.cluster_ips.clone().unwrap_or_default()))
                .collect(),
            ..WorkloadSet::default()
        };
        file::validate(&set, path)?;
        for (index, svc) in self.services.iter().enumerate() {
            for (k, ip) in svc.cluster_ips.iter().flatten().enumerate() {
                if super::plan::is_node_or_pod_address(*ip) {
                    bail!(
                        "{}: services[{index}].clusterIPs[{k}]: {ip} is among the testbed's node and pod addresses ({}); pick another, or leave clusterIPs out to have one allocated from {} and {}",
                        path.display(),
                        super::plan::NODE_AND_POD_RANGES,
                        super::plan::SERVICE_CIDR_V4,
                        super::plan::SERVICE_CIDR_V6,
                    );
                }
            }
        }
        if self.services.len() > MAX_SERVICES {
            bail!(
                "{}: services: {} Services, at most {MAX_SERVICES} are supported",
                path.display(),
                self.services.len()
            );
        }
        Ok(())
    }
}

/// A pod's ports: each `containerPort` from 1, names (optional) valid and unique. The
/// error, when there is one, starts with the field path after `ports`.
fn validate_pod_ports(ports: &[PodPort]) -> Result<(), String> {
    let mut names = HashMap::new();
    for (k, p) in ports.iter().enumerate() {
        if p.container_port == 0 {
            return Err(format!("[{k}].containerPort: must be 1 to 65535"));
        }
        if let Some(name) = &p.name {
            if !file::is_port_name(name) {
                return Err(format!(
                    "[{k}].name: {name:?} is not a port name (at most 15 of a-z, 0-9 and '-', with a letter)"
                ));
            }
            if let Some(first) = names.insert(name, k) {
                return Err(format!(
                    "[{k}].name: {name:?} is used twice (also ports[{first}])"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "nodes:
  - name: node-a
    pods:
      - {namespace: shop, name: web, serviceAccount: web, enrolled: true}
      - {namespace: shop, name: client}
  - name: node-b
    pods:
      - namespace: data
        name: db
        serviceAccount: db
        enrolled: false
";

    fn parse(text: &str) -> anyhow::Result<Spec> {
        Spec::parse(Path::new("/tmp/spec.yaml"), text)
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn parses_a_spec_with_defaults() {
        let spec = parse(GOOD).unwrap();
        assert_eq!(spec.nodes.len(), 2);
        assert_eq!(&*spec.nodes[0].name, "node-a");
        let client = &spec.nodes[0].pods[1];
        assert_eq!(client.service_account, "default");
        assert!(client.enrolled);
        assert!(!spec.nodes[1].pods[0].enrolled);
        assert_eq!(spec.nodes[1].pods[0].key(), "data/db");
    }

    #[test]
    fn a_node_without_pods_is_fine() {
        let spec = parse("nodes: [{name: lonely}]\n").unwrap();
        assert!(spec.nodes[0].pods.is_empty());
    }

    #[test]
    fn bad_name_names_file_line_and_field() {
        let err = error(&GOOD.replace("name: db", "name: Db_1"));
        assert!(err.starts_with("/tmp/spec.yaml:"), "{err}");
        assert!(err.contains("line 9"), "{err}");
        assert!(err.contains("nodes[1].pods[0].name"), "{err}");
        assert!(err.contains("not a DNS label"), "{err}");
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let err = error(&GOOD.replace("serviceAccount: db", "serviceAcount: db"));
        assert!(err.contains("line 10"), "{err}");
        assert!(err.contains("nodes[1].pods[0]"), "{err}");
        assert!(err.contains("serviceAcount"), "{err}");
        let err = error("nodes: []\nextra: 1\n");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("extra"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = error(&GOOD.replace("enrolled: false", "enrolled: maybe"));
        assert!(err.contains("line 11"), "{err}");
        assert!(err.contains("nodes[1].pods[0].enrolled"), "{err}");
    }

    #[test]
    fn no_nodes_is_an_error() {
        assert!(error("nodes: []\n").contains("/tmp/spec.yaml: nodes: at least one node"));
        assert!(error("").contains("missing field `nodes`"));
    }

    #[test]
    fn duplicate_node_is_an_error() {
        let err = error("nodes: [{name: a}, {name: b}, {name: a}]\n");
        assert!(
            err.contains("nodes[2].name: node \"a\" is listed twice (also nodes[0])"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_pod_across_nodes_is_an_error() {
        let err = error(&format!("{GOOD}      - {{namespace: shop, name: web}}\n"));
        assert!(
            err.contains("nodes[1].pods[1]: pod shop/web is listed twice (also nodes[0].pods[0])"),
            "{err}"
        );
        // The same name in another namespace is another pod.
        parse(&format!("{GOOD}      - {{namespace: data, name: web}}\n")).unwrap();
    }

    #[test]
    fn reserved_and_empty_names_are_errors() {
        let err = error("nodes: [{name: fabric}]\n");
        assert!(
            err.contains("nodes[0].name: \"fabric\" is reserved"),
            "{err}"
        );
        let err =
            error("nodes: [{name: a, pods: [{namespace: x, name: y, serviceAccount: ''}]}]\n");
        assert!(
            err.contains("nodes[0].pods[0].serviceAccount: must not be empty"),
            "{err}"
        );
        let err = error("nodes: [{name: ''}]\n");
        assert!(err.contains("nodes[0].name"), "{err}");
        let err = error(&format!("nodes: [{{name: {}}}]\n", "a".repeat(64)));
        assert!(err.contains("not a DNS label"), "{err}");
    }

    #[test]
    fn too_many_pods_is_an_error() {
        let pods: Vec<String> = (0..=MAX_PODS_PER_NODE)
            .map(|j| format!("{{namespace: n, name: p{j}}}"))
            .collect();
        let err = error(&format!(
            "nodes: [{{name: a, pods: [{}]}}]\n",
            pods.join(", ")
        ));
        assert!(err.contains("nodes[0].pods: 245 pods"), "{err}");
    }

    const SERVICES: &str = "nodes:
  - name: node-a
    pods:
      - {namespace: shop, name: web, ports: [{name: http, containerPort: 8080}, {containerPort: 9090}]}
services:
  - namespace: shop
    name: web
    ports: [{name: http, port: 80, targetPort: http}]
    selector: {app: web}
  - {namespace: shop, name: fixed, clusterIPs: [10.96.0.10], ports: [{port: 5432}],
     endpoints: [{ip: 198.19.1.11}], internalTrafficPolicy: Local}
  - {namespace: shop, name: headless, clusterIPs: [], ports: [{port: 80}], selector: {app: web}}
";

    #[test]
    fn services_and_pod_ports_parse() {
        use outrider::workloads::TargetPort;
        let spec = parse(SERVICES).unwrap();
        assert_eq!(spec.nodes[0].pods[0].ports[0].container_port, 8080);
        assert_eq!(spec.nodes[0].pods[0].ports[1].name, None);
        let web = &spec.services[0];
        assert_eq!(web.cluster_ips, None, "to be allocated");
        assert_eq!(web.ports[0].target(), TargetPort::Name("http".into()));
        let fixed = &spec.services[1];
        assert_eq!(
            fixed.cluster_ips.as_ref().unwrap()[0].to_string(),
            "10.96.0.10"
        );
        assert_eq!(fixed.internal_traffic_policy, TrafficPolicy::Local);
        assert_eq!(fixed.endpoints.as_ref().unwrap().len(), 1);
        assert_eq!(spec.services[2].cluster_ips, Some(Vec::new()), "headless");
    }

    #[test]
    fn bad_services_name_the_file_and_field() {
        let cases = [
            (
                SERVICES.replace("port: 5432", "port: 70000"),
                "services[1].ports[0].port",
            ),
            (
                SERVICES.replace("10.96.0.10", "10.96.0.300"),
                "services[1].clusterIPs[0]",
            ),
            (
                SERVICES.replace(
                    "selector: {app: web}\n",
                    "selector: {matchLabels: {app: web}}\n",
                ),
                "services[0].selector",
            ),
            (
                SERVICES.replace("name: fixed", "name: web"),
                "services[1].name: shop/web is listed twice",
            ),
            (
                SERVICES.replace("10.96.0.10", "198.19.1.11"),
                "services[1].clusterIPs[0]: 198.19.1.11 is among the testbed's node and pod addresses",
            ),
            (
                SERVICES.replace("10.96.0.10", "fd6f:7264:1::11"),
                "services[1].clusterIPs[0]: fd6f:7264:1::11 is among",
            ),
            (
                SERVICES.replace("10.96.0.10", "198.18.0.1"),
                "services[1].clusterIPs[0]",
            ),
            (
                SERVICES.replace("clusterIPs: []", "clusterIPs: [10.96.0.10]"),
                "services[2].clusterIPs[0]: 10.96.0.10 belongs to services[1] too",
            ),
            (
                SERVICES.replace(
                    "internalTrafficPolicy: Local",
                    "internalTrafficPolicy: Near",
                ),
                "services[1].internalTrafficPolicy",
            ),
            (
                SERVICES.replace(
                    "selector: {app: web}}",
                    "selector: {app: web}, colour: red}",
                ),
                "colour",
            ),
            (
                SERVICES.replace("{containerPort: 9090}", "{containerPort: 0}"),
                "nodes[0].pods[0].ports[1].containerPort: must be 1 to 65535",
            ),
            (
                SERVICES.replace("{containerPort: 9090}", "{name: http, containerPort: 9090}"),
                "nodes[0].pods[0].ports[1].name: \"http\" is used twice",
            ),
            (
                SERVICES.replace(
                    "{name: http, containerPort: 8080}",
                    "{name: HTTP, containerPort: 8080}",
                ),
                "nodes[0].pods[0].ports[0].name: \"HTTP\" is not a port name",
            ),
        ];
        for (text, want) in cases {
            let err = error(&text);
            assert!(err.starts_with("/tmp/spec.yaml"), "{err}");
            assert!(err.contains(want), "want {want:?} in {err}");
        }
    }

    #[test]
    fn addresses_in_the_service_range_may_be_given() {
        let spec = parse(&SERVICES.replace("10.96.0.10", "198.18.96.1")).unwrap();
        assert_eq!(spec.services.len(), 3);
        parse(&SERVICES.replace("10.96.0.10", "'fd6f:7264:ffff::1'")).unwrap();
    }
}
