//! `outrider run`: wires the agent together — config, logging, kernel programs, the
//! workload source, enrollment, the admin API, the service for the node's sidecars — and
//! runs until SIGTERM or SIGINT.
use std::{
    path::Path,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;

use tokio::sync::watch;

use crate::{
    admin::{self, AdminService},
    config::Config,
    dataplane::Dataplane,
    enrollment::Enrollment,
    identity::Identity,
    logging,
    logging::LogControl,
    netns, policy,
    proxy::{Shared, steering::Steering},
    sidecar::{self, service::SidecarService},
    telemetry::{
        endpoint::{self, Endpoint},
        metrics::Metrics,
    },
    workloads::{self, WorkloadSet, directory::Directory, kubernetes},
};

pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = Arc::new(Config::load(config_path)?);
    let log = logging::init(&config.log)?;
    netns::init().context("recording the agent's own network namespace")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("outrider")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, log))
}

async fn serve(config: Arc<Config>, log: LogControl) -> anyhow::Result<ExitCode> {
    let started = std::time::SystemTime::now();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node = %config.node_name,
        instance = %config.instance,
        "agent starting"
    );
    // Without its CA the agent must not start: it would have no identity to offer, and
    // serving plaintext instead is not an option.
    let identity = Identity::from_config(&config.identity)?;
    if config.workloads.file.is_none() && config.workloads.kubernetes.is_none() {
        anyhow::bail!(
            "neither workloads.file nor workloads.kubernetes is set: the agent has no workload source"
        );
    }
    let kube = match &config.workloads.kubernetes {
        Some(k8s) => Some(kubernetes::client(k8s).await?),
        None => None,
    };
    let policies = policy::source::from_dir(&config)?;
    let policies = match &kube {
        Some(client) => policy::source::with_kubernetes(&config, client.clone(), policies).await?,
        None => policies,
    };
    let dataplane = Dataplane::load(&config)?;
    let metrics = Arc::new(Metrics::default());
    let node_addrs = node_addresses();
    let shared = Arc::new(Shared::new(
        &config,
        Steering::Kernel(dataplane.orig_dst()),
        Directory::default(),
        identity.clone(),
        node_addrs.clone(),
        metrics.clone(),
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let flush = shared.clone();
    endpoint::start(
        config.telemetry.metrics_addr,
        Endpoint {
            metrics,
            before_scrape: Box::new(move || flush.connections.flush_metrics()),
            ready: ready.clone(),
        },
    )
    .await?;
    let workloads = workload_source(&config, kube).await?;
    let _sidecars = sidecar::service::start(
        SidecarService {
            node: config.node_name.clone(),
            identity,
            workloads: workloads.clone(),
            policies: policies.clone(),
            node_addrs,
            proc_root: config
                .workloads
                .kubernetes
                .as_ref()
                .map(|k| k.proc_root.clone())
                .unwrap_or_else(|| "/proc".into()),
            cert_ttl: Duration::from_secs(config.identity.cert_ttl_seconds),
        },
        config.sidecar.socket_path(&config.instance),
    )?;
    let enrollment = Enrollment::new(config.node_name.clone(), dataplane, shared.clone());
    let _admin = admin::start(
        AdminService {
            config: config.clone(),
            shared,
            status: enrollment.status(),
            log: Some(log),
            started,
            policy_lock: tokio::sync::Mutex::new(()),
        },
        &config.admin,
        &config.instance,
    )
    .await?;
    let enrollment = tokio::spawn(enrollment.run(workloads, policies, move || {
        ready.store(true, Ordering::Relaxed);
        tracing::info!("agent ready")
    }));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: agent stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: agent stopping"),
        result = enrollment => {
            result.context("enrollment stopped")?;
            anyhow::bail!("the workload source ended");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The workload source the config names: the file, Kubernetes (once it has listed the
/// cluster), or both merged (the file's entries win).
async fn workload_source(
    config: &Config,
    kube: Option<kube::Client>,
) -> anyhow::Result<watch::Receiver<Arc<WorkloadSet>>> {
    let interval = Duration::from_millis(config.workloads.poll_interval_ms);
    let file = config
        .workloads
        .file
        .clone()
        .map(|f| workloads::file::watch(f, interval));
    let (Some(k8s), Some(client)) = (&config.workloads.kubernetes, kube) else {
        return file.context("no workload source");
    };
    let cgroup_root = crate::dataplane::cgroup::resolve_attach(&config.cgroup)?;
    let (from_k8s, mut synced) = kubernetes::watch(
        client,
        config.node_name.clone(),
        &cgroup_root,
        &k8s.proc_root,
    );
    tracing::info!("waiting for the Kubernetes API's namespaces and pods");
    kubernetes::wait_synced(&mut synced).await?;
    let Some(file) = file else {
        return Ok(from_k8s);
    };
    Ok(merge(file, from_k8s))
}

/// One receiver following both: `a`'s entries win.
fn merge(
    mut a: watch::Receiver<Arc<WorkloadSet>>,
    mut b: watch::Receiver<Arc<WorkloadSet>>,
) -> watch::Receiver<Arc<WorkloadSet>> {
    let first = a.borrow_and_update().merged(&b.borrow_and_update());
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = a.changed() => if r.is_err() { return },
                r = b.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
            let set = a.borrow_and_update().merged(&b.borrow_and_update());
            tx.send_replace(Arc::new(set));
        }
    });
    rx
}

/// The node's own addresses (the agent runs in the node's network namespace).
fn node_addresses() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        tracing::warn!("cannot list the node's addresses; strict mode will refuse probes");
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|s| std::net::IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| std::net::IpAddr::V6(s.ip())))
        })
        .filter(|ip| !ip.is_loopback())
        .collect()
}
