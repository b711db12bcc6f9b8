//! The testbed's cgroup v2 tree: `<mount>/<prefix>/<node>/{agent,pods/<ns>-<name>}`.
//! Finding the mount, making the directories, and removing the tree with whatever still
//! runs in it.
use std::{
    fs::File,
    io::ErrorKind,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// The cgroup v2 mount (the same lookup the agent makes).
pub fn find_mount() -> anyhow::Result<PathBuf> {
    Ok(outrider::dataplane::cgroup::find_mount()?)
}

/// Makes `path` and its missing parents (all below the mount).
pub fn create(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path)
        .with_context(|| format!("cannot create cgroup {}", path.display()))
}

/// Opens `<cgroup>/cgroup.procs` for writing: writing "0" to it moves the writer in.
pub fn open_procs(cgroup: &Path) -> anyhow::Result<File> {
    let path = cgroup.join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {} for writing", path.display()))
}

/// True when `/proc/<pid>/cgroup` puts the process below a cgroup named `prefix`.
pub fn pid_is_below(pid: u32, prefix: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("0::"))
        .any(|path| path.split('/').any(|c| c == prefix))
}

/// Every process in `cgroup` and below.
fn pids(cgroup: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(cgroup.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    for child in subdirs(cgroup) {
        pids(&child, out);
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

fn populated(cgroup: &Path) -> bool {
    match std::fs::read_to_string(cgroup.join("cgroup.events")) {
        Ok(text) => text.lines().any(|l| l == "populated 1"),
        Err(_) => {
            let mut found = Vec::new();
            pids(cgroup, &mut found);
            !found.is_empty()
        }
    }
}

/// Kills everything in `root` and below, then removes the directories bottom-up. Does
/// nothing if `root` is gone.
pub fn remove_tree(root: &Path) -> anyhow::Result<()> {
    if !root.exists() {
        return Ok(());
    }
    let kill = root.join("cgroup.kill");
    if kill.exists() {
        std::fs::write(&kill, "1").with_context(|| format!("cannot write {}", kill.display()))?;
    } else {
        // Kernels before 5.14: kill one by one, again while the tree is not empty (for
        // children forked meanwhile).
        kill_each(root);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while populated(root) {
        if Instant::now() > deadline {
            let mut found = Vec::new();
            pids(root, &mut found);
            bail!(
                "cgroup {} still holds processes {found:?} after killing them",
                root.display()
            );
        }
        if !kill.exists() {
            kill_each(root);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    remove_dirs(root)
}

fn kill_each(root: &Path) {
    let mut found = Vec::new();
    pids(root, &mut found);
    for pid in found {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn remove_dirs(dir: &Path) -> anyhow::Result<()> {
    for child in subdirs(dir) {
        remove_dirs(&child)?;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot remove cgroup {}", dir.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_missing_tree_is_fine() {
        remove_tree(Path::new("/nonexistent/cgroup/tree")).unwrap();
    }
}
