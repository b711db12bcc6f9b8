//! Table tests of [`route`]: one workload set, one case per line.
use std::{collections::HashMap, net::IpAddr, path::Path};

use rand::{SeedableRng, rngs::StdRng};

use super::*;
use crate::workloads::WorkloadSet;

const SET: &str = "namespaces: {shop: {mtls: strict}}
workloads:
  - {namespace: shop, name: web-a, node: node-a, netns: /a, labels: {app: web}, ips: [198.19.1.11, 'fd6f:7264:1::11'], ports: [{name: http, containerPort: 8080}]}
  - {namespace: shop, name: web-b, node: node-b, netns: /b, labels: {app: web}, ips: [198.19.2.11, 'fd6f:7264:2::11'], ports: [{name: http, containerPort: 8081}]}
  - {namespace: shop, name: client, node: node-a, netns: /c, ips: [198.19.1.12]}
  - {namespace: shop, name: legacy, node: node-b, netns: /d, labels: {app: old}, ips: [198.19.2.12], mode: none}
services:
  - {namespace: shop, name: web, clusterIPs: [10.96.0.10, 'fd00:96::10'], selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
  - {namespace: shop, name: web-local, clusterIPs: [10.96.0.11], selector: {app: web}, ports: [{port: 80, targetPort: 8080}], internalTrafficPolicy: Local}
  - {namespace: shop, name: sticky, clusterIPs: [10.96.0.12], selector: {app: web}, ports: [{port: 80, targetPort: 8080}], sessionAffinity: ClientIP}
  - {namespace: shop, name: old, clusterIPs: [10.96.0.13], selector: {app: old}, ports: [{port: 5432}]}
  - namespace: shop
    name: draining
    clusterIPs: [10.96.0.14]
    ports: [{port: 80, targetPort: 8080}]
    endpoints:
      - {ip: 198.19.1.11, ready: false, serving: true, terminating: true}
      - {ip: 198.19.2.11, ready: false, serving: false, terminating: true}
  - namespace: shop
    name: mixed
    clusterIPs: [10.96.0.15]
    ports: [{port: 80, targetPort: 8080}]
    endpoints:
      - {ip: 198.19.1.11, ready: false, serving: true, terminating: true}
      - {ip: 198.19.2.11}
  - {namespace: shop, name: empty, clusterIPs: [10.96.0.16], selector: {app: nobody}, ports: [{port: 80}]}
  - {namespace: shop, name: headless, selector: {app: web}, ports: [{port: 80}]}
";

#[derive(Default)]
struct FakeLoads {
    active: HashMap<IpAddr, usize>,
    affinity: Option<IpAddr>,
}

impl Loads for FakeLoads {
    fn active(&self, ip: IpAddr) -> usize {
        self.active.get(&ip).copied().unwrap_or(0)
    }
    fn affinity(&self, _vip: IpAddr, _port: u16, _client: IpAddr) -> Option<IpAddr> {
        self.affinity
    }
}

fn directory() -> Directory {
    let dir = Directory::default();
    dir.update(&WorkloadSet::parse(Path::new("w.yaml"), SET).unwrap());
    dir
}

/// One case: its name, the client's node, the address dialed, endpoints' active
/// connections, the client's remembered endpoint, and what it expects.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, usize)],
    Option<&'static str>,
    Want,
);

/// What a case expects: the first target (address, in the mesh) or the error's text.
enum Want {
    First(&'static str, bool),
    Error(&'static str),
}

/// Busy endpoints: five live connections each.
const BUSY_A: &[(&str, usize)] = &[("198.19.1.11", 5)];
const BUSY_B: &[(&str, usize)] = &[("198.19.2.11", 5)];
const BUSY_A6: &[(&str, usize)] = &[("fd6f:7264:1::11", 5)];

/// Routes each case with every seed (with two endpoints, two choices always see both)
/// and checks its first target or its error.
fn check(cases: &[Case]) {
    let dir = directory();
    for (case, node, dst, active, affinity, want) in cases {
        let loads = FakeLoads {
            active: active
                .iter()
                .map(|(ip, n)| (ip.parse().unwrap(), *n))
                .collect(),
            affinity: affinity.map(|ip| ip.parse().unwrap()),
        };
        let src = Source {
            node: Some(node),
            ip: "198.19.1.12".parse().unwrap(),
        };
        for seed in 0..8 {
            let got = route(
                src,
                dst.parse().unwrap(),
                &dir,
                &loads,
                &mut StdRng::seed_from_u64(seed),
            );
            match (want, got) {
                (Want::First(addr, mesh), Ok(route)) => {
                    let first = &route.targets()[0];
                    assert_eq!(first.addr.to_string(), *addr, "{case}");
                    assert_eq!(first.mesh.is_some(), *mesh, "{case}");
                }
                (Want::Error(text), Err(err)) => {
                    assert!(err.to_string().contains(text), "{case}: {err}")
                }
                (_, got) => panic!("{case}: got {got:?}"),
            }
        }
    }
}

/// Pods dialed directly (in the mesh or not), unknown addresses, a headless Service's pod IPs.
#[test]
fn addresses_that_are_not_a_services_cluster_ip_go_where_they_were_dialed() {
    use Want::*;
    check(&[
        (
            "pod in the mesh, dialed directly",
            "node-a",
            "198.19.2.11:8081",
            &[],
            None,
            First("198.19.2.11:8081", true),
        ),
        (
            "pod outside the mesh, dialed directly",
            "node-a",
            "198.19.2.12:5432",
            &[],
            None,
            First("198.19.2.12:5432", false),
        ),
        (
            "unknown address",
            "node-a",
            "203.0.113.9:443",
            &[],
            None,
            First("203.0.113.9:443", false),
        ),
        (
            "headless Service: pod IPs as they are",
            "node-a",
            "198.19.1.11:80",
            &[],
            None,
            First("198.19.1.11:80", true),
        ),
    ]);
}

/// A Service's cluster IP (IPv4, IPv6, IPv4-mapped): its endpoints on the resolved target port, the less loaded first; a port it does not declare is no route.
#[test]
fn a_cluster_ip_becomes_the_least_loaded_endpoint_on_the_target_port() {
    use Want::*;
    check(&[
        (
            "named targetPort resolved per pod (b less loaded)",
            "node-a",
            "10.96.0.10:80",
            BUSY_A,
            None,
            First("198.19.2.11:8081", true),
        ),
        (
            "named targetPort resolved per pod (a less loaded)",
            "node-a",
            "10.96.0.10:80",
            BUSY_B,
            None,
            First("198.19.1.11:8080", true),
        ),
        (
            "IPv6 cluster IP: IPv6 endpoints",
            "node-a",
            "[fd00:96::10]:80",
            BUSY_A6,
            None,
            First("[fd6f:7264:2::11]:8081", true),
        ),
        (
            "IPv4-mapped cluster IP",
            "node-a",
            "[::ffff:10.96.0.10]:80",
            BUSY_B,
            None,
            First("198.19.1.11:8080", true),
        ),
        (
            "undeclared port",
            "node-a",
            "10.96.0.10:81",
            &[],
            None,
            Error("service web.shop.svc.cluster.local has no port 81"),
        ),
    ]);
}

/// `internalTrafficPolicy: Local` and `sessionAffinity: ClientIP`.
#[test]
fn traffic_policy_and_session_affinity_choose_the_endpoint() {
    use Want::*;
    check(&[
        (
            "Local: only this node's endpoint, however loaded",
            "node-b",
            "10.96.0.11:80",
            BUSY_B,
            None,
            First("198.19.2.11:8080", true),
        ),
        (
            "Local: none on this node",
            "node-c",
            "10.96.0.11:80",
            &[],
            None,
            Error("has no ready endpoint on this node"),
        ),
        (
            "ClientIP: the remembered endpoint, however loaded",
            "node-a",
            "10.96.0.12:80",
            BUSY_B,
            Some("198.19.2.11"),
            First("198.19.2.11:8080", true),
        ),
        (
            "ClientIP: a remembered endpoint gone is forgotten",
            "node-a",
            "10.96.0.12:80",
            BUSY_B,
            Some("198.19.9.9"),
            First("198.19.1.11:8080", true),
        ),
        (
            "affinity ignored without ClientIP",
            "node-a",
            "10.96.0.10:80",
            BUSY_B,
            Some("198.19.2.11"),
            First("198.19.1.11:8080", true),
        ),
    ]);
}

/// Endpoints outside the mesh, terminating ones, none at all.
#[test]
fn endpoint_conditions_and_the_mesh_decide_how_an_endpoint_is_reached() {
    use Want::*;
    check(&[
        (
            "endpoint outside the mesh: plaintext to it",
            "node-a",
            "10.96.0.13:5432",
            &[],
            None,
            First("198.19.2.12:5432", false),
        ),
        (
            "only terminating but serving: used",
            "node-a",
            "10.96.0.14:80",
            &[],
            None,
            First("198.19.1.11:8080", true),
        ),
        (
            "ready wins over terminating, however loaded",
            "node-a",
            "10.96.0.15:80",
            BUSY_B,
            None,
            First("198.19.2.11:8080", true),
        ),
        (
            "no endpoints",
            "node-a",
            "10.96.0.16:80",
            &[],
            None,
            Error("service empty.shop.svc.cluster.local port 80 has no ready endpoint"),
        ),
    ]);
}

#[test]
fn fallbacks_follow_the_choice_least_loaded_first_and_never_repeat_it() {
    let dir = directory();
    let loads = FakeLoads {
        active: [("198.19.2.11".parse().unwrap(), 5)].into(),
        affinity: None,
    };
    let src = Source {
        node: Some("node-a"),
        ip: "198.19.1.12".parse().unwrap(),
    };
    let route = route(
        src,
        "10.96.0.10:80".parse().unwrap(),
        &dir,
        &loads,
        &mut StdRng::seed_from_u64(1),
    )
    .unwrap();
    let addrs: Vec<String> = route.targets().iter().map(|t| t.addr.to_string()).collect();
    assert_eq!(addrs, ["198.19.1.11:8080", "198.19.2.11:8081"]);
    assert_eq!(route.service().unwrap().fqdn, "web.shop.svc.cluster.local");
    // A terminating endpoint is no fallback while a ready one exists.
    let route = super::route(
        src,
        "10.96.0.15:80".parse().unwrap(),
        &dir,
        &loads,
        &mut StdRng::seed_from_u64(1),
    )
    .unwrap();
    assert_eq!(route.targets().len(), 1);
}

#[test]
fn two_choices_spread_equal_loads_evenly_and_avoid_a_busy_endpoint() {
    let set = WorkloadSet::parse(Path::new("w.yaml"), &format!("{SET}  - {{namespace: shop, name: three, clusterIPs: [10.96.0.20], ports: [{{port: 80}}], endpoints: [{{ip: 198.19.1.11}}, {{ip: 198.19.2.11}}, {{ip: 198.19.1.12}}]}}\n")).unwrap();
    let dir = Directory::default();
    dir.update(&set);
    let src = Source {
        node: None,
        ip: "198.19.1.12".parse().unwrap(),
    };
    let mut rng = StdRng::seed_from_u64(7);
    let mut counts: HashMap<IpAddr, usize> = HashMap::new();
    let idle = FakeLoads::default();
    for _ in 0..3000 {
        let r = route(src, "10.96.0.20:80".parse().unwrap(), &dir, &idle, &mut rng).unwrap();
        *counts.entry(r.targets()[0].addr.ip()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3);
    for (ip, n) in &counts {
        assert!((800..=1200).contains(n), "{ip}: {n} of 3000");
    }
    // One endpoint far busier than the others: two choices pick it only when it is drawn
    // twice, which distinct draws never do.
    let busy = FakeLoads {
        active: [("198.19.2.11".parse().unwrap(), 100)].into(),
        affinity: None,
    };
    for _ in 0..300 {
        let r = route(src, "10.96.0.20:80".parse().unwrap(), &dir, &busy, &mut rng).unwrap();
        assert_ne!(r.targets()[0].addr.ip().to_string(), "198.19.2.11");
    }
}
