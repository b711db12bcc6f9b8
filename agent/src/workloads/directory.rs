//! The cluster-wide view the proxy consults per connection: which workload owns a
//! destination IP, whether it is in the mesh, and its identity; and which Service owns a
//! cluster IP, with its endpoints resolved (selector or listed endpoints, named target
//! ports, conditions, the pod behind each). Rebuilt from each new [`WorkloadSet`] and
//! swapped in whole, so lookups never wait (arc-swap).
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use arc_swap::ArcSwap;

use super::{
    Mode, MtlsMode, SourceIp, Workload, WorkloadSet,
    service::{
        Endpoint, Service, ServiceKey, ServicePort, SessionAffinity, TargetPort, TrafficPolicy,
    },
};

/// The cluster domain when none is configured (Kubernetes' default).
pub(crate) const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// What the proxy needs to know about a destination pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub namespace: String,
    pub name: String,
    /// The workload's name in metrics (see [`Workload::workload_name`]).
    pub workload: String,
    pub service_account: String,
    pub node: Option<String>,
    pub mode: Mode,
    /// The mTLS mode of the pod's namespace.
    pub mtls: MtlsMode,
}

impl Destination {
    /// In the mesh: reachable through its agent's tunnel (any node).
    pub(crate) fn in_mesh(&self) -> bool {
        matches!(self.mode, Mode::Node | Mode::Sidecar)
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Whether an endpoint takes new connections (EndpointSlice conditions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointState {
    /// Ready: picked first.
    Ready,
    /// Serving but terminating: picked only when no endpoint is ready (KEP-1669).
    Terminating,
    /// Neither: never picked.
    NotServing,
}

impl EndpointState {
    fn of(e: &Endpoint) -> Self {
        if e.ready && !e.terminating {
            EndpointState::Ready
        } else if e.serving() {
            EndpointState::Terminating
        } else {
            EndpointState::NotServing
        }
    }
}

/// One endpoint address of a Service, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedEndpoint {
    pub ip: IpAddr,
    pub node: Option<String>,
    pub state: EndpointState,
    /// The pod that owns `ip`, when the workload set knows it.
    pub pod: Option<Arc<Destination>>,
    /// Service port key ("" when unnamed) → the endpoint's port; a port whose named
    /// target the pod does not declare is absent (the endpoint does not serve it).
    pub ports: BTreeMap<String, u16>,
}

impl ResolvedEndpoint {
    /// In the mesh: reached through the tunnel, its identity required.
    pub(crate) fn in_mesh(&self) -> bool {
        self.pod.as_ref().is_some_and(|p| p.in_mesh())
    }

    /// Where this endpoint serves the Service port `port`.
    pub fn target(&self, port: &ServicePort) -> Option<SocketAddr> {
        self.ports
            .get(port.key())
            .map(|p| SocketAddr::new(self.ip, *p))
    }
}

/// A Service with its endpoints resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedService {
    pub key: ServiceKey,
    /// `name.namespace.svc.<cluster domain>`.
    pub fqdn: String,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub internal_traffic_policy: TrafficPolicy,
    pub session_affinity: SessionAffinity,
    /// Sorted by IP.
    pub endpoints: Vec<ResolvedEndpoint>,
}

impl ResolvedService {
    /// The port the Service declares as `port`.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// True when `ip` is one of this Service's endpoints.
    pub(crate) fn has_endpoint(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.endpoints.iter().any(|e| e.ip == ip)
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    by_ip: HashMap<IpAddr, Arc<Destination>>,
    /// Cluster IP → its Service.
    by_vip: HashMap<IpAddr, Arc<ResolvedService>>,
    /// `fqdn` → Service.
    by_name: HashMap<String, Arc<ResolvedService>>,
    /// Every Service, by key.
    services: Vec<Arc<ResolvedService>>,
    /// The namespaces whose mTLS mode is set.
    mtls: HashMap<String, MtlsMode>,
    /// The namespaces whose source IP setting is set.
    source_ip: HashMap<String, SourceIp>,
}

/// Lookups by IP over the latest workload set. Cheap to clone.
#[derive(Clone)]
pub struct Directory {
    snapshot: Arc<ArcSwap<Snapshot>>,
    cluster_domain: Arc<str>,
}

impl Default for Directory {
    fn default() -> Self {
        Self::new(DEFAULT_CLUSTER_DOMAIN)
    }
}

impl Directory {
    /// An empty directory whose Services are named in `cluster_domain`.
    pub fn new(cluster_domain: &str) -> Self {
        Self {
            snapshot: Default::default(),
            cluster_domain: cluster_domain.into(),
        }
    }

    /// Replaces the view with `set`; true when a namespace's mTLS mode changed.
    pub fn update(&self, set: &WorkloadSet) -> bool {
        let mut by_ip = HashMap::new();
        let mut workloads = HashMap::new();
        for w in &set.workloads {
            let dest = Arc::new(destination(w, set));
            for ip in &w.ips {
                by_ip.insert(canonical(*ip), dest.clone());
                workloads.insert(canonical(*ip), w);
            }
        }
        let pods = Pods {
            destinations: &by_ip,
            workloads: &workloads,
        };
        let mut services: Vec<Arc<ResolvedService>> = set
            .services
            .iter()
            .map(|s| Arc::new(resolve(s, set, &pods, &self.cluster_domain)))
            .collect();
        services.sort_by(|a, b| a.key.cmp(&b.key));
        let mut by_vip = HashMap::new();
        let mut by_name = HashMap::new();
        for s in &services {
            for ip in &s.cluster_ips {
                by_vip.insert(canonical(*ip), s.clone());
            }
            by_name.insert(s.fqdn.clone(), s.clone());
        }
        let mtls: HashMap<String, MtlsMode> = set
            .namespaces
            .iter()
            .map(|(ns, settings)| (ns.clone(), settings.mtls))
            .collect();
        let source_ip = set
            .namespaces
            .iter()
            .map(|(ns, settings)| (ns.clone(), settings.source_ip))
            .collect();
        let before = self.snapshot.swap(Arc::new(Snapshot {
            by_ip,
            by_vip,
            by_name,
            services,
            mtls,
            source_ip,
        }));
        before.mtls != self.snapshot.load().mtls
    }

    /// The workload that owns `ip`, if any.
    pub fn lookup(&self, ip: IpAddr) -> Option<Arc<Destination>> {
        self.snapshot.load().by_ip.get(&canonical(ip)).cloned()
    }

    /// The mTLS mode of `namespace` (permissive unless set), whatever its pods' IPs.
    pub fn mtls(&self, namespace: &str) -> MtlsMode {
        self.snapshot
            .load()
            .mtls
            .get(namespace)
            .copied()
            .unwrap_or_default()
    }

    /// Where deliveries to `namespace`'s pods come from (the client's IP unless set).
    pub fn source_ip(&self, namespace: &str) -> SourceIp {
        self.snapshot
            .load()
            .source_ip
            .get(namespace)
            .copied()
            .unwrap_or_default()
    }

    /// The Service whose cluster IP is `ip`, if any.
    pub(crate) fn service_at(&self, ip: IpAddr) -> Option<Arc<ResolvedService>> {
        self.snapshot.load().by_vip.get(&canonical(ip)).cloned()
    }

    /// The Service named `fqdn` (`name.namespace.svc.<cluster domain>`), if any.
    pub(crate) fn service_named(&self, fqdn: &str) -> Option<Arc<ResolvedService>> {
        self.snapshot.load().by_name.get(fqdn).cloned()
    }

    /// Every Service, sorted by namespace and name.
    pub fn services(&self) -> Vec<Arc<ResolvedService>> {
        self.snapshot.load().services.clone()
    }
}

/// The pods of a set by IP, as destinations and as records.
struct Pods<'a> {
    destinations: &'a HashMap<IpAddr, Arc<Destination>>,
    workloads: &'a HashMap<IpAddr, &'a Workload>,
}

/// `svc` with its endpoints resolved against the pods of `set`.
fn resolve(svc: &Service, set: &WorkloadSet, pods: &Pods, cluster_domain: &str) -> ResolvedService {
    let pod_of = |ip: IpAddr| pods.destinations.get(&canonical(ip)).cloned();
    let mut endpoints: Vec<ResolvedEndpoint> = match (&svc.endpoints, &svc.selector) {
        (Some(listed), _) => listed
            .iter()
            .map(|e| {
                let workload = pods.workloads.get(&canonical(e.ip)).copied();
                ResolvedEndpoint {
                    ip: canonical(e.ip),
                    node: e
                        .node
                        .clone()
                        .or_else(|| workload.and_then(|w| w.node.clone())),
                    state: EndpointState::of(e),
                    pod: pod_of(e.ip),
                    ports: resolve_ports(&svc.ports, &e.ports, workload),
                }
            })
            .collect(),
        (None, Some(selector)) => set
            .workloads
            .iter()
            .filter(|w| {
                w.namespace == svc.namespace
                    && selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
            })
            .flat_map(|w| {
                let pod = w.ips.first().and_then(|ip| pod_of(*ip));
                w.ips.iter().map(move |ip| ResolvedEndpoint {
                    ip: canonical(*ip),
                    node: w.node.clone(),
                    state: EndpointState::Ready,
                    pod: pod.clone(),
                    ports: resolve_ports(&svc.ports, &BTreeMap::new(), Some(w)),
                })
            })
            .collect(),
        (None, None) => Vec::new(),
    };
    endpoints.sort_by_key(|e| e.ip);
    endpoints.dedup_by_key(|e| e.ip);
    ResolvedService {
        key: svc.key(),
        fqdn: svc.fqdn(cluster_domain),
        cluster_ips: svc.cluster_ips.iter().map(|ip| canonical(*ip)).collect(),
        ports: svc.ports.clone(),
        internal_traffic_policy: svc.internal_traffic_policy,
        session_affinity: svc.session_affinity,
        endpoints,
    }
}

/// Each Service port's target on one endpoint: the endpoint's own port map first (as an
/// EndpointSlice lists it), else the port's `targetPort` — a number, or a name looked up
/// in the pod's declared ports.
fn resolve_ports(
    ports: &[ServicePort],
    listed: &BTreeMap<String, u16>,
    workload: Option<&Workload>,
) -> BTreeMap<String, u16> {
    ports
        .iter()
        .filter_map(|p| {
            let target = match listed.get(p.key()) {
                Some(port) => Some(*port),
                None => match p.target() {
                    TargetPort::Number(n) => Some(n),
                    TargetPort::Name(name) => workload.and_then(|w| {
                        w.ports
                            .iter()
                            .find(|wp| wp.name.as_deref() == Some(name.as_str()))
                            .map(|wp| wp.container_port)
                    }),
                },
            };
            target.map(|t| (p.key().to_string(), t))
        })
        .collect()
}

fn destination(w: &Workload, set: &WorkloadSet) -> Destination {
    Destination {
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        workload: w.workload_name().to_string(),
        service_account: w.service_account.clone(),
        node: w.node.clone(),
        mode: w.mode,
        mtls: set.mtls(&w.namespace),
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_source_ip_setting_is_per_namespace_and_client_by_default() {
        let dir = Directory::default();
        assert_eq!(dir.source_ip("data"), SourceIp::Client);
        let set = WorkloadSet::parse(
            Path::new("w.yaml"),
            "namespaces: {data: {sourceIp: loopback}}\n",
        )
        .unwrap();
        dir.update(&set);
        assert_eq!(dir.source_ip("data"), SourceIp::Loopback);
        assert_eq!(dir.source_ip("shop"), SourceIp::Client);
    }

    #[test]
    fn finds_destinations_by_any_of_their_ips() {
        let set = WorkloadSet::parse(
            Path::new("w.yaml"),
            "namespaces: {data: {mtls: strict}}
workloads:
  - {namespace: data, name: db, serviceAccount: db, node: node-b, netns: /x, ips: [198.19.2.11, 'fd6f:7264:2::11']}
  - {namespace: shop, name: web, netns: /y, ips: [198.19.1.11], mode: none}
",
        )
        .unwrap();
        let dir = Directory::default();
        assert!(dir.lookup("198.19.2.11".parse().unwrap()).is_none());
        dir.update(&set);
        let db = dir.lookup("fd6f:7264:2::11".parse().unwrap()).unwrap();
        assert_eq!(db.key(), "data/db");
        assert_eq!(db.mtls, MtlsMode::Strict);
        assert!(db.in_mesh());
        // By namespace too: a pod's mode does not hang on its IPs being known.
        assert_eq!(dir.mtls("data"), MtlsMode::Strict);
        assert_eq!(dir.mtls("shop"), MtlsMode::Permissive);
        assert_eq!(dir.mtls("nowhere"), MtlsMode::Permissive);
        let mapped: IpAddr = "::ffff:198.19.2.11".parse().unwrap();
        assert_eq!(dir.lookup(mapped).unwrap().key(), "data/db");
        assert!(
            !dir.lookup("198.19.1.11".parse().unwrap())
                .unwrap()
                .in_mesh()
        );
        assert!(dir.lookup("198.19.9.9".parse().unwrap()).is_none());
    }

    const SERVICES: &str = "namespaces: {shop: {mtls: strict}}
workloads:
  - {namespace: shop, name: web-1, node: node-a, netns: /a, labels: {app: web}, ips: [198.19.1.11, 'fd6f:7264:1::11'], ports: [{name: http, containerPort: 8080}]}
  - {namespace: shop, name: web-2, node: node-b, netns: /b, labels: {app: web}, ips: [198.19.2.11], ports: [{name: http, containerPort: 8081}]}
  - {namespace: shop, name: web-3, node: node-b, netns: /c, labels: {app: web}, ips: [198.19.2.12], mode: none}
  - {namespace: other, name: web, netns: /d, labels: {app: web}, ips: [198.19.2.13]}
services:
  - namespace: shop
    name: web
    clusterIPs: [10.96.0.10, 'fd00:96::10']
    ports: [{name: http, port: 80, targetPort: http}, {name: raw, port: 81, targetPort: 9000}]
    selector: {app: web}
  - namespace: shop
    name: db
    clusterIPs: [10.96.0.11]
    ports: [{port: 5432}]
    endpoints:
      - {ip: 198.19.2.11, ports: {'': 6432}}
      - {ip: 198.19.9.9, node: node-c, ready: false, serving: true, terminating: true}
      - {ip: 198.19.9.10, ready: false}
";

    #[test]
    fn services_resolve_selectors_named_ports_and_listed_endpoints() {
        let set = WorkloadSet::parse(Path::new("w.yaml"), SERVICES).unwrap();
        let dir = Directory::new("example.org");
        dir.update(&set);
        let web = dir.service_at("10.96.0.10".parse().unwrap()).unwrap();
        assert_eq!(web.fqdn, "web.shop.svc.example.org");
        assert!(Arc::ptr_eq(
            &web,
            &dir.service_at("fd00:96::10".parse().unwrap()).unwrap()
        ));
        assert!(Arc::ptr_eq(
            &web,
            &dir.service_named("web.shop.svc.example.org").unwrap()
        ));
        // The selector picks the namespace's pods only, every IP of each.
        let ips: Vec<String> = web.endpoints.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(
            ips,
            [
                "198.19.1.11",
                "198.19.2.11",
                "198.19.2.12",
                "fd6f:7264:1::11"
            ]
        );
        let http = web.port(80).unwrap();
        let raw = web.port(81).unwrap();
        let e1 = &web.endpoints[0];
        assert_eq!(e1.target(http), Some("198.19.1.11:8080".parse().unwrap()));
        assert_eq!(e1.target(raw), Some("198.19.1.11:9000".parse().unwrap()));
        assert_eq!(
            web.endpoints[1].target(http),
            Some("198.19.2.11:8081".parse().unwrap())
        );
        assert_eq!(
            web.endpoints[2].target(http),
            None,
            "web-3 declares no port named http"
        );
        assert!(e1.in_mesh() && !web.endpoints[2].in_mesh());
        assert_eq!(e1.node.as_deref(), Some("node-a"));
        assert_eq!(e1.pod.as_ref().unwrap().mtls, MtlsMode::Strict);

        let db = dir.service_at("10.96.0.11".parse().unwrap()).unwrap();
        let port = db.port(5432).unwrap();
        let states: Vec<_> = db.endpoints.iter().map(|e| e.state).collect();
        assert_eq!(
            states,
            [
                EndpointState::Ready,
                EndpointState::Terminating,
                EndpointState::NotServing
            ]
        );
        assert_eq!(
            db.endpoints[0].target(port),
            Some("198.19.2.11:6432".parse().unwrap())
        );
        assert_eq!(
            db.endpoints[0].node.as_deref(),
            Some("node-b"),
            "the pod's node"
        );
        assert_eq!(
            db.endpoints[1].target(port),
            Some("198.19.9.9:5432".parse().unwrap())
        );
        assert!(db.endpoints[1].pod.is_none() && !db.endpoints[1].in_mesh());
        assert!(db.has_endpoint("::ffff:198.19.2.11".parse().unwrap()));
        assert!(dir.service_at("198.19.2.11".parse().unwrap()).is_none());
        assert_eq!(dir.services().len(), 2);
    }

    #[test]
    fn an_endpoint_listed_before_its_pod_is_known_joins_the_mesh_when_the_pod_arrives() {
        let text = SERVICES.replace(
            "  - {namespace: shop, name: web-2, node: node-b, netns: /b, labels: {app: web}, ips: [198.19.2.11], ports: [{name: http, containerPort: 8081}]}\n",
            "",
        );
        let dir = Directory::default();
        dir.update(&WorkloadSet::parse(Path::new("w.yaml"), &text).unwrap());
        let db = dir.service_at("10.96.0.11".parse().unwrap()).unwrap();
        assert!(!db.endpoints[0].in_mesh(), "not known yet");
        dir.update(&WorkloadSet::parse(Path::new("w.yaml"), SERVICES).unwrap());
        let db = dir.service_at("10.96.0.11".parse().unwrap()).unwrap();
        assert!(db.endpoints[0].in_mesh());
    }
}
