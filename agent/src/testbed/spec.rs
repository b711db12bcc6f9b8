//! The testbed spec (`outrider testbed up --spec FILE`): which nodes, and which pods on
//! each. Parse errors name the file, line and field; checks across entries (unique names,
//! limits) name the file and field.
//!
//! ```yaml
//! nodes:
//!   - name: node-a
//!     pods:
//!       - {namespace: shop, name: web, serviceAccount: web, enrolled: true}
//!       - {namespace: shop, name: client}     # serviceAccount: default, enrolled: true
//!       - {namespace: shop, name: cart, mode: sidecar}  # node | sidecar | none
//! namespaces:                                 # optional: mesh settings per namespace
//!   shop: {mtls: strict}                      # strict | permissive (default)
//! agent:                                      # optional: agent settings for every node
//!   capture: {excludePorts: [53]}             # (same fields as the agent's config file)
//! ```
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    ops::Deref,
    path::Path,
};

use anyhow::bail;
use serde::Deserialize;

use crate::{
    config::Config,
    workloads::{Mode, MtlsMode, NamespaceSettings},
    yaml,
};

/// Node `i` owns 198.19.`i`.0/24, so there are at most 254 nodes.
pub const MAX_NODES: usize = 254;
/// Pod `j` of a node is 198.19.i.`j + 10`, so there are at most 244 pods a node.
pub const MAX_PODS_PER_NODE: usize = 244;
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

    fn validate(&self, file: &Path) -> anyhow::Result<()> {
        let file = file.display();
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
            }
        }
        Ok(())
    }
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
}
