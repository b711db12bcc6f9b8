//! The testbeds the end-to-end tests stand up, as spec YAML for `outrider-testbed testbed
//! up`: the pods (enrolled, outside the mesh, or in sidecar mode), the nodes that hold
//! them, and the two-node shape most tests share — an enrolled `shop/client` on node-a and
//! an enrolled `data/db` on node-b. A test file adds only what is particular to it (more
//! pods, strict namespaces, agent settings), and says so where it builds its spec.
//!
//! Pods keep the order they are given in: a node hands out addresses in that order.

/// An enrolled pod `namespace/name` whose service account is its name.
pub fn meshed(key: &str) -> String {
    let (namespace, name) = split(key);
    format!("{{namespace: {namespace}, name: {name}, serviceAccount: {name}}}")
}

/// A pod `namespace/name` outside the mesh (not enrolled, no service account).
pub fn unenrolled(key: &str) -> String {
    let (namespace, name) = split(key);
    format!("{{namespace: {namespace}, name: {name}, enrolled: false}}")
}

/// `shop/outsider`: the pod outside the mesh that tests send plaintext and attacks from.
pub fn outsider() -> String {
    unenrolled("shop/outsider")
}

/// A pod `namespace/name` meshed by its own sidecar, its service account its name.
pub fn sidecar(key: &str) -> String {
    let (namespace, name) = split(key);
    format!("{{namespace: {namespace}, name: {name}, serviceAccount: {name}, mode: sidecar}}")
}

/// The `nodes:` section: each node by name with its pods (as [`meshed`] and the others
/// write them), in order.
pub fn nodes(nodes: &[(&str, &[String])]) -> String {
    let mut yaml = String::from("nodes:\n");
    for (name, pods) in nodes {
        yaml.push_str(&format!("  - name: {name}\n    pods:\n"));
        for pod in *pods {
            yaml.push_str(&format!("      - {pod}\n"));
        }
    }
    yaml
}

/// The two-node testbed most tests use: node-a holds the enrolled `shop/client` and then
/// `node_a`'s pods, node-b the enrolled `data/db` and then `node_b`'s.
pub fn client_and_db(node_a: &[String], node_b: &[String]) -> String {
    let a: Vec<String> = std::iter::once(meshed("shop/client"))
        .chain(node_a.iter().cloned())
        .collect();
    let b: Vec<String> = std::iter::once(meshed("data/db"))
        .chain(node_b.iter().cloned())
        .collect();
    nodes(&[("node-a", &a), ("node-b", &b)])
}

/// The `namespaces:` section making each of `namespaces` strict (plaintext refused).
pub fn strict(namespaces: &[&str]) -> String {
    let mut yaml = String::from("namespaces:\n");
    for namespace in namespaces {
        yaml.push_str(&format!("  {namespace}: {{mtls: strict}}\n"));
    }
    yaml
}

fn split(key: &str) -> (&str, &str) {
    key.split_once('/')
        .unwrap_or_else(|| panic!("a pod is namespace/name, not {key:?}"))
}
