//! The sidecars of the testbed's pods in sidecar mode, started as a kubelet would start
//! an injected pod: first `outrider sidecar-init` in the pod (its iptables rules), then
//! `outrider sidecar` in the pod's network namespace and cgroup, which gets its
//! certificate and the mesh from its node's agent, with the node agent's settings. Each
//! logs to `DIR/<node>/sidecar-<namespace>-<name>.log`; they end with their pod's cgroup.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{
    agents, exec,
    state::{PodState, State},
};
use crate::config::Config;

/// How long a sidecar gets to say "sidecar ready".
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the sidecar of `pod` logs.
pub fn log_path(dir: &Path, pod: &PodState) -> PathBuf {
    State::node_dir(dir, &pod.node).join(format!("sidecar-{}-{}.log", pod.namespace, pod.name))
}

/// Sets up and starts the sidecar of every pod in sidecar mode, and waits until all are
/// ready. Their node agents must be running; a sidecar's settings are its node agent's.
pub fn start(dir: &Path, state: &mut State) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the outrider executable")?;
    let mut children: Vec<(usize, Child)> = Vec::new();
    let result = start_all(dir, state, &exe, &mut children)
        .and_then(|()| wait_ready(dir, state, &mut children));
    for (_, child) in &mut children {
        let _ = child.try_wait();
    }
    result
}

fn start_all(
    dir: &Path,
    state: &mut State,
    exe: &Path,
    children: &mut Vec<(usize, Child)>,
) -> anyhow::Result<()> {
    for (k, pod) in state.pods.iter_mut().enumerate() {
        if !pod.sidecar {
            continue;
        }
        // The node agent's settings, its socket for sidecars included.
        let config_path = agents::config_path(dir, &pod.node);
        let config = Config::load(&config_path)?;

        // The init container: the pod's iptables rules.
        let mut init = Command::new(exe);
        init.arg("sidecar-init")
            .arg("--mark")
            .arg(config.capture.agent_mark.to_string())
            .stdin(Stdio::null());
        exec::enter(&mut init, &pod.netns, &pod.cgroup, false)?;
        let out = init
            .output()
            .with_context(|| format!("cannot run sidecar-init in pod {}", pod.key()))?;
        if !out.status.success() {
            bail!(
                "sidecar-init in pod {} failed ({}): {}",
                pod.key(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }

        let log = log_path(dir, pod);
        std::fs::write(&log, "").with_context(|| format!("cannot write {}", log.display()))?;
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("sidecar")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        exec::enter(&mut cmd, &pod.netns, &pod.cgroup, true)?;
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start the sidecar of pod {}", pod.key()))?;
        pod.sidecar_pid = Some(child.id());
        children.push((k, child));
    }
    Ok(())
}

fn wait_ready(dir: &Path, state: &State, children: &mut [(usize, Child)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut waiting: Vec<usize> = (0..children.len()).collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for i in waiting {
            let (k, child) = &mut children[i];
            let pod = &state.pods[*k];
            let log = log_path(dir, pod);
            if agents::log_says(&log, "sidecar ready") {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "the sidecar of pod {} exited ({status}) before it was ready; last lines of {}:\n{}",
                    pod.key(),
                    log.display(),
                    agents::tail(&log, 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the sidecar of pod {} is not ready after {}s; last lines of {}:\n{}",
                    pod.key(),
                    READY_TIMEOUT.as_secs(),
                    log.display(),
                    agents::tail(&log, 20)
                );
            }
            still.push(i);
        }
        waiting = still;
        if !waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
