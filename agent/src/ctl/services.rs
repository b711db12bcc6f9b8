//! `outriderctl services`: the cluster's Services as the agent routes to them
//! (ListServices) — cluster IPs, ports, endpoints ready / total / in the mesh — and one
//! Service with each of its endpoints (`services get NAMESPACE/NAME`, GetService).
use std::collections::BTreeMap;

use anyhow::Result;
use outrider_proto::admin::v1::{
    EndpointState, GetServiceRequest, InternalTrafficPolicy, ListServicesRequest, Service,
    ServiceEndpoint, ServicePort, SessionAffinity, service_port,
};
use serde::Serialize;

use super::output::{Table, yes_no};
use super::workloads::non_empty;
use super::{Ctx, NamespacedName};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServicesArgs {
    #[command(subcommand)]
    command: Option<ServicesCommand>,
    /// Only Services in this namespace.
    #[arg(short, long, value_name = "NAMESPACE")]
    namespace: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum ServicesCommand {
    /// One Service in full, with each endpoint: node, pod, state, identity, ports.
    Get {
        /// The Service, as NAMESPACE/NAME.
        #[arg(value_name = "NAMESPACE/NAME")]
        service: NamespacedName,
    },
}

/// `-o json|yaml` of `services`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceListView {
    pub services: Vec<ServiceView>,
}

/// One Service: `-o json|yaml` of `services get`, and the items of `services`. Field
/// names and values as in a Kubernetes Service (`clusterIPs`, `Cluster`, `ClientIP`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    pub fqdn: String,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    pub ports: Vec<PortView>,
    /// `Cluster` or `Local` (`unspecified`, `unknown`).
    pub internal_traffic_policy: &'static str,
    /// `None` or `ClientIP` (`unspecified`, `unknown`).
    pub session_affinity: &'static str,
    pub endpoints_ready: u32,
    pub endpoints_total: u32,
    pub endpoints_in_mesh: u32,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortView {
    /// Null when unnamed.
    pub name: Option<String>,
    pub port: u32,
    /// A number, or a container port's name, as declared.
    pub target_port: TargetView,
}

/// A `targetPort` as Kubernetes writes it: `8080` or `"http"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TargetView {
    Number(u32),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub ip: String,
    pub node: Option<String>,
    /// `namespace/name`; null when the agent knows no pod at this IP.
    pub pod: Option<String>,
    /// `ready`, `terminating`, `not-serving` (`unspecified`, `unknown`).
    pub state: &'static str,
    pub in_mesh: bool,
    /// The SPIFFE ID a connection to it requires; null unless in the mesh.
    pub identity: Option<String>,
    /// Service port name ("" when unnamed) → the endpoint's port.
    pub ports: BTreeMap<String, u32>,
}

pub(crate) fn traffic_policy_name(policy: i32) -> &'static str {
    match InternalTrafficPolicy::try_from(policy) {
        Ok(InternalTrafficPolicy::Cluster) => "Cluster",
        Ok(InternalTrafficPolicy::Local) => "Local",
        Ok(InternalTrafficPolicy::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

pub(crate) fn affinity_name(affinity: i32) -> &'static str {
    match SessionAffinity::try_from(affinity) {
        Ok(SessionAffinity::None) => "None",
        Ok(SessionAffinity::ClientIp) => "ClientIP",
        Ok(SessionAffinity::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

pub(crate) fn endpoint_state_name(state: i32) -> &'static str {
    match EndpointState::try_from(state) {
        Ok(EndpointState::Ready) => "ready",
        Ok(EndpointState::Terminating) => "terminating",
        Ok(EndpointState::NotServing) => "not-serving",
        Ok(EndpointState::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

impl From<ServicePort> for PortView {
    fn from(p: ServicePort) -> Self {
        let target_port = match p.target_port {
            Some(service_port::TargetPort::TargetNumber(n)) => TargetView::Number(n),
            Some(service_port::TargetPort::TargetName(name)) => TargetView::Name(name),
            // Not declared: the port itself, as Kubernetes defaults it.
            None => TargetView::Number(p.port),
        };
        PortView {
            name: non_empty(p.name),
            port: p.port,
            target_port,
        }
    }
}

impl From<ServiceEndpoint> for EndpointView {
    fn from(e: ServiceEndpoint) -> Self {
        EndpointView {
            state: endpoint_state_name(e.state),
            ip: e.ip,
            node: non_empty(e.node),
            pod: non_empty(e.pod),
            in_mesh: e.in_mesh,
            identity: non_empty(e.identity),
            ports: e.ports.into_iter().collect(),
        }
    }
}

impl From<Service> for ServiceView {
    fn from(s: Service) -> Self {
        ServiceView {
            internal_traffic_policy: traffic_policy_name(s.internal_traffic_policy),
            session_affinity: affinity_name(s.session_affinity),
            namespace: s.namespace,
            name: s.name,
            fqdn: s.fqdn,
            cluster_ips: s.cluster_ips,
            ports: s.ports.into_iter().map(Into::into).collect(),
            endpoints_ready: s.endpoints_ready,
            endpoints_total: s.endpoints_total,
            endpoints_in_mesh: s.endpoints_in_mesh,
            endpoints: s.endpoints.into_iter().map(Into::into).collect(),
        }
    }
}

/// The Services, ordered by namespace and name.
pub(crate) fn list_view(services: Vec<Service>) -> ServiceListView {
    let mut services: Vec<ServiceView> = services.into_iter().map(Into::into).collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    ServiceListView { services }
}

pub async fn run(ctx: &mut Ctx, args: ServicesArgs) -> Result<()> {
    let mut client = ctx.client().await?;
    match args.command {
        None => {
            let request = ListServicesRequest {
                namespace: args.namespace.unwrap_or_default(),
            };
            let response = ctx
                .call("ListServices", client.list_services(request))
                .await?;
            ctx.emit(&list_view(response.services), list_table)
        }
        Some(ServicesCommand::Get { service }) => {
            let request = GetServiceRequest {
                namespace: service.namespace,
                name: service.name,
            };
            let service = ctx.call("GetService", client.get_service(request)).await?;
            ctx.emit(&ServiceView::from(service), detail)
        }
    }
}

impl std::fmt::Display for TargetView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetView::Number(n) => write!(f, "{n}"),
            TargetView::Name(name) => f.write_str(name),
        }
    }
}

/// `80→http/TCP` (the Service port, where endpoints listen, the protocol: Outrider
/// routes TCP).
fn port_text(p: &PortView) -> String {
    format!("{}→{}/TCP", p.port, p.target_port)
}

fn list_table(view: &ServiceListView) -> String {
    let mut table = Table::new([
        "NAMESPACE",
        "NAME",
        "CLUSTER-IPS",
        "PORTS",
        "ENDPOINTS",
        "MESH",
    ]);
    for s in &view.services {
        let ports: Vec<String> = s.ports.iter().map(port_text).collect();
        table.row([
            s.namespace.clone(),
            s.name.clone(),
            // A headless Service has none.
            if s.cluster_ips.is_empty() {
                "None".to_string()
            } else {
                s.cluster_ips.join(",")
            },
            ports.join(","),
            format!("{}/{}", s.endpoints_ready, s.endpoints_total),
            s.endpoints_in_mesh.to_string(),
        ]);
    }
    table.render()
}

/// Where the endpoint serves each of the Service's ports, in the Service's order:
/// `80→8080,81→none` (`none`: it does not serve that port).
fn endpoint_ports(ports: &[PortView], e: &EndpointView) -> String {
    let each: Vec<String> = ports
        .iter()
        .map(|p| {
            let key = p.name.as_deref().unwrap_or("");
            match e.ports.get(key) {
                Some(at) => format!("{}→{at}", p.port),
                None => format!("{}→none", p.port),
            }
        })
        .collect();
    each.join(",")
}

fn detail(s: &ServiceView) -> String {
    let ports: Vec<String> = s
        .ports
        .iter()
        .map(|p| match &p.name {
            Some(name) => format!("{name}: {}", port_text(p)),
            None => port_text(p),
        })
        .collect();
    let mut listing = Table::key_values();
    listing.pair("Namespace", &s.namespace);
    listing.pair("Name", &s.name);
    listing.pair("FQDN", &s.fqdn);
    listing.pair("Cluster IPs", s.cluster_ips.join(", "));
    listing.pair("Ports", ports.join(", "));
    listing.pair("Internal traffic policy", s.internal_traffic_policy);
    listing.pair("Session affinity", s.session_affinity);
    listing.pair(
        "Endpoints",
        format!(
            "{} ready of {}, {} in the mesh",
            s.endpoints_ready, s.endpoints_total, s.endpoints_in_mesh
        ),
    );
    let mut endpoints = Table::new(["IP", "NODE", "POD", "STATE", "MESH", "IDENTITY", "PORTS"]);
    for e in &s.endpoints {
        endpoints.row([
            e.ip.clone(),
            e.node.clone().unwrap_or_default(),
            e.pod.clone().unwrap_or_default(),
            e.state.to_string(),
            yes_no(e.in_mesh).to_string(),
            e.identity.clone().unwrap_or_default(),
            endpoint_ports(&s.ports, e),
        ]);
    }
    format!("{}\n{}", listing.render(), endpoints.render())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn port(name: &str, port: u32, target: service_port::TargetPort) -> ServicePort {
        ServicePort {
            name: name.into(),
            port,
            target_port: Some(target),
        }
    }

    fn endpoint(
        ip: &str,
        state: EndpointState,
        pod: &str,
        ports: &[(&str, u32)],
    ) -> ServiceEndpoint {
        let in_mesh = !pod.is_empty();
        ServiceEndpoint {
            ip: ip.into(),
            node: "node-b".into(),
            pod: pod.into(),
            state: state as i32,
            in_mesh,
            identity: if in_mesh {
                "spiffe://cluster.local/ns/shop/sa/web".into()
            } else {
                String::new()
            },
            ports: ports.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    /// shop/web: two ports (one by name), three endpoints; data/db: unnamed, headless.
    pub fn services() -> Vec<Service> {
        use service_port::TargetPort::{TargetName, TargetNumber};
        vec![
            Service {
                namespace: "shop".into(),
                name: "web".into(),
                fqdn: "web.shop.svc.cluster.local".into(),
                cluster_ips: vec!["10.96.0.10".into(), "fd00:96::10".into()],
                ports: vec![
                    port("http", 80, TargetName("http".into())),
                    port("raw", 81, TargetNumber(9000)),
                ],
                internal_traffic_policy: InternalTrafficPolicy::Local as i32,
                session_affinity: SessionAffinity::ClientIp as i32,
                endpoints: vec![
                    endpoint(
                        "198.19.1.11",
                        EndpointState::Ready,
                        "shop/web-1",
                        &[("http", 8080), ("raw", 9000)],
                    ),
                    endpoint("198.19.2.12", EndpointState::Ready, "", &[("raw", 9000)]),
                    endpoint(
                        "198.19.2.13",
                        EndpointState::Terminating,
                        "shop/web-3",
                        &[("http", 8080), ("raw", 9000)],
                    ),
                ],
                endpoints_ready: 2,
                endpoints_total: 3,
                endpoints_in_mesh: 2,
            },
            Service {
                namespace: "data".into(),
                name: "db".into(),
                fqdn: "db.data.svc.cluster.local".into(),
                cluster_ips: vec![],
                ports: vec![ServicePort {
                    name: String::new(),
                    port: 5432,
                    target_port: None,
                }],
                internal_traffic_policy: InternalTrafficPolicy::Cluster as i32,
                session_affinity: SessionAffinity::None as i32,
                endpoints: vec![],
                endpoints_ready: 0,
                endpoints_total: 0,
                endpoints_in_mesh: 0,
            },
        ]
    }

    #[test]
    fn enums_read_as_kubernetes_writes_them() {
        assert_eq!(
            traffic_policy_name(InternalTrafficPolicy::Local as i32),
            "Local"
        );
        assert_eq!(
            traffic_policy_name(InternalTrafficPolicy::Cluster as i32),
            "Cluster"
        );
        assert_eq!(traffic_policy_name(0), "unspecified");
        assert_eq!(affinity_name(SessionAffinity::ClientIp as i32), "ClientIP");
        assert_eq!(affinity_name(SessionAffinity::None as i32), "None");
        assert_eq!(affinity_name(9), "unknown");
        assert_eq!(
            endpoint_state_name(EndpointState::NotServing as i32),
            "not-serving"
        );
        assert_eq!(
            endpoint_state_name(EndpointState::Terminating as i32),
            "terminating"
        );
        assert_eq!(endpoint_state_name(-3), "unknown");
    }

    #[test]
    fn list_table_is_sorted_with_ports_and_counts() {
        assert_eq!(
            list_table(&list_view(services())),
            "NAMESPACE  NAME  CLUSTER-IPS             PORTS                    ENDPOINTS  MESH\n\
             data       db    None                    5432→5432/TCP            0/0        0\n\
             shop       web   10.96.0.10,fd00:96::10  80→http/TCP,81→9000/TCP  2/3        2\n"
        );
    }

    #[test]
    fn json_names_and_target_ports_as_kubernetes_writes_them() {
        let json = serde_json::to_value(list_view(services())).unwrap();
        let web = &json["services"][1];
        assert_eq!(
            web["clusterIPs"],
            serde_json::json!(["10.96.0.10", "fd00:96::10"])
        );
        assert_eq!(
            web["ports"],
            serde_json::json!([
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "raw", "port": 81, "targetPort": 9000}
            ])
        );
        assert_eq!(web["internalTrafficPolicy"], "Local");
        assert_eq!(web["sessionAffinity"], "ClientIP");
        assert_eq!(
            [
                &web["endpointsReady"],
                &web["endpointsTotal"],
                &web["endpointsInMesh"]
            ],
            [2, 3, 2]
        );
        assert_eq!(
            web["endpoints"][1],
            serde_json::json!({
                "ip": "198.19.2.12", "node": "node-b", "pod": null, "state": "ready",
                "inMesh": false, "identity": null, "ports": {"raw": 9000}
            })
        );
        let db = &json["services"][0];
        assert_eq!(
            db["ports"],
            serde_json::json!([{"name": null, "port": 5432, "targetPort": 5432}]),
            "an undeclared targetPort is the port"
        );
        assert_eq!(db["clusterIPs"], serde_json::json!([]));
    }

    #[test]
    fn detail_lists_each_endpoint_with_its_ports() {
        let web = ServiceView::from(services().remove(0));
        assert_eq!(
            detail(&web),
            "Namespace:                shop\n\
             Name:                     web\n\
             FQDN:                     web.shop.svc.cluster.local\n\
             Cluster IPs:              10.96.0.10, fd00:96::10\n\
             Ports:                    http: 80→http/TCP, raw: 81→9000/TCP\n\
             Internal traffic policy:  Local\n\
             Session affinity:         ClientIP\n\
             Endpoints:                2 ready of 3, 2 in the mesh\n\
             \n\
             IP           NODE    POD         STATE        MESH  IDENTITY                               PORTS\n\
             198.19.1.11  node-b  shop/web-1  ready        yes   spiffe://cluster.local/ns/shop/sa/web  80→8080,81→9000\n\
             198.19.2.12  node-b  -           ready        no    -                                      80→none,81→9000\n\
             198.19.2.13  node-b  shop/web-3  terminating  yes   spiffe://cluster.local/ns/shop/sa/web  80→8080,81→9000\n"
        );
    }
}
