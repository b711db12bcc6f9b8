//! The testbed's network: one namespace per node, per pod and for the fabric, joined by
//! veths and bridges, all made with `ip` inside those namespaces (never in the machine's
//! own), checked with `ping`, and removed by prefix.
use std::{
    ffi::OsStr,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{
    plan::{self, gateway_v4, gateway_v6},
    state::{NodeState, PodState, State},
};

/// Sysctls of every namespace: IPv6 on, no duplicate address detection (addresses are
/// usable at once; they are unique by construction).
const COMMON_SYSCTLS: [(&str, &str); 4] = [
    ("net/ipv6/conf/all/disable_ipv6", "0"),
    ("net/ipv6/conf/default/disable_ipv6", "0"),
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
];
/// Nodes route between the fabric and their pods.
const NODE_SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
];

/// Finds `program` in `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Fails early, before anything is made, when a tool the testbed needs is missing.
pub fn check_tools() -> anyhow::Result<()> {
    for (program, package) in [("ip", "iproute2"), ("ping", "iputils-ping")] {
        if which(program).is_none() {
            bail!(
                "`{program}` is not in PATH; the testbed needs it (Debian/Ubuntu: apt-get install {package})"
            );
        }
    }
    Ok(())
}

fn show(args: &[&OsStr]) -> String {
    let words: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    words.join(" ")
}

/// Runs `ip ARGS…`, failing with the command and its stderr.
fn ip<S: AsRef<OsStr>>(args: &[S]) -> anyhow::Result<String> {
    let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
    let out = Command::new("ip")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `ip {}`", show(&args)))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            show(&args),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `lines` as `ip -n NETNS -batch -`: one process for a namespace's set-up.
pub(super) fn ip_batch(netns: &str, lines: &[String]) -> anyhow::Result<()> {
    let script = lines.join("\n") + "\n";
    with_input("ip", &["-n", netns, "-batch", "-"], &script)
        .with_context(|| format!("setting up network namespace {netns} failed"))
}

/// Runs `program ARGS…` with `input` on its stdin; fails with its stderr and the input.
pub(super) fn with_input(program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{command}`"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means the program stopped early; its exit status and stderr say why.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("cannot wait for `{command}`"))?;
    if !out.status.success() {
        bail!(
            "`{command}` failed ({}): {}\n(its input:\n{input})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Sets sysctls (`net/…` paths below /proc/sys) inside the namespace at `netns`, from a
/// thread that joins it (a thread's network namespace decides what /proc/sys/net shows).
pub(super) fn sysctls(netns: &Path, values: &[(&str, &str)]) -> anyhow::Result<()> {
    let file = std::fs::File::open(netns)
        .with_context(|| format!("cannot open network namespace {}", netns.display()))?;
    let values: Vec<(String, String)> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let where_ = netns.display().to_string();
    std::thread::spawn(move || -> anyhow::Result<()> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("cannot enter network namespace {where_}"))?;
        for (key, value) in values {
            let path = Path::new("/proc/sys").join(&key);
            std::fs::write(&path, &value)
                .with_context(|| format!("{where_}: cannot set {key} to {value}"))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the sysctl thread panicked"))?
}

fn add_netns(name: &str, path: &Path, node: bool) -> anyhow::Result<()> {
    ip(&["netns", "add", name])?;
    sysctls(path, &COMMON_SYSCTLS)?;
    if node {
        sysctls(path, &NODE_SYSCTLS)?;
    }
    Ok(())
}

/// Makes every namespace, link, address and route of `state`. On error, what was made
/// stays: the caller removes it by prefix.
pub fn build(state: &State) -> anyhow::Result<()> {
    let fabric = plan::fabric_netns(&state.prefix);
    add_netns(&fabric, &plan::netns_path(&fabric), false)?;
    for node in &state.nodes {
        add_netns(&node.netns_name, &node.netns, true)?;
    }
    for pod in &state.pods {
        add_netns(&pod.netns_name, &pod.netns, false)?;
    }

    let mut lines = vec![
        "link set lo up".to_string(),
        "link add br0 type bridge mcast_snooping 0".to_string(),
        "link set br0 up".to_string(),
    ];
    for node in &state.nodes {
        let i = plan::node_index(node);
        lines.push(format!(
            "link add n{i} type veth peer name eth0 netns {}",
            node.netns_name
        ));
        lines.push(format!("link set n{i} master br0 up"));
    }
    ip_batch(&fabric, &lines)?;

    for node in &state.nodes {
        let pods: Vec<&PodState> = state.pods.iter().filter(|p| p.node == node.name).collect();
        ip_batch(&node.netns_name, &node_commands(node, &state.nodes, &pods)?)?;
        for pod in pods {
            ip_batch(&pod.netns_name, &pod_commands(node, pod))?;
        }
    }
    Ok(())
}

fn node_commands(
    node: &NodeState,
    nodes: &[NodeState],
    pods: &[&PodState],
) -> anyhow::Result<Vec<String>> {
    let mut lines = vec![
        "link set lo up".to_string(),
        format!("addr add {}/24 dev eth0", node.ipv4),
        format!("addr add {}/64 dev eth0 nodad", node.ipv6),
        "link set eth0 up".to_string(),
        "link add cni0 type bridge mcast_snooping 0".to_string(),
        format!("addr add {}/24 dev cni0", gateway_v4(node.pod_cidr_v4)),
        format!(
            "addr add {}/64 dev cni0 nodad",
            gateway_v6(node.pod_cidr_v6)
        ),
        "link set cni0 up".to_string(),
    ];
    for other in nodes.iter().filter(|o| o.name != node.name) {
        lines.push(format!(
            "route add {} via {}",
            other.pod_cidr_v4, other.ipv4
        ));
        lines.push(format!(
            "route add {} via {}",
            other.pod_cidr_v6, other.ipv6
        ));
    }
    for pod in pods {
        let j = plan::pod_index(pod)?;
        lines.push(format!(
            "link add p{j} type veth peer name eth0 netns {}",
            pod.netns_name
        ));
        lines.push(format!("link set p{j} master cni0 up"));
    }
    Ok(lines)
}

fn pod_commands(node: &NodeState, pod: &PodState) -> Vec<String> {
    vec![
        "link set lo up".to_string(),
        format!("addr add {}/24 dev eth0", pod.ipv4),
        format!("addr add {}/64 dev eth0 nodad", pod.ipv6),
        "link set eth0 up".to_string(),
        format!("route add 0.0.0.0/0 via {}", gateway_v4(node.pod_cidr_v4)),
        format!("route add ::/0 via {}", gateway_v6(node.pod_cidr_v6)),
    ]
}

/// Pings, v4 and v6, from the first pod of every node to the first pod of the next node
/// (or to another pod, or the gateway, on a one-node testbed), retrying for ~3 s.
pub fn check(state: &State) -> anyhow::Result<()> {
    let firsts: Vec<&PodState> = state
        .nodes
        .iter()
        .filter_map(|n| state.pods.iter().find(|p| p.node == n.name))
        .collect();
    let mut probes: Vec<(&PodState, String)> = Vec::new();
    if firsts.len() >= 2 {
        for (k, from) in firsts.iter().enumerate() {
            let to = firsts[(k + 1) % firsts.len()];
            probes.push((from, to.ipv4.to_string()));
            probes.push((from, to.ipv6.to_string()));
        }
    } else if let Some(from) = firsts.first() {
        let to = state.pods.iter().find(|p| p.key() != from.key());
        let node = state
            .node(&from.node)
            .context("a pod's node is missing from the state")?;
        let (v4, v6) = match to {
            Some(to) => (to.ipv4.to_string(), to.ipv6.to_string()),
            None => (
                gateway_v4(node.pod_cidr_v4).to_string(),
                gateway_v6(node.pod_cidr_v6).to_string(),
            ),
        };
        probes.push((from, v4));
        probes.push((from, v6));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for (from, to) in probes {
        loop {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &from.netns_name,
                    "ping",
                    "-n",
                    "-q",
                    "-c1",
                    "-W1",
                    &to,
                ])
                .stdin(Stdio::null())
                .output()
                .context("cannot run `ip netns exec … ping`")?;
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "pod {} ({}) cannot reach {to} after 3s; `ping` says: {} {}",
                    from.key(),
                    from.netns_name,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Names of the network namespaces of the testbed `prefix` (`<prefix>-…`).
pub fn list(prefix: &str) -> anyhow::Result<Vec<String>> {
    let wanted = format!("{prefix}-");
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(&wanted))
        .map(str::to_string)
        .collect())
}

/// Deletes every network namespace of the testbed `prefix`; those already gone are fine.
pub fn remove(prefix: &str) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for name in list(prefix)? {
        if let Err(err) = ip(&["netns", "del", &name])
            && Path::new("/run/netns").join(&name).exists()
        {
            errors.push(format!("{err:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}
