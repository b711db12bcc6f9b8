//! The Kubernetes workload source: watches namespaces, pods, Services and
//! `discovery.k8s.io/v1` EndpointSlices through the API server (kube-rs watchers: they
//! resume from the last resourceVersion after a disconnect and list again after
//! `410 Gone`; `cache` keeps each kind's records in step, a relist swapped in whole),
//! keeps a small record per object (`records` for namespaces and pods, `services` for
//! Services and their slices), and publishes the cluster as a [`WorkloadSet`], changes
//! arriving together as one set. A namespace labelled `outrider.io/mode=node` enrolls
//! its pods; a pod's `outrider.io/mode` annotation (`none|node|sidecar`) overrides it.
//! Every pod is a destination, named with its UID; where this node's pods run (their
//! sandboxes) is found by `workloads::sandboxes`, as for every source. Every Service is
//! published with the endpoints of its EndpointSlices (conditions and ports per
//! endpoint).
pub mod cache;
pub mod records;
pub mod services;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use futures_util::StreamExt;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;

use self::{
    cache::Cache,
    records::{NamespaceRecord, PodRecord},
    services::SliceRecord,
};
use super::WorkloadSet;
use crate::config::KubernetesSourceConfig;

/// Changes arriving together are published as one set.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// A client for the API server the config names.
pub async fn client(config: &KubernetesSourceConfig) -> anyhow::Result<Client> {
    let kube_config = if let Some(path) = &config.kubeconfig {
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("workloads.kubernetes.kubeconfig {}", path.display()))?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .with_context(|| format!("workloads.kubernetes.kubeconfig {}", path.display()))?
    } else if let Some(url) = &config.api_server {
        let uri = url
            .parse()
            .with_context(|| format!("workloads.kubernetes.apiServer {url:?}"))?;
        kube::Config::new(uri)
    } else {
        kube::Config::infer()
            .await
            .context("finding the Kubernetes API (in-cluster or KUBECONFIG)")?
    };
    Client::try_from(kube_config).context("making the Kubernetes client")
}

/// What the source follows.
struct State {
    namespaces: Cache<String, NamespaceRecord>,
    pods: Cache<(String, String), PodRecord>,
    services: Cache<(String, String), super::Service>,
    slices: Cache<(String, String), SliceRecord>,
}

impl State {
    /// Every kind listed once.
    fn synced(&self) -> bool {
        self.namespaces.synced()
            && self.pods.synced()
            && self.services.synced()
            && self.slices.synced()
    }

    fn on_namespace(&mut self, event: watcher::Event<Namespace>) -> bool {
        self.namespaces.apply(
            event,
            |ns| ns.metadata.name.clone().unwrap_or_default(),
            |ns| Some(NamespaceRecord::from_object(ns).1),
        )
    }

    fn on_pod(&mut self, event: watcher::Event<Pod>) -> bool {
        self.pods.apply(
            event,
            |p| cache::key_of(&p.metadata),
            PodRecord::from_object,
        )
    }

    fn on_service(&mut self, event: watcher::Event<Service>) -> bool {
        self.services.apply(
            event,
            |s| cache::key_of(&s.metadata),
            services::service_record,
        )
    }

    fn on_slice(&mut self, event: watcher::Event<EndpointSlice>) -> bool {
        self.slices.apply(
            event,
            |s| cache::key_of(&s.metadata),
            services::slice_record,
        )
    }

    fn set(&self) -> WorkloadSet {
        WorkloadSet {
            services: services::services(self.services.items(), self.slices.items()),
            ..records::workload_set(self.namespaces.items(), self.pods.items())
        }
    }
}

/// Follows the cluster through `client`. The first set is published once namespaces,
/// pods, Services and EndpointSlices are all listed (until then the receiver holds an empty set and
/// `synced` is false); await [`wait_synced`] before enrolling.
pub fn watch(client: Client) -> (watch::Receiver<Arc<WorkloadSet>>, watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(Arc::new(WorkloadSet::default()));
    let (synced_tx, synced_rx) = watch::channel(false);
    let mut state = State {
        namespaces: Cache::default(),
        pods: Cache::default(),
        services: Cache::default(),
        slices: Cache::default(),
    };
    let namespaces = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let pods =
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff();
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let slices = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff();
    tokio::spawn(async move {
        let mut namespaces = std::pin::pin!(namespaces);
        let mut pods = std::pin::pin!(pods);
        let mut services = std::pin::pin!(services);
        let mut slices = std::pin::pin!(slices);
        let mut dirty = false;
        let mut errors = 0u64;
        loop {
            let synced = state.synced();
            tokio::select! {
                event = namespaces.next() => match event {
                    Some(Ok(event)) => dirty |= state.on_namespace(event),
                    Some(Err(error)) => report(&mut errors, "namespaces", &error),
                    None => return,
                },
                event = pods.next() => match event {
                    Some(Ok(event)) => dirty |= state.on_pod(event),
                    Some(Err(error)) => report(&mut errors, "pods", &error),
                    None => return,
                },
                event = services.next() => match event {
                    Some(Ok(event)) => dirty |= state.on_service(event),
                    Some(Err(error)) => report(&mut errors, "services", &error),
                    None => return,
                },
                event = slices.next() => match event {
                    Some(Ok(event)) => dirty |= state.on_slice(event),
                    Some(Err(error)) => report(&mut errors, "endpointslices", &error),
                    None => return,
                },
                _ = tokio::time::sleep(DEBOUNCE), if dirty && synced => {
                    dirty = false;
                    let set = state.set();
                    if **tx.borrow() != set {
                        tracing::debug!(workloads = set.workloads.len(), "workloads from Kubernetes");
                        services::log_changes(&tx.borrow().services, &set.services);
                        tx.send_replace(Arc::new(set));
                    }
                    if !*synced_tx.borrow() {
                        tracing::info!(
                            namespaces = state.namespaces.len(),
                            pods = state.pods.len(),
                            services = state.services.len(),
                            endpointslices = state.slices.len(),
                            "Kubernetes workloads synced"
                        );
                        synced_tx.send_replace(true);
                    }
                    if tx.is_closed() {
                        return;
                    }
                }
            }
        }
    });
    (rx, synced_rx)
}

/// Waits until the source has listed the cluster once.
pub(crate) async fn wait_synced(synced: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
    synced
        .wait_for(|s| *s)
        .await
        .map(|_| ())
        .map_err(|_| anyhow::anyhow!("the Kubernetes source stopped before it synced"))
}

/// Logs a watch error (the watcher retries with backoff by itself); every one at debug,
/// the first and then every 10th at warn.
fn report(errors: &mut u64, what: &str, error: &watcher::Error) {
    *errors += 1;
    if *errors == 1 || (*errors).is_multiple_of(10) {
        tracing::warn!(%error, errors = *errors, "watching {what} failed; retrying");
    } else {
        tracing::debug!(%error, "watching {what} failed; retrying");
    }
}
