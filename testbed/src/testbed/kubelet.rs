//! The testbed's kubelets: each node has a cgroup for its kubelet, `<prefix>/<node>.kubelet`
//! — beside the node's cgroup, never below it, as `system.slice/kubelet.service` sits
//! beside `kubepods.slice` — which the node's agent is told of (`capture.kubeletCgroup`),
//! and `testbed probe` connects to a pod from it, in the node's network namespace, as the
//! kubelet's health probes do.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;

use super::{
    cgroup, exec,
    state::{NodeState, State},
};

/// How long a probe waits to connect, and then for each read.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The node's kubelet cgroup.
pub fn cgroup(node: &NodeState) -> PathBuf {
    node.cgroup.with_file_name(format!("{}.kubelet", node.name))
}

/// `testbed probe`: joins `node`'s kubelet cgroup and network namespace, connects to
/// `pod`'s `port` (IPv4, or IPv6), sends `send`, half-closes, and prints what comes back
/// until the pod closes. Exits 1 when the connection fails or is reset.
pub fn probe(
    dir: &Path,
    node: &str,
    pod: &str,
    port: u16,
    send: &str,
    ipv6: bool,
) -> anyhow::Result<ExitCode> {
    let state = State::load(dir)?;
    let node = state.node(node).with_context(|| {
        format!(
            "no node {node:?} in testbed {} (nodes: {})",
            state.prefix,
            state
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let pod = exec::find_pod(&state, pod)?;
    join(node)?;
    let addr = SocketAddr::new(
        if ipv6 {
            pod.ipv6.into()
        } else {
            pod.ipv4.into()
        },
        port,
    );
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .with_context(|| format!("probe: cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.write_all(send.as_bytes())?;
    stream.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    let read = stream.read_to_end(&mut back);
    std::io::stdout().write_all(&back)?;
    match read {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            eprintln!("probe of {addr}: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Moves this process into the node's kubelet cgroup and this thread into the node's
/// network namespace: sockets made from now on are the kubelet's.
fn join(node: &NodeState) -> anyhow::Result<()> {
    let kubelet = cgroup(node);
    let mut procs = cgroup::open_procs(&kubelet)?;
    procs
        .write_all(b"0")
        .with_context(|| format!("cannot join cgroup {}", kubelet.display()))?;
    let netns = std::fs::File::open(&node.netns)
        .with_context(|| format!("cannot open network namespace {}", node.netns.display()))?;
    // SAFETY: setns on a descriptor we hold open.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot enter {}", node.netns.display()));
    }
    Ok(())
}
