//! The agent's settings: one type, read from `outrider run --config FILE` (YAML). Every
//! default lives in this file, next to the field it belongs to.
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::yaml::{self, YamlError};

/// Ports the agent owns inside every enrolled pod: apps may not bind them and
/// connections to them are never steered.
pub const DEFAULT_RESERVED_PORTS: [u16; 6] = [15001, 15006, 15008, 15020, 15021, 15090];

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// This node's name (Kubernetes `spec.nodeName`). Default: `$NODE_NAME` (the
    /// DaemonSet sets it from `spec.nodeName`), else the host name.
    pub node_name: String,
    /// Separates several agents on one machine (the testbed runs one per node). Derives
    /// per-instance names (pin directory, admin socket). Default: `default`.
    pub instance: String,
    pub workloads: WorkloadSourceConfig,
    pub cgroup: CgroupConfig,
    pub capture: CaptureConfig,
    pub proxy: ProxyConfig,
    pub identity: IdentityConfig,
    pub policy: PolicyConfig,
    pub telemetry: TelemetryConfig,
    pub admin: AdminConfig,
    pub sidecar: SidecarConfig,
    pub restart: RestartConfig,
    pub memory: MemoryConfig,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: std::env::var("NODE_NAME")
                .ok()
                .filter(|n| !n.is_empty())
                .or_else(|| {
                    nix::unistd::gethostname()
                        .ok()
                        .and_then(|h| h.into_string().ok())
                })
                .unwrap_or_else(|| "node".to_string()),
            instance: "default".to_string(),
            workloads: WorkloadSourceConfig::default(),
            cgroup: CgroupConfig::default(),
            capture: CaptureConfig::default(),
            proxy: ProxyConfig::default(),
            identity: IdentityConfig::default(),
            policy: PolicyConfig::default(),
            telemetry: TelemetryConfig::default(),
            admin: AdminConfig::default(),
            sidecar: SidecarConfig::default(),
            restart: RestartConfig::default(),
            memory: MemoryConfig::default(),
            log: LogConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WorkloadSourceConfig {
    /// A local YAML file listing workloads (see `workloads::file`), watched for changes.
    /// Default: none.
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes, and failed enrollments retried.
    /// Default 250 ms.
    pub poll_interval_ms: u64,
    /// The Kubernetes API as the workload source (see `workloads::kubernetes`): set
    /// (even to `{}`) to use it; alongside `file`, both sets are merged. Default: off.
    pub kubernetes: Option<KubernetesSourceConfig>,
    /// The cluster's DNS domain: Services are named `name.namespace.svc.<clusterDomain>`
    /// in metrics (`destination_service`) and access logs. Default `cluster.local`.
    pub cluster_domain: String,
}

impl Default for WorkloadSourceConfig {
    fn default() -> Self {
        Self {
            file: None,
            poll_interval_ms: 250,
            kubernetes: None,
            cluster_domain: crate::workloads::directory::DEFAULT_CLUSTER_DOMAIN.to_string(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KubernetesSourceConfig {
    /// The API server's URL, e.g. `https://10.0.0.1:443`, reached without credentials
    /// unless `kubeconfig` is set. Default: none — in-cluster (the pod's service account)
    /// or `KUBECONFIG`, as kubectl finds it.
    pub api_server: Option<String>,
    /// A kubeconfig file. Default: none (see `apiServer`).
    pub kubeconfig: Option<PathBuf>,
    /// Where the pods' processes are seen: `/proc` of the host (the DaemonSet runs with
    /// `hostPID`). Default `/proc`.
    pub proc_root: PathBuf,
}

impl Default for KubernetesSourceConfig {
    fn default() -> Self {
        Self {
            api_server: None,
            kubeconfig: None,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CgroupConfig {
    /// The cgroup v2 mount. Default: found in /proc/self/mountinfo.
    pub mount: Option<PathBuf>,
    /// The cgroup holding the pods, where the programs attach (absolute, or relative to
    /// the mount), e.g. `kubepods.slice`. Required; the mount's root is refused.
    pub attach: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Port of the in-pod outbound listener. Default 15001.
    pub outbound_port: u16,
    /// SO_MARK on every socket the agent makes; marked sockets are never steered.
    /// Default 0x4f52 ("OR").
    pub agent_mark: u32,
    /// Deliveries to a pod's app keep the client's IP (where the namespace's `sourceIp`
    /// says `client`, the default): the agent's delivery sockets carry this SO_MARK, and
    /// in the pod's namespace the rule `fwmark <deliveryMark> lookup <deliveryTable>`
    /// (priority `deliveryRulePriority`) with the route `local default dev lo table
    /// <deliveryTable>`, and `net.ipv4.tcp_fwmark_accept=1`, send the app's replies back
    /// to them over `lo`. Defaults 0x4f53, table 20307 (the mark's value), priority 32764
    /// (before `main`, as Istio's in-pod rule).
    pub delivery_mark: u32,
    pub delivery_table: u32,
    pub delivery_rule_priority: u32,
    /// Destinations that pass untouched. Default none (loopback always passes).
    pub exclude_cidrs: Vec<IpNet>,
    /// Destination ports that pass untouched. Default none.
    pub exclude_ports: Vec<u16>,
    /// See [`DEFAULT_RESERVED_PORTS`].
    pub reserved_ports: Vec<u16>,
    /// What enrolled pods' traffic does while no agent serves them (after a crash, or
    /// between a stop and the next start; the kernel programs stay attached): with
    /// `fail-closed` their connections are refused, in and out, until an agent is back;
    /// with `fail-open` they flow unmeshed — no mTLS, policy or telemetry — instead.
    /// Default `fail-closed`.
    pub fail_policy: FailPolicy,
    /// The bpf filesystem directory where the agent pins its kernel programs, maps and
    /// links, under `<pinRoot>/<instance>`, so that they outlive the agent and the next
    /// one picks them up. Must be on a bpf filesystem. Default `/sys/fs/bpf/outrider`.
    pub pin_root: PathBuf,
    /// The kubelet's cgroup (absolute, or relative to `cgroup.mount`), e.g.
    /// `system.slice/kubelet.service`. A `sock_ops` program attached there records the
    /// kubelet's own TCP connections, and a pod in a strict namespace serves plaintext
    /// only to those (its health probes). It must neither contain the pods' cgroup nor lie
    /// below it. Default none: strict pods serve no plaintext at all, probes included.
    pub kubelet_cgroup: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FailPolicy {
    #[default]
    FailClosed,
    FailOpen,
}

impl CaptureConfig {
    /// This instance's pin directory.
    pub fn pin_dir(&self, instance: &str) -> PathBuf {
        self.pin_root.join(instance)
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            outbound_port: 15001,
            agent_mark: 0x4f52,
            delivery_mark: 0x4f53,
            delivery_table: 0x4f53,
            delivery_rule_priority: 32764,
            exclude_cidrs: Vec::new(),
            exclude_ports: Vec::new(),
            reserved_ports: DEFAULT_RESERVED_PORTS.to_vec(),
            fail_policy: FailPolicy::FailClosed,
            pin_root: PathBuf::from("/sys/fs/bpf/outrider"),
            kubelet_cgroup: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Worker threads of the node agent's runtime, which carries every pod's traffic.
    /// Default: one per CPU the agent may run on when it starts (its CPU affinity and
    /// cgroup CPU limit, as `std::thread::available_parallelism` reads them), or
    /// `TOKIO_WORKER_THREADS` when set. Set it to bound the agent's threads on a large
    /// node, or when the agent is confined to fewer CPUs after it starts (ztunnel's
    /// `ZTUNNEL_WORKER_THREADS` is the same setting; its default is 2). On the
    /// benchmark's testbed, with each agent pinned to one vCPU after start, one worker
    /// used 2-21 % less CPU per HTTP request than two; rates and round trips were the
    /// same within the runs' spread (`docs/bench/profile.md`, "Worker threads").
    pub worker_threads: Option<usize>,
    /// Upstream connect timeout. Default 5000 ms.
    pub connect_timeout_ms: u64,
    /// Largest read per direction of a relayed connection: reads start at 4 KiB and
    /// double while they fill, so only bulk flows grow this far (as ztunnel's). Between
    /// two sockets one buffer serves every read, and once reads reach 64 KiB the flow is
    /// spliced socket to socket in the kernel through a pipe of this size (two more
    /// descriptors for each such direction, given back once it idles for 2 s:
    /// `copy::PIPE_IDLE`); toward a tunnel each read's buffer goes
    /// into the tunnel as it is (what the tunnel holds is bounded by
    /// `hbone.maxSendBufferBytes`). Default 256 KiB, which moved ~20% more in bulk than
    /// 64 KiB on the benchmark's testbed.
    pub buffer_bytes: usize,
    /// Listen backlog of in-pod listeners. Default 1024.
    pub backlog: u32,
    /// Connections each of a pod's listeners (outbound :15001, plaintext inbound :15006,
    /// tunnels :15008) holds open at once; more are reset at accept, logged and counted
    /// (`outrider_refusals_total{reason="connection_limit"}`). Per pod and listener, so
    /// that one pod's flood (or a flood aimed at one pod) does not starve the others.
    /// Default 32768: above what a busy pod holds (the load tests hold 10,000 from one
    /// pod), below what would exhaust the agent's descriptors on its own.
    pub max_connections_per_listener: usize,
    /// Tunnels between pods: pooling and HTTP/2 settings.
    pub hbone: HboneConfig,
    /// HTTP: requests arriving at an enrolled pod, protocol detection, HTTP/1 and
    /// HTTP/2 tuning.
    pub http: HttpProxyConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            worker_threads: None,
            connect_timeout_ms: 5000,
            buffer_bytes: 256 * 1024,
            backlog: 1024,
            max_connections_per_listener: 32768,
            hbone: HboneConfig::default(),
            http: HttpProxyConfig::default(),
        }
    }
}

/// Tunnels between pods (HBONE: HTTP/2 `CONNECT` over mutual TLS, to `:15008`): how a
/// pod's tunnels are pooled, and the HTTP/2 settings of their connections, the same at
/// both ends (see `proxy::hbone`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HboneConfig {
    /// Streams one tunnel connection carries at once before another is dialed (also
    /// capped by what the server allows). Default 100, as ztunnel and Go's HTTP/2: the
    /// spec's recommended minimum.
    pub max_streams_per_connection: usize,
    /// A tunnel connection without streams for this long is closed. Default 60000 ms.
    pub idle_timeout_ms: u64,
    /// How long dialing a tunnel (TCP connect and TLS handshake) may take; connections
    /// waiting on the same dial wait no longer. Default 10000 ms.
    pub dial_timeout_ms: u64,
    /// How long a peer has to finish its TLS handshake, both ends (a slow client cannot
    /// hold the listener's resources for long); also how long a new tunnel waits for the
    /// pod's first certificate. Default 10000 ms.
    pub tls_handshake_timeout_ms: u64,
    /// How long the HTTP/2 handshake (preface and SETTINGS) may take. Default 10000 ms.
    pub h2_handshake_timeout_ms: u64,
    /// Bytes a peer may send on one stream before we release them by reading
    /// (SETTINGS_INITIAL_WINDOW_SIZE). Default 4 MiB: several times the bandwidth-delay
    /// product of a 10 Gbit/s link at in-cluster round-trip times, so one stream is never
    /// window bound; also the most a stream whose consumer stalls can make us hold.
    pub stream_window_bytes: u32,
    /// Bytes a peer may send on the whole connection before we release them. Default
    /// 16 MiB (4 × the stream window): a few bulk streams run at full speed together and a
    /// stalled stream cannot take the whole connection's window and block the others.
    pub connection_window_bytes: u32,
    /// The largest DATA frame we accept (SETTINGS_MAX_FRAME_SIZE; the peer sends up to
    /// this). Default 256 KiB: bigger frames than the 16 KiB minimum cut per-frame work
    /// (on loopback, 16 KiB frames cost a third of a bulk stream's throughput; 256 KiB and
    /// 1 MiB measure alike), but a frame holds the connection while it is written, so the
    /// other streams wait behind it: 256 KiB keeps that to a quarter of ztunnel's 1 MiB.
    pub max_frame_bytes: u32,
    /// Most bytes one stream queues inside h2 ahead of the socket; writes wait beyond it.
    /// Default 1 MiB: a writer stays ahead of the connection task without holding much
    /// per stream.
    pub max_send_buffer_bytes: usize,
    /// Most bytes taken from one write into a stream (a DATA chunk). Default 1 MiB.
    pub max_write_chunk_bytes: usize,
    /// Streams a server lets a client open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    /// Default 200, above the pools of ztunnel and our own (100 each).
    pub max_concurrent_streams: u32,
    /// Largest header block accepted. CONNECT requests are small; default 64 KiB is
    /// generous.
    pub max_header_list_bytes: u32,
    /// How often each end of a tunnel connection PINGs the other. Default 5000 ms.
    pub keepalive_interval_ms: u64,
    /// How long a PING may go unanswered before the connection (and its streams) is
    /// ended: a peer that went away is noticed within interval + timeout. Default 5000 ms.
    pub keepalive_timeout_ms: u64,
}

impl Default for HboneConfig {
    fn default() -> Self {
        Self {
            max_streams_per_connection: 100,
            idle_timeout_ms: 60_000,
            dial_timeout_ms: 10_000,
            tls_handshake_timeout_ms: 10_000,
            h2_handshake_timeout_ms: 10_000,
            stream_window_bytes: 4 * 1024 * 1024,
            connection_window_bytes: 16 * 1024 * 1024,
            max_frame_bytes: 256 * 1024,
            max_send_buffer_bytes: 1024 * 1024,
            max_write_chunk_bytes: 1024 * 1024,
            max_concurrent_streams: 200,
            max_header_list_bytes: 64 * 1024,
            keepalive_interval_ms: 5000,
            keepalive_timeout_ms: 5000,
        }
    }
}

/// How the destination's agent treats the HTTP requests it checks and forwards (their
/// paths are normalized before policy, and the app gets the normalized path; see
/// `proxy::http::path`), how the HTTP ends of a proxied connection are tuned, and how
/// long protocol detection waits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpProxyConfig {
    /// What a path holding an encoded `/` or `\` (`%2F`, `%5C`, any case) gets, as
    /// Envoy's `path_with_escaped_slashes_action`. Default `reject-request` (400).
    pub escaped_slashes: EscapedSlashes,
    /// Telling HTTP from opaque TCP by the client's first bytes.
    pub detect: DetectConfig,
    /// HTTP/1: a client must send a request's head within this time (also bounds idle
    /// keep-alive connections between requests). Default 30000 ms.
    pub header_read_timeout_ms: u64,
    /// HTTP/1: the most bytes buffered for one message head, both ends (at least 8192,
    /// hyper's floor). Default 400 KiB (hyper's default).
    pub max_head_bytes: usize,
    /// HTTP/2: the most concurrent streams a client may open. Default 256.
    pub max_concurrent_streams: u32,
    /// HTTP/1: a denied request's body is read and dropped up to this many bytes so the
    /// connection can carry the next request; a larger body closes the connection.
    /// Default 64 KiB.
    pub deny_drain_bytes: usize,
    /// HTTP/1: how long draining a denied request's body may take. Default 1000 ms.
    pub deny_drain_timeout_ms: u64,
}

impl Default for HttpProxyConfig {
    fn default() -> Self {
        Self {
            escaped_slashes: EscapedSlashes::default(),
            detect: DetectConfig::default(),
            header_read_timeout_ms: 30_000,
            max_head_bytes: 400 * 1024,
            max_concurrent_streams: 256,
            deny_drain_bytes: 64 * 1024,
            deny_drain_timeout_ms: 1000,
        }
    }
}

/// How protocol detection waits for a client's first bytes (see `proxy::http::detect`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DetectConfig {
    /// How long to wait for the client's first byte before calling the connection
    /// opaque: the only delay a server-first protocol can see, and only when its server
    /// stays silent too (a banner ends detection at once). Default 100 ms.
    pub first_byte_timeout_ms: u64,
    /// Once the client has spoken, how long (from the start) it may take to send enough
    /// bytes to decide (e.g. `GE`, a pause, then `T / HTTP/1.1`); after it: opaque.
    /// Default 2000 ms.
    pub timeout_ms: u64,
    /// The most client bytes read while deciding (at least 64). A request line still well
    /// formed at this length is taken for HTTP/1. Default 16 KiB.
    pub max_bytes: usize,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            first_byte_timeout_ms: 100,
            timeout_ms: 2000,
            max_bytes: 16 * 1024,
        }
    }
}

/// Envoy's `path_with_escaped_slashes_action`, less the redirect: what to do with `%2F`
/// and `%5C` in a request path. Apps disagree on whether they separate segments, so a
/// policy on paths cannot know what the app will serve: refusing them is the safe default.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum EscapedSlashes {
    /// `REJECT_REQUEST`: answer 400.
    #[default]
    RejectRequest,
    /// `KEEP_UNCHANGED`: leave them encoded (hex digits upper-cased): policy sees one
    /// segment `a%2Fb`; an app that decodes them before resolving `..` can serve a path
    /// the policy never saw. Only for apps that treat them as data.
    KeepUnchanged,
    /// `UNESCAPE_AND_FORWARD`: decode both to `/` before the rest of the normalization
    /// (Istio's `DECODE_AND_MERGE_SLASHES`), so policy and app see `a/b`.
    UnescapeAndForward,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// SPIFFE trust domain: identities are `spiffe://<trustDomain>/ns/<ns>/sa/<sa>`.
    /// Default `cluster.local`.
    pub trust_domain: String,
    /// Directory shaped like a mounted Kubernetes Secret holding the root CA: `ca.crt`
    /// and `ca.key` (PEM). Written by `outrider ca init`. Default
    /// `/var/run/secrets/outrider/ca`.
    pub ca_dir: PathBuf,
    /// Lifetime of workload certificates, renewed at half life. Default 86400 (24 h).
    pub cert_ttl_seconds: u64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_string(),
            ca_dir: PathBuf::from("/var/run/secrets/outrider/ca"),
            cert_ttl_seconds: 86_400,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Directory of `AuthorizationPolicy` YAML files (`*.yaml`, `*.yml`, several
    /// documents each), watched; edits apply live. Default: none (everything allowed).
    pub dir: Option<PathBuf>,
    /// Policies in this namespace apply to the whole mesh (Istio's root namespace).
    /// Default `outrider-system`.
    pub root_namespace: String,
    /// How often the directory is checked for changes. Default 250 ms.
    pub poll_interval_ms: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            dir: None,
            root_namespace: "outrider-system".to_string(),
            poll_interval_ms: 250,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Where `/metrics` and `/healthz/ready` are served (on the node). Default
    /// `0.0.0.0:15020`.
    pub metrics_addr: std::net::SocketAddr,
    /// Connections the endpoint serves at once; more are closed at accept (and logged).
    /// Default 64.
    pub max_connections: usize,
    /// How long a connection to the endpoint has to send a complete request head (the
    /// first, and each next on a kept-alive connection) before it is closed. Default
    /// 10000 ms.
    pub request_timeout_ms: u64,
    /// Which access lines are written (target `access`, at `info`; a failed
    /// connection's at `warn`).
    pub access_log: AccessLogConfig,
}

/// `telemetry.accessLog`: the defaults are Istio's: ztunnel writes a line per
/// connection, and Istio installs with the per-request (Envoy) access log off
/// (`meshConfig.accessLogFile` empty). Request metrics are kept either way.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// One line per connection as it ends or is refused. Default `true`.
    pub connections: bool,
    /// One line per HTTP request (method, path, status, bytes, duration). It costs about
    /// a fifth of the agent's CPU per request (`docs/bench/profile.md`). Default
    /// `false`.
    pub requests: bool,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            connections: true,
            requests: false,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics_addr: std::net::SocketAddr::from(([0, 0, 0, 0], 15020)),
            max_connections: 64,
            request_timeout_ms: 10_000,
            access_log: AccessLogConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The admin API's unix socket, made with mode 0600. Default
    /// `/run/outrider/admin.sock`, or `/run/outrider/<instance>/admin.sock` for an
    /// instance other than `default` (see [`AdminConfig::socket_path`]).
    pub socket: Option<PathBuf>,
    /// Callers (by user id, from the socket's peer credentials) allowed besides root and
    /// the agent's own user. Default none.
    pub allow_uids: Vec<u32>,
    /// The admin API on TCP too, with mutual TLS (client certificate required).
    /// Default: off.
    pub tcp: Option<AdminTcpConfig>,
    /// Connections served at once on the unix socket; when all are taken, a new one
    /// replaces the oldest that has not spoken HTTP/2 yet (see `admin::admission`).
    /// Default 64.
    pub max_connections: usize,
    /// How long a new connection on the unix socket has to send the HTTP/2 preface
    /// before it is closed. Default 5000 ms.
    pub preface_timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            socket: None,
            allow_uids: Vec::new(),
            tcp: None,
            max_connections: 64,
            preface_timeout_ms: 5000,
        }
    }
}

impl AdminConfig {
    /// The socket path in force for an agent `instance`.
    pub fn socket_path(&self, instance: &str) -> PathBuf {
        match &self.socket {
            Some(path) => path.clone(),
            None if instance == "default" => PathBuf::from("/run/outrider/admin.sock"),
            None => PathBuf::from(format!("/run/outrider/{instance}/admin.sock")),
        }
    }
}

/// Sidecar mode: the node agent serves its node's sidecars (their certificates, the
/// mesh's state) on a unix socket, and `outrider sidecar` finds it there.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SidecarConfig {
    /// The socket (mode 0666: the callers are attested by their cgroup). Default
    /// `/run/outrider/sidecar/sidecar.sock`, or `/run/outrider/<instance>/sidecar.sock`
    /// for an instance other than `default`; pods mount `/run/outrider/sidecar`.
    pub socket: Option<PathBuf>,
    /// Worker threads of a sidecar's runtime. Default 2 (as Envoy's default concurrency
    /// in Istio's sidecars).
    pub threads: usize,
    /// Connections the node agent serves at once on the socket, as the admin socket's
    /// (`unix_socket::admission`: the oldest that has not spoken HTTP/2 makes room for
    /// a new one). Each sidecar holds one; default 512 (kubelet's default is 110 pods a
    /// node). Each costs the agent two descriptors: the socket and its caller's pidfd.
    pub max_connections: usize,
    /// How long a new connection on the socket has to send the HTTP/2 preface before it
    /// is closed. Default 5000 ms.
    pub preface_timeout_ms: u64,
    /// A sidecar delivers to its app from the client's IP (`outrider sidecar
    /// --keep-source-ip`): it needs CAP_NET_ADMIN, and `sidecar-init --keep-source-ip`
    /// in its pod. Default false: from 127.0.0.6 / ::1.
    pub keep_source_ip: bool,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            socket: None,
            threads: 2,
            max_connections: 512,
            preface_timeout_ms: 5000,
            keep_source_ip: false,
        }
    }
}

impl SidecarConfig {
    /// The socket path in force for an agent `instance`.
    pub fn socket_path(&self, instance: &str) -> PathBuf {
        match &self.socket {
            Some(path) => path.clone(),
            None if instance == "default" => PathBuf::from("/run/outrider/sidecar/sidecar.sock"),
            None => PathBuf::from(format!("/run/outrider/{instance}/sidecar.sock")),
        }
    }
}

/// Restarts and upgrades without losing a connection: a starting agent takes the
/// running one's in-pod listening sockets over this unix socket (SCM_RIGHTS), so that
/// nothing queued is dropped; the old agent lets its established connections finish.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RestartConfig {
    /// The hand-over socket (mode 0600). Default `/run/outrider/handover.sock`, or
    /// `/run/outrider/<instance>/handover.sock` for an instance other than `default`.
    pub socket: Option<PathBuf>,
    /// How long an agent that handed over waits for its established connections to
    /// finish before it closes the rest. Default 30 s (Kubernetes' default grace).
    pub drain_seconds: u64,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            socket: None,
            drain_seconds: 30,
        }
    }
}

impl RestartConfig {
    /// The socket path in force for an agent `instance`.
    pub fn socket_path(&self, instance: &str) -> PathBuf {
        match &self.socket {
            Some(path) => path.clone(),
            None if instance == "default" => PathBuf::from("/run/outrider/handover.sock"),
            None => PathBuf::from(format!("/run/outrider/{instance}/handover.sock")),
        }
    }
}

/// What the agent (and a sidecar) gives back to the kernel once it serves (`memory.rs`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Once ready, unmap the pages of the binary's own code and read-only data that
    /// start-up touched; what serving runs is mapped again on first use (a minor fault,
    /// from the page cache). About 6 MiB less resident per process. Default true.
    pub release_startup_code: bool,
    /// How often freed heap memory goes back to the kernel (glibc's `malloc_trim`; also
    /// once start-up is over). 0: only that once. Default 10000 ms (jemalloc's default
    /// decay, ztunnel's allocator).
    pub trim_interval_ms: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            release_startup_code: true,
            trim_interval_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminTcpConfig {
    /// Address to listen on, e.g. `0.0.0.0:15010`. Required.
    pub addr: std::net::SocketAddr,
    /// The server's certificate chain and key (PEM). Required.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA certificates (PEM) that sign the clients' certificates. Required: every
    /// client must present a certificate it signed.
    pub client_ca_file: PathBuf,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` (one object a line) for machines. Default `text`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,access=off`. Default `info`.
    /// `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Yaml(#[from] YamlError),
    #[error("{file}: {field}: {reason}")]
    Invalid {
        file: PathBuf,
        field: &'static str,
        reason: String,
    },
}

impl Config {
    /// Reads and checks a config file; errors name the file, field and reason.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Config = yaml::from_file(path)?;
        config.validate(path)?;
        if config.cgroup.attach.is_none() {
            return Err(ConfigError::Invalid {
                file: path.to_path_buf(),
                field: "cgroup.attach",
                reason: "must name the cgroup that holds the pods".into(),
            });
        }
        Ok(config)
    }

    /// Reads and checks a sidecar's config file (`outrider sidecar --config`): the same
    /// type, without what only the node agent needs (cgroups).
    pub fn load_sidecar(path: &Path) -> Result<Self, ConfigError> {
        let config: Config = yaml::from_file(path)?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            file: file.to_path_buf(),
            field,
            reason: reason.to_string(),
        };
        if self.instance.is_empty()
            || !self
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "instance",
                "must be non-empty letters, digits, '-' or '_'",
            ));
        }
        if self.capture.outbound_port == 0 {
            return Err(invalid("capture.outboundPort", "must not be 0"));
        }
        if !self
            .capture
            .reserved_ports
            .contains(&self.capture.outbound_port)
        {
            return Err(invalid(
                "capture.reservedPorts",
                "must contain capture.outboundPort",
            ));
        }
        if self.capture.agent_mark == 0 {
            return Err(invalid("capture.agentMark", "must not be 0"));
        }
        let c = &self.capture;
        if c.delivery_mark == 0 || c.delivery_mark == c.agent_mark {
            return Err(invalid(
                "capture.deliveryMark",
                "must be neither 0 nor capture.agentMark (the agent's other sockets in a pod must not take the route back to it)",
            ));
        }
        // 0 is unspecified; 253-255 are the kernel's default, main and local tables.
        if c.delivery_table == 0 || (253..=255).contains(&c.delivery_table) {
            return Err(invalid(
                "capture.deliveryTable",
                "must not be 0, 253, 254 or 255 (the kernel's own tables)",
            ));
        }
        if !(1..32766).contains(&c.delivery_rule_priority) {
            return Err(invalid(
                "capture.deliveryRulePriority",
                "must be between 1 and 32765 (before the main table's rule)",
            ));
        }
        if self.proxy.buffer_bytes < 1024 {
            return Err(invalid("proxy.bufferBytes", "must be at least 1024"));
        }
        if self.workloads.poll_interval_ms == 0 {
            return Err(invalid("workloads.pollIntervalMs", "must not be 0"));
        }
        if self.identity.cert_ttl_seconds < 2 {
            return Err(invalid("identity.certTtlSeconds", "must be at least 2"));
        }
        let td = &self.identity.trust_domain;
        if td.is_empty()
            || !td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(invalid(
                "identity.trustDomain",
                "must be non-empty lowercase letters, digits, '-', '.', '_'",
            ));
        }
        if self.admin.max_connections == 0 {
            return Err(invalid("admin.maxConnections", "must be at least 1"));
        }
        if self.admin.preface_timeout_ms == 0 {
            return Err(invalid("admin.prefaceTimeoutMs", "must not be 0"));
        }
        if self.proxy.max_connections_per_listener == 0 {
            return Err(invalid(
                "proxy.maxConnectionsPerListener",
                "must be at least 1",
            ));
        }
        if self.telemetry.max_connections == 0 {
            return Err(invalid("telemetry.maxConnections", "must be at least 1"));
        }
        if self.telemetry.request_timeout_ms == 0 {
            return Err(invalid("telemetry.requestTimeoutMs", "must not be 0"));
        }
        if self.restart.drain_seconds == 0 {
            return Err(invalid("restart.drainSeconds", "must be at least 1"));
        }
        if self.sidecar.threads == 0 {
            return Err(invalid("sidecar.threads", "must be at least 1"));
        }
        if self.sidecar.max_connections == 0 {
            return Err(invalid("sidecar.maxConnections", "must be at least 1"));
        }
        if self.sidecar.preface_timeout_ms == 0 {
            return Err(invalid("sidecar.prefaceTimeoutMs", "must not be 0"));
        }
        self.validate_tuning(&invalid)
    }

    /// `proxy.workerThreads` (when set), `proxy.hbone.*` and `proxy.http.*`: durations
    /// between 1 ms and a day, sizes within what HTTP/2 and hyper accept.
    fn validate_tuning(
        &self,
        invalid: &dyn Fn(&'static str, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        const DAY_MS: u64 = 86_400_000;
        /// HTTP/2's largest window (RFC 9113 §6.9.1) and frame (§6.5.2).
        const MAX_WINDOW: u64 = (1 << 31) - 1;
        const MAX_FRAME: u64 = (1 << 24) - 1;
        /// More than any node's CPUs: a typo of a few zeros too many is an error, not
        /// thousands of threads.
        const MAX_WORKER_THREADS: u64 = 1024;
        let (h, http) = (&self.proxy.hbone, &self.proxy.http);
        let as_u64 = |n: usize| n as u64;
        let checks: [(&'static str, u64, u64, u64); 22] = [
            (
                "proxy.workerThreads",
                self.proxy.worker_threads.map_or(1, as_u64),
                1,
                MAX_WORKER_THREADS,
            ),
            ("proxy.hbone.idleTimeoutMs", h.idle_timeout_ms, 1, DAY_MS),
            ("proxy.hbone.dialTimeoutMs", h.dial_timeout_ms, 1, DAY_MS),
            (
                "proxy.hbone.tlsHandshakeTimeoutMs",
                h.tls_handshake_timeout_ms,
                1,
                DAY_MS,
            ),
            (
                "proxy.hbone.h2HandshakeTimeoutMs",
                h.h2_handshake_timeout_ms,
                1,
                DAY_MS,
            ),
            (
                "proxy.hbone.keepaliveIntervalMs",
                h.keepalive_interval_ms,
                1,
                DAY_MS,
            ),
            (
                "proxy.hbone.keepaliveTimeoutMs",
                h.keepalive_timeout_ms,
                1,
                DAY_MS,
            ),
            (
                "proxy.hbone.maxStreamsPerConnection",
                as_u64(h.max_streams_per_connection),
                1,
                MAX_WINDOW,
            ),
            (
                "proxy.hbone.maxConcurrentStreams",
                u64::from(h.max_concurrent_streams),
                1,
                MAX_WINDOW,
            ),
            (
                "proxy.hbone.streamWindowBytes",
                u64::from(h.stream_window_bytes),
                65_535,
                MAX_WINDOW,
            ),
            (
                "proxy.hbone.connectionWindowBytes",
                u64::from(h.connection_window_bytes),
                65_535,
                MAX_WINDOW,
            ),
            (
                "proxy.hbone.maxFrameBytes",
                u64::from(h.max_frame_bytes),
                16_384,
                MAX_FRAME,
            ),
            (
                "proxy.hbone.maxSendBufferBytes",
                as_u64(h.max_send_buffer_bytes),
                1024,
                u64::from(u32::MAX),
            ),
            (
                "proxy.hbone.maxWriteChunkBytes",
                as_u64(h.max_write_chunk_bytes),
                1024,
                u64::from(u32::MAX),
            ),
            (
                "proxy.hbone.maxHeaderListBytes",
                u64::from(h.max_header_list_bytes),
                1024,
                u64::from(u32::MAX),
            ),
            (
                "proxy.http.detect.firstByteTimeoutMs",
                http.detect.first_byte_timeout_ms,
                1,
                DAY_MS,
            ),
            (
                "proxy.http.detect.timeoutMs",
                http.detect.timeout_ms,
                1,
                DAY_MS,
            ),
            (
                "proxy.http.detect.maxBytes",
                as_u64(http.detect.max_bytes),
                64,
                1 << 20,
            ),
            (
                "proxy.http.headerReadTimeoutMs",
                http.header_read_timeout_ms,
                1,
                DAY_MS,
            ),
            (
                "proxy.http.maxHeadBytes",
                as_u64(http.max_head_bytes),
                8192,
                u64::from(u32::MAX),
            ),
            (
                "proxy.http.maxConcurrentStreams",
                u64::from(http.max_concurrent_streams),
                1,
                MAX_WINDOW,
            ),
            (
                "proxy.http.denyDrainTimeoutMs",
                http.deny_drain_timeout_ms,
                1,
                DAY_MS,
            ),
        ];
        for (field, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(invalid(
                    field,
                    &format!("must be between {min} and {max}, not {value}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults_fill_what_is_missing() {
        let (_d, path) = write("cgroup: {attach: /sys/fs/cgroup/pods}\n");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.capture.outbound_port, 15001);
        assert_eq!(
            config.capture.reserved_ports,
            DEFAULT_RESERVED_PORTS.to_vec()
        );
        assert_eq!(config.workloads.poll_interval_ms, 250);
        assert_eq!(config.capture.fail_policy, FailPolicy::FailClosed);
        assert_eq!(
            config.proxy.http.escaped_slashes,
            EscapedSlashes::RejectRequest
        );
        assert_eq!(
            config.capture.pin_dir(&config.instance),
            Path::new("/sys/fs/bpf/outrider/default")
        );
    }

    #[test]
    fn fail_policy_takes_its_documented_names() {
        let (_d, path) = write("cgroup: {attach: /x}\ncapture: {failPolicy: fail-open}\n");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.capture.fail_policy, FailPolicy::FailOpen);
        let (_d, path) = write("cgroup: {attach: /x}\ncapture: {failPolicy: open}\n");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("failPolicy"), "{err}");
    }

    #[test]
    fn escaped_slashes_take_envoys_names() {
        for (name, action) in [
            ("reject-request", EscapedSlashes::RejectRequest),
            ("keep-unchanged", EscapedSlashes::KeepUnchanged),
            ("unescape-and-forward", EscapedSlashes::UnescapeAndForward),
        ] {
            let (_d, path) = write(&format!(
                "cgroup: {{attach: /x}}\nproxy: {{http: {{escapedSlashes: {name}}}}}\n"
            ));
            assert_eq!(
                Config::load(&path).unwrap().proxy.http.escaped_slashes,
                action
            );
        }
        let (_d, path) = write("cgroup: {attach: /x}\nproxy: {http: {escapedSlashes: decode}}\n");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("escapedSlashes"), "{err}");
    }

    #[test]
    fn unknown_field_is_rejected_with_its_location() {
        let (_d, path) = write("cgroup: {attach: /x}\ncapture:\n  outboundPrt: 1\n");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("agent.yaml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("outboundPrt"), "{err}");
    }

    #[test]
    fn access_lines_are_chosen_by_kind_and_a_misspelt_one_is_refused() {
        let defaults = Config::default().telemetry.access_log;
        assert!(defaults.connections && !defaults.requests);
        let (_d, path) = write("cgroup: {attach: /x}\ntelemetry:\n  accessLog: {requests: true}\n");
        let config = Config::load(&path).unwrap();
        assert!(config.telemetry.access_log.requests);
        assert!(config.telemetry.access_log.connections);
        let (_d, path) = write("cgroup: {attach: /x}\ntelemetry:\n  accessLog: {request: true}\n");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("unknown field `request`"),
            "{err}"
        );
    }

    #[test]
    fn memory_release_is_on_by_default_and_can_be_turned_off() {
        let defaults = Config::default().memory;
        assert!(defaults.release_startup_code);
        assert_eq!(defaults.trim_interval_ms, 10_000);
        let (_d, path) =
            write("cgroup: {attach: /x}\nmemory: {releaseStartupCode: false, trimIntervalMs: 0}\n");
        let memory = Config::load(&path).unwrap().memory;
        assert!(!memory.release_startup_code);
        assert_eq!(memory.trim_interval_ms, 0);
        let (_d, path) = write("cgroup: {attach: /x}\nmemory: {trimInterval: 5}\n");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("unknown field `trimInterval`"), "{err}");
    }

    /// The README's `agent.yaml` is a config the agent reads, with the defaults it shows.
    #[test]
    fn the_readmes_agent_yaml_loads_and_shows_the_defaults() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let start = readme
            .find("# agent.yaml")
            .expect("README.md: the agent.yaml example");
        let block = &readme[start..];
        let block = &block[..block.find("```").expect("README.md: the example's end")];
        let (_d, path) = write(block);
        let config = Config::load(&path).unwrap_or_else(|e| panic!("README.md's agent.yaml: {e}"));
        let defaults = Config::default();
        assert_eq!(config.memory, defaults.memory);
        assert_eq!(config.restart.drain_seconds, defaults.restart.drain_seconds);
        assert_eq!(config.proxy.hbone, defaults.proxy.hbone);
        assert_eq!(config.telemetry.access_log, defaults.telemetry.access_log);
    }

    #[test]
    fn bad_cidr_is_rejected_with_its_field() {
        let (_d, path) = write("cgroup: {attach: /x}\ncapture:\n  excludeCidrs: [10.0.0.0/33]\n");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("capture.excludeCidrs[0]"), "{err}");
    }

    #[test]
    fn the_deployed_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/configmap.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let map: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        let agent = map["data"]["agent.yaml"].as_str().expect("data.agent.yaml");
        let (_d, file) = write(agent);
        let config = Config::load(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(config.workloads.kubernetes.is_some());
        assert!(config.workloads.file.is_none());
        assert_eq!(
            config.admin.socket_path(&config.instance),
            Path::new("/run/outrider/admin.sock")
        );
        assert_eq!(
            config.capture.kubelet_cgroup.as_deref(),
            Some(Path::new("system.slice/kubelet.service")),
            "strict pods serve the kubelet's probes"
        );
    }

    #[test]
    fn the_delivery_route_keeps_off_the_agents_mark_and_the_kernels_tables() {
        let (_d, path) = write("cgroup: {attach: /x}\n");
        let config = Config::load(&path).unwrap();
        assert_ne!(config.capture.delivery_mark, config.capture.agent_mark);
        for (setting, field) in [
            ("deliveryMark: 0x4f52", "capture.deliveryMark"),
            ("deliveryMark: 0", "capture.deliveryMark"),
            ("deliveryTable: 254", "capture.deliveryTable"),
            (
                "deliveryRulePriority: 32766",
                "capture.deliveryRulePriority",
            ),
            ("deliveryRulePriority: 0", "capture.deliveryRulePriority"),
        ] {
            let (_d, path) = write(&format!("cgroup: {{attach: /x}}\ncapture: {{{setting}}}\n"));
            let err = Config::load(&path).unwrap_err().to_string();
            assert!(err.contains(field), "{setting}: {err}");
        }
    }

    #[test]
    fn missing_attach_cgroup_is_an_error() {
        let (_d, path) = write("instance: a\n");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("cgroup.attach"), "{err}");
    }

    #[test]
    fn tuning_defaults_are_todays_constants() {
        let (_d, path) = write("cgroup: {attach: /x}\n");
        let config = Config::load(&path).unwrap();
        let (h, http) = (&config.proxy.hbone, &config.proxy.http);
        assert_eq!(h.max_streams_per_connection, 100);
        assert_eq!((h.idle_timeout_ms, h.dial_timeout_ms), (60_000, 10_000));
        assert_eq!(h.tls_handshake_timeout_ms, 10_000);
        assert_eq!(h.stream_window_bytes, 4 << 20);
        assert_eq!(h.connection_window_bytes, 16 << 20);
        assert_eq!(h.max_frame_bytes, 256 << 10);
        assert_eq!(
            (h.keepalive_interval_ms, h.keepalive_timeout_ms),
            (5000, 5000)
        );
        assert_eq!(
            (http.detect.first_byte_timeout_ms, http.detect.timeout_ms),
            (100, 2000)
        );
        assert_eq!(http.header_read_timeout_ms, 30_000);
        assert_eq!(http.max_head_bytes, 400 << 10);
    }

    #[test]
    fn tuning_is_read_from_nested_keys() {
        let (_d, path) = write(
            "cgroup: {attach: /x}\nproxy:\n  connectTimeoutMs: 700\n  hbone: {maxStreamsPerConnection: 7, tlsHandshakeTimeoutMs: 1500}\n  http:\n    escapedSlashes: keep-unchanged\n    maxHeadBytes: 9000\n    detect: {firstByteTimeoutMs: 250}\n",
        );
        let config = Config::load(&path).unwrap();
        assert_eq!(config.proxy.connect_timeout_ms, 700);
        assert_eq!(config.proxy.hbone.max_streams_per_connection, 7);
        assert_eq!(config.proxy.hbone.tls_handshake_timeout_ms, 1500);
        assert_eq!(config.proxy.hbone.idle_timeout_ms, 60_000);
        assert_eq!(config.proxy.http.max_head_bytes, 9000);
        assert_eq!(config.proxy.http.detect.first_byte_timeout_ms, 250);
        assert_eq!(config.proxy.http.detect.timeout_ms, 2000);
        assert_eq!(
            config.proxy.http.escaped_slashes,
            EscapedSlashes::KeepUnchanged
        );
    }

    #[test]
    fn worker_threads_default_to_the_runtimes_choice_and_out_of_range_is_refused() {
        assert_eq!(Config::default().proxy.worker_threads, None);
        let (_d, path) = write("cgroup: {attach: /x}\nproxy: {workerThreads: 1}\n");
        assert_eq!(Config::load(&path).unwrap().proxy.worker_threads, Some(1));
        for threads in [0, 1025, 100_000] {
            let (_d, path) = write(&format!(
                "cgroup: {{attach: /x}}\nproxy: {{workerThreads: {threads}}}\n"
            ));
            let err = Config::load(&path).unwrap_err().to_string();
            assert!(
                err.contains(&format!(
                    "proxy.workerThreads: must be between 1 and 1024, not {threads}"
                )),
                "{threads}: {err}"
            );
        }
    }

    #[test]
    fn zero_or_absurd_tuning_names_its_key() {
        for (setting, field) in [
            ("hbone: {idleTimeoutMs: 0}", "proxy.hbone.idleTimeoutMs"),
            (
                "hbone: {tlsHandshakeTimeoutMs: 0}",
                "proxy.hbone.tlsHandshakeTimeoutMs",
            ),
            (
                "hbone: {dialTimeoutMs: 86400001}",
                "proxy.hbone.dialTimeoutMs",
            ),
            (
                "hbone: {maxStreamsPerConnection: 0}",
                "proxy.hbone.maxStreamsPerConnection",
            ),
            ("hbone: {maxFrameBytes: 1024}", "proxy.hbone.maxFrameBytes"),
            (
                "hbone: {maxFrameBytes: 16777216}",
                "proxy.hbone.maxFrameBytes",
            ),
            (
                "hbone: {streamWindowBytes: 2147483648}",
                "proxy.hbone.streamWindowBytes",
            ),
            (
                "hbone: {maxWriteChunkBytes: 0}",
                "proxy.hbone.maxWriteChunkBytes",
            ),
            (
                "http: {detect: {firstByteTimeoutMs: 0}}",
                "proxy.http.detect.firstByteTimeoutMs",
            ),
            (
                "http: {detect: {maxBytes: 10}}",
                "proxy.http.detect.maxBytes",
            ),
            ("http: {maxHeadBytes: 100}", "proxy.http.maxHeadBytes"),
            (
                "http: {maxConcurrentStreams: 0}",
                "proxy.http.maxConcurrentStreams",
            ),
        ] {
            let (_d, path) = write(&format!("cgroup: {{attach: /x}}\nproxy: {{{setting}}}\n"));
            let err = Config::load(&path).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{field}: must be between")),
                "{setting}: {err}"
            );
        }
        // The sidecar reads the same keys, checked the same way.
        let (_d, path) = write("proxy: {hbone: {keepaliveTimeoutMs: 0}}\n");
        let err = Config::load_sidecar(&path).unwrap_err().to_string();
        assert!(err.contains("proxy.hbone.keepaliveTimeoutMs"), "{err}");
    }
}
