//! The testbed's own bpf filesystem, `DIR/bpffs-<prefix>`: the agents pin their programs,
//! maps and links there (as a node's agent does under `/sys/fs/bpf`), so that they
//! outlive an agent's restart; unmounting it at teardown frees whatever is left.
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::mount::{MntFlags, MsFlags};

/// Where the testbed of `prefix` in `dir` mounts its bpf filesystem.
pub fn path(dir: &Path, prefix: &str) -> PathBuf {
    dir.join(format!("bpffs-{prefix}"))
}

/// True when `path` is a mount point of a bpf filesystem.
fn mounted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mount_points(&text).iter().any(|p| Path::new(p) == path)
}

/// Mount points of bpf filesystems in a mountinfo text.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split(' ').next()? == "bpf").then(|| left.split(' ').nth(4).map(String::from))?
        })
        .collect()
}

pub fn mount(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    if mounted(path) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .with_context(|| format!("cannot mount a bpf filesystem on {}", path.display()))
}

/// Unpins everything and unmounts; fine if it was never mounted.
pub fn unmount(path: &Path) -> anyhow::Result<()> {
    if mounted(path) {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                let _ = outrider::dataplane::pins::remove_all(&entry.path());
            }
        }
        nix::mount::umount2(path, MntFlags::MNT_DETACH)
            .with_context(|| format!("cannot unmount {}", path.display()))?;
    }
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bpf_mount_points() {
        let text = "\
22 1 0:21 / /sys rw - sysfs sysfs rw
41 22 0:38 / /tmp/t/bpffs-or1 rw,relatime - bpf bpf rw,mode=700
";
        assert_eq!(mount_points(text), vec!["/tmp/t/bpffs-or1".to_string()]);
    }
}
