//! One enrolled pod as the proxy sees it: who it is (key, identity, IPs), where its
//! sockets are made (its network namespace), what the whole agent shares with it, and
//! its listeners — outbound `127.0.0.1/[::1]:15001`, inbound plaintext
//! `127.0.0.1/[::1]:15006` (reached through the `sk_lookup` program), and the tunnel
//! `0.0.0.0/[::]:15008`. Dropping [`PodListeners`] closes them; accepted connections run
//! on to their end.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{net::TcpListener, task::JoinHandle};

use super::{
    connections::Registry,
    hbone::{Pool, PoolConfig},
    steering::Steering,
    tunnel::PoolKey,
};
use crate::{
    config::Config,
    identity::{Identity, SpiffeId},
    netns::Netns,
    policy::PolicySet,
    telemetry::metrics::{Metrics, Party},
    workloads::{MtlsMode, Workload, directory::Directory},
};

/// Ports of the in-pod listeners.
pub const INBOUND_PORT: u16 = 15006;
pub const TUNNEL_PORT: u16 = super::hbone::PORT;

/// What every pod's proxy shares: agent-wide tables and settings.
pub struct Shared {
    /// How connections reach the listeners, and where they were going.
    pub steering: Steering,
    pub directory: Directory,
    pub identity: Identity,
    pub mark: u32,
    pub outbound_port: u16,
    pub backlog: u32,
    pub connect_timeout: Duration,
    pub buffer_bytes: usize,
    /// Addresses of the node itself: plaintext from them (kubelet's health probes) is
    /// served even in strict mode.
    pub node_addrs: Vec<IpAddr>,
    /// Every live proxied connection of the node.
    pub connections: Registry,
    /// The authorization policies in force.
    pub policy: ArcSwap<PolicySet>,
}

impl Shared {
    pub fn new(
        config: &Config,
        steering: Steering,
        directory: Directory,
        identity: Identity,
        node_addrs: Vec<IpAddr>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            steering,
            directory,
            identity,
            mark: config.capture.agent_mark,
            outbound_port: config.capture.outbound_port,
            backlog: config.proxy.backlog,
            connect_timeout: Duration::from_millis(config.proxy.connect_timeout_ms),
            buffer_bytes: config.proxy.buffer_bytes,
            node_addrs,
            connections: Registry::new(metrics),
            policy: ArcSwap::from_pointee(PolicySet::empty()),
        }
    }
}

/// One pod, for its listeners and connections.
pub struct PodProxy {
    /// `namespace/name`.
    pub key: String,
    pub workload: Workload,
    pub id: SpiffeId,
    pub netns: Arc<Netns>,
    pub shared: Arc<Shared>,
    /// This pod's tunnels to other pods.
    pub pool: Pool<PoolKey>,
}

impl PodProxy {
    /// The pod's namespace's mTLS mode, as the workload source says now.
    pub fn mtls(&self) -> MtlsMode {
        self.workload
            .ips
            .first()
            .and_then(|ip| self.shared.directory.lookup(*ip))
            .map(|d| d.mtls)
            .unwrap_or_default()
    }

    pub fn new(workload: Workload, id: SpiffeId, netns: Arc<Netns>, shared: Arc<Shared>) -> Self {
        Self {
            key: workload.key().to_string(),
            workload,
            id,
            netns,
            shared,
            pool: Pool::new(PoolConfig::default()),
        }
    }

    /// This pod as one end of a connection in metrics.
    pub fn party(&self) -> Party {
        Party {
            workload: self.workload.workload_name().to_string(),
            namespace: self.workload.namespace.clone(),
            principal: self.id.to_string(),
        }
    }

    /// Whoever is at `ip`, as the directory knows it; its principal only when verified
    /// (`identity`), else "unknown".
    pub fn party_at(&self, ip: IpAddr, identity: Option<&SpiffeId>) -> Party {
        let known = self.shared.directory.lookup(ip);
        Party {
            workload: known
                .as_ref()
                .map(|d| d.workload.clone())
                .unwrap_or_else(|| "unknown".into()),
            namespace: identity
                .map(|id| id.namespace().to_string())
                .or_else(|| known.as_ref().map(|d| d.namespace.clone()))
                .unwrap_or_else(|| "unknown".into()),
            principal: identity
                .map(|id| id.to_string())
                .unwrap_or_else(|| "unknown".into()),
        }
    }

    /// True when `ip` is one of the pod's own addresses.
    pub fn owns(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.workload.ips.contains(&ip)
    }
}

/// A pod's running listeners.
pub struct PodListeners {
    tasks: Vec<JoinHandle<()>>,
    /// The inbound plaintext listeners' descriptors (IPv4, IPv6), for the kernel's
    /// SockMap; valid while `self` lives.
    pub inbound_fds: (RawFd, RawFd),
}

impl Drop for PodListeners {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A raw descriptor as the SockMap API wants it.
pub struct Fd(pub RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Opens all of the pod's listeners inside its namespace and starts accepting.
pub fn start(pod: Arc<PodProxy>) -> io::Result<PodListeners> {
    let s = &pod.shared;
    let listen = |addr: SocketAddr| -> io::Result<TcpListener> {
        let std = pod.netns.listen(addr, s.backlog, s.mark).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("listen on {addr} in {}: {e}", pod.netns.path().display()),
            )
        })?;
        TcpListener::from_std(std)
    };
    let v4 = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = |port| SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let outbound = [listen(v4(s.outbound_port))?, listen(v6(s.outbound_port))?];
    let [inbound_v4, inbound_v6] = s.steering.inbound_listen(INBOUND_PORT);
    let inbound = [listen(inbound_v4)?, listen(inbound_v6)?];
    let tunnel = [
        listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, TUNNEL_PORT)))?,
        listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, TUNNEL_PORT)))?,
    ];
    let inbound_fds = (inbound[0].as_raw_fd(), inbound[1].as_raw_fd());
    let mut tasks = Vec::new();
    for listener in outbound {
        tasks.push(tokio::spawn(super::outbound::serve(listener, pod.clone())));
    }
    for listener in inbound {
        tasks.push(tokio::spawn(super::inbound::serve(listener, pod.clone())));
    }
    for listener in tunnel {
        tasks.push(tokio::spawn(super::tunnel::serve(listener, pod.clone())));
    }
    Ok(PodListeners { tasks, inbound_fds })
}

/// Accepts forever, handing each connection to `handle`; backs off on errors such as
/// running out of descriptors instead of spinning.
pub async fn accept_loop<F, Fut>(listener: TcpListener, pod: Arc<PodProxy>, handle: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr, Arc<PodProxy>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(handle(stream, peer, pod.clone()));
            }
            Err(err) => {
                tracing::warn!(pod = %pod.key, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
