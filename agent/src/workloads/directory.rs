//! The cluster-wide view the proxy consults per connection: which workload owns a
//! destination IP, whether it is in the mesh, and its identity. Rebuilt from each new
//! [`WorkloadSet`] and swapped in whole, so lookups never wait (arc-swap).
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use arc_swap::ArcSwap;

use super::{Mode, MtlsMode, Workload, WorkloadSet};

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
    pub fn in_mesh(&self) -> bool {
        matches!(self.mode, Mode::Node | Mode::Sidecar)
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    by_ip: HashMap<IpAddr, Arc<Destination>>,
}

/// Lookups by IP over the latest workload set. Cheap to clone.
#[derive(Clone, Default)]
pub struct Directory(Arc<ArcSwap<Snapshot>>);

impl Directory {
    /// Replaces the view with `set`.
    pub fn update(&self, set: &WorkloadSet) {
        let mut by_ip = HashMap::new();
        for w in &set.workloads {
            let dest = Arc::new(destination(w, set));
            for ip in &w.ips {
                by_ip.insert(canonical(*ip), dest.clone());
            }
        }
        self.0.store(Arc::new(Snapshot { by_ip }));
    }

    /// The workload that owns `ip`, if any.
    pub fn lookup(&self, ip: IpAddr) -> Option<Arc<Destination>> {
        self.0.load().by_ip.get(&canonical(ip)).cloned()
    }
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
fn canonical(ip: IpAddr) -> IpAddr {
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
        let mapped: IpAddr = "::ffff:198.19.2.11".parse().unwrap();
        assert_eq!(dir.lookup(mapped).unwrap().key(), "data/db");
        assert!(
            !dir.lookup("198.19.1.11".parse().unwrap())
                .unwrap()
                .in_mesh()
        );
        assert!(dir.lookup("198.19.9.9".parse().unwrap()).is_none());
    }
}
