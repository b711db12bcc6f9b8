//! The sidecars of the testbed's pods in sidecar mode, started as a kubelet would start
//! an injected pod: first `outrider sidecar-init` in the pod (its iptables rules), then
//! `outrider sidecar` in the pod's network namespace and cgroup, which gets its
//! certificate and the mesh from its node's agent, with the node agent's settings. Each
//! logs to `DIR/<node>/sidecar-<namespace>-<name>.log`; they end with their pod's cgroup.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};

use super::{
    agents, exec,
    state::{PodState, State},
};
use outrider::config::Config;

/// How long a sidecar gets to say "sidecar ready".
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the sidecar of `pod` logs.
pub fn log_path(dir: &Path, pod: &PodState) -> PathBuf {
    State::node_dir(dir, &pod.node).join(format!("sidecar-{}-{}.log", pod.namespace, pod.name))
}

/// Sets up and starts the sidecar of every pod in sidecar mode, and waits until all are
/// ready. Their node agents must be running; a sidecar's settings are its node agent's.
pub fn start(dir: &Path, state: &mut State) -> anyhow::Result<()> {
    let exe = agents::outrider_exe()?;
    let mut started = Vec::new();
    let result = start_all(dir, state, &exe, &mut started)
        .and_then(|()| agents::wait_ready(&mut started, "sidecar ready", READY_TIMEOUT));
    for s in &mut started {
        let _ = s.child.try_wait();
    }
    result
}

fn start_all(
    dir: &Path,
    state: &mut State,
    exe: &Path,
    started: &mut Vec<agents::Started>,
) -> anyhow::Result<()> {
    for pod in state.pods.iter_mut() {
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
        if config.sidecar.keep_source_ip {
            // As `outriderctl inject --keep-source-ip` sets it up.
            let c = &config.capture;
            init.arg("--keep-source-ip")
                .args(["--delivery-mark", &c.delivery_mark.to_string()])
                .args(["--delivery-table", &c.delivery_table.to_string()])
                .args([
                    "--delivery-rule-priority",
                    &c.delivery_rule_priority.to_string(),
                ]);
        }
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
        let mut cmd = Command::new(exe);
        cmd.arg("sidecar")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null());
        agents::log_to(&mut cmd, &log)?;
        exec::enter(&mut cmd, &pod.netns, &pod.cgroup, true)?;
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start the sidecar of pod {}", pod.key()))?;
        pod.sidecar_pid = Some(child.id());
        started.push(agents::Started {
            what: format!("the sidecar of pod {}", pod.key()),
            log,
            child,
        });
    }
    Ok(())
}
