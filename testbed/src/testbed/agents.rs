//! One agent per node: its files (`DIR/<node>/{agent.yaml,workloads.yaml,agent.log}`),
//! starting it inside the node (network namespace, `<node>/agent` cgroup), waiting until
//! it says it is ready, and stopping it.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::{sys::signal::Signal, unistd::Pid};

use super::{
    cgroup, endpoints, exec,
    state::{self, AGENT_PID_FILE, AgentState, NodeState, State},
};
use outrider::{
    config::{
        AdminConfig, CaptureConfig, CgroupConfig, Config, IdentityConfig, LogConfig, LogFormat,
        PolicyConfig, RestartConfig, SidecarConfig, WorkloadSourceConfig,
    },
    identity,
    workloads::{Mode, MtlsMode, NamespaceSettings, SourceIp, Workload, WorkloadSet},
};

/// How long agents get to say "agent ready".
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an agent gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub fn workloads_path(dir: &Path, node: &str) -> PathBuf {
    State::node_dir(dir, node).join("workloads.yaml")
}

pub fn config_path(dir: &Path, node: &str) -> PathBuf {
    State::node_dir(dir, node).join("agent.yaml")
}

pub fn log_path(dir: &Path, node: &str) -> PathBuf {
    State::node_dir(dir, node).join("agent.log")
}

pub fn agent_cgroup(node: &NodeState) -> PathBuf {
    node.cgroup.join("agent")
}

/// The cluster's workloads as every agent sees them: all pods, each with its node and
/// ports, the namespaces' mTLS modes, and the Services with their endpoints listed (see
/// [`endpoints`]).
pub fn workload_set(state: &State) -> WorkloadSet {
    WorkloadSet {
        namespaces: state
            .strict_namespaces
            .iter()
            .chain(&state.loopback_namespaces)
            .map(|ns| {
                let settings = NamespaceSettings {
                    mtls: if state.strict_namespaces.contains(ns) {
                        MtlsMode::Strict
                    } else {
                        MtlsMode::Permissive
                    },
                    source_ip: if state.loopback_namespaces.contains(ns) {
                        SourceIp::Loopback
                    } else {
                        SourceIp::Client
                    },
                };
                (ns.clone(), settings)
            })
            .collect(),
        workloads: state
            .pods
            .iter()
            .map(|p| Workload {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                node: Some(p.node.clone()),
                uid: p.uid.clone(),
                service_account: p.service_account.clone(),
                labels: p.labels.clone(),
                ips: vec![p.ipv4.into(), p.ipv6.into()],
                netns: p.netns.clone(),
                cgroup: Some(p.cgroup.clone()),
                mode: if p.sidecar {
                    Mode::Sidecar
                } else if p.enrolled {
                    Mode::Node
                } else {
                    Mode::None
                },
                ports: p.ports.clone(),
            })
            .collect(),
        services: state
            .services
            .iter()
            .map(|s| endpoints::with_endpoints(s, &state.pods))
            .collect(),
    }
}

/// Where the agent of `node` serves its node's sidecars.
pub fn sidecar_socket_path(dir: &Path, node: &str) -> PathBuf {
    State::node_dir(dir, node).join("sidecar.sock")
}

/// Where the agent of `node` serves its admin API.
pub fn admin_socket_path(dir: &Path, node: &str) -> PathBuf {
    State::node_dir(dir, node).join("admin.sock")
}

/// Writes every node's workload file from `state` (atomically: agents read them at any
/// time).
pub fn write_workload_files(dir: &Path, state: &State) -> anyhow::Result<()> {
    let text = serde_yaml_ng::to_string(&workload_set(state))
        .context("cannot serialize a workload file")?;
    for node in &state.nodes {
        state::write_atomically(&workloads_path(dir, &node.name), text.as_bytes())?;
    }
    Ok(())
}

/// Writes the testbed's CA, every node's workload file and agent config (also without
/// `--agents`, so that an agent can be started by hand and `enroll` works).
pub fn write_files(
    dir: &Path,
    state: &State,
    cgroup_mount: &Path,
    base: &Config,
) -> anyhow::Result<()> {
    if !state.ca_dir.join("ca.crt").exists() {
        identity::ca::init(&state.ca_dir, &identity::ca::InitOptions::default())
            .context("cannot make the testbed's CA")?;
    }
    std::fs::create_dir_all(&state.policy_dir)
        .with_context(|| format!("cannot create {}", state.policy_dir.display()))?;
    for node in &state.nodes {
        let node_dir = State::node_dir(dir, &node.name);
        std::fs::create_dir_all(&node_dir)
            .with_context(|| format!("cannot create {}", node_dir.display()))?;
    }
    write_workload_files(dir, state)?;
    for node in &state.nodes {
        let path = workloads_path(dir, &node.name);
        let config = Config {
            node_name: node.name.clone(),
            instance: format!("{}-{}", state.prefix, node.name),
            // The testbed's workload file, unless the spec gives a Kubernetes API.
            workloads: WorkloadSourceConfig {
                file: base.workloads.kubernetes.is_none().then_some(path),
                ..base.workloads.clone()
            },
            cgroup: CgroupConfig {
                mount: Some(cgroup_mount.to_path_buf()),
                attach: Some(node.cgroup.clone()),
            },
            log: LogConfig {
                format: LogFormat::Json,
                ..base.log.clone()
            },
            identity: IdentityConfig {
                ca_dir: state.ca_dir.clone(),
                ..base.identity.clone()
            },
            policy: PolicyConfig {
                dir: Some(state.policy_dir.clone()),
                ..base.policy.clone()
            },
            admin: AdminConfig {
                socket: Some(admin_socket_path(dir, &node.name)),
                ..base.admin.clone()
            },
            sidecar: SidecarConfig {
                socket: Some(sidecar_socket_path(dir, &node.name)),
                ..base.sidecar.clone()
            },
            capture: CaptureConfig {
                pin_root: super::bpffs::path(dir, &state.prefix),
                kubelet_cgroup: Some(super::kubelet::cgroup(node)),
                ..base.capture.clone()
            },
            restart: RestartConfig {
                socket: Some(State::node_dir(dir, &node.name).join("handover.sock")),
                ..base.restart.clone()
            },
            ..base.clone()
        };
        let text = serde_yaml_ng::to_string(&config).context("cannot serialize an agent config")?;
        state::write_atomically(&config_path(dir, &node.name), text.as_bytes())?;
    }
    Ok(())
}

/// Starts every node's agent, records it in `state` and `DIR/<node>/agent.pid`, and waits
/// until all are ready. On error the agents started stay (the caller tears down).
pub fn start(dir: &Path, state: &mut State) -> anyhow::Result<()> {
    let exe = outrider_exe()?;
    let mut started = Vec::new();
    let result = start_all(dir, state, &exe, &mut started)
        .and_then(|()| wait_ready(&mut started, "agent ready", READY_TIMEOUT));
    // Children are waited for by whoever outlives us (after `up`, init); if we failed,
    // `down` kills them. Reap those already gone, so no zombie stays behind.
    for s in &mut started {
        let _ = s.child.try_wait();
    }
    result
}

/// Where the testbed's agents and sidecars find the `outrider` binary: the variable that
/// names it, else the binary of that name beside the running one (both are built into
/// the same target directory).
pub const OUTRIDER_BIN_ENV: &str = "OUTRIDER_BIN";

/// The `outrider` executable the testbed runs as its agents and sidecars: `$OUTRIDER_BIN`,
/// or `outrider` beside the running executable.
pub fn outrider_exe() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(OUTRIDER_BIN_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{OUTRIDER_BIN_ENV} names {}, which is no file",
                path.display()
            );
        }
        return Ok(path);
    }
    let me = std::env::current_exe().context("cannot find the running executable")?;
    let beside = me.with_file_name("outrider");
    if !beside.is_file() {
        bail!(
            "no outrider binary beside {} (build it: cargo build --release -p outrider), \
             nor in ${OUTRIDER_BIN_ENV}",
            me.display()
        );
    }
    Ok(beside)
}

/// Sends `cmd`'s stdout and stderr to a new, empty `log`.
pub fn log_to(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    std::fs::write(log, "").with_context(|| format!("cannot write {}", log.display()))?;
    append_to(cmd, log)
}

/// Appends `cmd`'s stdout and stderr to `log`, which exists.
fn append_to(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let out = std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("cannot open {}", log.display()))?;
    cmd.stdout(out).stderr(err);
    Ok(())
}

fn start_all(
    dir: &Path,
    state: &mut State,
    exe: &Path,
    started: &mut Vec<Started>,
) -> anyhow::Result<()> {
    for node in &mut state.nodes {
        // A new testbed, a new log.
        started.push(spawn(dir, node, exe, false)?);
    }
    Ok(())
}

/// Starts an agent for `node`, logging to its log (appending, with `append`), and
/// records it as the node's agent.
fn spawn(dir: &Path, node: &mut NodeState, exe: &Path, append: bool) -> anyhow::Result<Started> {
    let config = config_path(dir, &node.name);
    let log = log_path(dir, &node.name);
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null());
    if append {
        append_to(&mut cmd, &log)?;
    } else {
        log_to(&mut cmd, &log)?;
    }
    exec::enter(&mut cmd, &node.netns, &agent_cgroup(node), true)?;
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start the agent of node {}", node.name))?;
    let pid = child.id();
    let pid_file = State::node_dir(dir, &node.name).join(AGENT_PID_FILE);
    std::fs::write(&pid_file, format!("{pid}\n"))
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    node.agent = Some(AgentState {
        pid,
        config,
        log: log.clone(),
        workloads: workloads_path(dir, &node.name),
    });
    Ok(Started {
        what: format!("the agent of node {}", node.name),
        log,
        child,
    })
}

/// Starts another agent on `node` — beside the running one, which hands over to it, or
/// after it died — appending to the node's log, records it, saves the state and waits
/// until it is ready. The caller owns the returned process (and the old one). `exe` is
/// the `outrider` executable.
pub fn start_another(
    dir: &Path,
    state: &mut State,
    node: &str,
    exe: &Path,
) -> anyhow::Result<Started> {
    let log = log_path(dir, node);
    let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let n = state
        .nodes
        .iter_mut()
        .find(|n| n.name == node)
        .with_context(|| format!("no node {node}"))?;
    let mut started = spawn(dir, n, exe, true)?;
    state.save(dir)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read(&log).unwrap_or_default();
        let new = String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default());
        if new.lines().any(|l| is_event_line(l, "agent ready")) {
            return Ok(started);
        }
        if let Ok(Some(status)) = started.child.try_wait() {
            bail!(
                "the new agent of node {node} exited ({status}) before it was ready; last lines of {}:\n{}",
                log.display(),
                tail(&log, 20)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the new agent of node {node} is not ready after {}s; last lines of {}:\n{}",
                READY_TIMEOUT.as_secs(),
                log.display(),
                tail(&log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when a line of a JSON log is the event `message` (e.g. "agent ready").
fn is_event_line(line: &str, message: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v["fields"]["message"] == message)
}

/// True when the JSON log at `path` holds the event `message`.
pub fn log_says(path: &Path, message: &str) -> bool {
    std::fs::read_to_string(path)
        .map(|text| text.lines().any(|l| is_event_line(l, message)))
        .unwrap_or(false)
}

/// The last `n` lines of `path`, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// A daemon the testbed started and waits for: what it is (for messages), its log.
pub struct Started {
    pub what: String,
    pub log: PathBuf,
    pub child: Child,
}

/// Waits until every one of `started` has logged the event `message` (e.g. "agent
/// ready"); fails naming the first that exited first or is not ready after `timeout`,
/// with the end of its log.
pub fn wait_ready(started: &mut [Started], message: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut waiting: Vec<usize> = (0..started.len()).collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for k in waiting {
            let Started { what, log, child } = &mut started[k];
            if log_says(log, message) {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "{what} exited ({status}) before it was ready; last lines of {}:\n{}",
                    log.display(),
                    tail(log, 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{what} is not ready after {}s; last lines of {}:\n{}",
                    timeout.as_secs(),
                    log.display(),
                    tail(log, 20)
                );
            }
            still.push(k);
        }
        waiting = still;
        if !waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// The PIDs of the agents of a testbed state directory: from the state if there is one,
/// and from `DIR/<node>/agent.pid` (written before the state, when `up` died half way).
pub fn recorded_pids(dir: &Path, state: Option<&State>) -> Vec<u32> {
    let mut pids: Vec<u32> = state
        .map(|s| {
            s.nodes
                .iter()
                .filter_map(|n| n.agent.as_ref().map(|a| a.pid))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            let file = entry.path().join(AGENT_PID_FILE);
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(pid) = text.trim().parse::<u32>()
                && !pids.contains(&pid)
            {
                pids.push(pid);
            }
        }
    }
    pids
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Stops the agents `pids` that are still in the testbed `prefix`'s cgroups (a recycled
/// PID is never touched): SIGTERM, then SIGKILL after a while.
pub fn stop(pids: &[u32], prefix: &str) {
    let ours: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&pid| alive(pid) && cgroup::pid_is_below(pid, prefix))
        .collect();
    for &pid in &ours {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while ours.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in &ours {
        if alive(pid) && cgroup::pid_is_below(pid, prefix) {
            eprintln!(
                "outrider: agent {pid} did not stop within {}s; killing it",
                STOP_TIMEOUT.as_secs()
            );
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_ready_line() {
        let line = r#"{"timestamp":"2025-01-01T00:00:00Z","level":"INFO","fields":{"message":"agent ready","workloads":2},"target":"outrider::agent"}"#;
        assert!(is_event_line(line, "agent ready"));
        assert!(!is_event_line(
            &line.replace("agent ready", "agent starting"),
            "agent ready"
        ));
        assert!(!is_event_line("agent ready", "agent ready"));
    }

    #[test]
    fn the_workload_file_lists_services_with_endpoints_and_reads_back() {
        use outrider::workloads::{PodPort, Service, ServicePort, TargetPort};
        let mut web = super::endpoints::test_pod("shop", "web", "node-a", 1, 1);
        web.ports = vec![PodPort {
            name: Some("http".into()),
            container_port: 8080,
        }];
        let state = State {
            prefix: "orabc123".into(),
            cgroup_root: "/cg".into(),
            nodes: Vec::new(),
            pods: vec![web],
            strict_namespaces: vec!["shop".into()],
            loopback_namespaces: Vec::new(),
            ca_dir: "/ca".into(),
            policy_dir: "/p".into(),
            services: vec![Service {
                namespace: "shop".into(),
                name: "web".into(),
                cluster_ips: vec!["198.18.96.1".parse().unwrap()],
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(TargetPort::Name("http".into())),
                }],
                selector: Some([("app".to_string(), "web".to_string())].into()),
                endpoints: None,
                internal_traffic_policy: Default::default(),
                session_affinity: Default::default(),
            }],
        };
        let set = workload_set(&state);
        let text = serde_yaml_ng::to_string(&set).unwrap();
        let back = WorkloadSet::parse(Path::new("workloads.yaml"), &text).unwrap();
        assert_eq!(back, set);
        assert_eq!(back.workloads[0].ports[0].container_port, 8080);
        let eps = back.services[0].endpoints.as_ref().unwrap();
        assert_eq!(eps.len(), 1, "the Service is IPv4 only: {eps:?}");
        assert_eq!(eps[0].ports["http"], 8080);
        assert_eq!(eps[0].pod.as_deref(), Some("shop/web"));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "1\n2\n3\n").unwrap();
        assert_eq!(tail(&path, 2), "2\n3");
        assert_eq!(tail(&path, 10), "1\n2\n3");
    }
}
