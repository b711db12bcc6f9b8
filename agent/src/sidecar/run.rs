//! `outrider sidecar`: one pod's proxy, running inside the pod (its network namespace and
//! cgroup). It asks the node agent who it is (attested by its cgroup), gets the mesh's
//! state and its certificate from it, opens the same listeners as node mode — outbound
//! `:15001`, inbound plaintext `:15006` (both reached through iptables REDIRECT), the
//! tunnel `:15008` — and serves its metrics on `:15020`. Policy, tunnel and telemetry are
//! node mode's own code; only how connections arrive differs (`proxy::steering`). When
//! the mesh state changes the pod's own record (labels, ports, service account), the
//! record is swapped in place, as node mode does: the listeners stay.
use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;

use super::client::{Mesh, NodeAgent, NodeProbes, NodeSigner};
use crate::{
    config::Config,
    identity::{CertManager, Identity, RenewPolicy, SpiffeId, TrustBundle},
    logging,
    netns::Netns,
    proxy::{self, PodProxy, Shared, pod::PodRecord, steering::Steering},
    telemetry::{
        endpoint::{self, Endpoint},
        metrics::Metrics,
    },
    workloads::directory::Directory,
};

/// How long the sidecar waits for the node agent at start.
const NODE_PATIENCE: Duration = Duration::from_secs(60);
/// How long it waits for its first certificate.
const CERT_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, clap::Args)]
pub struct SidecarArgs {
    /// A config file (the agent's type; the sidecar reads `sidecar`, `capture`, `proxy`,
    /// `identity.certTtlSeconds`, `telemetry`, `memory` and `log`). Without it: the defaults.
    #[arg(long, env = "OUTRIDER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The node agent's socket (overrides `sidecar.socket`).
    #[arg(long, env = "OUTRIDER_SIDECAR_SOCKET")]
    pub socket: Option<PathBuf>,
    /// The mark for the sidecar's own sockets (overrides `capture.agentMark`); 0 marks
    /// nothing (a sidecar without CAP_NET_ADMIN/CAP_NET_RAW, told apart by its user:
    /// `sidecar-init --proxy-uid`).
    #[arg(long)]
    pub mark: Option<u32>,
    /// Deliver to the app from the client's IP (`sidecar.keepSourceIp`): needs
    /// CAP_NET_ADMIN and `sidecar-init --keep-source-ip`.
    #[arg(long)]
    pub keep_source_ip: bool,
}

pub fn run(args: &SidecarArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => Config::load_sidecar(path)?,
        None => Config::default(),
    };
    if let Some(socket) = &args.socket {
        config.sidecar.socket = Some(socket.clone());
    }
    if let Some(mark) = args.mark {
        config.capture.agent_mark = mark;
    }
    if args.keep_source_ip {
        config.sidecar.keep_source_ip = true;
    }
    let (_log, _flush) = logging::init(&config.log)?;
    crate::netns::init().context("recording the sidecar's network namespace")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.sidecar.threads)
        .enable_all()
        .thread_name("outrider-sidecar")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(Arc::new(config)))
}

async fn serve(config: Arc<Config>) -> anyhow::Result<ExitCode> {
    let socket = config.sidecar.socket_path(&config.instance);
    let agent = NodeAgent::connect(&socket, NODE_PATIENCE).await?;
    let me = agent.attest().await?;
    if me.agent_version != crate::VERSION {
        tracing::warn!(agent = %me.agent_version, sidecar = crate::VERSION, "the node agent's version differs from the sidecar's");
    }
    let id = SpiffeId::parse(&me.spiffe_id)
        .with_context(|| format!("the node agent's identity for us, {:?}", me.spiffe_id))?;
    tracing::info!(pod = %format!("{}/{}", me.namespace, me.name), identity = %id, "sidecar starting");
    let (mesh, mut updates) = agent.watch_mesh().await?;
    let workload = mesh
        .workloads
        .workloads
        .iter()
        .find(|w| w.uid == me.uid)
        .cloned()
        .with_context(|| {
            format!(
                "the node agent's mesh state lacks our pod {}/{}",
                me.namespace, me.name
            )
        })?;

    let trust = TrustBundle::new(&mesh.trust_domain, &mesh.roots)
        .context("the mesh's trust roots from the node agent")?;
    let policy = RenewPolicy::with_ttl(Duration::from_secs(config.identity.cert_ttl_seconds));
    let probes = NodeProbes {
        agent: agent.clone(),
    };
    let manager = CertManager::new(Arc::new(NodeSigner { agent }), trust, policy);
    let identity = Identity::new(manager.clone());
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared::new(
        &config,
        Steering::Redirect,
        Directory::new(&config.workloads.cluster_domain),
        identity,
        Some(Arc::new(probes)),
        metrics.clone(),
    ));
    apply(&shared, &mesh);
    manager.ensure(&id);
    tokio::time::timeout(CERT_PATIENCE, manager.ready(&id))
        .await
        .map_err(|_| {
            anyhow::anyhow!("no certificate for {id} from the node agent after {CERT_PATIENCE:?}")
        })?
        .with_context(|| format!("the certificate for {id}"))?;

    let netns = Arc::new(Netns::current()?);
    let pod = Arc::new(PodProxy::new(workload, id, netns, shared.clone()));
    let _listeners =
        proxy::listeners::start(pod.clone(), None).context("opening the sidecar's listeners")?;
    let ready = Arc::new(AtomicBool::new(false));
    let flush = shared.clone();
    let _endpoint = endpoint::start(
        &config.telemetry,
        None,
        Endpoint {
            metrics,
            before_scrape: Box::new(move || flush.connections.flush_metrics()),
            ready: ready.clone(),
        },
    )
    .await?;
    ready.store(true, Ordering::Relaxed);
    tracing::info!(pod = %pod.key, "sidecar ready");
    crate::memory::after_start(&config.memory);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: sidecar stopping");
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT: sidecar stopping");
                break;
            }
            changed = updates.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the mesh state stopped");
                }
                let mesh = updates.borrow_and_update().clone();
                apply(&shared, &mesh);
                follow_record(&pod, &mesh);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Swaps in the pod's own record from a new mesh state, if it changed: the labels that
/// policies select on, ports, IPs; a new service account's certificate is asked for
/// first. (Not found — the pod is being deleted — leaves the record as it is.)
fn follow_record(pod: &PodProxy, mesh: &Mesh) {
    let Some(workload) = mesh
        .workloads
        .workloads
        .iter()
        .find(|w| w.key().to_string() == pod.key)
    else {
        return;
    };
    let old = pod.record();
    if *workload == old.workload {
        return;
    }
    let id = if workload.service_account == old.workload.service_account {
        old.id.clone()
    } else {
        match pod
            .shared
            .identity
            .workload_id(&workload.namespace, &workload.service_account)
        {
            Ok(id) => {
                pod.shared.identity.manager().ensure(&id);
                id
            }
            Err(error) => {
                tracing::warn!(pod = %pod.key, %error, "the pod's new service account makes no identity; its record stays as it was");
                return;
            }
        }
    };
    tracing::info!(pod = %pod.key, identity = %id, "pod record updated in place");
    pod.set_record(PodRecord {
        workload: workload.clone(),
        id: id.clone(),
    });
    if id != old.id {
        pod.shared.identity.manager().release(&old.id);
    }
}

/// Puts a mesh state in force: destinations, policies.
fn apply(shared: &Shared, mesh: &Mesh) {
    shared.set_workloads(&mesh.workloads);
    if shared.policies().policies() != mesh.policies.policies() {
        tracing::info!(policies = mesh.policies.len(), "policies in force");
        shared.set_policies(mesh.policies.clone());
    }
}
