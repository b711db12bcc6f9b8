//! `outrider run`: wires the agent together — config, logging, kernel programs, the
//! workload source, enrollment, the admin API, the service for the node's sidecars — and
//! runs until SIGTERM or SIGINT. It first takes over from a running agent, if there is
//! one (`restart`), and serves the same to the next; having handed over, it drains.
use std::{
    path::{Path, PathBuf},
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
    enrollment::{Enrollment, Stopped},
    identity::Identity,
    logging,
    logging::LogControl,
    netns, policy,
    proxy::{Shared, steering::Steering},
    restart,
    sidecar::{self, service::SidecarService},
    telemetry::{
        endpoint::{self, Endpoint},
        facts::{Failure, ResponseFlags},
        metrics::Metrics,
    },
    workloads::{self, WorkloadSet, directory::Directory, kubernetes},
};

pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = Arc::new(Config::load(config_path)?);
    // Declared before the runtime, so dropped after it: the runtime's last lines go out.
    let (log, _flush) = logging::init(&config.log)?;
    crate::capabilities::require("the node agent", crate::capabilities::AGENT)?;
    netns::init().context("recording the agent's own network namespace")?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.proxy.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = builder
        .enable_all()
        .thread_name("outrider")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, log))
}

/// `outrider cleanup`: removes the agent instance's pinned programs, maps and links.
pub fn cleanup(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let socket = config.restart.socket_path(&config.instance);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        anyhow::bail!(
            "an agent is running (it answers on {}); stop it first",
            socket.display()
        );
    }
    let dir = crate::dataplane::remove(&config)
        .with_context(|| format!("capture.pinRoot: removing the pins of {}", config.instance))?;
    println!(
        "removed {}: the agent's programs are detached; enrolled pods' traffic flows unmeshed",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Arc<Config>, log: LogControl) -> anyhow::Result<ExitCode> {
    let started = std::time::SystemTime::now();
    // Raised to the hard limit at process start (`main`).
    let open_files = crate::limits::open_files().ok();
    tracing::info!(
        version = crate::VERSION,
        node = %config.node_name,
        instance = %config.instance,
        open_files,
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
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
    // Take the running agent's sockets before touching the kernel: from its `Ack` on it
    // leaves the kernel alone.
    let restart_socket = config.restart.socket_path(&config.instance);
    let inherited = restart::take_over(&restart_socket)
        .await?
        .unwrap_or_default();
    let dataplane = Dataplane::load(&config)?;
    let metrics = Arc::new(Metrics::default());
    let kubelet = dataplane.kubelet_probes();
    let shared = Arc::new(Shared::new(
        &config,
        Steering::Kernel(dataplane.orig_dst()),
        Directory::new(&config.workloads.cluster_domain),
        identity.clone(),
        kubelet
            .clone()
            .map(|t| Arc::new(t) as Arc<dyn crate::proxy::probes::KubeletProbes>),
        metrics.clone(),
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let flush = shared.clone();
    let endpoint = endpoint::start(
        &config.telemetry,
        inherited.metrics,
        Endpoint {
            metrics,
            before_scrape: Box::new(move || flush.connections.flush_metrics()),
            ready: ready.clone(),
        },
    )
    .await?;
    let workloads = workload_source(&config, kube).await?;
    let sidecars = sidecar::service::start(
        SidecarService {
            node: config.node_name.clone(),
            identity,
            workloads: workloads.clone(),
            policies: policies.clone(),
            kubelet,
            proc_root: config
                .workloads
                .kubernetes
                .as_ref()
                .map(|k| k.proc_root.clone())
                .unwrap_or_else(|| "/proc".into()),
            cert_ttl: Duration::from_secs(config.identity.cert_ttl_seconds),
        },
        &config.sidecar,
        &config.instance,
    )?;
    let enrollment = Enrollment::new(
        config.node_name.clone(),
        dataplane,
        shared.clone(),
        inherited.pods,
    );
    let admin = admin::start(
        AdminService {
            config: config.clone(),
            shared: shared.clone(),
            status: enrollment.status(),
            log: Some(log),
            started,
            policy_lock: tokio::sync::Mutex::new(()),
        },
        &config.admin,
        &config.instance,
    )
    .await?;
    let (handover_requests, handovers) = tokio::sync::mpsc::channel(1);
    let handed_over = restart::serve(
        &restart_socket,
        endpoint.listener.try_clone().ok(),
        handover_requests,
    )?;
    let memory = config.memory.clone();
    let mut enrollment = tokio::spawn(enrollment.run(workloads, policies, handovers, move || {
        ready.store(true, Ordering::Relaxed);
        tracing::info!("agent ready");
        crate::memory::after_start(&memory);
    }));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut handed_over = handed_over;
    let handed = tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM: agent stopping");
            take_down_return_paths(&shared);
            return Ok(ExitCode::SUCCESS);
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT: agent stopping");
            take_down_return_paths(&shared);
            return Ok(ExitCode::SUCCESS);
        }
        result = &mut enrollment => match result.context("enrollment stopped")? {
            Stopped::SourceEnded => anyhow::bail!("the workload source ended"),
            // The hand-over server reports it next.
            Stopped::HandedOver => handed_over.await,
        },
        handed = &mut handed_over => handed,
    }
    .context("the hand-over server stopped")?;
    // The new agent has the listeners; free the unix sockets and the metrics port for it.
    drop((admin, sidecars, endpoint));
    handed.released();
    shared.draining.cancel();
    drain(&shared, &config, &mut term).await;
    Ok(ExitCode::SUCCESS)
}

/// Having handed over: lets the established connections finish, closes what is left
/// after `restart.drainSeconds`, and exits once SIGTERM has come too (under a supervisor
/// such as Kubernetes an agent exiting by itself would be started again).
async fn drain(shared: &Shared, config: &Config, term: &mut tokio::signal::unix::Signal) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(config.restart.drain_seconds);
    let mut told = false;
    let mut drained = false;
    let mut every = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = term.recv() => {
                told = true;
                tracing::info!(connections = shared.connections.len(), "SIGTERM: exiting once drained");
            }
            _ = tokio::signal::ctrl_c() => return,
            _ = every.tick() => {}
        }
        if !drained && shared.connections.is_empty() {
            drained = true;
            tracing::info!("handed over and drained");
        }
        if !drained && tokio::time::Instant::now() >= deadline {
            let left = shared.connections.snapshot();
            tracing::warn!(
                connections = left.len(),
                "drain deadline: closing what is left"
            );
            for conn in left {
                conn.close(Failure {
                    flags: ResponseFlags::None,
                    reason: "the agent handed over and its drain time ran out".into(),
                });
            }
            drained = true;
        }
        if drained && told {
            tracing::info!("agent stopping after the hand-over");
            return;
        }
    }
}

/// The workload source the config names: the file, Kubernetes (once it has listed the
/// cluster), or both merged (the file's entries win); then, whatever the source, this
/// node's pods named by UID get their sandboxes found on the node.
async fn workload_source(
    config: &Config,
    kube: Option<kube::Client>,
) -> anyhow::Result<watch::Receiver<Arc<WorkloadSet>>> {
    let cgroup_root = crate::dataplane::cgroup::resolve_attach(&config.cgroup)?;
    let proc_root = config
        .workloads
        .kubernetes
        .as_ref()
        .map_or_else(|| PathBuf::from("/proc"), |k8s| k8s.proc_root.clone());
    let finder = workloads::sandbox::Finder::new(cgroup_root, proc_root);
    let sandboxes = workloads::sandboxes::Sandboxes::new(config.node_name.clone(), finder);
    Ok(workloads::sandboxes::follow(
        source(config, kube).await?,
        sandboxes,
    ))
}

/// Who runs in the cluster, as the configured sources say.
async fn source(
    config: &Config,
    kube: Option<kube::Client>,
) -> anyhow::Result<watch::Receiver<Arc<WorkloadSet>>> {
    let interval = Duration::from_millis(config.workloads.poll_interval_ms);
    let file = config
        .workloads
        .file
        .clone()
        .map(|f| workloads::file::watch(f, interval));
    let (Some(_), Some(client)) = (&config.workloads.kubernetes, kube) else {
        return file.context("no workload source");
    };
    let (from_k8s, mut synced) = kubernetes::watch(client);
    tracing::info!(
        "waiting for the Kubernetes API's namespaces, pods, Services and EndpointSlices"
    );
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

/// Stopping with no agent taking over: the pods' ways back for deliveries from clients'
/// IPs go with this agent's deliveries (the next agent sets them up again).
fn take_down_return_paths(shared: &Shared) {
    if let Some(paths) = &shared.return_paths {
        let removed = paths.take_down_all();
        if removed > 0 {
            tracing::info!(
                pods = removed,
                "ways back for deliveries from clients' IPs removed"
            );
        }
    }
}
