//! What enrollment did, as the admin API shows it: every pod of this node the workload
//! source names, and for each whether it is enrolled (since when, its kernel counters),
//! failed (why) or left alone (its mode).
use std::time::SystemTime;

use super::Enrollment;
use crate::{
    identity::SpiffeId,
    workloads::{Mode, Workload},
};

/// The pods of this node, sorted by `namespace/name`.
#[derive(Debug, Default)]
pub struct NodeStatus {
    pub pods: Vec<PodStatus>,
}

#[derive(Debug)]
pub struct PodStatus {
    pub workload: Workload,
    /// Its SPIFFE ID (`None` if its namespace or service account cannot make one).
    pub identity: Option<SpiffeId>,
    pub state: PodState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    Enrolled {
        since: SystemTime,
        /// What crossed its interface: sent and received bytes, sent and received
        /// packets (as of the last export, every second).
        kernel: [u64; 4],
    },
    /// Not enrolled, and why; retried.
    Failed(String),
    /// Its mode keeps the node agent out.
    NotEnrolled,
}

impl NodeStatus {
    pub fn get(&self, namespace: &str, name: &str) -> Option<&PodStatus> {
        self.pods
            .iter()
            .find(|p| p.workload.namespace == namespace && p.workload.name == name)
    }
}

impl Enrollment {
    /// Publishes the status of this node's pods.
    pub(super) fn publish_status(&self) {
        let mut pods: Vec<PodStatus> = self
            .current
            .workloads
            .iter()
            .filter(|w| w.runs_on(&self.node))
            .map(|w| {
                let key = w.key();
                let state = if let Some(pod) = self.pods.get(&key) {
                    PodState::Enrolled {
                        since: pod.since,
                        kernel: pod.exported,
                    }
                } else if let Some((_, error)) = self.failed.get(&key) {
                    PodState::Failed(error.clone())
                } else if w.mode == Mode::Node {
                    // Wanted, not yet tried (only between a change and its reconcile).
                    PodState::Failed("not enrolled yet".into())
                } else {
                    PodState::NotEnrolled
                };
                PodStatus {
                    workload: w.clone(),
                    identity: self
                        .shared
                        .identity
                        .workload_id(&w.namespace, &w.service_account)
                        .ok(),
                    state,
                }
            })
            .collect();
        pods.sort_by(|a, b| {
            (&a.workload.namespace, &a.workload.name)
                .cmp(&(&b.workload.namespace, &b.workload.name))
        });
        self.status
            .send_replace(std::sync::Arc::new(NodeStatus { pods }));
    }
}
