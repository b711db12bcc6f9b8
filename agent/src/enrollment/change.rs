//! What a changed record of an enrolled pod asks of enrollment, field by field. Almost
//! everything is applied in place — the record is swapped for the next connections while
//! the pod stays in the kernel's maps and its listeners keep accepting: labels (policies
//! select on them), ports (Services' named target ports), IPs (the kernel's inbound map
//! is updated, new addresses before old ones go), the service account (the new
//! identity's certificate is asked for before the record changes), uid, cgroup, node.
//! Only a new network namespace (a new sandbox) needs new listeners and a new kernel
//! slot, made before the old ones go; a pod whose sandbox is gone, that left node mode
//! or this node is unenrolled, as before.
use crate::workloads::Workload;

/// What to do about an enrolled pod, given its record before and now.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed.
    None,
    /// Swap the record; the listeners and kernel slot stay.
    InPlace(InPlace),
    /// Another network namespace path: a new sandbox, unless the path leads to the same
    /// namespace (the caller compares the namespaces themselves). The other fields that
    /// changed come along.
    NewSandbox(InPlace),
    /// Its sandbox is gone (no network namespace): unenroll.
    Leave,
}

/// The fields of an in-place change, and what each needs besides the swap.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InPlace {
    /// The names of the fields that changed, for the log (`labels`, `ports`, …).
    pub fields: Vec<&'static str>,
    /// The pod's IPs changed: the kernel's inbound map follows.
    pub ips: bool,
    /// The service account changed: a new identity and certificate.
    pub identity: bool,
    /// The labels changed: policies may select the pod differently now.
    pub labels: bool,
}

/// What changing an enrolled pod's record from `old` to `new` (the same pod: same
/// namespace and name, still in node mode on this node) asks for.
pub fn between(old: &Workload, new: &Workload) -> Change {
    if new.netns.as_os_str().is_empty() {
        return Change::Leave;
    }
    // Every field, by name: a field added to `Workload` does not compile here until it
    // is weighed. Namespace and name are the pod's key, the same by definition.
    let Workload {
        namespace: _,
        name: _,
        node,
        uid,
        service_account,
        labels,
        ips,
        netns,
        cgroup,
        mode,
        ports,
    } = old;
    let mut change = InPlace::default();
    let mut differs = |field: &'static str, changed: bool| {
        if changed {
            change.fields.push(field);
        }
        changed
    };
    change.labels = differs("labels", *labels != new.labels);
    change.ips = differs("ips", *ips != new.ips);
    change.identity = differs("serviceAccount", *service_account != new.service_account);
    differs("ports", *ports != new.ports);
    differs("uid", *uid != new.uid);
    differs("cgroup", *cgroup != new.cgroup);
    differs("node", *node != new.node);
    differs("mode", *mode != new.mode);
    let new_netns = differs("netns", *netns != new.netns);
    if new_netns {
        Change::NewSandbox(change)
    } else if change.fields.is_empty() {
        Change::None
    } else {
        Change::InPlace(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::{Mode, PodPort};

    fn pod() -> Workload {
        Workload {
            namespace: "shop".into(),
            name: "web".into(),
            node: Some("node-a".into()),
            uid: "u1".into(),
            service_account: "web".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            ips: vec!["198.19.1.10".parse().unwrap()],
            netns: "/run/netns/web".into(),
            cgroup: Some("/sys/fs/cgroup/web".into()),
            mode: Mode::Node,
            ports: vec![PodPort {
                name: Some("http".into()),
                container_port: 8080,
            }],
        }
    }

    fn in_place(change: Change) -> InPlace {
        match change {
            Change::InPlace(what) => what,
            other => panic!("not in place: {other:?}"),
        }
    }

    #[test]
    fn the_same_record_changes_nothing() {
        assert_eq!(between(&pod(), &pod()), Change::None);
    }

    #[test]
    fn labels_and_ports_are_swapped_in_place_with_nothing_else_to_do() {
        let mut new = pod();
        new.labels.insert("tier".into(), "gold".into());
        let what = in_place(between(&pod(), &new));
        assert_eq!(what.fields, ["labels"]);
        assert!(what.labels && !what.ips && !what.identity);

        let mut new = pod();
        new.ports[0].container_port = 8081;
        let what = in_place(between(&pod(), &new));
        assert_eq!(what.fields, ["ports"]);
        assert!(!what.labels && !what.ips && !what.identity);
    }

    #[test]
    fn ips_and_service_account_are_in_place_and_say_what_they_need() {
        let mut new = pod();
        new.ips.push("fd6f:7264:1::10".parse().unwrap());
        new.service_account = "web-v2".into();
        let what = in_place(between(&pod(), &new));
        assert_eq!(what.fields, ["ips", "serviceAccount"]);
        assert!(what.ips && what.identity && !what.labels);
    }

    #[test]
    fn uid_cgroup_and_node_are_in_place() {
        let mut new = pod();
        new.uid = "u2".into();
        new.cgroup = None;
        new.node = None;
        let what = in_place(between(&pod(), &new));
        assert_eq!(what.fields, ["uid", "cgroup", "node"]);
        assert!(!what.labels && !what.ips && !what.identity);
    }

    #[test]
    fn another_network_namespace_is_a_new_sandbox_carrying_the_other_changes() {
        let mut new = pod();
        new.netns = "/proc/42/ns/net".into();
        new.labels.clear();
        match between(&pod(), &new) {
            Change::NewSandbox(what) => {
                assert_eq!(what.fields, ["labels", "netns"]);
                assert!(what.labels);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sandbox_that_is_gone_unenrolls() {
        let mut new = pod();
        new.netns = Default::default();
        new.labels.clear();
        assert_eq!(between(&pod(), &new), Change::Leave);
    }
}
