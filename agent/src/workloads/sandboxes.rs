//! Where this node's pods are: whatever the workload source (the file, Kubernetes, any
//! future one), a pod of this node in node mode that it names by UID without saying
//! where it runs gets its sandbox — network namespace and cgroup — found on the node
//! ([`sandbox::Finder`]), looked for again every 50 ms while it starts, so that
//! enrollment follows within a second of the pod starting. A source says who runs here;
//! this stage says where. A pod without its sandbox yet has an empty netns, and
//! enrollment waits for it.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;

use super::{
    Mode, Workload, WorkloadSet,
    sandbox::{Finder, Sandbox},
};

/// How often sandboxes still missing are looked for.
const RETRY: Duration = Duration::from_millis(50);

/// The sandboxes found so far, by pod UID.
pub struct Sandboxes {
    node: String,
    finder: Finder,
    found: HashMap<String, Sandbox>,
    /// Sandboxes that could not be found for a reason that will not pass, reported once.
    reported: HashSet<String>,
}

impl Sandboxes {
    pub fn new(node: String, finder: Finder) -> Self {
        Self {
            node,
            finder,
            found: HashMap::new(),
            reported: HashSet::new(),
        }
    }

    /// True for a workload whose sandbox is this stage's to find.
    fn wanted(&self, w: &Workload) -> bool {
        w.mode == Mode::Node
            && w.node.as_deref().is_none_or(|n| n == self.node)
            && !w.uid.is_empty()
            && w.netns.as_os_str().is_empty()
    }

    /// `set` with the sandboxes found filled in, after looking for the missing ones and
    /// forgetting those of pods that are gone (or replaced: a new UID).
    pub fn fill(&mut self, set: &WorkloadSet) -> WorkloadSet {
        let live: HashSet<&str> = set.workloads.iter().map(|w| w.uid.as_str()).collect();
        self.found.retain(|uid, _| live.contains(uid.as_str()));
        self.reported.retain(|uid| live.contains(uid.as_str()));
        let mut set = set.clone();
        for w in &mut set.workloads {
            if !self.wanted(w) {
                continue;
            }
            if !self.found.contains_key(&w.uid) {
                self.find(w);
            }
            if let Some(sandbox) = self.found.get(&w.uid) {
                w.netns.clone_from(&sandbox.netns);
                w.cgroup = Some(sandbox.cgroup.clone());
            }
        }
        set
    }

    fn find(&mut self, w: &Workload) {
        let pod = w.key();
        match self.finder.find(&w.uid) {
            Ok(sandbox) => {
                tracing::debug!(%pod, uid = %w.uid, netns = %sandbox.netns.display(), "pod sandbox found");
                self.found.insert(w.uid.clone(), sandbox);
            }
            Err(e) if e.is_retryable() => {}
            Err(error) => {
                if self.reported.insert(w.uid.clone()) {
                    tracing::warn!(%pod, uid = %w.uid, %error, "cannot find the pod's sandbox; will retry");
                }
            }
        }
    }

    /// True while a pod of `set` waits for its sandbox.
    pub fn missing(&self, set: &WorkloadSet) -> bool {
        set.workloads
            .iter()
            .any(|w| self.wanted(w) && !self.found.contains_key(&w.uid))
    }
}

/// Follows `source`, publishing each set with its sandboxes filled in: at once on every
/// change of the source, and again when a missing sandbox turns up.
pub fn follow(
    mut source: watch::Receiver<Arc<WorkloadSet>>,
    mut sandboxes: Sandboxes,
) -> watch::Receiver<Arc<WorkloadSet>> {
    let first = source.borrow_and_update().clone();
    let (tx, rx) = watch::channel(Arc::new(sandboxes.fill(&first)));
    tokio::spawn(async move {
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut current = first;
        loop {
            let waiting = sandboxes.missing(&current);
            tokio::select! {
                changed = source.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    current = source.borrow_and_update().clone();
                }
                _ = retry.tick(), if waiting => {}
                () = tx.closed() => return,
            }
            let set = sandboxes.fill(&current);
            if **tx.borrow() != set {
                tx.send_replace(Arc::new(set));
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use super::*;

    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    /// A node with one pod's cgroup (cgroupfs layout) and, once `start`ed, a process in it.
    struct Node {
        dir: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let pod = dir
                .path()
                .join(format!("cgroup/kubepods/besteffort/pod{UID}"));
            fs::create_dir_all(&pod).unwrap();
            fs::write(pod.join("cgroup.procs"), "").unwrap();
            fs::create_dir_all(dir.path().join("proc/4242/ns")).unwrap();
            Self { dir }
        }

        fn start(&self) {
            let procs = self
                .dir
                .path()
                .join(format!("cgroup/kubepods/besteffort/pod{UID}/cgroup.procs"));
            fs::write(procs, "4242\n").unwrap();
            fs::write(self.dir.path().join("proc/4242/ns/net"), "").unwrap();
        }

        fn sandboxes(&self) -> Sandboxes {
            let root = |p: &str| self.dir.path().join(p);
            Sandboxes::new("node-a".into(), Finder::new(root("cgroup"), root("proc")))
        }

        fn netns(&self) -> std::path::PathBuf {
            self.dir.path().join("proc/4242/ns/net")
        }
    }

    fn set(yaml: &str) -> WorkloadSet {
        WorkloadSet::parse(Path::new("w.yaml"), yaml).unwrap()
    }

    const PODS: &str = "workloads:
  - {namespace: shop, name: web, node: node-a, uid: 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0, ips: [198.19.1.11]}
  - {namespace: shop, name: db, node: node-b, uid: 11111111-2222-3333-4444-555555555555, ips: [198.19.2.11]}
  - {namespace: shop, name: side, node: node-a, uid: 66666666-2222-3333-4444-555555555555, mode: sidecar, ips: [198.19.1.12]}
  - {namespace: shop, name: given, node: node-a, uid: 77777777-2222-3333-4444-555555555555, netns: /run/netns/given, ips: [198.19.1.13]}
";

    #[test]
    fn a_pod_named_by_uid_gets_its_sandbox_once_it_runs_and_only_this_nodes_node_mode_pods() {
        let node = Node::new();
        let mut sandboxes = node.sandboxes();
        let pods = set(PODS);
        // Its cgroup is there, no process yet: still missing, netns empty.
        let filled = sandboxes.fill(&pods);
        assert!(sandboxes.missing(&pods));
        assert_eq!(filled.workloads, pods.workloads);
        node.start();
        let filled = sandboxes.fill(&pods);
        assert!(!sandboxes.missing(&pods));
        let by_name = |name: &str| {
            filled
                .workloads
                .iter()
                .find(|w| w.name == name)
                .unwrap()
                .clone()
        };
        assert_eq!(by_name("web").netns, node.netns());
        assert!(by_name("web").cgroup.is_some());
        // Another node's pod, a sidecar-mode pod, a pod whose source said where: as given.
        assert_eq!(by_name("db").netns.as_os_str(), "");
        assert_eq!(by_name("side").netns.as_os_str(), "");
        assert_eq!(by_name("given").netns.as_os_str(), "/run/netns/given");
    }

    #[test]
    fn a_pod_gone_is_forgotten() {
        let node = Node::new();
        node.start();
        let mut sandboxes = node.sandboxes();
        sandboxes.fill(&set(PODS));
        assert_eq!(sandboxes.found.len(), 1);
        sandboxes.fill(&WorkloadSet::default());
        assert!(sandboxes.found.is_empty());
    }

    #[tokio::test]
    async fn the_stage_publishes_a_sandbox_that_turns_up_later() {
        let node = Node::new();
        let (tx, rx) = watch::channel(Arc::new(set(PODS)));
        let mut out = follow(rx, node.sandboxes());
        let web = |s: &WorkloadSet| s.workloads.iter().find(|w| w.name == "web").cloned();
        assert!(
            web(&out.borrow_and_update())
                .unwrap()
                .netns
                .as_os_str()
                .is_empty()
        );
        node.start();
        let found = tokio::time::timeout(
            Duration::from_secs(5),
            out.wait_for(|s| web(s).is_some_and(|w| w.netns == node.netns())),
        )
        .await;
        assert!(found.is_ok(), "the sandbox was never published");
        drop(tx);
    }
}
