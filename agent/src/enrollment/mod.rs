//! Enrollment: turns the latest workload set into running pods. For each pod in `node`
//! mode: open its network namespace, start its in-pod listeners, then add it to the
//! kernel's enrolled map (in that order, so nothing is steered to a missing listener).
//! When a pod leaves (or changes), the reverse: out of the map first, then its listeners
//! close; connections already established run on. A pod that cannot be enrolled (its
//! namespace vanished, say) is reported once and retried; the others are untouched.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;

use crate::{
    config::Config,
    dataplane::Dataplane,
    netns::Netns,
    proxy::{self, PodListeners, PodProxy},
    workloads::{Mode, Workload, WorkloadKey, WorkloadSet},
};

struct EnrolledPod {
    workload: Workload,
    netns: Arc<Netns>,
    _listeners: PodListeners,
}

pub struct Enrollment {
    config: Arc<Config>,
    dataplane: Dataplane,
    pods: BTreeMap<WorkloadKey, EnrolledPod>,
    /// Pods that could not be enrolled, with the last error reported for them.
    failed: HashMap<WorkloadKey, (Workload, String)>,
    next_pod_id: u32,
}

impl Enrollment {
    pub fn new(config: Arc<Config>, dataplane: Dataplane) -> Self {
        Self {
            config,
            dataplane,
            pods: BTreeMap::new(),
            failed: HashMap::new(),
            next_pod_id: 1,
        }
    }

    /// Follows the workload source until it goes away.
    pub async fn run(
        mut self,
        mut workloads: watch::Receiver<Arc<WorkloadSet>>,
        ready: impl FnOnce(),
    ) {
        let current = workloads.borrow_and_update().clone();
        self.reconcile(&current);
        ready();
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = workloads.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let current = workloads.borrow_and_update().clone();
                    self.reconcile(&current);
                }
                _ = retry.tick(), if !self.failed.is_empty() => {
                    let current = workloads.borrow().clone();
                    self.reconcile(&current);
                }
            }
        }
    }

    /// Brings the enrolled pods in line with `desired`.
    pub fn reconcile(&mut self, desired: &WorkloadSet) {
        let wanted: BTreeMap<WorkloadKey, &Workload> = desired
            .iter()
            .filter(|w| w.mode == Mode::Node)
            .map(|w| (w.key(), w))
            .collect();

        let leaving: Vec<WorkloadKey> = self
            .pods
            .iter()
            .filter(|(key, pod)| wanted.get(*key).is_none_or(|w| **w != pod.workload))
            .map(|(key, _)| key.clone())
            .collect();
        for key in leaving {
            self.unenroll(&key);
        }
        self.failed.retain(|key, _| wanted.contains_key(key));

        for (key, workload) in wanted {
            if self.pods.contains_key(&key) {
                continue;
            }
            match self.enroll(workload) {
                Ok(()) => {
                    self.failed.remove(&key);
                }
                Err(error) => {
                    let repeated = self
                        .failed
                        .get(&key)
                        .is_some_and(|(w, e)| w == workload && *e == error);
                    if !repeated {
                        tracing::warn!(pod = %key, %error, "pod not enrolled; will retry");
                    }
                    self.failed.insert(key, (workload.clone(), error));
                }
            }
        }
    }

    fn enroll(&mut self, workload: &Workload) -> Result<(), String> {
        let key = workload.key();
        let netns = Arc::new(Netns::open(&workload.netns).map_err(|e| e.to_string())?);
        let pod_proxy = Arc::new(PodProxy::new(
            key.to_string(),
            netns.clone(),
            self.dataplane.orig_dst(),
            &self.config,
        ));
        let listeners = proxy::outbound::start(
            pod_proxy,
            self.config.capture.outbound_port,
            self.config.proxy.backlog,
        )
        .map_err(|e| e.to_string())?;
        let pod_id = self.next_pod_id;
        self.next_pod_id = self.next_pod_id.wrapping_add(1).max(1);
        // On failure `listeners` drops here and closes: nothing half-applied remains.
        self.dataplane
            .enroll(netns.cookie(), pod_id)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            pod = %key,
            uid = %workload.uid,
            netns = %workload.netns.display(),
            netns_cookie = netns.cookie(),
            pod_id,
            "pod enrolled"
        );
        self.pods.insert(
            key,
            EnrolledPod {
                workload: workload.clone(),
                netns,
                _listeners: listeners,
            },
        );
        Ok(())
    }

    fn unenroll(&mut self, key: &WorkloadKey) {
        let Some(pod) = self.pods.remove(key) else {
            return;
        };
        if let Err(error) = self.dataplane.unenroll(pod.netns.cookie()) {
            tracing::error!(pod = %key, %error, "removing the pod from the kernel map failed");
        }
        tracing::info!(pod = %key, "pod unenrolled");
        // `pod` drops here: its listeners close; established connections run on.
    }
}
