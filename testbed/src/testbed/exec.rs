//! Running programs as a pod or node would: in its network namespace and cgroup
//! (`testbed exec`, and how agents are started), and flipping a pod's enrollment in its
//! node's workload file (`testbed enroll` / `unenroll`).
use std::{
    ffi::OsString,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Command, ExitCode},
};

use anyhow::Context;

use super::{
    agents, cgroup,
    state::{PodState, State},
};

/// Starts the pod's sandbox process, as a container runtime's pause container: a
/// process that lives in the pod's network namespace and cgroup until the testbed is
/// torn down (its cgroup is killed), by which the agent finds the pod from its UID.
pub fn start_sandbox(pod: &PodState) -> anyhow::Result<()> {
    let mut cmd = Command::new("sleep");
    cmd.arg("infinity")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    enter(&mut cmd, &pod.netns, &pod.cgroup, true)?;
    cmd.spawn()
        .with_context(|| format!("cannot start the sandbox of pod {}", pod.key()))?;
    Ok(())
}

/// Makes `cmd`, once started, join the network namespace at `netns` and the cgroup
/// `cgroup_dir` before it execs, so that its PID is the program itself. Both are opened
/// now; the child only writes and calls `setns`. A `daemon` also gets a session of its
/// own and none of the descriptors its starter inherited (beyond stdin, stdout, stderr).
pub fn enter(
    cmd: &mut Command,
    netns: &Path,
    cgroup_dir: &Path,
    daemon: bool,
) -> anyhow::Result<()> {
    let netns_file = std::fs::File::open(netns)
        .with_context(|| format!("cannot open network namespace {}", netns.display()))?;
    let procs = cgroup::open_procs(cgroup_dir)?;
    // SAFETY: the closure only makes async-signal-safe system calls (write, setns,
    // setsid, close_range), as required between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let zero = b"0";
            if libc::write(procs.as_raw_fd(), zero.as_ptr().cast(), zero.len()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(netns_file.as_raw_fd(), libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if daemon {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Close-on-exec rather than close: std still reports exec errors through
                // its own descriptor. Kernels before 5.11 lack close_range; then they leak.
                let _ = libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
            }
            Ok(())
        });
    }
    Ok(())
}

pub(super) fn find_pod<'a>(state: &'a State, key: &str) -> anyhow::Result<&'a PodState> {
    state.pod(key).with_context(|| {
        format!(
            "no pod {key:?} in testbed {} (pods: {})",
            state.prefix,
            state.pod_list()
        )
    })
}

/// `testbed exec`: becomes `command` inside the pod. Returns only on error.
pub fn exec(dir: &Path, pod: &str, command: &[OsString]) -> anyhow::Result<ExitCode> {
    let state = State::load(dir)?;
    let pod = find_pod(&state, pod)?;
    let (program, args) = command.split_first().context(
        "no command given (usage: outrider-testbed testbed exec --state DIR POD -- CMD…)",
    )?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    enter(&mut cmd, &pod.netns, &pod.cgroup, false)?;
    let err = cmd.exec();
    Err(err).with_context(|| {
        format!(
            "cannot run {:?} in pod {}",
            program.to_string_lossy(),
            pod.key()
        )
    })
}

/// `testbed enroll` / `unenroll`: sets the pod's `mode` in its node's workload file
/// (atomically: the agent may read it at any time) and `enrolled` in the state.
pub fn set_enrolled(dir: &Path, pod: &str, enrolled: bool) -> anyhow::Result<ExitCode> {
    let mut state = State::load(dir)?;
    let pod = find_pod(&state, pod)?.clone();
    if pod.sidecar {
        anyhow::bail!(
            "{} runs in sidecar mode: its own sidecar meshes it, not its node's agent",
            pod.key()
        );
    }
    for p in state.pods.iter_mut().filter(|p| p.key() == pod.key()) {
        p.enrolled = enrolled;
    }
    agents::write_workload_files(dir, &state)?;
    state.save(dir)?;
    let path = agents::workloads_path(dir, &pod.node);
    println!(
        "{}: {} (mode: {}, in {})",
        pod.key(),
        if enrolled { "enrolled" } else { "unenrolled" },
        if enrolled { "node" } else { "none" },
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
