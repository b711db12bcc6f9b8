//! The agent's own types as the admin API's messages (`outrider.admin.v1`).
use std::{collections::HashMap, sync::Arc, time::SystemTime};

use outrider_proto::admin::v1 as pb;

use crate::{
    enrollment::{PodState, PodStatus},
    identity::{manager::CertStatus, x509},
    policy::{AuthorizationPolicy, Origin},
    proxy::connections::{Connection, PodTotals},
    telemetry::access::{Direction, Transport},
    workloads::Mode,
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

pub fn connection(c: &Connection) -> pb::Connection {
    let (sent, received) = (
        c.counters
            .forward
            .load(std::sync::atomic::Ordering::Relaxed),
        c.counters
            .backward
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    pb::Connection {
        id: c.id,
        pod: c.pod.clone(),
        direction: match c.direction {
            Direction::Outbound => pb::Direction::Outbound,
            Direction::Inbound => pb::Direction::Inbound,
        } as i32,
        transport: match c.transport {
            Transport::Plaintext => pb::Transport::Plaintext,
            Transport::Hbone => pb::Transport::Hbone,
        } as i32,
        source: c.src.to_string(),
        destination: c.dst.to_string(),
        peer_identity: c.peer_identity.clone().unwrap_or_default(),
        opened: time(c.opened),
        bytes_sent: sent,
        bytes_received: received,
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
