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
    /// Upstream connect timeout. Default 5000 ms.
    pub connect_timeout_ms: u64,
    /// Largest copy buffer per direction: each starts at 4 KiB and doubles while reads
    /// fill it, so only bulk flows grow this far (as ztunnel's). Default 256 KiB, which
    /// moved ~20% more in bulk than 64 KiB on the benchmark's testbed.
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
    /// HTTP requests arriving at an enrolled pod.
    pub http: HttpProxyConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5000,
            buffer_bytes: 256 * 1024,
            backlog: 1024,
            max_connections_per_listener: 32768,
            http: HttpProxyConfig::default(),
        }
    }
}

/// How the destination's agent treats the HTTP requests it checks and forwards (their
/// paths are normalized before policy, and the app gets the normalized path; see
/// `proxy::http::path`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpProxyConfig {
    /// What a path holding an encoded `/` or `\` (`%2F`, `%5C`, any case) gets, as
    /// Envoy's `path_with_escaped_slashes_action`. Default `reject-request` (400).
    pub escaped_slashes: EscapedSlashes,
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
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics_addr: std::net::SocketAddr::from(([0, 0, 0, 0], 15020)),
            max_connections: 64,
            request_timeout_ms: 10_000,
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
    /// node).
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
}
