//! The agent's own types as the admin API's messages (`outrider.admin.v1`).
use std::{collections::HashMap, sync::Arc, time::SystemTime};

use outrider_proto::admin::v1 as pb;

use crate::{
    enrollment::{PodState, PodStatus},
    identity::SpiffeId,
    identity::{manager::CertStatus, x509},
    policy::{AuthorizationPolicy, Origin},
    proxy::connections::{Connection, PodTotals},
    telemetry::facts::{Direction, Transport},
    workloads::{
        Mode,
        directory::{EndpointState, ResolvedEndpoint, ResolvedService},
        service::{ServicePort, SessionAffinity, TargetPort, TrafficPolicy},
    },
};

pub fn time(t: SystemTime) -> String {
    x509::rfc3339(t)
}

pub fn workload(
    pod: &PodStatus,
    totals: PodTotals,
    cert_expiry: Option<SystemTime>,
) -> pb::Workload {
    let w = &pod.workload;
    let (state, error, since, kernel) = match &pod.state {
        PodState::Enrolled { since, kernel } => (
            pb::EnrollmentState::Enrolled,
            String::new(),
            time(*since),
            *kernel,
        ),
        PodState::Failed(error) => (
            pb::EnrollmentState::Failed,
            error.clone(),
            String::new(),
            [0; 4],
        ),
        PodState::NotEnrolled => (
            pb::EnrollmentState::NotEnrolled,
            String::new(),
            String::new(),
            [0; 4],
        ),
    };
    pb::Workload {
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        uid: w.uid.clone(),
        service_account: w.service_account.clone(),
        ips: w.ips.iter().map(ToString::to_string).collect(),
        mode: mode(w.mode) as i32,
        state: state as i32,
        error,
        identity: pod
            .identity
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        enrolled_since: since,
        certificate_expiry: cert_expiry.map(time).unwrap_or_default(),
        counters: Some(pb::WorkloadCounters {
            connections_active: totals.active,
            connections_total: totals.connections,
            connections_failed: totals.failed,
            bytes_sent: totals.sent,
            bytes_received: totals.received,
            requests_total: totals.requests,
            requests_failed: totals.failed_requests,
            kernel_tx_bytes: kernel[0],
            kernel_rx_bytes: kernel[1],
            kernel_tx_packets: kernel[2],
            kernel_rx_packets: kernel[3],
        }),
        labels: w
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>(),
    }
}

fn mode(mode: Mode) -> pb::Mode {
    match mode {
        Mode::Node => pb::Mode::Node,
        Mode::None => pb::Mode::None,
        Mode::Sidecar => pb::Mode::Sidecar,
    }
}

/// A Service with its endpoints; identities in `trust_domain`.
pub fn service(s: &ResolvedService, trust_domain: &str) -> pb::Service {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let endpoints: Vec<pb::ServiceEndpoint> = s
        .endpoints
        .iter()
        .map(|e| endpoint(e, trust_domain))
        .collect();
    pb::Service {
        namespace: s.key.namespace.clone(),
        name: s.key.name.clone(),
        fqdn: s.fqdn.clone(),
        cluster_ips: s.cluster_ips.iter().map(ToString::to_string).collect(),
        ports: s.ports.iter().map(service_port).collect(),
        internal_traffic_policy: match s.internal_traffic_policy {
            TrafficPolicy::Cluster => pb::InternalTrafficPolicy::Cluster,
            TrafficPolicy::Local => pb::InternalTrafficPolicy::Local,
        } as i32,
        session_affinity: match s.session_affinity {
            SessionAffinity::None => pb::SessionAffinity::None,
            SessionAffinity::ClientIp => pb::SessionAffinity::ClientIp,
        } as i32,
        endpoints_ready: count(
            s.endpoints
                .iter()
                .filter(|e| e.state == EndpointState::Ready)
                .count(),
        ),
        endpoints_total: count(s.endpoints.len()),
        endpoints_in_mesh: count(s.endpoints.iter().filter(|e| e.in_mesh()).count()),
        endpoints,
    }
}

fn service_port(p: &ServicePort) -> pb::ServicePort {
    use pb::service_port::TargetPort as Target;
    pb::ServicePort {
        name: p.name.clone().unwrap_or_default(),
        port: p.port.into(),
        target_port: Some(match p.target() {
            TargetPort::Number(n) => Target::TargetNumber(n.into()),
            TargetPort::Name(name) => Target::TargetName(name),
        }),
    }
}

fn endpoint(e: &ResolvedEndpoint, trust_domain: &str) -> pb::ServiceEndpoint {
    let in_mesh = e.in_mesh();
    let identity = e
        .pod
        .as_ref()
        .filter(|_| in_mesh)
        .and_then(|p| SpiffeId::new(trust_domain, &p.namespace, &p.service_account).ok())
        .map(|id| id.to_string())
        .unwrap_or_default();
    pb::ServiceEndpoint {
        ip: e.ip.to_string(),
        node: e.node.clone().unwrap_or_default(),
        pod: e.pod.as_ref().map(|p| p.key()).unwrap_or_default(),
        state: match e.state {
            EndpointState::Ready => pb::EndpointState::Ready,
            EndpointState::Terminating => pb::EndpointState::Terminating,
            EndpointState::NotServing => pb::EndpointState::NotServing,
        } as i32,
        in_mesh,
        identity,
        ports: e
            .ports
            .iter()
            .map(|(k, v)| (k.clone(), (*v).into()))
            .collect(),
    }
}

pub fn connection(c: &Connection) -> pb::Connection {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = &c.counters;
    let (sent, received) = (
        counters.forward.load(Relaxed),
        counters.backward.load(Relaxed),
    );
    pb::Connection {
        id: c.id,
        pod: c.facts.pod.clone(),
        direction: match c.facts.direction {
            Direction::Outbound => pb::Direction::Outbound,
            Direction::Inbound => pb::Direction::Inbound,
        } as i32,
        transport: match c.facts.transport {
            Transport::Plaintext => pb::Transport::Plaintext,
            Transport::Hbone => pb::Transport::Hbone,
        } as i32,
        source: c.facts.src.to_string(),
        destination: c.facts.dst.to_string(),
        peer_identity: c.facts.peer_identity().unwrap_or_default().to_string(),
        opened: time(c.opened),
        bytes_sent: sent,
        bytes_received: received,
        bytes_spliced: counters.spliced.load(Relaxed),
    }
}

pub fn closed(c: &Arc<Connection>) -> pb::ConnectionEvent {
    pb::ConnectionEvent {
        kind: pb::connection_event::Kind::Close as i32,
        connection: Some(connection(c)),
        duration_ms: c.opened.elapsed().unwrap_or_default().as_secs_f64() * 1000.0,
        closed_because: c.closed_because().unwrap_or_default(),
        missed: 0,
    }
}

pub fn opened(c: &Connection) -> pb::ConnectionEvent {
    pb::ConnectionEvent {
        kind: pb::connection_event::Kind::Open as i32,
        connection: Some(connection(c)),
        ..Default::default()
    }
}

pub fn policy(p: &AuthorizationPolicy, origin: &Origin, by_admin: bool) -> pb::Policy {
    pb::Policy {
        namespace: p.metadata.namespace.clone(),
        name: p.metadata.name.clone(),
        action: p.spec.action.to_string(),
        rules: u32::try_from(p.spec.rules.len()).unwrap_or(u32::MAX),
        selector: p
            .spec
            .selector
            .as_ref()
            .map(|s| {
                s.match_labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        source: origin.to_string(),
        applied_by_admin: by_admin,
        yaml: serde_yaml_ng::to_string(p).unwrap_or_default(),
    }
}

pub fn certificate(status: &CertStatus) -> pb::Certificate {
    let mut cert = pb::Certificate {
        identity: status.id.to_string(),
        pods: u32::try_from(status.refs).unwrap_or(u32::MAX),
        ..Default::default()
    };
    if let Some(current) = &status.cert {
        cert.serial = current.serial.clone();
        cert.not_before = time(current.not_before);
        cert.not_after = time(current.not_after);
        cert.renew_at = time(current.renew_at());
        if let Some(leaf) = current.key.cert.first() {
            cert.fingerprint_sha256 = fingerprint(leaf);
        }
    }
    cert
}

pub fn trust_root(der: &[u8]) -> pb::TrustRoot {
    let facts = x509::facts(der).ok();
    pb::TrustRoot {
        subject: x509::subject(der).unwrap_or_else(|e| format!("({e})")),
        not_after: facts.map(|f| time(f.not_after)).unwrap_or_default(),
        fingerprint_sha256: fingerprint(der),
    }
}

pub fn fingerprint(der: &[u8]) -> String {
    x509::hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::workloads::{WorkloadSet, directory::Directory};

    /// shop/web by selector over pods of both modes (one lacks the named port); data/db by
    /// listed endpoints in every state, one of them an IP no pod owns.
    const SET: &str = "workloads:
  - {namespace: shop, name: web-1, serviceAccount: web, node: node-a, netns: /a, labels: {app: web}, ips: [198.19.1.11, 'fd6f:7264:1::11'], ports: [{name: http, containerPort: 8080}]}
  - {namespace: shop, name: web-2, node: node-b, netns: /b, labels: {app: web}, ips: [198.19.2.11], mode: none}
  - {namespace: data, name: db, serviceAccount: db, node: node-b, netns: /c, ips: [198.19.2.12]}
services:
  - namespace: shop
    name: web
    clusterIPs: [10.96.0.10, 'fd00:96::10']
    ports: [{name: http, port: 80, targetPort: http}, {name: raw, port: 81, targetPort: 9000}]
    selector: {app: web}
    internalTrafficPolicy: Local
    sessionAffinity: ClientIP
  - namespace: data
    name: db
    ports: [{port: 5432}]
    endpoints:
      - {ip: 198.19.2.12, ports: {'': 6432}}
      - {ip: 198.19.9.9, node: node-c, ready: false, serving: true, terminating: true}
      - {ip: 198.19.9.10, ready: false}
";

    fn services() -> Vec<pb::Service> {
        let dir = Directory::new("example.org");
        dir.update(&WorkloadSet::parse(Path::new("w.yaml"), SET).unwrap());
        dir.services()
            .iter()
            .map(|s| service(s, "td.example"))
            .collect()
    }

    #[test]
    fn a_service_carries_its_ports_policies_and_counts() {
        let all = services();
        let names: Vec<_> = all
            .iter()
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .collect();
        assert_eq!(names, ["data/db", "shop/web"]);
        let web = &all[1];
        assert_eq!(web.fqdn, "web.shop.svc.example.org");
        assert_eq!(web.cluster_ips, ["10.96.0.10", "fd00:96::10"]);
        use pb::service_port::TargetPort::{TargetName, TargetNumber};
        assert_eq!(
            web.ports,
            [
                pb::ServicePort {
                    name: "http".into(),
                    port: 80,
                    target_port: Some(TargetName("http".into())),
                },
                pb::ServicePort {
                    name: "raw".into(),
                    port: 81,
                    target_port: Some(TargetNumber(9000)),
                },
            ]
        );
        assert_eq!(
            web.internal_traffic_policy(),
            pb::InternalTrafficPolicy::Local
        );
        assert_eq!(web.session_affinity(), pb::SessionAffinity::ClientIp);
        // web-1's two addresses (in the mesh) and web-2's (outside it).
        assert_eq!(
            (
                web.endpoints_ready,
                web.endpoints_total,
                web.endpoints_in_mesh
            ),
            (3, 3, 2)
        );
        let db = &all[0];
        assert!(db.cluster_ips.is_empty(), "headless");
        assert_eq!(db.ports[0].name, "");
        assert_eq!(
            db.ports[0].target_port,
            Some(TargetNumber(5432)),
            "an undeclared targetPort is the port"
        );
        assert_eq!(
            db.internal_traffic_policy(),
            pb::InternalTrafficPolicy::Cluster
        );
        assert_eq!(db.session_affinity(), pb::SessionAffinity::None);
        assert_eq!(
            (db.endpoints_ready, db.endpoints_total, db.endpoints_in_mesh),
            (1, 3, 1)
        );
    }

    #[test]
    fn endpoints_carry_their_pod_state_identity_and_resolved_ports() {
        let all = services();
        let web = &all[1];
        let e = &web.endpoints[0];
        assert_eq!(
            (e.ip.as_str(), e.node.as_str(), e.pod.as_str()),
            ("198.19.1.11", "node-a", "shop/web-1")
        );
        assert_eq!(e.state(), pb::EndpointState::Ready);
        assert!(e.in_mesh);
        assert_eq!(e.identity, "spiffe://td.example/ns/shop/sa/web");
        assert_eq!(
            e.ports,
            HashMap::from([("http".to_string(), 8080), ("raw".to_string(), 9000)])
        );
        assert_eq!(web.endpoints[2].ip, "fd6f:7264:1::11");
        let outside = &web.endpoints[1];
        assert_eq!(outside.pod, "shop/web-2");
        assert!(!outside.in_mesh && outside.identity.is_empty());
        assert_eq!(
            outside.ports,
            HashMap::from([("raw".to_string(), 9000)]),
            "web-2 declares no port named http"
        );

        let db = &all[0];
        let states: Vec<_> = db.endpoints.iter().map(|e| e.state()).collect();
        assert_eq!(
            states,
            [
                pb::EndpointState::Ready,
                pb::EndpointState::Terminating,
                pb::EndpointState::NotServing
            ]
        );
        assert_eq!(
            db.endpoints[0].identity,
            "spiffe://td.example/ns/data/sa/db"
        );
        assert_eq!(
            db.endpoints[0].ports,
            HashMap::from([(String::new(), 6432)])
        );
        let unknown = &db.endpoints[1];
        assert_eq!(
            (unknown.pod.as_str(), unknown.node.as_str(), unknown.in_mesh),
            ("", "node-c", false)
        );
        assert_eq!(unknown.ports, HashMap::from([(String::new(), 5432)]));
    }
}
