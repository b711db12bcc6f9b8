//! What the Kubernetes source keeps of Services and EndpointSlices, and how they become
//! the [`Service`]s of the workload set. A Service keeps its cluster IPs (`None`, as a
//! headless Service has, is none), its TCP ports, selector, `internalTrafficPolicy` and
//! `sessionAffinity`; an ExternalName Service is only a DNS name and is not kept. An
//! EndpointSlice keeps the Service it belongs to (label `kubernetes.io/service-name`)
//! and one [`Endpoint`] per address, with its conditions and the slice's TCP ports. A
//! Service's endpoints are those of all its slices (several per Service, one address
//! family each), always listed — never left to the selector, which does not know which
//! pods are ready. A slice whose Service is not known yet waits for it.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use k8s_openapi::{
    api::{core::v1 as core, discovery::v1 as discovery},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::workloads::service::{
    Endpoint, Service, ServiceKey, ServicePort, SessionAffinity, TargetPort, TrafficPolicy,
};

/// The EndpointSlice label naming its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The record of a Service: the model's [`Service`] without endpoints (they come from
/// its slices). `None` for an ExternalName Service and an object without a name.
pub(crate) fn service_record(svc: &core::Service) -> Option<Service> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let namespace = svc.metadata.namespace.clone()?;
    let name = svc.metadata.name.clone()?;
    let addresses = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec.cluster_ip.iter().cloned().collect(),
    };
    let cluster_ips = addresses
        .iter()
        .filter(|a| !a.is_empty() && a.as_str() != "None")
        .filter_map(|a| match a.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                tracing::warn!(service = %format!("{namespace}/{name}"), address = %a, "Service clusterIPs: not an IP address; ignored");
                None
            }
        })
        .collect();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| tcp(p.protocol.as_deref()))
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: port_number(p.port)?,
                target_port: p.target_port.as_ref().and_then(target_port),
            })
        })
        .collect();
    Some(Service {
        namespace,
        name,
        cluster_ips,
        ports,
        selector: spec.selector.clone().filter(|s| !s.is_empty()),
        endpoints: None,
        internal_traffic_policy: match spec.internal_traffic_policy.as_deref() {
            Some("Local") => TrafficPolicy::Local,
            _ => TrafficPolicy::Cluster,
        },
        session_affinity: match spec.session_affinity.as_deref() {
            Some("ClientIP") => SessionAffinity::ClientIp,
            _ => SessionAffinity::None,
        },
    })
}

/// What is kept of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceRecord {
    pub service: ServiceKey,
    pub endpoints: Vec<Endpoint>,
}

/// The record of an EndpointSlice: `None` for one that names no Service or lists
/// FQDNs rather than IP addresses.
pub(crate) fn slice_record(slice: &discovery::EndpointSlice) -> Option<SliceRecord> {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return None;
    }
    let namespace = slice.metadata.namespace.clone()?;
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())?
        .clone();
    // Service port name ("" when unnamed) → the port on every endpoint of this slice.
    let ports: BTreeMap<String, u16> = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| tcp(p.protocol.as_deref()))
        .filter_map(|p| Some((p.name.clone().unwrap_or_default(), port_number(p.port?)?)))
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .flat_map(|e| {
            let conditions = e.conditions.clone().unwrap_or_default();
            // Kubernetes semantics: terminating unless said otherwise is not; an unknown
            // ready is ready unless terminating; an unknown serving is `ready`.
            let terminating = conditions.terminating.unwrap_or(false);
            let ready = conditions.ready.unwrap_or(!terminating);
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let ns = r.namespace.as_deref().unwrap_or(&namespace);
                    Some(format!("{ns}/{}", r.name.as_deref()?))
                });
            let ports = &ports;
            e.addresses.iter().filter_map(move |a| {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    tracing::debug!(address = %a, "EndpointSlice address: not an IP address; ignored");
                    return None;
                };
                Some(Endpoint {
                    ip,
                    node: e.node_name.clone(),
                    pod: pod.clone(),
                    ready,
                    serving: conditions.serving,
                    terminating,
                    ports: ports.clone(),
                })
            })
        })
        .collect();
    Some(SliceRecord {
        service: ServiceKey {
            namespace,
            name: service,
        },
        endpoints,
    })
}

/// The Services of the cluster, sorted by key, each with the endpoints of all its slices
/// (sorted by IP; an address listed twice, as while a slice is replaced, counts once, in
/// its best state).
pub fn services(
    services: &HashMap<(String, String), Service>,
    slices: &HashMap<(String, String), SliceRecord>,
) -> Vec<Service> {
    let mut by_service: HashMap<&ServiceKey, Vec<&Endpoint>> = HashMap::new();
    for slice in slices.values() {
        by_service
            .entry(&slice.service)
            .or_default()
            .extend(&slice.endpoints);
    }
    let mut out: Vec<Service> = services
        .values()
        .map(|svc| {
            let mut endpoints: Vec<Endpoint> = by_service
                .get(&svc.key())
                .into_iter()
                .flatten()
                .map(|e| (*e).clone())
                .collect();
            endpoints.sort_by(|a, b| {
                (a.ip, rank(a))
                    .cmp(&(b.ip, rank(b)))
                    .then_with(|| a.ports.cmp(&b.ports))
            });
            endpoints.dedup_by_key(|e| e.ip);
            Service {
                endpoints: Some(endpoints),
                ..svc.clone()
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// Logs (at debug) each Service that changed between two published sets: its cluster
/// IPs and how many of its endpoints are ready.
pub(crate) fn log_changes(before: &[Service], after: &[Service]) {
    let old: HashMap<ServiceKey, &Service> = before.iter().map(|s| (s.key(), s)).collect();
    for svc in after {
        let key = svc.key();
        if old.get(&key).is_some_and(|o| *o == svc) {
            continue;
        }
        let endpoints = svc.endpoints.as_deref().unwrap_or_default();
        tracing::debug!(
            service = %key,
            cluster_ips = ?svc.cluster_ips,
            endpoints = endpoints.len(),
            ready = endpoints.iter().filter(|e| rank(e) == 0).count(),
            "Service from Kubernetes"
        );
    }
    let new: std::collections::HashSet<ServiceKey> = after.iter().map(Service::key).collect();
    for key in old.keys().filter(|k| !new.contains(*k)) {
        tracing::debug!(service = %key, "Service gone from Kubernetes");
    }
}

/// 0 ready, 1 serving while terminating, 2 neither.
fn rank(e: &Endpoint) -> u8 {
    if e.ready && !e.terminating {
        0
    } else if e.serving() {
        1
    } else {
        2
    }
}

/// TCP, or unset (which Kubernetes defaults to TCP).
fn tcp(protocol: Option<&str>) -> bool {
    matches!(protocol, None | Some("TCP"))
}

fn port_number(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

fn target_port(target: &IntOrString) -> Option<TargetPort> {
    match target {
        IntOrString::Int(n) => port_number(*n).map(TargetPort::Number),
        IntOrString::String(s) if s.is_empty() => None,
        IntOrString::String(s) => Some(match s.parse::<i32>().ok().and_then(port_number) {
            Some(n) => TargetPort::Number(n),
            None => TargetPort::Name(s.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use serde_json::json;

    use super::*;
    use crate::workloads::{
        WorkloadSet,
        directory::{Directory, EndpointState},
        kubernetes::cache::key_of,
    };

    fn service(spec: serde_json::Value) -> core::Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn web() -> core::Service {
        service(json!({
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ipFamilies": ["IPv4", "IPv6"],
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                {"name": "raw", "port": 81, "targetPort": 9000},
                {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"}
            ],
            "internalTrafficPolicy": "Local",
            "sessionAffinity": "ClientIP"
        }))
    }

    /// An EndpointSlice of shop/web named `name`.
    fn slice(
        name: &str,
        family: &str,
        ports: serde_json::Value,
        endpoints: serde_json::Value,
    ) -> discovery::EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": family,
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn http(port: u16) -> serde_json::Value {
        json!([{"name": "http", "port": port, "protocol": "TCP"},
               {"name": "raw", "port": 9000},
               {"name": "dns", "port": 53, "protocol": "UDP"}])
    }

    fn endpoint(ip: &str, pod: &str, conditions: serde_json::Value) -> serde_json::Value {
        json!({"addresses": [ip], "conditions": conditions, "nodeName": "node-b",
               "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod}})
    }

    type Records = (
        HashMap<(String, String), Service>,
        HashMap<(String, String), SliceRecord>,
    );

    fn records(svcs: &[core::Service], slices: &[discovery::EndpointSlice]) -> Records {
        (
            svcs.iter()
                .filter_map(|s| Some((key_of(&s.metadata), service_record(s)?)))
                .collect(),
            slices
                .iter()
                .filter_map(|s| Some((key_of(&s.metadata), slice_record(s)?)))
                .collect(),
        )
    }

    fn built(svcs: &[core::Service], slices: &[discovery::EndpointSlice]) -> Vec<Service> {
        let (svcs, slices) = records(svcs, slices);
        services(&svcs, &slices)
    }

    #[test]
    fn a_service_keeps_its_cluster_ips_tcp_ports_selector_and_policies() {
        let s = service_record(&web()).unwrap();
        assert_eq!(
            s.cluster_ips,
            [
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00:96::10".parse().unwrap()
            ]
        );
        assert_eq!(
            s.ports,
            [
                ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(TargetPort::Name("http".into())),
                },
                ServicePort {
                    name: Some("raw".into()),
                    port: 81,
                    target_port: Some(TargetPort::Number(9000)),
                },
            ],
            "the UDP port is not kept"
        );
        assert_eq!(
            s.selector,
            Some(BTreeMap::from([("app".to_string(), "web".to_string())]))
        );
        assert_eq!(s.internal_traffic_policy, TrafficPolicy::Local);
        assert_eq!(s.session_affinity, SessionAffinity::ClientIp);
        // Defaults: an unnamed port without targetPort; only `clusterIP` set.
        let plain = service_record(&service(json!({
            "clusterIP": "10.96.0.11", "ports": [{"port": 5432}]
        })))
        .unwrap();
        assert_eq!(plain.cluster_ips, ["10.96.0.11".parse::<IpAddr>().unwrap()]);
        assert_eq!(plain.ports[0].key(), "");
        assert_eq!(plain.ports[0].target(), TargetPort::Number(5432));
        assert_eq!(plain.internal_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(plain.session_affinity, SessionAffinity::None);
        assert_eq!(plain.selector, None);
        // An ExternalName Service is only a DNS name.
        assert!(
            service_record(&service(
                json!({"type": "ExternalName", "externalName": "db.example"})
            ))
            .is_none()
        );
    }

    #[test]
    fn endpoints_follow_the_kubernetes_conditions() {
        let svcs = [web()];
        let slices = [slice(
            "web-v4",
            "IPv4",
            http(8080),
            json!([
                endpoint("198.19.2.1", "web-1", json!({"ready": true})),
                // Unknown: ready, serving as ready, not terminating.
                endpoint("198.19.2.2", "web-2", json!({})),
                endpoint("198.19.2.3", "web-3", json!({"ready": false})),
                endpoint(
                    "198.19.2.4",
                    "web-4",
                    json!({"ready": false, "serving": true, "terminating": true})
                ),
                endpoint(
                    "198.19.2.5",
                    "web-5",
                    json!({"ready": false, "serving": false, "terminating": true})
                ),
                // Terminating with ready unknown: not ready.
                endpoint("198.19.2.6", "web-6", json!({"terminating": true})),
            ]),
        )];
        let built = built(&svcs, &slices);
        let endpoints = built[0].endpoints.as_ref().unwrap();
        let conditions: Vec<(bool, bool, bool)> = endpoints
            .iter()
            .map(|e| (e.ready, e.serving(), e.terminating))
            .collect();
        assert_eq!(
            conditions,
            [
                (true, true, false),
                (true, true, false),
                (false, false, false),
                (false, true, true),
                (false, false, true),
                (false, false, true),
            ]
        );
        let e = &endpoints[0];
        assert_eq!(e.node.as_deref(), Some("node-b"));
        assert_eq!(e.pod.as_deref(), Some("shop/web-1"));
        assert_eq!(
            e.ports,
            BTreeMap::from([("http".to_string(), 8080), ("raw".to_string(), 9000)]),
            "the UDP port is not kept"
        );
        let dir = Directory::default();
        dir.update(&WorkloadSet {
            services: built,
            ..Default::default()
        });
        let states: Vec<EndpointState> = dir
            .service_at("10.96.0.10".parse().unwrap())
            .unwrap()
            .endpoints
            .iter()
            .map(|e| e.state)
            .collect();
        assert_eq!(
            states,
            [
                EndpointState::Ready,
                EndpointState::Ready,
                EndpointState::NotServing,
                EndpointState::Terminating,
                EndpointState::NotServing,
                EndpointState::NotServing,
            ]
        );
    }

    #[test]
    fn several_slices_per_service_dual_stack_and_named_ports_per_endpoint() {
        let svcs = [web()];
        // Two IPv4 slices whose pods name `http` differently, and the IPv6 family's own
        // slice; one address in two slices (a slice being replaced) counts once, ready.
        let slices = [
            slice(
                "web-a",
                "IPv4",
                http(8080),
                json!([
                    endpoint("198.19.2.1", "web-1", json!({"ready": true})),
                    endpoint("198.19.2.3", "web-3", json!({"ready": false})),
                ]),
            ),
            slice(
                "web-b",
                "IPv4",
                http(8081),
                json!([
                    endpoint("198.19.2.2", "web-2", json!({"ready": true})),
                    endpoint("198.19.2.3", "web-3", json!({"ready": true})),
                ]),
            ),
            slice(
                "web-v6",
                "IPv6",
                http(8080),
                json!([endpoint("fd6f:7264:2::1", "web-1", json!({"ready": true})),]),
            ),
        ];
        let built = built(&svcs, &slices);
        let endpoints = built[0].endpoints.as_ref().unwrap();
        let ips: Vec<String> = endpoints.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(
            ips,
            ["198.19.2.1", "198.19.2.2", "198.19.2.3", "fd6f:7264:2::1"]
        );
        assert!(endpoints[2].ready, "the ready copy of 198.19.2.3 wins");
        // The directory sends port 80 to each endpoint's own `http` port.
        let dir = Directory::default();
        dir.update(&WorkloadSet {
            services: built.clone(),
            ..Default::default()
        });
        for vip in ["10.96.0.10", "fd00:96::10"] {
            let svc = dir.service_at(vip.parse().unwrap()).unwrap();
            let port = svc.port(80).unwrap().clone();
            let targets: Vec<Option<SocketAddr>> =
                svc.endpoints.iter().map(|e| e.target(&port)).collect();
            let want: Vec<Option<SocketAddr>> = [
                "198.19.2.1:8080",
                "198.19.2.2:8081",
                "198.19.2.3:8081",
                "[fd6f:7264:2::1]:8080",
            ]
            .iter()
            .map(|a| a.parse().ok())
            .collect();
            assert_eq!(targets, want);
            assert!(svc.port(53).is_none(), "UDP is not ours");
        }
    }

    #[test]
    fn a_slice_before_its_service_waits_for_it() {
        let slices = [slice(
            "web-a",
            "IPv4",
            http(8080),
            json!([endpoint("198.19.2.1", "web-1", json!({}))]),
        )];
        assert!(built(&[], &slices).is_empty(), "no Service yet");
        let built = built(&[web()], &slices);
        assert_eq!(built.len(), 1);
        assert_eq!(built[0].endpoints.as_ref().unwrap().len(), 1);
        // A Service without slices lists no endpoints (never all its selector's pods).
        let alone = super::services(&records(&[web()], &[]).0, &HashMap::new());
        assert_eq!(alone[0].endpoints, Some(Vec::new()));
        // A slice of another Service, one without the label and an FQDN slice are not
        // web's.
        let mut other = slice(
            "db-a",
            "IPv4",
            http(8080),
            json!([endpoint("198.19.2.9", "db", json!({}))]),
        );
        other.metadata.labels = Some(BTreeMap::from([(
            SERVICE_NAME_LABEL.to_string(),
            "db".to_string(),
        )]));
        let mut unlabelled = slice(
            "x",
            "IPv4",
            http(8080),
            json!([endpoint("198.19.2.8", "x", json!({}))]),
        );
        unlabelled.metadata.labels = None;
        let fqdn = slice(
            "y",
            "FQDN",
            http(8080),
            json!([{"addresses": ["web.example"]}]),
        );
        assert!(slice_record(&unlabelled).is_none() && slice_record(&fqdn).is_none());
        let built = super::services(&records(&[web()], &[]).0, &records(&[], &[other]).1);
        assert_eq!(built[0].endpoints, Some(Vec::new()));
    }

    #[test]
    fn a_headless_service_has_no_cluster_ip_and_keeps_its_endpoints() {
        let headless = service(json!({
            "clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80}]
        }));
        let slices = [slice(
            "web-a",
            "IPv4",
            json!([{"name": "http", "port": 80}]),
            json!([endpoint("198.19.2.1", "web-1", json!({"ready": true}))]),
        )];
        let built = built(&[headless], &slices);
        assert!(built[0].cluster_ips.is_empty());
        assert_eq!(built[0].endpoints.as_ref().unwrap().len(), 1);
        let dir = Directory::default();
        dir.update(&WorkloadSet {
            services: built,
            ..Default::default()
        });
        assert!(dir.service_at("198.19.2.1".parse().unwrap()).is_none());
        assert_eq!(dir.services().len(), 1);
    }
}
