//! The local workload source: a YAML file listing the node's pods, polled for changes
//! (polling survives editors and ConfigMap symlink swaps that inotify misses). A file
//! with an error is reported with its location and reason and the previous set stays.
//!
//! ```yaml
//! namespaces:
//!   shop: {mtls: strict}  # strict | permissive (default)
//! workloads:
//!   - namespace: shop
//!     name: web
//!     uid: 6f1c…
//!     serviceAccount: web
//!     ips: [198.19.1.10, "fd6f:7264:1::10"]
//!     netns: /run/netns/web   # omitted: found on the node by uid (`sandboxes`)
//!     cgroup: /sys/fs/cgroup/kubepods/web
//!     mode: node          # node (default) | none
//!     node: node-a        # where it runs; other nodes' pods are destinations only
//!     ports: [{name: http, containerPort: 8080}]  # named ports, for Services' targetPorts
//! services:               # Kubernetes Services (see `service.rs` for every field)
//!   - {namespace: shop, name: web, clusterIPs: [10.96.0.10], selector: {app: web},
//!      ports: [{name: http, port: 80, targetPort: http}]}
//! ```
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;

use super::WorkloadSet;
use crate::yaml::{self, YamlError};

#[derive(Debug, thiserror::Error)]
pub enum WorkloadFileError {
    #[error(transparent)]
    Yaml(#[from] YamlError),
    #[error("{file}: workloads[{index}]: {reason}")]
    Invalid {
        file: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("{file}: namespaces: {namespace:?} is not a DNS label")]
    Namespace { file: PathBuf, namespace: String },
    #[error("{file}: services[{index}].{field}: {reason}")]
    Service {
        file: PathBuf,
        index: usize,
        /// The field path inside the entry (`clusterIPs[1]`, `ports[0].port`, …).
        field: String,
        reason: String,
    },
}

impl WorkloadSet {
    /// Reads and checks a workload file.
    pub fn load(path: &Path) -> Result<Self, WorkloadFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| YamlError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, WorkloadFileError> {
        let parsed: WorkloadSet = yaml::from_str(path, text)?;
        validate(&parsed, path)?;
        Ok(parsed)
    }
}

/// Checks a parsed set; errors name `file` (the testbed's spec reuses it for its Services).
pub fn validate(set: &WorkloadSet, file: &Path) -> Result<(), WorkloadFileError> {
    let invalid = |index, reason: String| WorkloadFileError::Invalid {
        file: file.to_path_buf(),
        index,
        reason,
    };
    if let Some(ns) = set.namespaces.keys().find(|ns| !is_dns_label(ns)) {
        return Err(WorkloadFileError::Namespace {
            file: file.to_path_buf(),
            namespace: ns.clone(),
        });
    }
    let mut seen = HashMap::new();
    let mut ips = HashMap::new();
    for (index, w) in set.workloads.iter().enumerate() {
        for (field, value) in [("namespace", &w.namespace), ("name", &w.name)] {
            if !is_dns_label(value) {
                return Err(invalid(
                    index,
                    format!("{field}: {value:?} is not a DNS label (a-z, 0-9, '-', at most 63)"),
                ));
            }
        }
        if w.service_account.is_empty() {
            return Err(invalid(index, "serviceAccount: must not be empty".into()));
        }
        if w.netns.as_os_str().is_empty() {
            if w.uid.is_empty() {
                return Err(invalid(
                    index,
                    "netns: required without a uid (by which the agent finds the pod's sandbox)"
                        .into(),
                ));
            }
        } else if !w.netns.is_absolute() {
            return Err(invalid(
                index,
                format!("netns: {} is not an absolute path", w.netns.display()),
            ));
        }
        if let Some(previous) = seen.insert(w.key(), index) {
            return Err(invalid(
                index,
                format!("{} is listed twice (also workloads[{previous}])", w.key()),
            ));
        }
        for ip in &w.ips {
            if let Some(previous) = ips.insert(*ip, index) {
                return Err(invalid(
                    index,
                    format!("ips: {ip} belongs to workloads[{previous}] too"),
                ));
            }
        }
        for (i, p) in w.ports.iter().enumerate() {
            if p.container_port == 0 {
                return Err(invalid(
                    index,
                    format!("ports[{i}].containerPort: must be 1 to 65535"),
                ));
            }
        }
    }
    validate_services(set, file, &ips)
}

/// Services: names, unique cluster IPs (not a pod's), ports in range and named as
/// Kubernetes requires, a selector of label keys and values, endpoints' ports in range.
fn validate_services(
    set: &WorkloadSet,
    file: &Path,
    pod_ips: &HashMap<std::net::IpAddr, usize>,
) -> Result<(), WorkloadFileError> {
    let mut seen = HashMap::new();
    let mut vips = HashMap::new();
    for (index, svc) in set.services.iter().enumerate() {
        let bad = |field: String, reason: String| WorkloadFileError::Service {
            file: file.to_path_buf(),
            index,
            field,
            reason,
        };
        for (field, value) in [("namespace", &svc.namespace), ("name", &svc.name)] {
            if !is_dns_label(value) {
                return Err(bad(
                    field.into(),
                    format!("{value:?} is not a DNS label (a-z, 0-9, '-', at most 63)"),
                ));
            }
        }
        if let Some(previous) = seen.insert(svc.key(), index) {
            return Err(bad(
                "name".into(),
                format!("{} is listed twice (also services[{previous}])", svc.key()),
            ));
        }
        let (mut v4, mut v6) = (0, 0);
        for (i, ip) in svc.cluster_ips.iter().enumerate() {
            let field = format!("clusterIPs[{i}]");
            if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
                return Err(bad(field, format!("{ip} cannot be a cluster IP")));
            }
            if let Some(previous) = vips.insert(*ip, index) {
                return Err(bad(
                    field,
                    format!("{ip} belongs to services[{previous}] too"),
                ));
            }
            if let Some(pod) = pod_ips.get(ip) {
                return Err(bad(field, format!("{ip} is the IP of workloads[{pod}]")));
            }
            if ip.is_ipv4() { v4 += 1 } else { v6 += 1 }
        }
        if v4 > 1 || v6 > 1 {
            return Err(bad(
                "clusterIPs".into(),
                "at most one IPv4 and one IPv6 address".into(),
            ));
        }
        validate_ports(svc, &bad)?;
        if let Some(selector) = &svc.selector {
            for (key, value) in selector {
                if !is_label_key(key) {
                    return Err(bad(
                        format!("selector.{key}"),
                        "not a label key (`[prefix/]name`, name: alphanumerics, '-', '_', '.', at most 63)".into(),
                    ));
                }
                if !is_label_value(value) {
                    return Err(bad(
                        format!("selector.{key}"),
                        format!("{value:?} is not a label value"),
                    ));
                }
            }
        }
        for (i, ep) in svc.endpoints.iter().flatten().enumerate() {
            for (name, port) in &ep.ports {
                if *port == 0 {
                    return Err(bad(
                        format!("endpoints[{i}].ports.{name}"),
                        "must be 1 to 65535".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn validate_ports(
    svc: &super::Service,
    bad: &dyn Fn(String, String) -> WorkloadFileError,
) -> Result<(), WorkloadFileError> {
    let mut ports = HashMap::new();
    let mut names = HashMap::new();
    for (i, p) in svc.ports.iter().enumerate() {
        if p.port == 0 {
            return Err(bad(format!("ports[{i}].port"), "must be 1 to 65535".into()));
        }
        if let Some(previous) = ports.insert(p.port, i) {
            return Err(bad(
                format!("ports[{i}].port"),
                format!("{} is declared twice (also ports[{previous}])", p.port),
            ));
        }
        match &p.name {
            Some(name) if !is_dns_label(name) => {
                return Err(bad(
                    format!("ports[{i}].name"),
                    format!("{name:?} is not a DNS label"),
                ));
            }
            Some(name) => {
                if let Some(previous) = names.insert(name.clone(), i) {
                    return Err(bad(
                        format!("ports[{i}].name"),
                        format!("{name:?} is used twice (also ports[{previous}])"),
                    ));
                }
            }
            None if svc.ports.len() > 1 => {
                return Err(bad(
                    format!("ports[{i}].name"),
                    "required when a Service has more than one port".into(),
                ));
            }
            None => {}
        }
        match &p.target_port {
            Some(super::TargetPort::Number(0)) => {
                return Err(bad(
                    format!("ports[{i}].targetPort"),
                    "must be 1 to 65535".into(),
                ));
            }
            Some(super::TargetPort::Name(name)) if !is_port_name(name) => {
                return Err(bad(
                    format!("ports[{i}].targetPort"),
                    format!("{name:?} is neither a port number nor a port name"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and '/', then a name of at
/// most 63 alphanumerics, '-', '_' and '.', starting and ending alphanumeric.
fn is_label_key(key: &str) -> bool {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(is_dns_label) {
                return false;
            }
            name
        }
        None => key,
    };
    !name.is_empty() && is_label_value(name)
}

/// A Kubernetes label value: empty, or at most 63 alphanumerics, '-', '_' and '.',
/// starting and ending alphanumeric.
fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

/// A container port name (IANA_SVC_NAME): at most 15 of a-z, 0-9 and '-', with a letter.
pub fn is_port_name(s: &str) -> bool {
    is_dns_label(s) && s.len() <= 15 && s.bytes().any(|b| b.is_ascii_lowercase())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Watches `path`, publishing every valid version. The first value is the file as it is
/// at start (empty if it is missing or invalid, which is logged).
pub fn watch(path: PathBuf, interval: Duration) -> watch::Receiver<Arc<WorkloadSet>> {
    crate::watch::follow(
        path,
        interval,
        "workload file",
        WorkloadSet::default(),
        WorkloadSet::load,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WorkloadSet, WorkloadFileError> {
        WorkloadSet::parse(Path::new("/etc/outrider/workloads.yaml"), text)
    }

    const GOOD: &str = "workloads:
  - namespace: shop
    name: web
    uid: u1
    serviceAccount: web
    ips: [198.19.1.10, 'fd6f:7264:1::10']
    netns: /run/netns/web
  - {namespace: shop, name: client, netns: /run/netns/client, mode: none}
";

    #[test]
    fn parses_a_valid_file_with_defaults() {
        let file = parse(GOOD).unwrap();
        assert_eq!(file.workloads.len(), 2);
        assert_eq!(file.workloads[0].ips.len(), 2);
        assert_eq!(file.workloads[1].service_account, "default");
        assert_eq!(file.workloads[1].mode, super::super::Mode::None);
        assert_eq!(file.workloads[0].mode, super::super::Mode::Node);
    }

    #[test]
    fn bad_ip_names_file_line_and_field() {
        let err = parse(&GOOD.replace("198.19.1.10", "198.19.1.300"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/outrider/workloads.yaml:"), "{err}");
        assert!(err.contains("line 6"), "{err}");
        assert!(err.contains("workloads[0].ips[0]"), "{err}");
    }

    #[test]
    fn unknown_field_and_mode_are_rejected() {
        let err = parse(&GOOD.replace("serviceAccount: web", "serviceAcount: web"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("serviceAcount"), "{err}");
        let err = parse(&GOOD.replace("mode: none", "mode: sometimes"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("workloads[1].mode"), "{err}");
    }

    #[test]
    fn duplicates_and_bad_names_are_rejected() {
        let twice = format!("{GOOD}  - {{namespace: shop, name: web, netns: /x}}\n");
        let err = parse(&twice).unwrap_err().to_string();
        assert!(
            err.contains("workloads[2]: shop/web is listed twice"),
            "{err}"
        );
        let err = parse(&GOOD.replace("name: web", "name: Web_1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("workloads[0]: name"), "{err}");
        let err = parse(&GOOD.replace("netns: /run/netns/web", "netns: web"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an absolute path"), "{err}");
    }

    #[test]
    fn namespaces_and_remote_pods_parse_and_shared_ips_are_rejected() {
        let text = format!(
            "namespaces:\n  shop: {{mtls: strict}}\n{GOOD}  - {{namespace: data, name: db, node: node-b, netns: /x, ips: [198.19.2.11]}}\n"
        );
        let set = parse(&text).unwrap();
        assert_eq!(set.mtls("shop"), super::super::MtlsMode::Strict);
        assert_eq!(set.mtls("data"), super::super::MtlsMode::Permissive);
        assert!(set.workloads[2].runs_on("node-b") && !set.workloads[2].runs_on("node-a"));
        assert!(
            set.workloads[0].runs_on("node-a"),
            "no node means this node"
        );
        let err = parse(&text.replace("198.19.2.11", "198.19.1.10"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("workloads[2]: ips: 198.19.1.10 belongs to workloads[0] too"),
            "{err}"
        );
        let err = parse(&text.replace("mtls: strict", "mtls: always"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("namespaces.shop.mtls"), "{err}");
    }

    const SERVICES: &str = "services:
  - namespace: shop
    name: web
    clusterIPs: [10.96.0.10, 'fd00:96::10']
    ports:
      - {name: http, port: 80, targetPort: http}
      - {name: admin, port: 9000, targetPort: 9001}
    selector: {app: web, app.kubernetes.io/part-of: shop}
    sessionAffinity: ClientIP
  - namespace: shop
    name: db
    clusterIPs: [10.96.0.11]
    ports: [{port: 5432}]
    internalTrafficPolicy: Local
    endpoints:
      - {ip: 198.19.1.10, node: node-a, ports: {'': 5432}}
      - {ip: 198.19.2.10, ready: false, serving: true, terminating: true}
  - {namespace: shop, name: headless, ports: [{port: 80}], selector: {app: web}}
";

    fn with_services(services: &str) -> Result<WorkloadSet, WorkloadFileError> {
        parse(&format!("{GOOD}{services}"))
    }

    #[test]
    fn services_parse_with_their_defaults() {
        use super::super::service::{SessionAffinity, TargetPort, TrafficPolicy};
        let set = with_services(SERVICES).unwrap();
        assert_eq!(set.services.len(), 3);
        let web = &set.services[0];
        assert_eq!(web.cluster_ips.len(), 2);
        assert_eq!(web.ports[0].target(), TargetPort::Name("http".into()));
        assert_eq!(web.ports[1].target(), TargetPort::Number(9001));
        assert_eq!(web.session_affinity, SessionAffinity::ClientIp);
        assert_eq!(web.internal_traffic_policy, TrafficPolicy::Cluster);
        let db = &set.services[1];
        assert_eq!(
            db.ports[0].target(),
            TargetPort::Number(5432),
            "targetPort defaults to port"
        );
        assert_eq!(db.internal_traffic_policy, TrafficPolicy::Local);
        let eps = db.endpoints.as_ref().unwrap();
        assert!(eps[0].ready && eps[0].serving() && !eps[0].terminating);
        assert!(!eps[1].ready && eps[1].serving() && eps[1].terminating);
        assert!(set.services[2].cluster_ips.is_empty(), "headless");
        assert_eq!(web.fqdn("cluster.local"), "web.shop.svc.cluster.local");
    }

    #[test]
    fn bad_services_name_file_index_and_field() {
        let cases = [
            (
                SERVICES.replace("10.96.0.11", "10.96.0.300"),
                "services[1].clusterIPs[0]",
            ),
            (
                SERVICES.replace("10.96.0.11", "10.96.0.10"),
                "services[1].clusterIPs[0]: 10.96.0.10 belongs to services[0] too",
            ),
            (
                SERVICES.replace("10.96.0.11", "198.19.1.10"),
                "services[1].clusterIPs[0]: 198.19.1.10 is the IP of workloads[0]",
            ),
            (
                SERVICES.replace("port: 5432}", "port: 70000}"),
                "services[1].ports[0].port",
            ),
            (
                SERVICES.replace("port: 5432}", "port: 0}"),
                "services[1].ports[0].port: must be 1 to 65535",
            ),
            (
                SERVICES.replace(
                    "selector: {app: web, app.kubernetes.io/part-of: shop}",
                    "selector: {matchLabels: {app: web}}",
                ),
                "services[0].selector",
            ),
            (
                SERVICES.replace("app.kubernetes.io/part-of: shop", "'bad key!': shop"),
                "services[0].selector.bad key!",
            ),
            (
                SERVICES.replace("{name: admin, port: 9000", "{port: 9000"),
                "services[0].ports[1].name: required",
            ),
            (
                SERVICES.replace("targetPort: http}", "targetPort: 'Not_A_Name'}"),
                "services[0].ports[0].targetPort",
            ),
            (
                SERVICES.replace(
                    "internalTrafficPolicy: Local",
                    "internalTrafficPolicy: Nearby",
                ),
                "services[1].internalTrafficPolicy",
            ),
            (
                SERVICES.replace("{'': 5432}", "{'': 0}"),
                "services[1].endpoints[0].ports.",
            ),
            (
                SERVICES.replace("name: db", "name: web"),
                "services[1].name: shop/web is listed twice",
            ),
            (
                SERVICES.replace("[10.96.0.10, 'fd00:96::10']", "[10.96.0.10, 10.96.0.12]"),
                "services[0].clusterIPs: at most one IPv4",
            ),
        ];
        for (text, want) in cases {
            let err = with_services(&text).unwrap_err().to_string();
            assert!(err.starts_with("/etc/outrider/workloads.yaml:"), "{err}");
            assert!(err.contains(want), "want {want:?} in {err}");
        }
    }

    #[tokio::test]
    async fn watch_publishes_valid_versions_and_keeps_the_last_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let mut rx = watch(path.clone(), Duration::from_millis(20));
        assert_eq!(rx.borrow_and_update().workloads.len(), 2);

        std::fs::write(&path, "workloads: [ {broken").unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !rx.has_changed().unwrap(),
            "an invalid file must not be published"
        );
        assert_eq!(rx.borrow().workloads.len(), 2);

        std::fs::write(&path, "workloads: []\n").unwrap();
        tokio::time::timeout(Duration::from_secs(2), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.borrow().workloads.len(), 0);
    }
}
