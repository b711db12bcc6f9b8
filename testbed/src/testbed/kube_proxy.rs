//! kube-proxy's iptables mode, in miniature, inside every node's network namespace (never
//! the machine's): a connection to a Service's `clusterIP:port` is DNATed to one of its
//! ready endpoints (serving-but-terminating ones when none is ready), picked at random
//! with `-m statistic` chains as kube-proxy writes them; `sessionAffinity: ClientIP`
//! with `-m recent`; `internalTrafficPolicy: Local` keeps to the node's own endpoints. No
//! masquerade — the endpoint sees the client pod's address, and the client's node undoes
//! the DNAT on the way back (pods route everything through their node) — except a pod
//! reaching itself through its Service, which kube-proxy masquerades too. A port without
//! endpoints is rejected (`REJECT`, or `DROP` for Local without local endpoints).
//!
//! The node's `nat` and `filter` tables are the testbed's: each rebuild replaces them
//! whole, one `iptables-restore` transaction per table set and family, from the same
//! resolved view of the Services the agents use ([`Directory`]). The namespaces go with
//! the testbed, and the rules with them.
use std::{collections::HashSet, fmt::Write as _, net::IpAddr, sync::Arc};

use anyhow::{Context, bail};

use super::{
    agents, net,
    plan::{self, hash8},
    state::State,
};
use outrider::workloads::{
    directory::{Directory, EndpointState, ResolvedEndpoint, ResolvedService},
    service::{SessionAffinity, TrafficPolicy},
};

/// Chains of ours: the Service matches (in `nat` and in `filter`), and the hairpin
/// masquerade.
const SERVICES: &str = "OUTRIDER-SERVICES";
const POSTROUTING: &str = "OUTRIDER-POSTROUTING";
/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
const AFFINITY_SECONDS: u32 = 10800;
/// kube-proxy needs bridged traffic (a pod answering a client on its own bridge) to pass
/// iptables, or the DNAT is not undone; so do we.
const BRIDGE_SYSCTLS: [(&str, &str); 2] = [
    ("net/bridge/bridge-nf-call-iptables", "1"),
    ("net/bridge/bridge-nf-call-ip6tables", "1"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn host_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    fn reject_with(self) -> &'static str {
        match self {
            Family::V4 => "icmp-port-unreachable",
            Family::V6 => "icmp6-port-unreachable",
        }
    }
}

/// Fails early when a tool the Service rules need is missing.
pub fn check_tools() -> anyhow::Result<()> {
    for program in ["iptables-restore", "ip6tables-restore"] {
        if net::which(program).is_none() {
            bail!(
                "`{program}` is not in PATH; the testbed's Services need it (Debian/Ubuntu: apt-get install iptables)"
            );
        }
    }
    Ok(())
}

/// Sets up Service routing in every node once — bridged traffic through iptables; a
/// route for each cluster IP out of the node's `eth0`, as a node's default route would
/// take it, so that a port without endpoints reaches the reject rules (not out of the
/// pods' bridge, whence the packet came: the node would answer with a redirect and
/// rate-limit the rejection); hairpin on the bridge ports of pods behind a
/// Service (kubelet's `hairpin-veth`), so that a pod reaching itself through its Service
/// gets its packets back — then the rules.
pub fn install(state: &State) -> anyhow::Result<()> {
    if state.services.is_empty() {
        return Ok(());
    }
    let routes: Vec<String> = state
        .services
        .iter()
        .flat_map(|s| &s.cluster_ips)
        .map(|ip| format!("route replace {ip} dev eth0"))
        .collect();
    let endpoints: HashSet<IpAddr> = agents::workload_set(state)
        .services
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten().map(|e| e.ip))
        .collect();
    for node in &state.nodes {
        net::sysctls(&node.netns, &BRIDGE_SYSCTLS).context(
            "Services need bridged traffic to pass iptables, as kube-proxy does (Linux: modprobe br_netfilter)",
        )?;
        let mut lines = routes.clone();
        for pod in state.pods.iter().filter(|p| {
            p.node == node.name
                && (endpoints.contains(&p.ipv4.into()) || endpoints.contains(&p.ipv6.into()))
        }) {
            let j = plan::pod_index(pod)?;
            lines.push(format!("link set p{j} type bridge_slave hairpin on"));
        }
        net::ip_batch(&node.netns_name, &lines)?;
    }
    apply(state)
}

/// Rewrites every node's rules from `state` (after a pod's readiness changed).
pub fn apply(state: &State) -> anyhow::Result<()> {
    if state.services.is_empty() {
        return Ok(());
    }
    let directory = Directory::default();
    directory.update(&agents::workload_set(state));
    let services = directory.services();
    for node in &state.nodes {
        for family in [Family::V4, Family::V6] {
            let input = rules(&node.name, &services, family)?;
            net::with_input(
                "ip",
                &["netns", "exec", &node.netns_name, family.restore()],
                &input,
            )
            .with_context(|| {
                format!(
                    "cannot set the Service rules of node {} ({})",
                    node.name,
                    family.restore()
                )
            })?;
        }
    }
    Ok(())
}

/// The `iptables-restore` input (tables `nat` and `filter`) for `node` and `family`.
pub fn rules(
    node: &str,
    services: &[Arc<ResolvedService>],
    family: Family,
) -> anyhow::Result<String> {
    let mut chains: Vec<String> = Vec::new();
    let mut nat: Vec<String> = vec![
        format!("-A PREROUTING -m comment --comment \"outrider testbed: Services\" -j {SERVICES}"),
        format!("-A OUTPUT -m comment --comment \"outrider testbed: Services\" -j {SERVICES}"),
        format!(
            "-A POSTROUTING -m comment --comment \"outrider testbed: pods reaching themselves through a Service\" -j {POSTROUTING}"
        ),
    ];
    let mut filter: Vec<String> = vec![
        format!("-A FORWARD -m conntrack --ctstate NEW -j {SERVICES}"),
        format!("-A OUTPUT -m conntrack --ctstate NEW -j {SERVICES}"),
    ];
    let mut hairpins: Vec<IpAddr> = Vec::new();
    for svc in services {
        for vip in svc
            .cluster_ips
            .iter()
            .copied()
            .filter(|ip| Family::of(*ip) == family)
        {
            for port in &svc.ports {
                let name = if port.key().is_empty() {
                    format!("{}:{}", svc.key, port.port)
                } else {
                    format!("{}:{}", svc.key, port.key())
                };
                let matching = format!(
                    "-d {vip}/{} -p tcp -m tcp --dport {}",
                    family.host_len(),
                    port.port
                );
                let endpoints = usable(svc, node, family, |e| e.target(port).is_some());
                if endpoints.is_empty() {
                    let (what, target) = match svc.internal_traffic_policy {
                        TrafficPolicy::Local => ("has no local endpoints", "DROP".to_string()),
                        TrafficPolicy::Cluster => (
                            "has no endpoints",
                            format!("REJECT --reject-with {}", family.reject_with()),
                        ),
                    };
                    filter.push(format!(
                        "-A {SERVICES} {matching} -m comment --comment \"{name} {what}\" -j {target}"
                    ));
                    continue;
                }
                let svc_chain = format!("OUTRIDER-SVC-{}", hash8(&format!("{name} {vip}")));
                chains.push(svc_chain.clone());
                nat.push(format!(
                    "-A {SERVICES} {matching} -m comment --comment \"{name} cluster IP\" -j {svc_chain}"
                ));
                let mut picks = Vec::new();
                for e in &endpoints {
                    let Some(target) = e.target(port) else {
                        continue;
                    };
                    let sep = format!("OUTRIDER-SEP-{}", hash8(&format!("{name} {vip} {target}")));
                    chains.push(sep.clone());
                    let affinity = match svc.session_affinity {
                        SessionAffinity::ClientIp => {
                            nat.push(format!(
                                "-A {svc_chain} -m comment --comment \"{name} -> {target}\" -m recent --name {sep} --rcheck --seconds {AFFINITY_SECONDS} --reap -j {sep}"
                            ));
                            format!("-m recent --name {sep} --set ")
                        }
                        SessionAffinity::None => String::new(),
                    };
                    nat.push(format!(
                        "-A {sep} -p tcp -m tcp {affinity}-j DNAT --to-destination {target}"
                    ));
                    hairpins.push(e.ip);
                    picks.push((sep, target));
                }
                let n = picks.len();
                for (i, (sep, target)) in picks.iter().enumerate() {
                    let statistic = if i + 1 < n {
                        // kube-proxy's: each of the n endpoints with probability 1/n.
                        format!(
                            "-m statistic --mode random --probability {:.10} ",
                            1.0 / (n - i) as f64
                        )
                    } else {
                        String::new()
                    };
                    nat.push(format!(
                        "-A {svc_chain} -m comment --comment \"{name} -> {target}\" {statistic}-j {sep}"
                    ));
                }
            }
        }
    }
    let mut seen = HashSet::new();
    for ip in hairpins {
        if seen.insert(ip) {
            let len = family.host_len();
            nat.push(format!(
                "-A {POSTROUTING} -s {ip}/{len} -d {ip}/{len} -m conntrack --ctstate DNAT -j MASQUERADE"
            ));
        }
    }
    let mut unique = HashSet::new();
    if let Some(dup) = chains.iter().find(|c| !unique.insert(*c)) {
        bail!("two Service chains would be named {dup}; rename a Service or port");
    }

    let mut out = String::new();
    let _ = writeln!(out, "*nat");
    for builtin in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        let _ = writeln!(out, ":{builtin} ACCEPT [0:0]");
    }
    for chain in [SERVICES, POSTROUTING]
        .into_iter()
        .chain(chains.iter().map(String::as_str))
    {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for rule in nat {
        let _ = writeln!(out, "{rule}");
    }
    let _ = writeln!(out, "COMMIT\n*filter");
    for builtin in ["INPUT", "FORWARD", "OUTPUT"] {
        let _ = writeln!(out, ":{builtin} ACCEPT [0:0]");
    }
    let _ = writeln!(out, ":{SERVICES} - [0:0]");
    for rule in filter {
        let _ = writeln!(out, "{rule}");
    }
    let _ = writeln!(out, "COMMIT");
    Ok(out)
}

/// The endpoints of `svc` in `family` that `node` sends new connections to: the ready
/// ones, else (KEP-1669) the serving-but-terminating ones; with `internalTrafficPolicy:
/// Local`, only those on `node`. `serves` says whether an endpoint serves the port.
fn usable<'a>(
    svc: &'a ResolvedService,
    node: &str,
    family: Family,
    serves: impl Fn(&ResolvedEndpoint) -> bool,
) -> Vec<&'a ResolvedEndpoint> {
    let candidates: Vec<&ResolvedEndpoint> = svc
        .endpoints
        .iter()
        .filter(|e| Family::of(e.ip) == family && serves(e))
        .filter(|e| {
            svc.internal_traffic_policy == TrafficPolicy::Cluster || e.node.as_deref() == Some(node)
        })
        .collect();
    for state in [EndpointState::Ready, EndpointState::Terminating] {
        let picked: Vec<&ResolvedEndpoint> = candidates
            .iter()
            .copied()
            .filter(|e| e.state == state)
            .collect();
        if !picked.is_empty() {
            return picked;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::endpoints::test_pod;
    use outrider::workloads::{PodPort, Service, ServicePort, TargetPort, WorkloadSet};

    /// shop/web: cluster IPs 198.18.96.1 and fd6f:7264:ffff::1, port 80 → `http`, over
    /// web-a (node-a, :8080) and web-b (node-b, :8081); `pods` adjusts the pods.
    fn services(
        adjust: impl Fn(&mut Service, &mut Vec<super::super::state::PodState>),
    ) -> Vec<Arc<ResolvedService>> {
        let mut pods = vec![
            test_pod("shop", "web-a", "node-a", 1, 1),
            test_pod("shop", "web-b", "node-b", 2, 1),
        ];
        for (p, port) in pods.iter_mut().zip([8080, 8081]) {
            p.labels = [("app".to_string(), "web".to_string())].into();
            p.ports = vec![PodPort {
                name: Some("http".into()),
                container_port: port,
            }];
        }
        let mut svc = Service {
            namespace: "shop".into(),
            name: "web".into(),
            cluster_ips: vec![
                "198.18.96.1".parse().unwrap(),
                "fd6f:7264:ffff::1".parse().unwrap(),
            ],
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(TargetPort::Name("http".into())),
            }],
            selector: Some([("app".to_string(), "web".to_string())].into()),
            endpoints: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            session_affinity: SessionAffinity::None,
        };
        adjust(&mut svc, &mut pods);
        let state = State {
            prefix: "orabc123".into(),
            cgroup_root: "/cg".into(),
            nodes: Vec::new(),
            pods,
            strict_namespaces: Vec::new(),
            loopback_namespaces: Vec::new(),
            ca_dir: "/ca".into(),
            policy_dir: "/p".into(),
            services: vec![svc],
        };
        let directory = Directory::default();
        let set: WorkloadSet = agents::workload_set(&state);
        directory.update(&set);
        directory.services()
    }

    fn lines(text: &str, pattern: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.contains(pattern))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn two_ready_endpoints_get_a_half_chance_each_and_no_masquerade() {
        let text = rules("node-a", &services(|_, _| {}), Family::V4).unwrap();
        let jumps = lines(
            &text,
            "-A OUTRIDER-SERVICES -d 198.18.96.1/32 -p tcp -m tcp --dport 80",
        );
        assert_eq!(jumps.len(), 1, "{text}");
        let svc_chain = jumps[0].rsplit(' ').next().unwrap();
        let picks = lines(&text, &format!("-A {svc_chain} "));
        assert_eq!(picks.len(), 2, "{text}");
        assert!(picks[0].contains("-m statistic --mode random --probability 0.5000000000"));
        assert!(
            !picks[1].contains("statistic"),
            "the last one takes the rest"
        );
        let dnat = lines(&text, "DNAT --to-destination");
        let targets: Vec<&str> = dnat.iter().map(|l| l.rsplit(' ').next().unwrap()).collect();
        assert_eq!(
            targets,
            ["198.19.1.11:8080", "198.19.2.11:8081"],
            "named port per pod"
        );
        // Only hairpin traffic (a pod to itself) is masqueraded.
        let masq = lines(&text, "MASQUERADE");
        assert_eq!(masq.len(), 2);
        assert!(
            masq[0].contains("-s 198.19.1.11/32 -d 198.19.1.11/32"),
            "{masq:?}"
        );
        assert!(text.contains("-A PREROUTING ") && text.contains("-A OUTPUT "));
        assert!(lines(&text, "REJECT").is_empty());
        assert!(!text.contains("fd6f"), "IPv4 rules only");
    }

    #[test]
    fn ipv6_rules_use_brackets_and_icmp6() {
        let text = rules("node-b", &services(|_, _| {}), Family::V6).unwrap();
        assert!(
            text.contains("-d fd6f:7264:ffff::1/128 -p tcp -m tcp --dport 80"),
            "{text}"
        );
        assert!(
            text.contains("DNAT --to-destination [fd6f:7264:1::11]:8080"),
            "{text}"
        );
        let none = services(|svc, _| svc.selector = Some([("app".into(), "gone".into())].into()));
        let text = rules("node-b", &none, Family::V6).unwrap();
        assert!(
            text.contains("REJECT --reject-with icmp6-port-unreachable"),
            "{text}"
        );
    }

    #[test]
    fn not_ready_endpoints_are_left_out_and_terminating_ones_only_as_a_last_resort() {
        let text = rules(
            "node-a",
            &services(|_, pods| pods[0].ready = false),
            Family::V4,
        )
        .unwrap();
        let dnat = lines(&text, "-j DNAT");
        assert_eq!(dnat.len(), 1, "{text}");
        assert!(dnat[0].ends_with("198.19.2.11:8081"));
        assert!(lines(&text, "statistic").is_empty());

        // Terminating but serving: not picked while another is ready...
        let text = rules(
            "node-a",
            &services(|_, pods| pods[0].terminating = true),
            Family::V4,
        )
        .unwrap();
        assert_eq!(lines(&text, "-j DNAT").len(), 1);
        assert!(lines(&text, "-j DNAT")[0].ends_with("198.19.2.11:8081"));
        // ...but when none is.
        let text = rules(
            "node-a",
            &services(|_, pods| {
                pods[0].terminating = true;
                pods[1].ready = false;
            }),
            Family::V4,
        )
        .unwrap();
        let dnat = lines(&text, "-j DNAT");
        assert_eq!(dnat.len(), 1, "{text}");
        assert!(dnat[0].ends_with("198.19.1.11:8080"));
        // Neither ready nor serving: rejected.
        let text = rules(
            "node-a",
            &services(|_, pods| pods.iter_mut().for_each(|p| p.ready = false)),
            Family::V4,
        )
        .unwrap();
        assert!(lines(&text, "-j DNAT").is_empty());
        let reject = lines(&text, "REJECT");
        assert_eq!(reject.len(), 1);
        assert!(
            reject[0]
                .starts_with("-A OUTRIDER-SERVICES -d 198.18.96.1/32 -p tcp -m tcp --dport 80"),
            "{reject:?}"
        );
        assert!(reject[0].contains("shop/web:http has no endpoints"));
    }

    #[test]
    fn local_policy_keeps_to_the_node_and_drops_without_local_endpoints() {
        let local = services(|svc, pods| {
            svc.internal_traffic_policy = TrafficPolicy::Local;
            pods[1].node = "node-a".into();
            pods[0].node = "node-c".into();
        });
        let text = rules("node-a", &local, Family::V4).unwrap();
        let dnat = lines(&text, "-j DNAT");
        assert_eq!(dnat.len(), 1);
        assert!(dnat[0].ends_with("198.19.2.11:8081"));
        let text = rules("node-b", &local, Family::V4).unwrap();
        assert!(lines(&text, "-j DNAT").is_empty());
        assert!(
            lines(&text, "has no local endpoints\" -j DROP").len() == 1,
            "{text}"
        );
    }

    #[test]
    fn client_ip_affinity_remembers_the_endpoint() {
        let sticky = services(|svc, _| svc.session_affinity = SessionAffinity::ClientIp);
        let text = rules("node-a", &sticky, Family::V4).unwrap();
        let checks = lines(&text, "--rcheck --seconds 10800 --reap");
        assert_eq!(checks.len(), 2, "{text}");
        let sets = lines(&text, "--set -j DNAT");
        assert_eq!(sets.len(), 2, "{text}");
        // Checked before the random pick.
        let first_pick = text.find("statistic").unwrap();
        assert!(text.find("--rcheck").unwrap() < first_pick);
    }

    #[test]
    fn unnamed_ports_and_numbered_targets() {
        let svcs = services(|svc, _| {
            svc.ports = vec![ServicePort {
                name: None,
                port: 5432,
                target_port: None,
            }];
        });
        let text = rules("node-a", &svcs, Family::V4).unwrap();
        assert!(
            text.contains("--dport 5432 -m comment --comment \"shop/web:5432 cluster IP\""),
            "{text}"
        );
        assert!(
            text.contains("DNAT --to-destination 198.19.1.11:5432"),
            "{text}"
        );
    }
}
