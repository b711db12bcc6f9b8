//! One enrolled pod as the proxy sees it: who it is (key, and its record: labels, IPs,
//! ports, identity — swapped whole when the workload source changes it, so a connection
//! sees one version and the next one the new), where its sockets are made (its network
//! namespace), what the whole agent shares with it, and the accept loop its listeners
//! share (the listeners themselves, by kind: `listeners`).
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use super::{
    balance::Balancer,
    connections::Registry,
    deliver::PodDelivery,
    hbone::{Pool, PoolConfig},
    outbound::tunnel::PoolKey,
    probes::KubeletProbes,
    return_path::{self, ReturnPaths},
    steering::Steering,
};
use crate::{
    config::{Config, EscapedSlashes},
    identity::{Identity, SpiffeId},
    netns::Netns,
    policy::PolicySet,
    telemetry::{
        metrics::{Metrics, Party},
        refusals::Reason,
    },
    workloads::{MtlsMode, SourceIp, Workload, WorkloadSet, directory::Directory},
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
    /// How long a tunnel's TLS handshake may take, both ends (`proxy.hbone`).
    pub tls_handshake_timeout: Duration,
    /// Each pod's tunnel pool and the tunnels' HTTP/2 settings (`proxy.hbone`).
    pub pool: PoolConfig,
    /// Protocol detection and HTTP proxying (`proxy.http`), without normalizing (see
    /// `escaped_slashes`).
    pub http: super::http::Settings,
    pub buffer_bytes: usize,
    /// Connections each of a pod's listeners holds at once (`proxy.maxConnectionsPerListener`).
    pub max_connections_per_listener: usize,
    /// HTTP requests arriving at a pod: how their paths' `%2F`/`%5C` are handled.
    pub escaped_slashes: EscapedSlashes,
    /// The agent's own ports (`capture.reservedPorts`): no tunnel CONNECT may reach them.
    pub reserved_ports: Vec<u16>,
    /// Tells the kubelet's probes, the only plaintext a strict pod serves; without it
    /// strict pods serve no plaintext at all.
    pub kubelet: Option<Arc<dyn KubeletProbes>>,
    /// Every live proxied connection of the node.
    pub connections: Registry,
    /// Active connections per Service endpoint, and client affinities.
    pub balancer: Arc<Balancer>,
    /// This agent's node (a pod's own node when its record does not say).
    pub node: String,
    /// The authorization policies in force (changed through `set_policies` only, which
    /// re-checks the live connections).
    policy: ArcSwap<PolicySet>,
    /// The pods' ways back for deliveries from clients' IPs; none in sidecar mode unless
    /// `sidecar.keepSourceIp` (then deliveries come from loopback).
    pub return_paths: Option<ReturnPaths>,
    /// Cancelled once this agent has handed over to a new one: its tunnels' server ends
    /// send GOAWAY, so that peers open new streams to the new agent while the streams
    /// under way finish here.
    pub draining: tokio_util::sync::CancellationToken,
}

impl Shared {
    pub fn new(
        config: &Config,
        steering: Steering,
        directory: Directory,
        identity: Identity,
        kubelet: Option<Arc<dyn KubeletProbes>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let settings = return_path::Settings::from_config(&config.capture);
        let return_paths = match &steering {
            Steering::Kernel(_) => Some(ReturnPaths::new(settings)),
            Steering::Redirect if config.sidecar.keep_source_ip => {
                Some(ReturnPaths::set_up_by_init(settings))
            }
            Steering::Redirect => None,
        };
        Self {
            return_paths,
            steering,
            directory,
            identity,
            mark: config.capture.agent_mark,
            outbound_port: config.capture.outbound_port,
            backlog: config.proxy.backlog,
            connect_timeout: Duration::from_millis(config.proxy.connect_timeout_ms),
            tls_handshake_timeout: Duration::from_millis(
                config.proxy.hbone.tls_handshake_timeout_ms,
            ),
            pool: PoolConfig::from_config(&config.proxy.hbone),
            http: super::http::Settings::from_config(&config.proxy.http),
            buffer_bytes: config.proxy.buffer_bytes,
            max_connections_per_listener: config.proxy.max_connections_per_listener,
            escaped_slashes: config.proxy.http.escaped_slashes,
            reserved_ports: config.capture.reserved_ports.clone(),
            kubelet,
            connections: Registry::new(metrics, config.telemetry.access_log),
            balancer: Default::default(),
            node: config.node_name.clone(),
            policy: ArcSwap::from_pointee(PolicySet::empty()),
            draining: Default::default(),
        }
    }

    /// The authorization policies in force.
    pub fn policies(&self) -> arc_swap::Guard<Arc<PolicySet>> {
        self.policy.load()
    }

    /// Puts `policies` in force: for new connections and requests, and for every live
    /// connection into this agent's pods (closed, or its running requests reset, where
    /// they now deny it).
    pub fn set_policies(&self, policies: Arc<PolicySet>) {
        self.policy.store(policies);
        super::enforce::recheck(self, None);
    }

    /// Puts the workload source's view in force (destinations, Services, namespaces'
    /// mTLS modes); when a namespace's mode changed, live plaintext into a namespace now
    /// strict is closed.
    pub fn set_workloads(&self, set: &WorkloadSet) {
        if self.directory.update(set) {
            super::enforce::recheck(self, None);
        }
    }
}

/// What the workload source says of a pod now, and the identity that gives it.
#[derive(Debug, PartialEq, Eq)]
pub struct PodRecord {
    pub workload: Workload,
    pub id: SpiffeId,
}

/// One pod, for its listeners and connections.
pub struct PodProxy {
    /// `namespace/name`.
    pub key: String,
    /// The pod's record; replaced in place when it changes (labels, IPs, ports, service
    /// account), while the listeners and the kernel's state stay.
    record: ArcSwap<PodRecord>,
    pub netns: Arc<Netns>,
    pub shared: Arc<Shared>,
    /// This pod's tunnels to other pods.
    pub pool: Pool<PoolKey>,
    /// Delivering to the app from clients' IPs.
    pub delivery: PodDelivery,
}

impl PodProxy {
    /// The pod's namespace's mTLS mode, as the workload source says now (by namespace:
    /// a pod whose IPs change meanwhile is never taken for another namespace's).
    pub fn mtls(&self) -> MtlsMode {
        let namespace = self.key.split_once('/').map_or("", |(ns, _)| ns);
        self.shared.directory.mtls(namespace)
    }

    pub fn new(workload: Workload, id: SpiffeId, netns: Arc<Netns>, shared: Arc<Shared>) -> Self {
        let pool = Pool::new(shared.pool.clone());
        Self {
            key: workload.key().to_string(),
            record: ArcSwap::from_pointee(PodRecord { workload, id }),
            netns,
            shared,
            pool,
            delivery: PodDelivery::default(),
        }
    }

    /// Where deliveries to this pod come from, as its namespace says now.
    pub fn source_ip(&self) -> SourceIp {
        if self.shared.return_paths.is_none() {
            return SourceIp::Loopback;
        }
        let namespace = self.key.split_once('/').map_or("", |(ns, _)| ns);
        self.shared.directory.source_ip(namespace)
    }

    /// The pod's record as it is now (a connection takes it once and keeps it).
    pub fn record(&self) -> Arc<PodRecord> {
        self.record.load_full()
    }

    /// Puts a changed record of the same pod in force: connections that start from now
    /// on see the new one; live connections into the pod are decided again with its new
    /// labels (`enforce`).
    pub fn set_record(&self, record: PodRecord) {
        debug_assert_eq!(record.workload.key().to_string(), self.key);
        self.record.store(Arc::new(record));
        super::enforce::recheck(&self.shared, Some(&self.key));
    }

    /// This pod as one end of a connection in metrics.
    pub fn party(&self) -> Party {
        let record = self.record();
        Party {
            workload: record.workload.workload_name().to_string(),
            namespace: record.workload.namespace.clone(),
            principal: record.id.to_string(),
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
        self.record().workload.ips.contains(&ip)
    }
}

/// Accepts forever, handing each connection to `handle`, at most
/// `proxy.maxConnectionsPerListener` at once: more are reset at accept, logged (a line
/// per power of two) and counted as refusals of `direction` (`inbound` | `outbound`).
/// Backs off on errors such as running out of descriptors instead of spinning.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    pod: Arc<PodProxy>,
    direction: &'static str,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, Arc<PodProxy>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let limit = pod.shared.max_connections_per_listener;
    let slots = Arc::new(tokio::sync::Semaphore::new(limit));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let mut refused: u64 = 0;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(pod = %pod.key, %peer, port, limit, refused,
                            "connection limit of the pod's listener reached; connection reset");
                    }
                    pod.shared.connections.recorder().refused(
                        &pod.key,
                        direction,
                        Reason::ConnectionLimit,
                    );
                    super::reset(stream);
                    continue;
                };
                // A connection's future is large (its state machines and buffers): boxed
                // once here, it is not copied again into the task (the profile showed
                // those copies at 1-2 % of the agent's CPU under new connections).
                let handled = Box::pin(handle(stream, peer, pod.clone()));
                tokio::spawn(async move {
                    handled.await;
                    drop(slot);
                });
            }
            Err(err) => {
                tracing::warn!(pod = %pod.key, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ca;

    #[test]
    fn the_proxy_takes_its_tuning_from_the_config() {
        let ca_dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.identity.ca_dir = ca_dir.path().join("ca");
        ca::init(&config.identity.ca_dir, &ca::InitOptions::default()).unwrap();
        config.proxy.hbone.max_streams_per_connection = 7;
        config.proxy.hbone.idle_timeout_ms = 1234;
        config.proxy.hbone.tls_handshake_timeout_ms = 2500;
        config.proxy.hbone.stream_window_bytes = 1 << 20;
        config.proxy.hbone.keepalive_timeout_ms = 800;
        config.proxy.http.detect.first_byte_timeout_ms = 300;
        config.proxy.http.max_head_bytes = 9000;
        config.proxy.http.deny_drain_timeout_ms = 50;
        let identity = crate::identity::Identity::from_config(&config.identity).unwrap();
        let shared = Arc::new(Shared::new(
            &config,
            Steering::Redirect,
            Directory::new("cluster.local"),
            identity,
            None,
            Arc::new(Metrics::default()),
        ));
        assert_eq!(shared.tls_handshake_timeout, Duration::from_millis(2500));
        assert_eq!(
            shared.http.detect.first_byte_timeout,
            Duration::from_millis(300)
        );
        assert_eq!(shared.http.max_buf_size, 9000);
        assert_eq!(shared.http.deny_drain_timeout, Duration::from_millis(50));
        assert_eq!(shared.http.normalize, None);
        let id = shared.identity.workload_id("shop", "web").unwrap();
        let workload: Workload = serde_yaml_ng::from_str(
            "{namespace: shop, name: web, uid: u1, serviceAccount: web, ips: [10.0.0.1], netns: /proc/self/ns/net}",
        )
        .unwrap();
        let pod = PodProxy::new(
            workload,
            id,
            Arc::new(Netns::current().unwrap()),
            shared.clone(),
        );
        let pool = pod.pool.config();
        assert_eq!(pool.max_streams_per_connection, 7);
        assert_eq!(pool.idle_timeout, Duration::from_millis(1234));
        assert_eq!(pool.settings.stream_window, 1 << 20);
        assert_eq!(pool.settings.keepalive_timeout, Duration::from_millis(800));
        // Untouched keys keep today's values.
        assert_eq!(pool.dial_timeout, Duration::from_secs(10));
        assert_eq!(pool.settings.max_frame_size, 256 * 1024);
    }
}
