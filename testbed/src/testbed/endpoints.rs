//! The testbed's EndpointSlice controller: each Service with a `selector` gets its
//! endpoints listed explicitly, computed from the testbed's pods as Kubernetes would —
//! one endpoint per pod address of the Service's families, with the node and pod behind
//! it, the conditions from the pod's readiness (`testbed ready`), and named target ports
//! resolved per endpoint. Listed endpoints (and Services with neither) stay as written.
use std::{collections::BTreeMap, net::IpAddr};

use super::state::PodState;
use outrider::workloads::{Endpoint, Service, TargetPort};

/// `svc` with its endpoints listed, from `pods` when it has a selector.
pub fn with_endpoints(svc: &Service, pods: &[PodState]) -> Service {
    let (Some(selector), None) = (&svc.selector, &svc.endpoints) else {
        return svc.clone();
    };
    // A headless Service (no cluster IPs) is dual-stack here; otherwise the families of
    // its cluster IPs, as the controller writes one slice per `ipFamilies` entry.
    let v4 = svc.cluster_ips.is_empty() || svc.cluster_ips.iter().any(IpAddr::is_ipv4);
    let v6 = svc.cluster_ips.is_empty() || svc.cluster_ips.iter().any(IpAddr::is_ipv6);
    let endpoints = pods
        .iter()
        .filter(|p| {
            p.namespace == svc.namespace && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
        })
        .flat_map(|p| {
            let ips = [
                v4.then_some(IpAddr::V4(p.ipv4)),
                v6.then_some(IpAddr::V6(p.ipv6)),
            ];
            ips.into_iter()
                .flatten()
                .map(move |ip| endpoint(svc, p, ip))
        })
        .collect();
    Service {
        endpoints: Some(endpoints),
        ..svc.clone()
    }
}

/// Pod `p`'s endpoint at `ip`: conditions as the controller sets them (`ready` only when
/// not terminating, `serving` the pod's readiness), ports resolved for this pod; a named
/// target port the pod does not declare is left out (the endpoint does not serve it).
fn endpoint(svc: &Service, p: &PodState, ip: IpAddr) -> Endpoint {
    let ports: BTreeMap<String, u16> = svc
        .ports
        .iter()
        .filter_map(|port| {
            let target = match port.target() {
                TargetPort::Number(n) => Some(n),
                TargetPort::Name(name) => p
                    .ports
                    .iter()
                    .find(|pp| pp.name.as_deref() == Some(name.as_str()))
                    .map(|pp| pp.container_port),
            };
            target.map(|t| (port.key().to_string(), t))
        })
        .collect();
    Endpoint {
        ip,
        node: Some(p.node.clone()),
        pod: Some(p.key()),
        ready: p.ready && !p.terminating,
        serving: Some(p.ready),
        terminating: p.terminating,
        ports,
    }
}

/// A pod `j` of node `i` labelled `app: <name>`, for tests that need a `PodState`.
#[cfg(test)]
pub fn test_pod(namespace: &str, name: &str, node: &str, i: u8, j: u8) -> PodState {
    use std::net::{Ipv4Addr, Ipv6Addr};
    PodState {
        node: node.into(),
        namespace: namespace.into(),
        name: name.into(),
        service_account: "default".into(),
        enrolled: false,
        sidecar: false,
        sidecar_pid: None,
        ipv4: Ipv4Addr::new(198, 19, i, 10 + j),
        ipv6: Ipv6Addr::new(0xfd6f, 0x7264, i.into(), 0, 0, 0, 0, (0x10 + j).into()),
        netns: "/run/netns/x".into(),
        netns_name: "x".into(),
        cgroup: "/sys/fs/cgroup/x".into(),
        uid: "u".into(),
        labels: [("app".to_string(), name.to_string())].into(),
        ports: Vec::new(),
        ready: true,
        terminating: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrider::workloads::{PodPort, ServicePort};

    fn web_service(cluster_ips: &[&str]) -> Service {
        Service {
            namespace: "shop".into(),
            name: "web".into(),
            cluster_ips: cluster_ips.iter().map(|s| s.parse().unwrap()).collect(),
            ports: vec![
                ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(TargetPort::Name("http".into())),
                },
                ServicePort {
                    name: Some("admin".into()),
                    port: 9000,
                    target_port: Some(TargetPort::Number(9001)),
                },
            ],
            selector: Some([("app".to_string(), "web".to_string())].into()),
            endpoints: None,
            internal_traffic_policy: Default::default(),
            session_affinity: Default::default(),
        }
    }

    fn pods() -> Vec<PodState> {
        let mut a = test_pod("shop", "web-a", "node-a", 1, 1);
        a.labels = [("app".to_string(), "web".to_string())].into();
        a.ports = vec![PodPort {
            name: Some("http".into()),
            container_port: 8080,
        }];
        let mut b = test_pod("shop", "web-b", "node-b", 2, 1);
        b.labels = a.labels.clone();
        b.ports = vec![PodPort {
            name: Some("http".into()),
            container_port: 8081,
        }];
        // Same labels, other namespace; and another app in the namespace.
        let mut other_ns = test_pod("data", "web", "node-a", 1, 2);
        other_ns.labels = a.labels.clone();
        let client = test_pod("shop", "client", "node-b", 2, 2);
        vec![a, b, other_ns, client]
    }

    #[test]
    fn selected_pods_get_one_endpoint_per_address_with_ports_resolved_per_pod() {
        let svc = with_endpoints(&web_service(&["198.18.96.1", "fd6f:7264:ffff::1"]), &pods());
        let eps = svc.endpoints.unwrap();
        let ips: Vec<String> = eps.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(
            ips,
            [
                "198.19.1.11",
                "fd6f:7264:1::11",
                "198.19.2.11",
                "fd6f:7264:2::11"
            ]
        );
        assert_eq!(eps[0].pod.as_deref(), Some("shop/web-a"));
        assert_eq!(eps[2].node.as_deref(), Some("node-b"));
        assert_eq!(eps[0].ports["http"], 8080);
        assert_eq!(eps[2].ports["http"], 8081, "named targetPort, per pod");
        assert_eq!(eps[2].ports["admin"], 9001);
        assert!(eps.iter().all(|e| e.ready && e.serving() && !e.terminating));
    }

    #[test]
    fn families_follow_the_cluster_ips_and_headless_is_dual_stack() {
        let v4 = with_endpoints(&web_service(&["198.18.96.1"]), &pods());
        assert!(v4.endpoints.unwrap().iter().all(|e| e.ip.is_ipv4()));
        let v6 = with_endpoints(&web_service(&["fd6f:7264:ffff::1"]), &pods());
        assert!(v6.endpoints.unwrap().iter().all(|e| e.ip.is_ipv6()));
        let headless = with_endpoints(&web_service(&[]), &pods());
        assert_eq!(headless.endpoints.unwrap().len(), 4);
    }

    #[test]
    fn readiness_and_termination_set_the_conditions() {
        let mut pods = pods();
        pods[0].ready = false;
        pods[1].terminating = true;
        let svc = with_endpoints(&web_service(&["198.18.96.1"]), &pods);
        let eps = svc.endpoints.unwrap();
        assert!(!eps[0].ready && !eps[0].serving() && !eps[0].terminating);
        assert!(!eps[1].ready && eps[1].serving() && eps[1].terminating);
    }

    #[test]
    fn an_unresolved_named_port_is_left_out_and_listed_endpoints_stay() {
        let mut pods = pods();
        pods[0].ports.clear();
        let svc = with_endpoints(&web_service(&["198.18.96.1"]), &pods);
        let eps = svc.endpoints.unwrap();
        assert!(!eps[0].ports.contains_key("http"));
        assert_eq!(eps[0].ports["admin"], 9001);

        let mut listed = web_service(&["198.18.96.1"]);
        listed.endpoints = Some(Vec::new());
        assert_eq!(with_endpoints(&listed, &pods), listed);
        let mut no_selector = web_service(&["198.18.96.1"]);
        no_selector.selector = None;
        assert_eq!(with_endpoints(&no_selector, &pods), no_selector);
    }
}
