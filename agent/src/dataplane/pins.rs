//! The agent's kernel objects on the bpf filesystem, so that they outlive it. Under
//! `<capture.pinRoot>/<instance>`:
//!
//! - `maps-v<MAPS_LAYOUT>/<MAP>`: every map; the next agent reuses them, state and all
//!   (enrolled pods, original destinations of connections still in a listener's queue,
//!   counters), unless the layout changed.
//! - `programs/<name>`: the programs in force.
//! - `links/<name>`: the attachments to the pods' cgroup.
//! - `netns/<cookie>`: each enrolled pod's `sk_lookup` attachment.
//!
//! While no agent runs, the kernel keeps steering, so the fail policy applies. A starting
//! agent reconciles: it swaps its programs into the pinned links in place
//! (`BPF_LINK_UPDATE`, no moment without a program), replaces links that point at
//! another cgroup, and drops what its version no longer has.
use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use agent_ebpf::MAPS_LAYOUT;
use aya::programs::links::FdLink;

/// `statfs` magic of the bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "capture.pinRoot: {0} is not on a bpf filesystem; mount one (`mount -t bpf bpf /sys/fs/bpf`, or a hostPath of /sys/fs/bpf in the DaemonSet)"
    )]
    NotBpfFs(PathBuf),
    #[error("capture.pinRoot: {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// One agent instance's pin directory.
#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    /// Checks that `dir` is on a bpf filesystem and creates its layout.
    pub fn open(dir: &Path) -> Result<Self, PinError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PinError::Io { path, source }
        };
        let mut existing = dir;
        while !existing.exists() {
            existing = existing.parent().unwrap_or(Path::new("/"));
        }
        let fs =
            nix::sys::statfs::statfs(existing).map_err(|e| io_err(existing)(io::Error::from(e)))?;
        if fs.filesystem_type().0 as i64 != BPF_FS_MAGIC {
            return Err(PinError::NotBpfFs(dir.to_path_buf()));
        }
        let pins = Self {
            dir: dir.to_path_buf(),
        };
        for sub in [
            pins.maps_dir(),
            dir.join("programs"),
            dir.join("links"),
            dir.join("netns"),
        ] {
            std::fs::create_dir_all(&sub).map_err(io_err(&sub))?;
        }
        Ok(pins)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where this version's maps are pinned.
    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join(format!("maps-v{MAPS_LAYOUT}"))
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join("programs").join(name)
    }

    pub fn link(&self, name: &str) -> PathBuf {
        self.dir.join("links").join(name)
    }

    pub fn netns_link(&self, netns_cookie: u64) -> PathBuf {
        self.dir.join("netns").join(netns_cookie.to_string())
    }

    /// The pod namespaces (by cookie) that have a pinned `sk_lookup` link.
    pub fn netns_links(&self) -> Vec<u64> {
        read_names(&self.dir.join("netns"))
            .into_iter()
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    /// Removes what this version does not use: maps of other layouts, links and
    /// programs not in `programs`.
    pub fn prune(&self, programs: &[&str]) {
        let maps = format!("maps-v{MAPS_LAYOUT}");
        for name in read_names(&self.dir) {
            if name.starts_with("maps-v") && name != maps {
                let path = self.dir.join(&name);
                tracing::info!(path = %path.display(), "removing maps of another layout");
                remove_logged(&path);
            }
        }
        for sub in ["links", "programs"] {
            for name in read_names(&self.dir.join(sub)) {
                if !programs.contains(&name.as_str()) {
                    remove_logged(&self.dir.join(sub).join(name));
                }
            }
        }
    }

    /// Replaces the pinned program `name` by `program`.
    pub fn pin_program(&self, name: &str, program: BorrowedFd<'_>) -> io::Result<()> {
        let path = self.program(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        obj_pin(program, &path)
    }
}

/// Removes an instance's whole pin directory: every link detaches (unless an agent still
/// holds it open), every program and map is freed once unused.
pub fn remove_all(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Makes the link pinned at `path` run `program` if it exists and is attached to
/// `target_id` (a cgroup id, or a network namespace's inode); else attaches afresh with
/// `attach` and pins the new link. Returns true when an existing link was updated.
pub fn update_or_attach(
    path: &Path,
    program: BorrowedFd<'_>,
    target_id: u64,
    attach: impl FnOnce() -> Result<FdLink, String>,
) -> Result<bool, String> {
    if path.exists() {
        let reused = obj_get(path).and_then(|link| {
            let target = link_target(link.as_fd())?;
            if target != target_id {
                return Err(io::Error::other(format!(
                    "attached to {target}, not {target_id}"
                )));
            }
            link_update(link.as_fd(), program)
        });
        match reused {
            Ok(()) => return Ok(true),
            Err(reason) => {
                tracing::info!(path = %path.display(), %reason, "replacing a pinned link");
                std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
    }
    let link = attach()?;
    link.pin(path)
        .map_err(|e| format!("pinning {}: {e}", path.display()))?;
    Ok(false)
}

fn read_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn remove_logged(path: &Path) {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    if let Err(error) = result {
        tracing::warn!(path = %path.display(), %error, "cannot remove a stale pin");
    }
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed bpf_attr-sized buffer filled for `cmd`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `BPF_LINK_UPDATE`: the link runs `program` from now on, atomically.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [0u64; 16];
    // link_update { u32 link_fd; u32 new_prog_fd; u32 flags; u32 old_prog_fd; }
    attr[0] = u64::from(link.as_raw_fd() as u32) | (u64::from(program.as_raw_fd() as u32) << 32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// What a link is attached to: a cgroup's id, or a network namespace's inode.
fn link_target(link: BorrowedFd<'_>) -> io::Result<u64> {
    // struct bpf_link_info { u32 type; u32 id; u32 prog_id; union { ...
    //   cgroup { u64 cgroup_id; u32 attach_type; }, netns { u32 netns_ino; ... } } }
    let mut info = [0u64; 16];
    let mut attr = [0u64; 16];
    // info { u32 bpf_fd; u32 info_len; u64 info; }
    attr[0] = u64::from(link.as_raw_fd() as u32) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    const CGROUP: u64 = 3;
    const NETNS: u64 = 5;
    match info[0] & 0xffff_ffff {
        CGROUP => Ok(info[2]),
        NETNS => Ok(info[2] & 0xffff_ffff),
        other => Err(io::Error::other(format!("link of type {other}"))),
    }
}

fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = [0u64; 16];
    // obj { u64 pathname; u32 bpf_fd; u32 file_flags; }
    attr[0] = c.as_ptr() as u64;
    attr[1] = u64::from(fd.as_fd().as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Opens the object pinned at `path`.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    // bpf_fd 0, file_flags 0 (read-write); bpf descriptors are always close-on-exec.
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
