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
//!     netns: /run/netns/web
//!     cgroup: /sys/fs/cgroup/kubepods/web
//!     mode: node          # node (default) | none
//!     node: node-a        # where it runs; other nodes' pods are destinations only
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

fn validate(set: &WorkloadSet, file: &Path) -> Result<(), WorkloadFileError> {
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
        if !w.netns.is_absolute() {
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
    }
    Ok(())
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
