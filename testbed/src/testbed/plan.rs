//! From a spec to the testbed's names and addresses, without touching the machine: the
//! per-testbed prefix, network namespace and cgroup names, and IP addresses.
//!
//! Node `i` (1-based, spec order) is 198.18.0.`i` / fd6f:7264::`i` on the fabric and owns
//! 198.19.`i`.0/24 / fd6f:7264:`i`::/64; its pod `j` is 198.19.`i`.`j+10` /
//! fd6f:7264:`i`::`j+10`. The IPv6 groups are the decimal numbers written as they are
//! (pod 198.19.12.21 is fd6f:7264:12::21), so both families read alike. Service `k`
//! (1-based, spec order) without cluster IPs of its own gets 198.18.96.`k` /
//! fd6f:7264:ffff::`k` (skipping addresses the spec gives other Services): a range no node
//! or pod address falls in, reached from pods over their default route to their node.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    spec::{MAX_SERVICES, Spec},
    state::{NodeState, PodState, State},
};
use outrider::workloads::{Mode, Service};

/// Where Services without cluster IPs in the spec get theirs.
pub const SERVICE_CIDR_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 96, 0), 24);
pub const SERVICE_CIDR_V6: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0xfd6f, 0x7264, 0xffff, 0, 0, 0, 0, 0), 64);
/// The node (fabric) and pod addresses, which no Service may take.
pub const NODE_AND_POD_RANGES: &str = "198.18.0.0/24, 198.19.0.0/16, fd6f:7264::/32";

/// Names longer than this are truncated and given a hash suffix.
pub const MAX_NETNS_NAME: usize = 48;
/// The tag (env `OUTRIDER_TESTBED_TAG`) is part of every name; keep it short.
const MAX_TAG: usize = 8;

/// `or` + tag + 6 random hex digits.
pub fn new_prefix(tag: Option<&str>) -> anyhow::Result<String> {
    let tag = tag.unwrap_or("");
    if tag.len() > MAX_TAG
        || !tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        bail!("OUTRIDER_TESTBED_TAG={tag:?}: must be at most {MAX_TAG} of a-z and 0-9");
    }
    Ok(format!("or{tag}{:06x}", rand::random::<u32>() & 0xff_ffff))
}

/// A made-up pod UID, shaped like Kubernetes' (a random, version 4 UUID).
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The fabric namespace, holding the bridge every node is plugged into.
pub fn fabric_netns(prefix: &str) -> String {
    format!("{prefix}-fabric")
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// The decimal number `n` written as an IPv6 group: 21 → 0x21.
fn group(n: usize) -> u16 {
    // n < 10_000 here (at most 254), so its decimal digits are a valid hex u16.
    u16::from_str_radix(&n.to_string(), 16).unwrap_or(u16::MAX)
}

pub fn node_ipv4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, i as u8)
}

pub fn node_ipv6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd6f, 0x7264, 0, 0, 0, 0, 0, group(i))
}

pub fn pod_cidr_v4(i: usize) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(198, 19, i as u8, 0), 24)
}

pub fn pod_cidr_v6(i: usize) -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(0xfd6f, 0x7264, group(i), 0, 0, 0, 0, 0), 64)
}

pub fn pod_ipv4(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, i as u8, (j + 10) as u8)
}

pub fn pod_ipv6(i: usize, j: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd6f, 0x7264, group(i), 0, 0, 0, 0, group(j + 10))
}

/// True for an address of the testbed's fabric, nodes, pod gateways or pods (see
/// [`NODE_AND_POD_RANGES`]), which the Service range is carved out of.
pub fn is_node_or_pod_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 24).contains(&ip)
                || Ipv4Net::new_assert(Ipv4Addr::new(198, 19, 0, 0), 16).contains(&ip)
        }
        IpAddr::V6(ip) => {
            Ipv6Net::new_assert(Ipv6Addr::new(0xfd6f, 0x7264, 0, 0, 0, 0, 0, 0), 32).contains(&ip)
                && !SERVICE_CIDR_V6.contains(&ip)
        }
    }
}

pub fn service_ipv4(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(SERVICE_CIDR_V4.network()) + k as u32)
}

pub fn service_ipv6(k: usize) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(SERVICE_CIDR_V6.network()) + u128::from(group(k)))
}

/// The spec's Services with their cluster IPs: as given, or one IPv4 and one IPv6 of the
/// testbed's range, in spec order, skipping addresses the spec gives explicitly. IPv4
/// first.
pub fn services(spec: &Spec) -> anyhow::Result<Vec<Service>> {
    let taken: HashSet<IpAddr> = spec
        .services
        .iter()
        .flat_map(|s| s.cluster_ips.iter().flatten().copied())
        .collect();
    let mut free = (1..=MAX_SERVICES).filter(|k| {
        !taken.contains(&IpAddr::V4(service_ipv4(*k)))
            && !taken.contains(&IpAddr::V6(service_ipv6(*k)))
    });
    let mut services = Vec::new();
    for svc in &spec.services {
        let mut ips = match &svc.cluster_ips {
            Some(ips) => ips.clone(),
            None => {
                let k = free.next().with_context(|| {
                    format!(
                        "no free cluster IPs left in {SERVICE_CIDR_V4} for Service {}/{}",
                        svc.namespace, svc.name
                    )
                })?;
                vec![service_ipv4(k).into(), service_ipv6(k).into()]
            }
        };
        ips.sort_by_key(IpAddr::is_ipv6);
        services.push(svc.service(ips));
    }
    Ok(services)
}

/// The first address of a pod CIDR: the node's address on its pod bridge, the pods' gateway.
pub fn gateway_v4(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}

pub fn gateway_v6(cidr: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(cidr.network()) + 1)
}

/// FNV-1a: a stable short hash for names (not for security).
pub fn hash8(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// `<prefix>-<body>`, or when `hashed` or too long, `<prefix>-<body, cut>-<hash of key>`.
fn netns_name(prefix: &str, body: &str, key: &str, hashed: bool) -> String {
    let plain = format!("{prefix}-{body}");
    if !hashed && plain.len() <= MAX_NETNS_NAME {
        return plain;
    }
    let room = MAX_NETNS_NAME.saturating_sub(prefix.len() + 2 + 8);
    let cut = body[..body.len().min(room)].trim_end_matches('-');
    format!("{prefix}-{cut}-{}", hash8(key))
}

/// Lays out the testbed described by `spec`: names, addresses, cgroups, made-up UIDs.
pub fn plan(spec: &Spec, prefix: &str, cgroup_mount: &Path) -> anyhow::Result<State> {
    let fabric = fabric_netns(prefix);
    let node_names: Vec<String> = spec
        .nodes
        .iter()
        .map(|n| netns_name(prefix, &n.name, &n.name, false))
        .collect();

    // Pods get `<prefix>-<ns>-<name>` unless that is too long or taken (by a node, the
    // fabric, or another pod: `a-b/c` and `a/b-c`); then a hash of `ns/name` tells apart.
    let mut plain_count: HashMap<String, usize> = HashMap::new();
    for pod in spec.nodes.iter().flat_map(|n| &n.pods) {
        *plain_count
            .entry(format!("{prefix}-{}-{}", pod.namespace, pod.name))
            .or_default() += 1;
    }
    let cgroup_root = cgroup_mount.join(prefix);
    let mut state = State {
        prefix: prefix.to_string(),
        cgroup_root: cgroup_root.clone(),
        nodes: Vec::new(),
        pods: Vec::new(),
        strict_namespaces: spec.strict_namespaces(),
        loopback_namespaces: spec.loopback_namespaces(),
        ca_dir: PathBuf::new(),
        policy_dir: PathBuf::new(),
        services: services(spec)?,
    };
    for (index, (node, netns)) in spec.nodes.iter().zip(&node_names).enumerate() {
        let i = index + 1;
        let node_cgroup = cgroup_root.join(&*node.name);
        state.nodes.push(NodeState {
            name: node.name.to_string(),
            netns: netns_path(netns),
            netns_name: netns.clone(),
            ipv4: node_ipv4(i),
            ipv6: node_ipv6(i),
            pod_cidr_v4: pod_cidr_v4(i),
            pod_cidr_v6: pod_cidr_v6(i),
            cgroup: node_cgroup.clone(),
            agent: None,
        });
        for (pod_index, pod) in node.pods.iter().enumerate() {
            let j = pod_index + 1;
            let key = pod.key();
            let body = format!("{}-{}", pod.namespace, pod.name);
            let plain = format!("{prefix}-{body}");
            let taken = plain == fabric || node_names.contains(&plain) || plain_count[&plain] > 1;
            let netns = netns_name(prefix, &body, &key, taken);
            // As the kubelet's cgroupfs driver lays pods out (BestEffort QoS), so the
            // agent finds a pod's sandbox from its UID as on a real node.
            let uid = new_uid();
            let cgroup = node_cgroup
                .join("kubepods")
                .join("besteffort")
                .join(format!("pod{uid}"));
            state.pods.push(PodState {
                node: node.name.to_string(),
                namespace: pod.namespace.to_string(),
                name: pod.name.to_string(),
                service_account: pod.service_account.clone(),
                enrolled: pod.mode() == Mode::Node,
                sidecar: pod.mode() == Mode::Sidecar,
                sidecar_pid: None,
                ipv4: pod_ipv4(i, j),
                ipv6: pod_ipv6(i, j),
                netns: netns_path(&netns),
                netns_name: netns,
                cgroup,
                uid,
                labels: pod
                    .labels
                    .clone()
                    .unwrap_or_else(|| [("app".to_string(), pod.name.to_string())].into()),
                ports: pod.ports.clone(),
                ready: true,
                terminating: false,
            });
        }
    }

    let mut seen = HashSet::new();
    let all = std::iter::once(&fabric)
        .chain(state.nodes.iter().map(|n| &n.netns_name))
        .chain(state.pods.iter().map(|p| &p.netns_name));
    for name in all {
        if !seen.insert(name) {
            bail!("two network namespaces would be named {name}; rename a node or pod");
        }
    }
    Ok(state)
}

/// Node index `i` (1-based) of a planned node: the last byte of its fabric address.
pub fn node_index(node: &NodeState) -> usize {
    usize::from(node.ipv4.octets()[3])
}

/// Pod index `j` (1-based, within its node) of a planned pod.
pub fn pod_index(pod: &PodState) -> anyhow::Result<usize> {
    usize::from(pod.ipv4.octets()[3])
        .checked_sub(10)
        .filter(|j| *j >= 1)
        .with_context(|| {
            format!(
                "pod {}: address {} is not a testbed pod address",
                pod.key(),
                pod.ipv4
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Spec {
        Spec::parse(Path::new("spec.yaml"), text).unwrap()
    }

    const TWO_NODES: &str = "nodes:
  - name: node-a
    pods: [{namespace: shop, name: web}, {namespace: shop, name: client}]
  - name: node-b
    pods: [{namespace: data, name: db, enrolled: false}]
";

    #[test]
    fn addresses_follow_node_and_pod_order() {
        let state = plan(&spec(TWO_NODES), "orabc123", Path::new("/sys/fs/cgroup")).unwrap();
        let a = &state.nodes[0];
        assert_eq!(a.ipv4.to_string(), "198.18.0.1");
        assert_eq!(a.ipv6.to_string(), "fd6f:7264::1");
        assert_eq!(a.pod_cidr_v4.to_string(), "198.19.1.0/24");
        assert_eq!(a.pod_cidr_v6.to_string(), "fd6f:7264:1::/64");
        assert_eq!(gateway_v4(a.pod_cidr_v4).to_string(), "198.19.1.1");
        assert_eq!(gateway_v6(a.pod_cidr_v6).to_string(), "fd6f:7264:1::1");
        let b = &state.nodes[1];
        assert_eq!(b.ipv4.to_string(), "198.18.0.2");
        assert_eq!(b.pod_cidr_v6.to_string(), "fd6f:7264:2::/64");

        let pods: Vec<(String, String, String)> = state
            .pods
            .iter()
            .map(|p| (p.key(), p.ipv4.to_string(), p.ipv6.to_string()))
            .collect();
        let expected = [
            ("shop/web", "198.19.1.11", "fd6f:7264:1::11"),
            ("shop/client", "198.19.1.12", "fd6f:7264:1::12"),
            ("data/db", "198.19.2.11", "fd6f:7264:2::11"),
        ];
        for (got, want) in pods.iter().zip(expected) {
            assert_eq!((got.0.as_str(), got.1.as_str(), got.2.as_str()), want);
        }
        assert!(!state.pods[2].enrolled);
        assert_eq!(state.pods[2].node, "node-b");
        assert_eq!(pod_index(&state.pods[1]).unwrap(), 2);
        assert_eq!(node_index(b), 2);
    }

    #[test]
    fn large_indexes_read_alike_in_both_families() {
        assert_eq!(pod_ipv4(12, 11).to_string(), "198.19.12.21");
        assert_eq!(pod_ipv6(12, 11).to_string(), "fd6f:7264:12::21");
        assert_eq!(pod_ipv4(254, 244).to_string(), "198.19.254.254");
        assert_eq!(pod_ipv6(254, 244).to_string(), "fd6f:7264:254::254");
        assert_eq!(node_ipv6(254).to_string(), "fd6f:7264::254");
    }

    #[test]
    fn names_and_cgroups_derive_from_the_prefix() {
        let state = plan(
            &spec(TWO_NODES),
            "orabc123",
            Path::new("/sys/fs/cgroup/unified"),
        )
        .unwrap();
        assert_eq!(
            state.cgroup_root,
            Path::new("/sys/fs/cgroup/unified/orabc123")
        );
        let a = &state.nodes[0];
        assert_eq!(a.netns_name, "orabc123-node-a");
        assert_eq!(a.netns, Path::new("/run/netns/orabc123-node-a"));
        assert_eq!(
            a.cgroup,
            Path::new("/sys/fs/cgroup/unified/orabc123/node-a")
        );
        let web = &state.pods[0];
        assert_eq!(web.netns_name, "orabc123-shop-web");
        // The kubelet's cgroupfs layout, so the agent finds the pod by its UID.
        assert_eq!(
            web.cgroup,
            Path::new("/sys/fs/cgroup/unified/orabc123/node-a/kubepods/besteffort")
                .join(format!("pod{}", web.uid))
        );
        assert_eq!(web.uid.len(), 36);
        assert_ne!(web.uid, state.pods[1].uid);
    }

    #[test]
    fn colliding_and_long_names_are_hashed_apart() {
        let long = "x".repeat(63);
        let text = format!(
            "nodes:
  - name: shop-web
    pods: [{{namespace: shop, name: web}}, {{namespace: a-b, name: c}}, {{namespace: a, name: b-c}}]
  - name: n2
    pods: [{{namespace: {long}, name: {long}}}]
"
        );
        let state = plan(&spec(&text), "orabc123", Path::new("/cg")).unwrap();
        let names: Vec<&str> = state.pods.iter().map(|p| p.netns_name.as_str()).collect();
        assert_eq!(state.nodes[0].netns_name, "orabc123-shop-web");
        assert_ne!(names[0], "orabc123-shop-web");
        assert!(names[0].starts_with("orabc123-shop-web-"), "{names:?}");
        assert_ne!(names[1], names[2]);
        assert!(names.iter().all(|n| n.len() <= MAX_NETNS_NAME), "{names:?}");
        assert!(names[3].starts_with("orabc123-xxxx"), "{names:?}");
        // `a-b/c` and `a/b-c` would share a cgroup directory on their node.
        assert_ne!(state.pods[1].cgroup, state.pods[2].cgroup);
        // Same spec, same names: the hash is stable.
        let again = plan(&spec(&text), "orabc123", Path::new("/cg")).unwrap();
        assert_eq!(state.pods[3].netns_name, again.pods[3].netns_name);
    }

    #[test]
    fn prefix_is_or_tag_and_six_hex_digits() {
        let p = new_prefix(None).unwrap();
        assert_eq!(p.len(), 8, "{p}");
        assert!(p.starts_with("or"));
        assert!(p[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{p}");
        let p = new_prefix(Some("ci7")).unwrap();
        assert!(p.starts_with("orci7") && p.len() == 11, "{p}");
        assert!(new_prefix(Some("Bad-Tag")).is_err());
        assert!(new_prefix(Some("waytoolongtag")).is_err());
    }

    #[test]
    fn services_get_one_address_of_each_family_skipping_given_ones() {
        let text = format!(
            "{TWO_NODES}services:
  - {{namespace: shop, name: a, ports: [{{port: 80}}]}}
  - {{namespace: shop, name: b, clusterIPs: ['fd6f:7264:ffff::2', 198.18.96.1], ports: [{{port: 80}}]}}
  - {{namespace: shop, name: c, ports: [{{port: 80}}]}}
  - {{namespace: shop, name: d, clusterIPs: [], ports: [{{port: 80}}]}}
  - {{namespace: shop, name: e, clusterIPs: ['fd00::9'], ports: [{{port: 80}}]}}
"
        );
        let state = plan(&spec(&text), "orabc123", Path::new("/cg")).unwrap();
        let ips: Vec<Vec<String>> = state
            .services
            .iter()
            .map(|s| s.cluster_ips.iter().map(ToString::to_string).collect())
            .collect();
        assert_eq!(
            ips[0],
            ["198.18.96.3", "fd6f:7264:ffff::3"],
            "1 and 2 are taken"
        );
        assert_eq!(
            ips[1],
            ["198.18.96.1", "fd6f:7264:ffff::2"],
            "as given, IPv4 first"
        );
        assert_eq!(ips[2], ["198.18.96.4", "fd6f:7264:ffff::4"]);
        assert!(ips[3].is_empty(), "headless");
        assert_eq!(ips[4], ["fd00::9"]);
        assert_eq!(state.service("shop/c").unwrap().name, "c");
        for ip in state.services.iter().flat_map(|s| &s.cluster_ips) {
            assert!(!is_node_or_pod_address(*ip), "{ip}");
        }
    }

    #[test]
    fn the_service_range_is_clear_of_nodes_and_pods() {
        for (i, j) in [(1, 1), (96, 86), (254, 244)] {
            assert!(is_node_or_pod_address(pod_ipv4(i, j).into()));
            assert!(is_node_or_pod_address(pod_ipv6(i, j).into()));
            assert!(is_node_or_pod_address(node_ipv4(i).into()));
            assert!(is_node_or_pod_address(node_ipv6(i).into()));
            assert!(is_node_or_pod_address(gateway_v6(pod_cidr_v6(i)).into()));
        }
        for k in [1, 96, MAX_SERVICES] {
            assert!(!is_node_or_pod_address(service_ipv4(k).into()));
            assert!(!is_node_or_pod_address(service_ipv6(k).into()));
        }
        assert_eq!(service_ipv6(254).to_string(), "fd6f:7264:ffff::254");
        assert_eq!(service_ipv4(254).to_string(), "198.18.96.254");
    }
}
