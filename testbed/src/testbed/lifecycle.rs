//! `testbed up` and `testbed down`: the order things are made and removed in, and the
//! promise that a failed or crashed `up` leaves nothing `down` cannot find (the prefix is
//! written to the state directory before anything is made).
use std::{fmt::Write as _, path::Path, process::ExitCode};

use anyhow::{Context, bail};

use outrider::config::Config;

use super::{
    agents, bpffs, cgroup, exec, kube_proxy, net, plan, sidecars,
    spec::Spec,
    state::{AGENT_PID_FILE, PREFIX_FILE, STATE_FILE, State},
};

/// `testbed up`.
pub fn up(spec_path: &Path, dir: &Path, with_agents: bool) -> anyhow::Result<ExitCode> {
    net::check_tools()?;
    let spec = Spec::load(spec_path)?;
    if !spec.services.is_empty() {
        kube_proxy::check_tools()?;
    }
    let mount = cgroup::find_mount()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    for file in [PREFIX_FILE, STATE_FILE] {
        if dir.join(file).exists() {
            bail!(
                "{} already holds a testbed (see {}); run `outrider-testbed testbed down --state {}` first",
                dir.display(),
                dir.join(file).display(),
                dir.display()
            );
        }
    }
    let tag = std::env::var("OUTRIDER_TESTBED_TAG")
        .ok()
        .filter(|t| !t.is_empty());
    let prefix = unused_prefix(tag.as_deref(), &mount)?;
    let mut state = plan::plan(&spec, &prefix, &mount)?;
    let prefix_file = dir.join(PREFIX_FILE);
    std::fs::write(&prefix_file, format!("{prefix}\n"))
        .with_context(|| format!("cannot write {}", prefix_file.display()))?;
    let agent = spec.agent.clone().unwrap_or_default();
    if let Err(err) = build(&dir, &mut state, &mount, &agent, with_agents) {
        return match teardown(&dir, &prefix, &state.cgroup_root, Some(&state)) {
            Ok(()) => Err(err.context("testbed up failed (everything it made is removed again)")),
            Err(cleanup) => Err(err.context(format!(
                "testbed up failed, and so did cleaning up ({cleanup:#}); retry with `outrider-testbed testbed down --state {}`",
                dir.display()
            ))),
        };
    }
    print!("{}", summary(&dir, &state));
    Ok(ExitCode::SUCCESS)
}

/// A fresh prefix that nothing on the machine uses yet.
fn unused_prefix(tag: Option<&str>, mount: &Path) -> anyhow::Result<String> {
    for _ in 0..10 {
        let prefix = plan::new_prefix(tag)?;
        if !mount.join(&prefix).exists() && net::list(&prefix)?.is_empty() {
            return Ok(prefix);
        }
    }
    bail!("cannot find an unused testbed prefix")
}

fn build(
    dir: &Path,
    state: &mut State,
    mount: &Path,
    agent: &Config,
    with_agents: bool,
) -> anyhow::Result<()> {
    cgroup::create(&state.cgroup_root)?;
    for node in &state.nodes {
        cgroup::create(&agents::agent_cgroup(node))?;
        cgroup::create(&super::kubelet::cgroup(node))?;
    }
    for pod in &state.pods {
        cgroup::create(&pod.cgroup)?;
    }
    net::build(state)?;
    net::check(state)?;
    kube_proxy::install(state)?;
    for pod in &state.pods {
        exec::start_sandbox(pod)?;
    }
    state.ca_dir = dir.join("ca");
    state.policy_dir = dir.join("policies");
    bpffs::mount(&bpffs::path(dir, &state.prefix))?;
    agents::write_files(dir, state, mount, agent)?;
    if with_agents {
        agents::start(dir, state)?;
        sidecars::start(dir, state)?;
    }
    state.save(dir)
}

/// `testbed start`: the agents of a testbed that has none running.
pub fn start_agents(dir: &Path) -> anyhow::Result<ExitCode> {
    let mut state = State::load(dir)?;
    if let Some(node) = state.nodes.iter().find(|n| n.agent.is_some()) {
        bail!(
            "node {} already has an agent; `down` and `up` again",
            node.name
        );
    }
    let result = agents::start(dir, &mut state).and_then(|()| sidecars::start(dir, &mut state));
    // Saved either way: `down` must find the agents that did start.
    state.save(dir)?;
    result?;
    print!("{}", summary(dir, &state));
    Ok(ExitCode::SUCCESS)
}

fn summary(dir: &Path, state: &State) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "testbed {} is up (state: {})",
        state.prefix,
        dir.display()
    );
    for node in &state.nodes {
        let agent = match &node.agent {
            Some(a) => format!("agent pid {}, log {}", a.pid, a.log.display()),
            None => "no agent".to_string(),
        };
        let _ = writeln!(
            out,
            "  node {}  {} {}  pods {} {}  ({agent})",
            node.name, node.ipv4, node.ipv6, node.pod_cidr_v4, node.pod_cidr_v6
        );
        let width = state.pods.iter().map(|p| p.key().len()).max().unwrap_or(0);
        for pod in state.pods.iter().filter(|p| p.node == node.name) {
            let _ = writeln!(
                out,
                "    {:width$}  {:<14} {:<18} {}",
                pod.key(),
                pod.ipv4.to_string(),
                pod.ipv6.to_string(),
                if pod.sidecar {
                    "sidecar"
                } else if pod.enrolled {
                    "enrolled"
                } else {
                    "not enrolled"
                },
            );
        }
    }
    for svc in &state.services {
        let ips: Vec<String> = svc.cluster_ips.iter().map(ToString::to_string).collect();
        let ports: Vec<String> = svc
            .ports
            .iter()
            .map(|p| format!("{}→{}", p.port, p.target()))
            .collect();
        let _ = writeln!(
            out,
            "  service {}  {}  ports {}",
            svc.key(),
            if ips.is_empty() {
                "headless".to_string()
            } else {
                ips.join(" ")
            },
            ports.join(", ")
        );
    }
    out
}

/// A prefix read back from disk must look like one we made: `down` removes the cgroup
/// `<mount>/<prefix>` and every netns `<prefix>-…`, so an empty or odd one is refused.
fn check_prefix(prefix: &str, from: &Path) -> anyhow::Result<()> {
    let ok = prefix.len() >= 8
        && prefix.starts_with("or")
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        bail!(
            "{}: {prefix:?} is not a testbed prefix (or + tag + 6 hex digits); refusing to remove anything",
            from.display()
        );
    }
    Ok(())
}

/// `testbed down`.
pub fn down(dir: &Path) -> anyhow::Result<ExitCode> {
    let state_file = dir.join(STATE_FILE);
    let prefix_file = dir.join(PREFIX_FILE);
    let state = if state_file.exists() {
        match State::load(dir) {
            Ok(state) => Some(state),
            Err(err) if prefix_file.exists() => {
                eprintln!("outrider: {err:#}; using {} instead", prefix_file.display());
                None
            }
            Err(err) => return Err(err),
        }
    } else {
        None
    };
    let (prefix, cgroup_root) = match &state {
        Some(state) => {
            check_prefix(&state.prefix, &state_file)?;
            (state.prefix.clone(), state.cgroup_root.clone())
        }
        None if prefix_file.exists() => {
            let text = std::fs::read_to_string(&prefix_file)
                .with_context(|| format!("cannot read {}", prefix_file.display()))?;
            let prefix = text.trim().to_string();
            check_prefix(&prefix, &prefix_file)?;
            let root = cgroup::find_mount()?.join(&prefix);
            (prefix, root)
        }
        None => {
            println!("no testbed in {}; nothing to remove", dir.display());
            return Ok(ExitCode::SUCCESS);
        }
    };
    if cgroup_root.file_name().and_then(|n| n.to_str()) != Some(prefix.as_str()) {
        bail!(
            "{}: cgroupRoot {} is not named after the prefix {prefix}; refusing to remove it",
            state_file.display(),
            cgroup_root.display()
        );
    }
    teardown(dir, &prefix, &cgroup_root, state.as_ref())?;
    println!("testbed {prefix} is down");
    Ok(ExitCode::SUCCESS)
}

/// Removes everything of the testbed `prefix` (agents, processes, cgroups, namespaces),
/// going on past errors, then the state files. Things already gone are fine.
fn teardown(
    dir: &Path,
    prefix: &str,
    cgroup_root: &Path,
    state: Option<&State>,
) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    agents::stop(&agents::recorded_pids(dir, state), prefix);
    if let Err(err) = cgroup::remove_tree(cgroup_root) {
        errors.push(format!("{err:#}"));
    }
    if let Err(err) = net::remove(prefix) {
        errors.push(format!("{err:#}"));
    }
    // With the agents and cgroups gone, the pins are all that holds programs and maps.
    if let Err(err) = bpffs::unmount(&bpffs::path(dir, prefix)) {
        errors.push(format!("{err:#}"));
    }
    if !errors.is_empty() {
        bail!("testbed {prefix}: {}", errors.join("; "));
    }
    let mut files = vec![dir.join(STATE_FILE), dir.join(PREFIX_FILE)];
    if let Ok(entries) = std::fs::read_dir(dir) {
        files.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path().join(AGENT_PID_FILE)),
        );
    }
    for file in files {
        match std::fs::remove_file(&file) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("cannot remove {}", file.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_prefixes_we_make_are_accepted() {
        let from = Path::new("/tmp/x/prefix");
        check_prefix("orab12cd", from).unwrap();
        check_prefix("orci7ab12cd", from).unwrap();
        for bad in ["", "or", "ab12cdef", "or/../../x", "ORAB12CD", "orab12c"] {
            assert!(check_prefix(bad, from).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn down_without_a_testbed_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        down(dir.path()).unwrap();
        down(&dir.path().join("never-made")).unwrap();
    }
}
