//! Outrider's image run with podman (rootful) the way Kubernetes runs it, on the testbed:
//! the node agent as the DaemonSet does (the node's network namespace, host PID, the
//! DaemonSet's capabilities and no others, read-only root, bpffs, the cgroup mount and
//! the pods' namespaces from the host, the CA from a mounted directory) with the config
//! the testbed gives that node's agent; a sidecar pod's init step and proxy as
//! `outriderctl inject` does. Never podman's default network: always a testbed
//! namespace. `cargo xtask test` builds the images first (`cargo xtask image`).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use outrider::config::Config;
use outrider_testbed::testbed::agents;

use super::{PodState, Testbed};

/// The image under test: `OUTRIDER_TEST_IMAGE`, else the release build's local name.
pub fn image() -> String {
    std::env::var("OUTRIDER_TEST_IMAGE")
        .unwrap_or_else(|_| format!("{}:{}", outrider::image::LOCAL_NAME, outrider::VERSION))
}

/// The same image built with another version string (`cargo xtask image --version`):
/// `OUTRIDER_TEST_IMAGE_NEXT`, else `outrider:<version>-next`.
pub fn next_image() -> String {
    std::env::var("OUTRIDER_TEST_IMAGE_NEXT")
        .unwrap_or_else(|_| format!("{}:{}-next", outrider::image::LOCAL_NAME, outrider::VERSION))
}

/// The capabilities `deploy/base/daemonset.yaml` adds after dropping ALL.
pub const DAEMONSET_CAPS: &[&str] = &["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"];
/// The ones `outriderctl inject` gives the init container.
pub const INIT_CAPS: &[&str] = &["NET_ADMIN", "NET_RAW"];
/// The proxy's user in an injected pod.
pub const PROXY_UID: u32 = 1337;

/// `podman` as it works here: runc (crun refuses the hybrid cgroup layout) and cgroupfs.
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    cmd
}

/// Output of a podman command that must succeed.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman().args(args).output().unwrap_or_else(|e| {
        panic!("cannot run podman ({e}): install podman and runc (`cargo xtask setup`)")
    });
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Fails the test (never skips it) unless podman runs and `image` is in the local store.
pub fn require(image: &str) {
    let out = podman()
        .args(["image", "exists", image])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run podman ({e}): install podman and runc (`cargo xtask setup`)")
        });
    assert!(
        out.status.success(),
        "the image {image} is not in podman's store: build it with `cargo xtask image` (`--version` for another version string)"
    );
}

/// `--ulimit` for descriptors and processes at this process's hard limits (podman's
/// defaults may be above them, which fails), processes at most pid_max.
fn ulimits() -> Vec<String> {
    let hard = |resource| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        let rc = unsafe { libc::getrlimit(resource, &mut limit) };
        assert_eq!(rc, 0, "getrlimit");
        limit.rlim_max.min(1 << 20)
    };
    let nofile = hard(libc::RLIMIT_NOFILE);
    // runc here refuses a process limit above the kernel's pid_max (measured).
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(32768);
    let nproc = hard(libc::RLIMIT_NPROC).min(pid_max);
    vec![
        "--ulimit".into(),
        format!("nofile={nofile}:{nofile}"),
        "--ulimit".into(),
        format!("nproc={nproc}:{nproc}"),
    ]
}

/// A bind mount of `path` at the same path (read-only with `ro`).
fn same_path(path: &Path, ro: bool) -> Vec<String> {
    let p = path.display();
    vec![
        "--volume".into(),
        format!("{p}:{p}{}", if ro { ":ro" } else { "" }),
    ]
}

/// A container started by a test, attached (its output goes to `log`); removed when
/// dropped (`podman rm -f`), also when the test panics.
pub struct Container {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    /// Cgroup v1 directories podman made for `--cgroup-parent`, removed after it.
    v1_dirs: Vec<PathBuf>,
}

impl Container {
    /// Its main process's PID on the host.
    pub fn pid(&self) -> u32 {
        podman_ok(&["inspect", "--format", "{{.State.Pid}}", &self.name])
            .parse()
            .expect("a PID")
    }

    /// Sends SIGTERM to its main process, as the kubelet does to stop a pod.
    pub fn terminate(&self) {
        podman_ok(&["kill", "--signal", "TERM", &self.name]);
    }

    /// Waits until its main process exited; its exit status's code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("podman run's status") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "container {} still runs after {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--time", "2", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        // podman removes the container's own cgroups a moment after it exits.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.v1_dirs.iter().any(|d| d.exists()) && Instant::now() < deadline {
            for dir in &self.v1_dirs {
                remove_cgroup_tree(dir);
            }
            if self.v1_dirs.iter().any(|d| d.exists()) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Starts `podman run --rm --name NAME ARGS… IMAGE COMMAND…`, appending its output to
/// `log`. With `cgroup` (the v2 mount and a directory below it), the container's cgroup
/// is made below that directory (a pod's, as the kubelet puts a pod's containers in its
/// cgroup).
fn run(
    name: &str,
    args: &[String],
    image: &str,
    command: &[String],
    log: &Path,
    cgroup: Option<(&Path, &Path)>,
) -> Container {
    require(image);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the container's log");
    let err = out.try_clone().expect("the container's log");
    let mut cmd = podman();
    cmd.args(["run", "--rm", "--name", name]);
    let mut v1_dirs = Vec::new();
    if let Some((mount, dir)) = cgroup {
        let relative = dir.strip_prefix(mount).expect("a cgroup below the mount");
        cmd.arg(format!("--cgroup-parent=/{}", relative.display()));
        v1_dirs = v1_parents(mount, relative);
    }
    let child = cmd
        .args(args)
        .arg(image)
        .args(command)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run podman ({e}): install podman and runc (`cargo xtask setup`)")
        });
    Container {
        name: name.to_string(),
        child,
        log: log.to_path_buf(),
        v1_dirs,
    }
}

/// The trees podman makes for `--cgroup-parent=/<relative>` (the parent, and `conmon`
/// and the container below it) in the cgroup v1 hierarchies beside the v2 `mount` (this
/// machine's hybrid layout; none on a pure v2 one): each hierarchy's directory of the
/// first component, the testbed's prefix, to be removed once the container is gone.
fn v1_parents(mount: &Path, relative: &Path) -> Vec<PathBuf> {
    let (Some(root), Some(top)) = (mount.parent(), relative.components().next()) else {
        return Vec::new();
    };
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|h| h != mount && h.is_dir())
        .map(|h| h.join(top))
        .collect()
}

/// Removes the empty cgroup directories of `tree`, deepest first.
fn remove_cgroup_tree(tree: &Path) {
    if let Ok(entries) = std::fs::read_dir(tree) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(tree);
}

/// The container name of a testbed's agent: unique per testbed, node and `which`.
fn name(tb: &Testbed, what: &str) -> String {
    format!("{}-{what}", tb.state.prefix)
}

/// `podman run` arguments of `node`'s agent as the DaemonSet runs it, with `caps` added
/// after dropping ALL (the DaemonSet's, unless a test takes one away).
pub fn agent_args(tb: &Testbed, node: &str, caps: &[&str]) -> Vec<String> {
    let config = Config::load(&agents::config_path(tb.dir(), node)).expect("the node's config");
    let netns = &tb.node(node).netns;
    let cgroup_mount = config.cgroup.mount.clone().expect("cgroup.mount");
    let mut args: Vec<String> = vec![
        // hostNetwork: the node's namespace (never podman's default network).
        format!("--network=ns:{}", netns.display()),
        "--pid=host".into(),
        "--cgroupns=host".into(),
        "--user=0:0".into(),
        "--cap-drop=ALL".into(),
        format!("--cap-add={}", caps.join(",")),
        "--security-opt=no-new-privileges".into(),
        "--read-only".into(),
    ];
    args.extend(ulimits());
    // The testbed's state directory: the config, workload file, policies, sockets (admin,
    // hand-over, sidecars), as the DaemonSet's ConfigMap and /run/outrider.
    args.extend(same_path(tb.dir(), false));
    // The CA, read-only, as the DaemonSet's Secret volume.
    args.extend(same_path(&config.identity.ca_dir, true));
    // bpffs (here the testbed's own, where the config pins), the cgroup v2 mount and the
    // named network namespaces, from the host.
    args.extend(same_path(&config.capture.pin_root, false));
    args.extend(same_path(&cgroup_mount, true));
    args.extend(same_path(Path::new("/run/netns"), true));
    args
}

/// Starts `node`'s agent from `image` (`which` tells it apart from another agent of the
/// same node), appending to the node's agent log; returns once it logged "agent ready".
pub fn start_agent(tb: &Testbed, node: &str, image: &str, which: &str) -> Container {
    let log = tb.agent_log_path(node);
    let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let config = agents::config_path(tb.dir(), node);
    let args = agent_args(tb, node, DAEMONSET_CAPS);
    let command = vec![
        "run".to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    let mut container = run(
        &name(tb, &format!("{node}-{which}")),
        &args,
        image,
        &command,
        &log,
        None,
    );
    wait_for(&mut container, offset, "agent ready");
    container
}

/// Waits until `container`'s log, after `offset`, holds the JSON event `message`; fails
/// with the log's end if the container exits first or takes over 30 s.
pub fn wait_for(container: &mut Container, offset: u64, message: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read(&container.log).unwrap_or_default();
        let new =
            String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default()).into_owned();
        let found = new.lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["fields"]["message"] == message)
        });
        if found {
            return;
        }
        if let Ok(Some(status)) = container.child.try_wait() {
            panic!(
                "container {} exited ({status}) before {message:?}:\n{new}",
                container.name
            );
        }
        assert!(
            Instant::now() < deadline,
            "container {} did not log {message:?} in 30 s:\n{new}",
            container.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `outrider sidecar-init` from `image` in `pod` as `outriderctl inject`'s init
/// container does (root, NET_ADMIN and NET_RAW only, read-only root); its output.
pub fn sidecar_init(
    tb: &Testbed,
    pod: &PodState,
    image: &str,
    caps: &[&str],
) -> std::process::Output {
    require(image);
    let mut args: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        format!("--name={}", name(tb, &format!("init-{}", pod.name))),
        format!("--network=ns:{}", pod.netns.display()),
        "--user=0:0".into(),
        "--cap-drop=ALL".into(),
        "--security-opt=no-new-privileges".into(),
        "--read-only".into(),
    ];
    if !caps.is_empty() {
        args.push(format!("--cap-add={}", caps.join(",")));
    }
    args.extend(ulimits());
    args.push(image.into());
    args.extend([
        "sidecar-init".into(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
    ]);
    podman().args(&args).output().expect("podman run")
}

/// Starts `outrider sidecar` from `image` in `pod` as `outriderctl inject`'s proxy
/// container (user 1337, no capabilities, `--mark 0`, the node agent's socket directory
/// mounted), with the node agent's config, below the pod's cgroup (the node agent knows
/// its sidecars by it); returns once it logged "sidecar ready".
pub fn start_sidecar(tb: &Testbed, pod: &PodState, image: &str) -> Container {
    let node_dir = tb.dir().join(&pod.node);
    let config = agents::config_path(tb.dir(), &pod.node);
    let socket = agents::sidecar_socket_path(tb.dir(), &pod.node);
    let cgroup_mount = Config::load(&config)
        .expect("the node's config")
        .cgroup
        .mount
        .expect("cgroup.mount");
    let log = tb.sidecar_log_path(&pod.key());
    let mut args: Vec<String> = vec![
        format!("--network=ns:{}", pod.netns.display()),
        format!("--user={PROXY_UID}:{PROXY_UID}"),
        "--cap-drop=ALL".into(),
        "--security-opt=no-new-privileges".into(),
        "--read-only".into(),
        format!("--env=POD_NAME={}", pod.name),
        format!("--env=POD_NAMESPACE={}", pod.namespace),
        format!("--env=NODE_NAME={}", pod.node),
        // The node agent's directory for sidecars, and the settings (a ConfigMap).
        format!("--volume={}:/run/outrider/sidecar", node_dir.display()),
        format!("--volume={}:/etc/outrider/agent.yaml:ro", config.display()),
    ];
    args.extend(ulimits());
    let socket_name = socket.file_name().expect("a socket name").to_string_lossy();
    let command = vec![
        "sidecar".to_string(),
        "--mark".into(),
        "0".into(),
        "--config".into(),
        "/etc/outrider/agent.yaml".into(),
        "--socket".into(),
        format!("/run/outrider/sidecar/{socket_name}"),
    ];
    let mut container = run(
        &name(tb, &format!("sidecar-{}", pod.name)),
        &args,
        image,
        &command,
        &log,
        Some((&cgroup_mount, &pod.cgroup)),
    );
    wait_for(&mut container, 0, "sidecar ready");
    container
}

/// The effective capabilities of process `pid`, by name (of those Outrider knows).
pub fn effective_caps(pid: u32) -> Vec<&'static str> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff")
        .trim();
    let eff = u64::from_str_radix(hex, 16).expect("hex");
    let known = [
        ("NET_ADMIN", 12),
        ("NET_RAW", 13),
        ("SYS_PTRACE", 19),
        ("SYS_ADMIN", 21),
        ("PERFMON", 38),
        ("BPF", 39),
    ];
    let mut names: Vec<&'static str> = known
        .iter()
        .filter(|(_, bit)| eff & (1u64 << bit) != 0)
        .map(|(name, _)| *name)
        .collect();
    // Any other bit counts as "other".
    let known_mask: u64 = known.iter().map(|(_, bit)| 1u64 << bit).sum();
    if eff & !known_mask != 0 {
        names.push("other");
    }
    names
}
