//! The node agent's side of sidecar mode: the `outrider.sidecar.v1` service on a unix
//! socket of the node (mode 0666: any pod may connect; who it is decides what it gets).
//! Every call is attested as SPIRE's agent does: the socket's peer credentials give the
//! caller's process, its cgroup gives the pod's UID, and only a pod of this node in
//! `sidecar` mode is served — a certificate for its own identity only, signed by the
//! node's CA (whose key never leaves the agent), and the mesh's state.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use outrider_proto::sidecar::v1::{self as pb, sidecar_server::SidecarServer};
use rustls::pki_types::SubjectPublicKeyInfoDer;
use tokio::sync::watch;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, transport::Server};

use crate::{
    config::SidecarConfig,
    dataplane::ProbeTable,
    identity::{Identity, SignError, SignRequest, SpiffeId},
    policy::PolicySet,
    unix_socket::{
        admission::{Admission, accept_loop},
        peer::{self, PeerInfo},
    },
    workloads::{Mode, Workload, WorkloadSet, sandbox::pod_uid_from_cgroup_path},
};

/// HTTP/2 keepalive on the socket, as the admin socket's: a sidecar that stops
/// answering PINGs gives its slot back.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest certificate lifetime a sidecar gets (the agent's own `certTtlSeconds` caps it
/// too, through the CA).
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct SidecarService {
    pub node: String,
    pub identity: Identity,
    pub workloads: watch::Receiver<Arc<WorkloadSet>>,
    pub policies: watch::Receiver<Arc<PolicySet>>,
    /// The kubelet's live connections (None without `capture.kubeletCgroup`).
    pub kubelet: Option<ProbeTable>,
    /// Where the node's processes are seen (`/proc`; the DaemonSet runs with `hostPID`).
    pub proc_root: PathBuf,
    /// Longest lifetime signed (the agent's `identity.certTtlSeconds`).
    pub cert_ttl: Duration,
}

/// The running service; dropping it stops the server and removes the socket.
pub struct SidecarHandle {
    socket: PathBuf,
    stop: CancellationToken,
}

impl Drop for SidecarHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Serves the sidecars of this node on the socket `config` names, with its bounds
/// (`unix_socket::admission`); each caller is pinned by a pidfd at accept.
pub fn start(
    service: SidecarService,
    config: &SidecarConfig,
    instance: &str,
) -> anyhow::Result<SidecarHandle> {
    let socket = config.socket_path(instance);
    let listener = crate::unix_socket::bind(&socket, 0o666, "sidecar.socket")?;
    let stop = CancellationToken::new();
    let done = stop.clone();
    let server = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(SidecarServer::new(service));
    let admission = Admission::new(
        "sidecar socket",
        config.max_connections,
        Duration::from_millis(config.preface_timeout_ms),
    )
    .pinning_peers();
    let incoming = ReceiverStream::new(accept_loop(listener, admission, stop.clone()));
    tokio::spawn(async move {
        if let Err(error) = server
            .serve_with_incoming_shutdown(incoming, done.cancelled_owned())
            .await
        {
            tracing::error!(%error, "the sidecars' service stopped");
        }
    });
    tracing::info!(socket = %socket.display(), "serving sidecars (certificates, mesh state)");
    Ok(SidecarHandle { socket, stop })
}

impl SidecarService {
    /// The sidecar pod of this node the caller runs in: the cgroup of the process that
    /// opened the connection, read while that process (pinned by its pidfd at accept)
    /// is still alive, so that a PID reused since cannot lend another pod's identity.
    fn attest<T>(&self, request: &Request<T>) -> Result<(Workload, SpiffeId), Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .ok_or_else(|| Status::permission_denied("the caller's process cannot be read"))?;
        let pid = peer
            .pid()
            .ok_or_else(|| Status::permission_denied("the caller's process cannot be read"))?;
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let cgroups = std::fs::read_to_string(&path).map_err(|e| {
            Status::permission_denied(format!("cannot read {}: {e}", path.display()))
        })?;
        match &peer.pidfd {
            Some(pidfd) if !peer::alive(pidfd) => {
                tracing::warn!(
                    pid,
                    "sidecar service: the caller's process is gone; refused"
                );
                return Err(Status::permission_denied(format!(
                    "process {pid}, which opened this connection, has exited: its PID may \
                     belong to another process now"
                )));
            }
            Some(_) => {}
            None => warn_no_pidfd(),
        }
        let uid = cgroups
            .lines()
            .find_map(pod_uid_from_cgroup_path)
            .ok_or_else(|| {
                tracing::warn!(pid, "sidecar service: a caller outside any pod refused");
                Status::permission_denied(format!(
                    "process {pid} is not in a pod's cgroup ({})",
                    cgroups.lines().next().unwrap_or("").trim()
                ))
            })?;
        let set = self.workloads.borrow().clone();
        let workload = set
            .workloads
            .iter()
            .find(|w| w.uid == uid && w.runs_on(&self.node))
            .cloned()
            .ok_or_else(|| {
                Status::permission_denied(format!("pod {uid} is not a pod of node {}", self.node))
            })?;
        if workload.mode != Mode::Sidecar {
            tracing::warn!(pod = %workload.key(), pid, "sidecar service: a pod not in sidecar mode refused");
            return Err(Status::permission_denied(format!(
                "pod {} is not in sidecar mode (annotate it outrider.io/mode: sidecar)",
                workload.key()
            )));
        }
        let id = self
            .identity
            .workload_id(&workload.namespace, &workload.service_account)
            .map_err(|e| Status::failed_precondition(format!("pod {}: {e}", workload.key())))?;
        Ok((workload, id))
    }
}

/// Without `SO_PEERPIDFD` (kernel < 6.5) callers are attested by PID alone: said once.
fn warn_no_pidfd() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        tracing::warn!(
            "sidecar service: the kernel gives no pidfd of a caller (SO_PEERPIDFD needs \
             Linux 6.5); callers are attested by PID, which a reused PID could fool"
        );
    });
}

/// The mesh's state as sent to sidecars.
fn encode(
    identity: &Identity,
    workloads: &WorkloadSet,
    policies: &PolicySet,
) -> Result<pb::MeshState, Status> {
    let mut public = workloads.clone();
    for w in &mut public.workloads {
        // The node's own details are nobody else's business.
        w.netns = PathBuf::new();
        w.cgroup = None;
    }
    let internal = |e: serde_json::Error| Status::internal(format!("encoding the mesh state: {e}"));
    Ok(pb::MeshState {
        workloads_json: serde_json::to_vec(&public).map_err(internal)?,
        policies_json: serde_json::to_vec(policies.policies()).map_err(internal)?,
        trust_domain: identity.trust_domain().to_string(),
        root_namespace: policies.root_namespace().to_string(),
        roots_der: identity
            .manager()
            .trust()
            .root_certificates()
            .iter()
            .map(|c| c.to_vec())
            .collect(),
    })
}

type MeshStream = Pin<Box<dyn Stream<Item = Result<pb::MeshState, Status>> + Send>>;

#[tonic::async_trait]
impl pb::sidecar_server::Sidecar for SidecarService {
    async fn attest(
        &self,
        request: Request<pb::AttestRequest>,
    ) -> Result<Response<pb::AttestResponse>, Status> {
        let (workload, id) = self.attest(&request)?;
        tracing::info!(pod = %workload.key(), identity = %id, "sidecar attested");
        Ok(Response::new(pb::AttestResponse {
            namespace: workload.namespace,
            name: workload.name,
            uid: workload.uid,
            spiffe_id: id.to_string(),
            agent_version: crate::VERSION.to_string(),
        }))
    }

    async fn sign_certificate(
        &self,
        request: Request<pb::SignCertificateRequest>,
    ) -> Result<Response<pb::SignCertificateResponse>, Status> {
        let (workload, id) = self.attest(&request)?;
        let request = request.into_inner();
        if request.spiffe_id != id.as_str() {
            tracing::warn!(pod = %workload.key(), asked = %request.spiffe_id, "sidecar asked for another identity; refused");
            return Err(Status::permission_denied(format!(
                "pod {} may have {id}, not {:?}",
                workload.key(),
                request.spiffe_id
            )));
        }
        if request.public_key_der.is_empty() {
            return Err(Status::invalid_argument("public_key_der: empty"));
        }
        let ttl = Duration::from_secs(request.ttl_seconds)
            .min(self.cert_ttl)
            .min(MAX_TTL);
        let chain = self
            .identity
            .manager()
            .signer()
            .sign(SignRequest {
                id: id.clone(),
                public_key: SubjectPublicKeyInfoDer::from(request.public_key_der),
                ttl,
            })
            .await
            .map_err(|e| match e {
                SignError::Refused(reason) => Status::invalid_argument(reason),
                SignError::Unavailable(reason) => Status::unavailable(reason),
            })?;
        tracing::info!(pod = %workload.key(), identity = %id, "sidecar certificate signed");
        Ok(Response::new(pb::SignCertificateResponse {
            chain_der: chain.iter().map(|c| c.to_vec()).collect(),
        }))
    }

    type WatchMeshStream = MeshStream;

    async fn watch_mesh(
        &self,
        request: Request<pb::WatchMeshRequest>,
    ) -> Result<Response<MeshStream>, Status> {
        let (workload, _) = self.attest(&request)?;
        let mut workloads = self.workloads.clone();
        let mut policies = self.policies.clone();
        let first = encode(
            &self.identity,
            &workloads.borrow_and_update().clone(),
            &policies.borrow_and_update().clone(),
        )?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let identity = self.identity.clone();
        let pod = workload.key();
        tokio::spawn(async move {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    r = workloads.changed() => if r.is_err() { return },
                    r = policies.changed() => if r.is_err() { return },
                    _ = tx.closed() => {
                        tracing::info!(%pod, "sidecar stopped watching the mesh");
                        return;
                    }
                }
                let w = workloads.borrow_and_update().clone();
                let p = policies.borrow_and_update().clone();
                let state = encode(&identity, &w, &p);
                if tx.send(state).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn check_kubelet_probe(
        &self,
        request: Request<pb::CheckKubeletProbeRequest>,
    ) -> Result<Response<pb::CheckKubeletProbeResponse>, Status> {
        let (workload, _) = self.attest(&request)?;
        let request = request.into_inner();
        let parse = |what: &str, text: &str| {
            text.parse::<SocketAddr>()
                .map_err(|e| Status::invalid_argument(format!("{what} {text:?}: {e}")))
        };
        let peer = parse("peer", &request.peer)?;
        let local = parse("local", &request.local)?;
        if !owns(&workload.ips, local.ip()) {
            tracing::warn!(pod = %workload.key(), %local, "sidecar asked about another pod's connection; refused");
            return Err(Status::permission_denied(format!(
                "{local} is not an address of pod {}",
                workload.key()
            )));
        }
        let kubelet = self
            .kubelet
            .as_ref()
            .is_some_and(|table| table.take(peer, local));
        Ok(Response::new(pb::CheckKubeletProbeResponse { kubelet }))
    }
}

/// True when `ip` is one of the pod's addresses `ips` (IPv4-mapped IPv6 as IPv4).
fn owns(ips: &[IpAddr], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ips.iter().any(|own| own.to_canonical() == ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sidecar_may_ask_only_about_its_own_pods_addresses() {
        let ips: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap(), "fd00:1::5".parse().unwrap()];
        assert!(owns(&ips, "10.1.0.5".parse().unwrap()));
        assert!(owns(&ips, "::ffff:10.1.0.5".parse().unwrap()));
        assert!(owns(&ips, "fd00:1::5".parse().unwrap()));
        assert!(!owns(&ips, "10.1.0.6".parse().unwrap()));
        assert!(!owns(&[], "10.1.0.5".parse().unwrap()));
    }
}
