//! The sidecar's side of the node agent's service: dialling its socket, signing our
//! certificate through it (a [`Signer`], so the certificate manager renews as in node
//! mode), following the mesh's state, reconnecting while the node agent restarts, and
//! asking it whether a plaintext connection is the kubelet's probe ([`NodeProbes`]).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use outrider_proto::sidecar::v1::{self as pb, sidecar_client::SidecarClient};
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tonic::{Code, transport::Channel};

use crate::{
    ctl::connect::{Target, dial},
    identity::{SignError, SignRequest, Signer, signer::SignFuture},
    policy::{AuthorizationPolicy, PolicySet},
    proxy::probes::{Answer, KubeletProbes},
    workloads::WorkloadSet,
};

/// How long one dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Between attempts while the node agent is away.
const RETRY: Duration = Duration::from_millis(500);

/// The mesh as the node agent last described it.
#[derive(Clone)]
pub struct Mesh {
    pub workloads: WorkloadSet,
    pub policies: Arc<PolicySet>,
    pub trust_domain: String,
    pub roots: Vec<CertificateDer<'static>>,
}

impl Mesh {
    fn decode(state: pb::MeshState) -> anyhow::Result<Mesh> {
        let workloads: WorkloadSet = serde_json::from_slice(&state.workloads_json)
            .context("the node agent's workload set")?;
        let policies: Vec<AuthorizationPolicy> =
            serde_json::from_slice(&state.policies_json).context("the node agent's policies")?;
        let policies = PolicySet::compile(policies, &state.trust_domain, &state.root_namespace)
            .context("the node agent's policies")?;
        Ok(Mesh {
            workloads,
            policies: Arc::new(policies),
            trust_domain: state.trust_domain,
            roots: state
                .roots_der
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
        })
    }
}

/// A connection to the node agent's sidecar service.
#[derive(Clone)]
pub struct NodeAgent {
    socket: PathBuf,
    client: SidecarClient<Channel>,
}

impl NodeAgent {
    /// Dials `socket`, retrying until `patience` runs out (the node agent may be starting
    /// too, or restarting).
    pub async fn connect(socket: &Path, patience: Duration) -> anyhow::Result<NodeAgent> {
        let deadline = tokio::time::Instant::now() + patience;
        let target = Target::Socket(socket.to_path_buf());
        let mut logged = false;
        loop {
            match dial(&target, DIAL_TIMEOUT).await {
                Ok(channel) => {
                    return Ok(NodeAgent {
                        socket: socket.to_path_buf(),
                        client: SidecarClient::new(channel),
                    });
                }
                Err(err) if tokio::time::Instant::now() + RETRY < deadline => {
                    if !logged {
                        tracing::warn!(socket = %socket.display(), error = %err, "the node agent is not reachable yet; retrying");
                        logged = true;
                    }
                    tokio::time::sleep(RETRY).await;
                }
                Err(err) => {
                    return Err(anyhow::anyhow!(
                        "cannot reach the node agent at {} after {patience:?}: {err} (is the Outrider DaemonSet running on this node, and /run/outrider/sidecar mounted?)",
                        socket.display()
                    ));
                }
            }
        }
    }

    /// Who the node agent takes us to be.
    pub async fn attest(&self) -> anyhow::Result<pb::AttestResponse> {
        let response = self
            .client
            .clone()
            .attest(pb::AttestRequest {})
            .await
            .map_err(|s| {
                anyhow::anyhow!("the node agent refused to attest this pod: {}", s.message())
            })?;
        Ok(response.into_inner())
    }

    /// Follows the mesh's state: the first one is returned, later ones are published on
    /// the receiver. When the stream breaks (the node agent restarts), it reconnects; the
    /// last state stays in force meanwhile.
    pub async fn watch_mesh(&self) -> anyhow::Result<(Mesh, watch::Receiver<Arc<Mesh>>)> {
        let mut stream = self.open_watch().await?;
        let first = match stream.message().await {
            Ok(Some(state)) => Mesh::decode(state)?,
            Ok(None) => anyhow::bail!("the node agent closed the mesh stream at once"),
            Err(s) => anyhow::bail!("the mesh stream failed: {}", s.message()),
        };
        let (tx, rx) = watch::channel(Arc::new(first.clone()));
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                loop {
                    match stream.message().await {
                        Ok(Some(state)) => match Mesh::decode(state) {
                            Ok(mesh) => {
                                tx.send_replace(Arc::new(mesh));
                            }
                            Err(error) => {
                                tracing::error!(error = %format!("{error:#}"), "a mesh state from the node agent is not usable; the previous one stays");
                            }
                        },
                        Ok(None) => break,
                        Err(status) => {
                            tracing::warn!(error = %status.message(), "the mesh stream broke");
                            break;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tracing::warn!(socket = %this.socket.display(), "lost the node agent; the last mesh state stays in force while reconnecting");
                stream = loop {
                    tokio::time::sleep(RETRY).await;
                    if tx.is_closed() {
                        return;
                    }
                    if let Ok(s) = this.open_watch().await {
                        tracing::info!("following the node agent's mesh state again");
                        break s;
                    }
                };
            }
        });
        Ok((first, rx))
    }

    async fn open_watch(&self) -> anyhow::Result<tonic::Streaming<pb::MeshState>> {
        // A fresh channel each time: the old one may point at a dead agent.
        let target = Target::Socket(self.socket.clone());
        let channel = dial(&target, DIAL_TIMEOUT).await?;
        let response = SidecarClient::new(channel)
            .watch_mesh(pb::WatchMeshRequest {})
            .await
            .map_err(|s| {
                anyhow::anyhow!("the node agent refused the mesh stream: {}", s.message())
            })?;
        Ok(response.into_inner())
    }
}

/// Signs through the node agent: the key stays here, the CA key stays there.
pub struct NodeSigner {
    pub agent: NodeAgent,
}

impl Signer for NodeSigner {
    fn sign(&self, request: SignRequest) -> SignFuture<'_> {
        Box::pin(async move {
            let call = pb::SignCertificateRequest {
                spiffe_id: request.id.to_string(),
                public_key_der: request.public_key.as_ref().to_vec(),
                ttl_seconds: request.ttl.as_secs(),
            };
            // A fresh channel: after a restart of the node agent the old one is dead.
            let target = Target::Socket(self.agent.socket.clone());
            let channel = dial(&target, DIAL_TIMEOUT)
                .await
                .map_err(|e| SignError::Unavailable(format!("node agent: {e}")))?;
            let response = SidecarClient::new(channel)
                .sign_certificate(call)
                .await
                .map_err(|s| match s.code() {
                    Code::PermissionDenied | Code::InvalidArgument | Code::FailedPrecondition => {
                        SignError::Refused(format!("node agent: {}", s.message()))
                    }
                    _ => SignError::Unavailable(format!("node agent: {}", s.message())),
                })?;
            Ok(response
                .into_inner()
                .chain_der
                .into_iter()
                .map(CertificateDer::from)
                .collect())
        })
    }

    fn describe(&self) -> String {
        format!("the node agent at {}", self.agent.socket.display())
    }
}

/// Asks the node agent, which sees the kubelet's connections in its kernel map, whether a
/// plaintext connection into this pod is the kubelet's probe. Any failure answers no: a
/// strict pod then refuses it, as it refuses all other plaintext.
pub struct NodeProbes {
    pub agent: NodeAgent,
}

/// How long one question may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl KubeletProbes for NodeProbes {
    fn take(&self, peer: SocketAddr, local: SocketAddr) -> Answer<'_> {
        Box::pin(async move {
            let ask = async {
                // A fresh channel: after a restart of the node agent the old one is dead.
                let target = Target::Socket(self.agent.socket.clone());
                let channel = dial(&target, DIAL_TIMEOUT)
                    .await
                    .map_err(|e| format!("node agent: {e}"))?;
                let response = SidecarClient::new(channel)
                    .check_kubelet_probe(pb::CheckKubeletProbeRequest {
                        peer: peer.to_string(),
                        local: local.to_string(),
                    })
                    .await
                    .map_err(|s| format!("node agent: {}", s.message()))?;
                Ok::<bool, String>(response.into_inner().kubelet)
            };
            match tokio::time::timeout(PROBE_TIMEOUT, ask).await {
                Ok(Ok(kubelet)) => kubelet,
                Ok(Err(error)) => {
                    tracing::warn!(%peer, %local, %error, "cannot ask the node agent whether a connection is the kubelet's probe; refusing it");
                    false
                }
                Err(_) => {
                    tracing::warn!(%peer, %local, "the node agent did not say in {PROBE_TIMEOUT:?} whether a connection is the kubelet's probe; refusing it");
                    false
                }
            }
        })
    }
}
