//! Enrollment: turns the latest workload set into running pods. Every set updates the
//! cluster-wide directory the proxy looks destinations up in; then, for each pod of this
//! node in `node` mode: open its network namespace, start its listeners, steer its
//! inbound plaintext (`sk_lookup`), have its identity's certificate minted, and finally
//! add it to the kernel's enrolled map — in that order, so nothing is steered to a
//! listener that is not there yet. When a pod leaves, the reverse; its established
//! connections run on. When its record changes, the change is applied in place (see
//! [`change`]): the pod never leaves the kernel's maps and its listeners stay, so a
//! relabelled strict pod never takes plaintext; a new sandbox gets its listeners and
//! kernel slot before the old ones go. A pod that cannot be enrolled (its namespace vanished,
//! say) is reported once and retried; the others are untouched. What it did is
//! published as a [`NodeStatus`] (for the admin API) after every change and every second.
//!
//! After a restart it takes over: a pod an earlier agent enrolled keeps its pod id (and so
//! its kernel state), and accepts on the listeners the earlier agent handed over, if it
//! did; what nobody claims in the first enrollment is withdrawn. Asked to hand over
//! itself (`restart`), it gives duplicates of its listeners, and once the new agent has
//! them stops accepting and leaves the kernel alone.
mod change;
mod ids;
mod status;

use change::{Change, InPlace};
pub use status::{NodeStatus, PodState, PodStatus};

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use agent_ebpf::{DenyKey, FAMILY_V4, FAMILY_V6};
use tokio::sync::{mpsc, watch};

use crate::{
    dataplane::{Dataplane, PodInbound},
    netns::Netns,
    policy::{DestinationRef, KernelDenial, PolicySet, SourcePod},
    proxy::{
        self, PodListeners, PodProxy, Shared,
        listeners::{Fd, ListenerKind},
        pod::PodRecord,
    },
    restart::{HandoverRequest, PodSockets},
    telemetry::{
        metrics::{Metrics, PodLabels},
        refusals::Reason,
    },
    workloads::{Mode, Workload, WorkloadKey, WorkloadSet},
};

/// A pod of this node that is enrolled: its proxy (which holds the workload, its
/// network namespace and identity), its kernel slot and its listeners.
struct EnrolledPod {
    proxy: Arc<PodProxy>,
    /// The kernel counters as last exported: sent/received bytes, sent/received packets.
    exported: [u64; 4],
    /// The kernel's count of connects it could not steer, as last reported.
    unsteered_seen: u64,
    pod_id: u32,
    since: SystemTime,
    listeners: PodListeners,
}

/// Why [`Enrollment::run`] returned.
pub enum Stopped {
    /// The workload source went away.
    SourceEnded,
    /// A new agent took the listeners over.
    HandedOver,
}

pub struct Enrollment {
    node: String,
    dataplane: Dataplane,
    shared: Arc<Shared>,
    pods: BTreeMap<WorkloadKey, EnrolledPod>,
    /// Pods that could not be enrolled, with the last error reported for them.
    failed: HashMap<WorkloadKey, (Workload, String)>,
    ids: ids::PodIds,
    /// The latest workload set (destinations for the kernel's policy denials).
    current: Arc<WorkloadSet>,
    status: watch::Sender<Arc<NodeStatus>>,
    /// Listeners handed over by the previous agent, by network namespace cookie; until
    /// the first enrollment.
    inherited: HashMap<u64, PodSockets>,
}

impl Enrollment {
    pub fn new(
        node: String,
        dataplane: Dataplane,
        shared: Arc<Shared>,
        inherited: HashMap<u64, PodSockets>,
    ) -> Self {
        let mut ids = ids::PodIds::new(agent_ebpf::MAX_PODS);
        for id in dataplane.adoptable().values() {
            ids.reserve(*id);
        }
        Self {
            node,
            dataplane,
            shared,
            pods: BTreeMap::new(),
            failed: HashMap::new(),
            ids,
            current: Arc::default(),
            status: watch::channel(Arc::default()).0,
            inherited,
        }
    }

    /// What enrollment did, kept up to date.
    pub fn status(&self) -> watch::Receiver<Arc<NodeStatus>> {
        self.status.subscribe()
    }

    /// Follows the workload source and the policies until the workload source goes away
    /// or a new agent takes over.
    pub async fn run(
        mut self,
        mut workloads: watch::Receiver<Arc<WorkloadSet>>,
        mut policies: watch::Receiver<Arc<PolicySet>>,
        mut handovers: mpsc::Receiver<HandoverRequest>,
        ready: impl FnOnce(),
    ) -> Stopped {
        self.shared
            .set_policies(policies.borrow_and_update().clone());
        let current = workloads.borrow_and_update().clone();
        self.reconcile(&current);
        self.finish_take_over();
        ready();
        let mut policies_open = true;
        let mut counters = tokio::time::interval(Duration::from_secs(1));
        counters.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(request) = handovers.recv() => {
                    if self.hand_over(request).await {
                        return Stopped::HandedOver;
                    }
                }
                changed = workloads.changed() => {
                    if changed.is_err() {
                        return Stopped::SourceEnded;
                    }
                    let current = workloads.borrow_and_update().clone();
                    self.reconcile(&current);
                }
                changed = policies.changed(), if policies_open => {
                    if changed.is_err() {
                        policies_open = false;
                        continue;
                    }
                    let policy = policies.borrow_and_update().clone();
                    tracing::info!(policies = policy.len(), "policies in force");
                    self.shared.set_policies(policy);
                    self.update_kernel_denials();
                }
                _ = counters.tick() => {
                    self.export_counters();
                    self.publish_status();
                }
                _ = retry.tick(), if !self.failed.is_empty() => {
                    let current = workloads.borrow().clone();
                    self.reconcile(&current);
                }
            }
        }
    }

    /// What an earlier agent left and this one did not claim goes.
    fn finish_take_over(&mut self) {
        let claimed: HashSet<u64> = self.pods.values().map(|p| p.proxy.netns.cookie()).collect();
        let unclaimed: Vec<u32> = self
            .dataplane
            .adoptable()
            .iter()
            .filter(|(cookie, _)| !claimed.contains(cookie))
            .map(|(_, id)| *id)
            .collect();
        for id in unclaimed {
            self.ids.give_back(id);
        }
        self.dataplane.finish_adoption(&claimed);
        for (_, pod) in self.inherited.drain() {
            tracing::info!(pod = %pod.key, "closing listeners handed over for a pod that is gone");
        }
    }

    /// Gives a new agent duplicates of every pod's listeners; true when it took them
    /// (then this agent's pods stop accepting; the kernel is the new agent's).
    async fn hand_over(&mut self, request: HandoverRequest) -> bool {
        let mut pods = Vec::new();
        for pod in self.pods.values() {
            match pod.listeners.duplicate() {
                Ok(listeners) => pods.push(PodSockets {
                    key: pod.proxy.key.clone(),
                    netns_cookie: pod.proxy.netns.cookie(),
                    listeners,
                }),
                Err(error) => {
                    tracing::warn!(pod = %pod.proxy.key, %error, "hand-over: cannot duplicate the pod's listeners; the new agent opens its own");
                }
            }
        }
        if request.reply.send(pods).is_err() {
            return false;
        }
        match tokio::time::timeout(Duration::from_secs(30), request.commit).await {
            Ok(Ok(true)) => {
                let pods = std::mem::take(&mut self.pods);
                tracing::info!(
                    pods = pods.len(),
                    "handed over: no longer accepting or changing the kernel"
                );
                // Dropping them stops their accept loops; the sockets live on in the new
                // agent. Established connections run on.
                drop(pods);
                true
            }
            _ => {
                tracing::warn!("hand-over called off; carrying on");
                false
            }
        }
    }

    /// Makes the kernel refuse, in `connect()`, what the policies deny this node's pods
    /// outright (pure-L4 DENY rules: see `PolicySet::kernel_denials`).
    fn update_kernel_denials(&mut self) {
        let policy = self.shared.policies();
        let destinations: Vec<DestinationRef<'_>> = self
            .current
            .workloads
            .iter()
            .filter(|w| matches!(w.mode, Mode::Node | Mode::Sidecar))
            .map(|w| DestinationRef {
                namespace: &w.namespace,
                labels: &w.labels,
                ips: &w.ips,
            })
            .collect();
        let mut wanted = HashSet::new();
        for pod in self.pods.values() {
            let record = pod.proxy.record();
            let source = SourcePod {
                principal: Some(record.id.as_str().trim_start_matches("spiffe://")),
                namespace: Some(record.id.namespace()),
                ips: &record.workload.ips,
            };
            for denial in policy.kernel_denials(&source, &destinations) {
                wanted.insert(deny_key(pod.pod_id, denial));
            }
        }
        let entries = wanted.len();
        match self.dataplane.set_policy_denials(wanted) {
            Ok(0) => {}
            Ok(changed) => {
                tracing::info!(entries, changed, "kernel policy denials updated");
            }
            Err(error) => {
                tracing::error!(%error, "cannot update the kernel's policy denials; destinations still enforce");
            }
        }
    }

    /// Brings the directory and the enrolled pods in line with `desired`.
    pub fn reconcile(&mut self, desired: &Arc<WorkloadSet>) {
        self.shared.set_workloads(desired);
        self.current = desired.clone();
        let wanted: BTreeMap<WorkloadKey, &Workload> = desired
            .workloads
            .iter()
            .filter(|w| w.mode == Mode::Node && w.runs_on(&self.node))
            .map(|w| (w.key(), w))
            .collect();

        let mut leaving = Vec::new();
        let mut changed = Vec::new();
        for (key, pod) in &self.pods {
            let Some(new) = wanted.get(key) else {
                leaving.push(key.clone());
                continue;
            };
            match change::between(&pod.proxy.record().workload, new) {
                Change::None => {}
                Change::Leave => leaving.push(key.clone()),
                change => changed.push((key.clone(), change)),
            }
        }
        for key in leaving {
            self.unenroll(&key);
        }
        self.failed.retain(|key, _| wanted.contains_key(key));
        // A pod's new record is decided against by its live connections as it is put in
        // force (`PodProxy::set_record`).
        for (key, change) in changed {
            self.apply_change(&key, wanted[&key], change);
        }

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
        self.update_kernel_denials();
        self.publish_status();
    }

    /// Applies a changed record of the enrolled pod `key` (see [`change`]); true when its
    /// labels changed. A change that cannot be applied leaves the pod as it was (still
    /// enrolled, still protected), reported and retried.
    fn apply_change(&mut self, key: &WorkloadKey, workload: &Workload, change: Change) {
        let result = match change {
            Change::InPlace(what) => self.update_in_place(key, workload, what),
            Change::NewSandbox(what) => self.new_sandbox(key, workload, what),
            Change::None | Change::Leave => return,
        };
        match result {
            Ok(()) => {
                self.failed.remove(key);
            }
            Err(error) => {
                let repeated = self
                    .failed
                    .get(key)
                    .is_some_and(|(w, e)| w == workload && *e == error);
                if !repeated {
                    tracing::warn!(pod = %key, %error, "pod's changed record not applied; it stays enrolled as it was; will retry");
                }
                self.failed.insert(key.clone(), (workload.clone(), error));
            }
        }
    }

    /// Swaps the pod's record for `workload`: a new identity's certificate is asked for
    /// first, new IPs are steered before the record claims them and old ones withdrawn
    /// after. The pod stays in the kernel's maps and its listeners keep accepting.
    fn update_in_place(
        &mut self,
        key: &WorkloadKey,
        workload: &Workload,
        what: InPlace,
    ) -> Result<(), String> {
        let Some(pod) = self.pods.get(key) else {
            return Ok(());
        };
        let (proxy, pod_id) = (pod.proxy.clone(), pod.pod_id);
        let old = proxy.record();
        let id = if what.identity {
            let id = self
                .shared
                .identity
                .workload_id(&workload.namespace, &workload.service_account)
                .map_err(|e| e.to_string())?;
            self.shared.identity.manager().ensure(&id);
            id
        } else {
            old.id.clone()
        };
        if what.ips
            && let Err(error) = self.dataplane.add_inbound_ips(pod_id, &workload.ips)
        {
            if what.identity {
                self.shared.identity.manager().release(&id);
            }
            return Err(error.to_string());
        }
        proxy.set_record(PodRecord {
            workload: workload.clone(),
            id: id.clone(),
        });
        if what.ips {
            let gone: Vec<IpAddr> = old
                .workload
                .ips
                .iter()
                .filter(|ip| !workload.ips.contains(ip))
                .copied()
                .collect();
            self.dataplane.remove_inbound_ips(&gone);
        }
        if what.identity {
            self.shared.identity.manager().release(&old.id);
        }
        tracing::info!(
            pod = %key,
            changed = %what.fields.join(", "),
            pod_id,
            identity = %id,
            "pod record updated in place"
        );
        Ok(())
    }

    /// The pod's record names another network namespace. The same namespace by another
    /// path is an in-place change; a new sandbox is enrolled (listeners, kernel slot,
    /// steering) before the old one is withdrawn, so the pod is never out of the maps.
    fn new_sandbox(
        &mut self,
        key: &WorkloadKey,
        workload: &Workload,
        what: InPlace,
    ) -> Result<(), String> {
        let Some(pod) = self.pods.get(key) else {
            return Ok(());
        };
        let netns = Netns::open(&workload.netns).map_err(|e| e.to_string())?;
        if netns.cookie() == pod.proxy.netns.cookie() {
            return self.update_in_place(key, workload, what);
        }
        let Some(old) = self.pods.remove(key) else {
            return Ok(());
        };
        if let Err(error) = self.enroll(workload) {
            // Undoing a failed enrollment withdraws the IPs it steered, which may be the
            // old sandbox's too: steer them to it again.
            let ips = old.proxy.record().workload.ips.clone();
            if let Err(undo) = self.dataplane.add_inbound_ips(old.pod_id, &ips) {
                tracing::error!(pod = %key, error = %undo, "cannot steer the pod's IPs to its old sandbox again");
            }
            self.pods.insert(key.clone(), old);
            return Err(error);
        }
        let old_cookie = old.proxy.netns.cookie();
        self.withdraw(key, old, &workload.ips);
        tracing::info!(pod = %key, old_netns_cookie = old_cookie, "pod moved to a new sandbox; the old one is withdrawn");
        Ok(())
    }

    fn enroll(&mut self, workload: &Workload) -> Result<(), String> {
        let key = workload.key();
        if workload.netns.as_os_str().is_empty() {
            return Err("its sandbox (network namespace) is not found yet".into());
        }
        let netns = Arc::new(Netns::open(&workload.netns).map_err(|e| e.to_string())?);
        let id = self
            .shared
            .identity
            .workload_id(&workload.namespace, &workload.service_account)
            .map_err(|e| e.to_string())?;
        let pod = Arc::new(PodProxy::new(
            workload.clone(),
            id.clone(),
            netns.clone(),
            self.shared.clone(),
        ));
        // The certificate first: listeners (maybe inherited, so accepting at once) wait
        // for it. From here on, a failure undoes each step.
        self.shared.identity.manager().ensure(&id);
        let result = self.enroll_pod(&pod, &netns, workload);
        if result.is_err() {
            self.shared.identity.manager().release(&id);
        }
        let (pod_id, listeners, adopted, took_over) = result?;
        tracing::info!(
            pod = %key,
            uid = %workload.uid,
            identity = %id,
            netns = %workload.netns.display(),
            netns_cookie = netns.cookie(),
            pod_id,
            adopted,
            listeners_taken_over = took_over,
            "pod enrolled"
        );
        self.pods.insert(
            key,
            EnrolledPod {
                exported: [0; 4],
                unsteered_seen: 0,
                proxy: pod,
                pod_id,
                since: SystemTime::now(),
                listeners,
            },
        );
        Ok(())
    }

    /// The steps of [`Self::enroll`] after the certificate: listeners, kernel steering.
    /// Returns the pod id, the listeners, and whether the pod id and listeners came from
    /// the previous agent.
    fn enroll_pod(
        &mut self,
        pod: &Arc<PodProxy>,
        netns: &Arc<Netns>,
        workload: &Workload,
    ) -> Result<(u32, PodListeners, bool, bool), String> {
        let key = workload.key();
        // A failure drops `listeners` (closing them) and undoes each step.
        let inherited = self
            .inherited
            .remove(&netns.cookie())
            .map(|pod| pod.listeners);
        let took_over = inherited.is_some();
        let listeners =
            proxy::listeners::start(pod.clone(), inherited).map_err(|e| e.to_string())?;
        let adopted = self.dataplane.adoptable().get(&netns.cookie()).copied();
        let pod_id = match adopted {
            Some(id) => id,
            None => self.ids.take().ok_or("no free pod slot on this node")?,
        };
        let inbound = PodInbound {
            pod_id,
            netns: &**netns,
            netns_cookie: netns.cookie(),
            ips: &workload.ips,
            listener_v4: &Fd(listeners.fd(ListenerKind::InboundV4)),
            listener_v6: &Fd(listeners.fd(ListenerKind::InboundV6)),
        };
        if let Err(e) = self.dataplane.attach_inbound(inbound) {
            if adopted.is_none() {
                self.ids.give_back(pod_id);
            }
            return Err(e.to_string());
        }
        if adopted.is_some() {
            // The counters go on from where the previous agent left them.
        } else if let Err(error) = self.dataplane.reset_pod_counters(pod_id) {
            tracing::warn!(
                pod = %key,
                pod_id,
                %error,
                "cannot zero the pod's traffic counters; they start from the previous pod's"
            );
        }
        if let Err(e) = self.dataplane.enroll(netns.cookie(), pod_id) {
            self.dataplane
                .detach_inbound(pod_id, netns.cookie(), &workload.ips);
            self.ids.give_back(pod_id);
            return Err(e.to_string());
        }
        Ok((pod_id, listeners, adopted.is_some(), took_over))
    }

    /// Brings the `outrider_pod_*` metrics up to date with the kernel's counters.
    fn export_counters(&mut self) {
        let metrics = self.shared.connections.metrics().clone();
        for pod in self.pods.values_mut() {
            let Ok(c) = self.dataplane.pod_counters(pod.pod_id) else {
                continue;
            };
            let record = pod.proxy.record();
            let labels = PodLabels {
                namespace: record.workload.namespace.clone(),
                pod: record.workload.name.clone(),
            };
            let now = [c.tx_bytes, c.rx_bytes, c.tx_packets, c.rx_packets];
            metrics.pod_counters(&labels, &mut pod.exported, now);
            let unsteered = c.unsteered_connects.saturating_sub(pod.unsteered_seen);
            pod.unsteered_seen = c.unsteered_connects;
            if unsteered > 0 {
                report_unsteered(
                    &metrics,
                    &pod.proxy.key,
                    unsteered,
                    self.dataplane.fails_open(),
                );
            }
        }
    }

    /// Logs the kernel's traffic counters of one pod: what crossed its network interface
    /// since it was enrolled (see `agent_ebpf::PodCounters`).
    fn log_pod_counters(&self, key: &WorkloadKey, pod_id: u32) {
        match self.dataplane.pod_counters(pod_id) {
            Ok(c) => tracing::info!(
                target: "counters",
                pod = %key,
                rx_bytes = c.rx_bytes,
                tx_bytes = c.tx_bytes,
                rx_packets = c.rx_packets,
                tx_packets = c.tx_packets,
                "pod counters"
            ),
            Err(error) => tracing::warn!(
                pod = %key,
                pod_id,
                %error,
                "cannot read the pod's traffic counters"
            ),
        }
    }

    fn unenroll(&mut self, key: &WorkloadKey) {
        let Some(pod) = self.pods.remove(key) else {
            return;
        };
        self.withdraw(key, pod, &[]);
        self.shared.connections.forget_pod(&key.to_string());
        tracing::info!(pod = %key, "pod unenrolled");
    }

    /// Takes `pod`'s network namespace out of the kernel and gives its slot and identity
    /// back; its IPs in `keep` stay steered (they are a new sandbox's now).
    fn withdraw(&mut self, key: &WorkloadKey, pod: EnrolledPod, keep: &[IpAddr]) {
        let record = pod.proxy.record();
        if let Err(error) = self.dataplane.unenroll(pod.proxy.netns.cookie()) {
            tracing::error!(pod = %key, %error, "removing the pod from the kernel map failed");
        }
        let gone: Vec<IpAddr> = record
            .workload
            .ips
            .iter()
            .filter(|ip| !keep.contains(ip))
            .copied()
            .collect();
        self.dataplane
            .detach_inbound(pod.pod_id, pod.proxy.netns.cookie(), &gone);
        self.shared.identity.manager().release(&record.id);
        pod.proxy.delivery.withdraw();
        self.log_pod_counters(key, pod.pod_id);
        self.ids.give_back(pod.pod_id);
        // `pod` drops here: its listeners close; established connections run on.
    }
}

/// Reports the connects of `pod` the kernel could not steer since the last look (one
/// line a pod per look, however many): refusals under `fail-closed`, counted in
/// `outrider_refusals_total`; unmeshed connections under `fail-open`.
fn report_unsteered(metrics: &Metrics, pod: &str, count: u64, fail_open: bool) {
    let why = "their original destination could not be recorded (a kernel map insert failed)";
    if fail_open {
        tracing::warn!(%pod, count, "connects let through unmeshed (fail-open): {why}");
    } else {
        tracing::warn!(%pod, count, "connects refused in the kernel (fail-closed): {why}");
        metrics.refused_many(pod, "outbound", Reason::KernelMapInsert, count);
    }
}

fn deny_key(pod_id: u32, denial: KernelDenial) -> DenyKey {
    let (family, addr) = match denial.ip {
        IpAddr::V4(v4) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&v4.octets());
            (FAMILY_V4, addr)
        }
        IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
    };
    DenyKey {
        pod_id,
        port: denial.port.unwrap_or(0),
        family,
        addr,
    }
}
