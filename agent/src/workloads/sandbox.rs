//! Finds a Kubernetes pod's sandbox on this node from the pod's UID: the pod-level cgroup
//! directory, one process of the pod, and that process's network namespace
//! (`<proc>/<pid>/ns/net`). A network namespace has no name of its own in the cgroup
//! tree: it is reached through a process living in it, hence the process.
//!
//! Pod cgroup layouts understood (cgroup v2; the same names appear in v1 hierarchies):
//! - cgroupfs driver: `…/kubepods/<qos>/pod<uid>` or `…/kubepods/pod<uid>` (guaranteed
//!   QoS), the UID with dashes;
//! - systemd driver: `…/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice`
//!   or `…/kubepods.slice/kubepods-pod<uid>.slice`, the UID with underscores for dashes
//!   (systemd reserves `-` for nesting); a `kubelet-kubepods…` prefix is accepted too.
//!
//! Below the pod directory sit its containers (containerd: `cri-containerd-<id>.scope` or
//! `<id>`; CRI-O: `crio-<id>.scope`, plus `crio-conmon-<id>.scope`, whose monitor runs in
//! the host's network namespace and is therefore skipped); processes may also sit in the
//! pod directory itself. Nothing is cached: a pod whose sandbox is still starting gives a
//! retryable error ([`SandboxError::is_retryable`]) and the caller tries again.
use std::{
    collections::VecDeque,
    fs, io,
    path::{Path, PathBuf},
};

/// How deep below the cgroup root a pod directory is looked for.
const MAX_POD_DEPTH: usize = 6;
/// How deep below the pod directory processes are looked for.
const MAX_CONTAINER_DEPTH: usize = 4;
/// CRI-O's container monitor: in the pod's cgroup but in the host's network namespace.
const CONMON_PREFIX: &str = "crio-conmon-";

/// A pod's sandbox as found on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// The pod-level cgroup directory.
    pub cgroup: PathBuf,
    /// A process of the pod (the lowest-numbered one with a network namespace).
    pub pid: u32,
    /// The pod's network namespace: `<proc>/<pid>/ns/net`.
    pub netns: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid pod UID {uid:?}: expected a UUID or 32 hex digits")]
    InvalidUid { uid: String },
    #[error("no cgroup for pod {uid} under {} (sandbox not created yet?)", root.display())]
    NoCgroup { uid: String, root: PathBuf },
    #[error(
        "cgroup {} of pod {uid} has no process with a network namespace in {} yet",
        cgroup.display(),
        proc_root.display()
    )]
    NoProcess {
        uid: String,
        cgroup: PathBuf,
        proc_root: PathBuf,
    },
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SandboxError {
    /// True when the pod's sandbox may simply not be there yet (no cgroup, or no process
    /// in it): trying again later can succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, Self::NoCgroup { .. } | Self::NoProcess { .. })
    }

    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Looks pods' sandboxes up in a cgroup tree and a procfs.
#[derive(Clone, Debug)]
pub struct Finder {
    cgroup_root: PathBuf,
    proc_root: PathBuf,
}

impl Finder {
    /// `cgroup_root`: where pod cgroups are searched (e.g. `/sys/fs/cgroup/kubepods.slice`
    /// or the cgroup v2 mount); `proc_root`: the node's procfs (`/proc`, or `/host/proc`).
    pub fn new(cgroup_root: impl Into<PathBuf>, proc_root: impl Into<PathBuf>) -> Self {
        Self {
            cgroup_root: cgroup_root.into(),
            proc_root: proc_root.into(),
        }
    }

    /// The sandbox of the pod `uid` (with dashes or underscores).
    pub fn find(&self, uid: &str) -> Result<Sandbox, SandboxError> {
        let uid = uid.replace('_', "-");
        if !is_uid(&uid) {
            return Err(SandboxError::InvalidUid { uid });
        }
        let Some(cgroup) = self.pod_cgroup(&uid)? else {
            return Err(SandboxError::NoCgroup {
                uid,
                root: self.cgroup_root.clone(),
            });
        };
        let mut pids = Vec::new();
        collect_pids(&cgroup, 0, &mut pids)?;
        pids.sort_unstable();
        pids.dedup();
        let mut denied = None;
        for pid in pids {
            let netns = self.proc_root.join(pid.to_string()).join("ns/net");
            match fs::metadata(&netns) {
                Ok(_) => return Ok(Sandbox { cgroup, pid, netns }),
                // The process exited (or is a zombie) since cgroup.procs was read.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    denied.get_or_insert(SandboxError::io("stat", &netns, e));
                }
            }
        }
        // Processes exist but none can be looked at: not something waiting fixes.
        Err(denied.unwrap_or(SandboxError::NoProcess {
            uid,
            cgroup,
            proc_root: self.proc_root.clone(),
        }))
    }

    /// Breadth-first search (shallowest first, then by name) for the pod's directory.
    /// Symbolic links are not followed, and other pods' directories are not entered.
    fn pod_cgroup(&self, uid: &str) -> Result<Option<PathBuf>, SandboxError> {
        let mut queue = VecDeque::from([(self.cgroup_root.clone(), 0)]);
        while let Some((dir, depth)) = queue.pop_front() {
            let children = match subdirs(&dir) {
                Ok(children) => children,
                // Removed while we walked (but the root itself must exist).
                Err(SandboxError::Io { source, .. })
                    if depth > 0 && source.kind() == io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            for (name, path) in children {
                match component_uid(&name) {
                    Some(found) if found.eq_ignore_ascii_case(uid) => return Ok(Some(path)),
                    Some(_) => {}
                    None if depth + 1 < MAX_POD_DEPTH => queue.push_back((path, depth + 1)),
                    None => {}
                }
            }
        }
        Ok(None)
    }
}

/// The subdirectories of `dir` (not symbolic links), sorted by name.
fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, SandboxError> {
    let entries = fs::read_dir(dir).map_err(|e| SandboxError::io("read directory", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SandboxError::io("read directory", dir, e))?;
        let is_dir = entry
            .file_type()
            .map_err(|e| SandboxError::io("stat", &entry.path(), e))?
            .is_dir();
        if let (true, Ok(name)) = (is_dir, entry.file_name().into_string()) {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The processes of `cgroup` and its descendants, CRI-O's conmon scopes excepted.
fn collect_pids(cgroup: &Path, depth: usize, out: &mut Vec<u32>) -> Result<(), SandboxError> {
    let procs = cgroup.join("cgroup.procs");
    match fs::read_to_string(&procs) {
        Ok(text) => {
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let pid = line.parse().map_err(|_| {
                    let reason = format!("not a process id: {line:?}");
                    SandboxError::io(
                        "parse",
                        &procs,
                        io::Error::new(io::ErrorKind::InvalidData, reason),
                    )
                })?;
                out.push(pid);
            }
        }
        // Removed while we walked.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(SandboxError::io("read", &procs, e)),
    }
    if depth >= MAX_CONTAINER_DEPTH {
        return Ok(());
    }
    let children = match subdirs(cgroup) {
        Ok(children) => children,
        Err(SandboxError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for (name, path) in children {
        if !name.starts_with(CONMON_PREFIX) {
            collect_pids(&path, depth + 1, out)?;
        }
    }
    Ok(())
}

/// The pod UID (with dashes) in a cgroup path, or in a line of `/proc/<pid>/cgroup`
/// (`0::/kubepods.slice/…`, `4:memory:/kubepods/…`); `None` when the path is not inside
/// a pod's cgroup.
pub(crate) fn pod_uid_from_cgroup_path(path: &str) -> Option<String> {
    let path = match path.splitn(3, ':').collect::<Vec<_>>()[..] {
        [_, _, path] => path,
        _ => path,
    };
    path.trim().split('/').find_map(component_uid)
}

/// The pod UID (with dashes) a cgroup directory name is for: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn component_uid(name: &str) -> Option<String> {
    let uid = if let Some(uid) = name.strip_prefix("pod") {
        uid.to_string()
    } else if name.contains("kubepods") {
        let slice = name.strip_suffix(".slice")?;
        let (_, uid) = slice.rsplit_once("-pod")?;
        uid.replace('_', "-")
    } else {
        return None;
    };
    is_uid(&uid).then_some(uid)
}

/// A Kubernetes pod UID: a UUID (API pods) or 32 hex digits (static pods: a hash).
fn is_uid(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        32 => b.iter().all(u8::is_ascii_hexdigit),
        36 => b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b";
    const UID_: &str = "6f1c2b3a_4d5e_4f60_8a7b_9c0d1e2f3a4b";
    const OTHER_: &str = "0a1b2c3d_4e5f_4a6b_8c7d_8e9f0a1b2c3d";

    /// A fake node: `cgroup/…` and `proc/<pid>/ns/net` (regular files).
    struct Node {
        dir: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn cgroup(&self, rel: &str, pids: &[u32]) -> PathBuf {
            let path = self.dir.path().join("cgroup").join(rel);
            fs::create_dir_all(&path).unwrap();
            let procs: String = pids.iter().map(|p| format!("{p}\n")).collect();
            fs::write(path.join("cgroup.procs"), procs).unwrap();
            path
        }

        fn process(&self, pid: u32) {
            let ns = self.dir.path().join(format!("proc/{pid}/ns"));
            fs::create_dir_all(&ns).unwrap();
            fs::write(ns.join("net"), "").unwrap();
        }

        fn finder(&self) -> Finder {
            Finder::new(self.dir.path().join("cgroup"), self.dir.path().join("proc"))
        }

        fn netns(&self, pid: u32) -> PathBuf {
            self.dir.path().join(format!("proc/{pid}/ns/net"))
        }
    }

    #[test]
    fn cgroupfs_containerd() {
        let node = Node::new();
        node.cgroup("kubepods/besteffort", &[]);
        let pod = node.cgroup(&format!("kubepods/burstable/pod{UID}"), &[]);
        node.cgroup(&format!("kubepods/burstable/pod{UID}/abc123"), &[420, 77]);
        node.cgroup(&format!("kubepods/burstable/pod{UID}/def456"), &[500]);
        node.cgroup(
            "kubepods/burstable/pod0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d/x",
            &[5],
        );
        for pid in [5, 77, 420, 500] {
            node.process(pid);
        }
        let sandbox = node.finder().find(UID).unwrap();
        assert_eq!(sandbox.cgroup, pod);
        assert_eq!(sandbox.pid, 77);
        assert_eq!(sandbox.netns, node.netns(77));
        // The underscore spelling names the same pod.
        assert_eq!(node.finder().find(UID_).unwrap(), sandbox);
    }

    #[test]
    fn systemd_containerd() {
        let node = Node::new();
        let pod_rel =
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        let pod = node.cgroup(&pod_rel, &[]);
        node.cgroup(&format!("{pod_rel}/cri-containerd-aaaa.scope"), &[300]);
        node.cgroup(&format!("{pod_rel}/cri-containerd-bbbb.scope"), &[310, 311]);
        node.cgroup(
            &format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{OTHER_}.slice/cri-containerd-cccc.scope"),
            &[7],
        );
        for pid in [7, 300, 310, 311] {
            node.process(pid);
        }
        let sandbox = node.finder().find(UID).unwrap();
        assert_eq!(sandbox.cgroup, pod);
        assert_eq!(sandbox.pid, 300);
        assert_eq!(sandbox.netns, node.netns(300));
    }

    #[test]
    fn systemd_crio_skips_conmon() {
        let node = Node::new();
        let pod_rel =
            format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice");
        let pod = node.cgroup(&pod_rel, &[]);
        node.cgroup(&format!("{pod_rel}/crio-conmon-aaaa.scope"), &[100]);
        node.cgroup(&format!("{pod_rel}/crio-aaaa.scope"), &[200]);
        node.cgroup(&format!("{pod_rel}/crio-conmon-bbbb.scope"), &[101]);
        node.cgroup(&format!("{pod_rel}/crio-bbbb.scope"), &[210]);
        for pid in [100, 101, 200, 210] {
            node.process(pid);
        }
        let sandbox = node.finder().find(UID).unwrap();
        assert_eq!(sandbox.cgroup, pod);
        assert_eq!(sandbox.pid, 200);
        assert_eq!(sandbox.netns, node.netns(200));
    }

    #[test]
    fn guaranteed_qos() {
        let node = Node::new();
        // cgroupfs: the pod directly below kubepods.
        let pod = node.cgroup(&format!("kubepods/pod{UID}"), &[]);
        node.cgroup(&format!("kubepods/pod{UID}/abc"), &[42]);
        node.process(42);
        assert_eq!(node.finder().find(UID).unwrap().cgroup, pod);

        // systemd: kubepods-pod<uid>.slice directly below kubepods.slice.
        let node = Node::new();
        let pod_rel = format!("kubepods.slice/kubepods-pod{UID_}.slice");
        let pod = node.cgroup(&pod_rel, &[]);
        node.cgroup(&format!("{pod_rel}/cri-containerd-abc.scope"), &[43]);
        node.process(43);
        let sandbox = node.finder().find(UID).unwrap();
        assert_eq!((sandbox.cgroup, sandbox.pid), (pod, 43));
    }

    #[test]
    fn process_in_the_pod_directory() {
        let node = Node::new();
        let pod = node.cgroup(&format!("outrider/node-a/pods/pod{UID}"), &[9000]);
        node.process(9000);
        let sandbox = node.finder().find(UID).unwrap();
        assert_eq!(sandbox.cgroup, pod);
        assert_eq!(sandbox.pid, 9000);
        assert_eq!(sandbox.netns, node.netns(9000));
    }

    #[test]
    fn exited_process_is_skipped() {
        let node = Node::new();
        node.cgroup(&format!("kubepods/pod{UID}/abc"), &[10, 11]);
        node.process(11); // 10 has no /proc entry any more
        assert_eq!(node.finder().find(UID).unwrap().pid, 11);
    }

    #[test]
    fn not_found_is_retryable() {
        let node = Node::new();
        node.cgroup(
            &format!("kubepods/burstable/pod{}", OTHER_.replace('_', "-")),
            &[1],
        );
        node.process(1);
        let err = node.finder().find(UID).unwrap_err();
        assert!(matches!(err, SandboxError::NoCgroup { .. }), "{err}");
        assert!(err.is_retryable());
        assert!(err.to_string().contains(UID), "{err}");
    }

    #[test]
    fn found_without_process_is_retryable() {
        let node = Node::new();
        let pod_rel =
            format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice");
        node.cgroup(&pod_rel, &[]);
        // Only conmon so far, and a container whose process is already gone.
        node.cgroup(&format!("{pod_rel}/crio-conmon-aaaa.scope"), &[100]);
        node.cgroup(&format!("{pod_rel}/crio-aaaa.scope"), &[200]);
        node.process(100);
        let err = node.finder().find(UID).unwrap_err();
        assert!(matches!(err, SandboxError::NoProcess { .. }), "{err}");
        assert!(err.is_retryable());
    }

    #[test]
    fn errors_that_waiting_does_not_fix() {
        let node = Node::new();
        let err = node.finder().find("not-a-uid").unwrap_err();
        assert!(matches!(err, SandboxError::InvalidUid { .. }), "{err}");
        assert!(!err.is_retryable());

        // The cgroup root does not exist: a configuration error, with its path.
        let err = node.finder().find(UID).unwrap_err();
        assert!(matches!(err, SandboxError::Io { .. }), "{err}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("cgroup"), "{err}");

        // A malformed cgroup.procs is reported with its path.
        let pod = node.cgroup(&format!("kubepods/pod{UID}"), &[]);
        fs::write(pod.join("cgroup.procs"), "12\nbogus\n").unwrap();
        let err = node.finder().find(UID).unwrap_err();
        assert!(err.to_string().contains("cgroup.procs"), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn symlinks_are_not_followed() {
        let node = Node::new();
        let elsewhere = node.dir.path().join("elsewhere");
        fs::create_dir_all(elsewhere.join(format!("pod{UID}"))).unwrap();
        node.cgroup("kubepods", &[]);
        std::os::unix::fs::symlink(&elsewhere, node.dir.path().join("cgroup/kubepods/link"))
            .unwrap();
        let err = node.finder().find(UID).unwrap_err();
        assert!(matches!(err, SandboxError::NoCgroup { .. }), "{err}");
    }

    #[test]
    fn depth_is_bounded() {
        let node = Node::new();
        node.cgroup(&format!("a/b/c/d/e/f/pod{UID}"), &[1]);
        node.process(1);
        let err = node.finder().find(UID).unwrap_err();
        assert!(matches!(err, SandboxError::NoCgroup { .. }), "{err}");
        // Six levels down is still found.
        let node = Node::new();
        node.cgroup(&format!("a/b/c/d/e/pod{UID}"), &[1]);
        node.process(1);
        assert_eq!(node.finder().find(UID).unwrap().pid, 1);
    }

    /// With the real procfs: this test process stands for the pod's sandbox.
    #[test]
    fn real_proc() {
        let node = Node::new();
        let pid = std::process::id();
        let pod = node.cgroup(&format!("kubepods/besteffort/pod{UID}"), &[pid]);
        let sandbox = Finder::new(node.dir.path().join("cgroup"), "/proc")
            .find(UID)
            .unwrap();
        assert_eq!(sandbox.cgroup, pod);
        assert_eq!(sandbox.pid, pid);
        assert_eq!(sandbox.netns, PathBuf::from(format!("/proc/{pid}/ns/net")));
        assert!(sandbox.netns.exists());
    }

    #[test]
    fn uid_from_cgroup_path() {
        let cases = [
            // cgroupfs, burstable/besteffort
            (
                format!("0::/kubepods/burstable/pod{UID}/0123abcd"),
                Some(UID),
            ),
            // cgroupfs, guaranteed
            (format!("0::/kubepods/pod{UID}/0123abcd"), Some(UID)),
            // systemd, burstable/besteffort, containerd
            (
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-0123.scope"
                ),
                Some(UID),
            ),
            // systemd, guaranteed, CRI-O
            (
                format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-0123.scope"),
                Some(UID),
            ),
            // kind-style nesting under kubelet.slice
            (
                format!(
                    "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-0123.scope\n"
                ),
                Some(UID),
            ),
            // cgroup v1 line, and a bare path
            (format!("4:memory:/kubepods/pod{UID}/abc"), Some(UID)),
            (format!("/kubepods/besteffort/pod{UID}"), Some(UID)),
            // static pod: a hash, no dashes
            (
                "0::/kubepods/pod0123456789abcdef0123456789abcdef/x".to_string(),
                Some("0123456789abcdef0123456789abcdef"),
            ),
            // not a pod
            (
                "0::/kubepods.slice/kubepods-burstable.slice".to_string(),
                None,
            ),
            ("0::/system.slice/containerd.service".to_string(), None),
            ("0::/pods/podinfo".to_string(), None),
            ("0::/".to_string(), None),
        ];
        for (line, want) in cases {
            assert_eq!(pod_uid_from_cgroup_path(&line).as_deref(), want, "{line}");
        }
    }
}
