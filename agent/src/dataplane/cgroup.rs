//! Which cgroup the programs attach to, and which one is the agent's own. The attach
//! cgroup must be a real cgroup v2 directory below the mount's root: the root itself
//! (every process on the machine) is always refused.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::config::CgroupConfig;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 mount found in /proc/self/mountinfo; set cgroup.mount")]
    NoMount,
    #[error("{key}: {path}: {reason}")]
    Attach {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the agent's own cgroup {path}: {reason}")]
    Own { path: PathBuf, reason: String },
}

/// The cgroup v2 mount: configured, or found by [`find_mount`].
pub fn mount(config: &CgroupConfig) -> Result<PathBuf, CgroupError> {
    match &config.mount {
        Some(mount) => Ok(mount.clone()),
        None => find_mount(),
    }
}

/// The cgroup v2 mount, from `/proc/self/mountinfo` (e.g. `/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid systems).
pub fn find_mount() -> Result<PathBuf, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|_| CgroupError::NoMount)?;
    mount_from_mountinfo(&text).ok_or(CgroupError::NoMount)
}

fn mount_from_mountinfo(text: &str) -> Option<PathBuf> {
    // "<id> <parent> <maj:min> <root> <mount point> <opts> ... - <fstype> <source> <opts>"
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        left.split(' ').nth(4).map(|p| PathBuf::from(unescape(p)))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The attach cgroup as an absolute path, checked.
pub fn resolve_attach(config: &CgroupConfig) -> Result<PathBuf, CgroupError> {
    let attach = config.attach.clone().ok_or_else(|| CgroupError::Attach {
        key: "cgroup.attach",
        path: PathBuf::new(),
        reason: "not set".into(),
    })?;
    resolve(config, &attach, "cgroup.attach")
}

/// The cgroup `path` (absolute, or relative to the mount) as a canonical absolute path,
/// checked to be a cgroup v2 directory below the mount's root; `key` names the setting.
pub fn resolve(
    config: &CgroupConfig,
    path: &Path,
    key: &'static str,
) -> Result<PathBuf, CgroupError> {
    let mount = mount(config)?;
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        mount.join(path)
    };
    let err = |reason: &str| CgroupError::Attach {
        key,
        path: path.clone(),
        reason: reason.to_string(),
    };
    let canonical = path
        .canonicalize()
        .map_err(|e| err(&format!("cannot resolve: {e}")))?;
    let mount = mount
        .canonicalize()
        .map_err(|e| err(&format!("cgroup mount: {e}")))?;
    if canonical == mount {
        return Err(err(
            "is the root of the cgroup hierarchy; refusing to capture every process on the machine",
        ));
    }
    if !canonical.starts_with(&mount) {
        return Err(err(&format!(
            "is not below the cgroup v2 mount {}",
            mount.display()
        )));
    }
    if !canonical.join("cgroup.procs").exists() {
        return Err(err("is not a cgroup v2 directory"));
    }
    Ok(canonical)
}

/// The cgroup v2 id (the directory's inode) of the cgroup this process lives in; the
/// programs never steer sockets made from it.
pub fn own_cgroup_id(config: &CgroupConfig) -> Result<u64, CgroupError> {
    id_of(&own_cgroup(config)?)
}

/// The directory of the cgroup this process lives in.
pub fn own_cgroup(config: &CgroupConfig) -> Result<PathBuf, CgroupError> {
    let mount = mount(config)?;
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| CgroupError::Own {
        path: PathBuf::from("/proc/self/cgroup"),
        reason: e.to_string(),
    })?;
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| CgroupError::Own {
            path: PathBuf::from("/proc/self/cgroup"),
            reason: "no cgroup v2 entry".into(),
        })?;
    Ok(mount.join(relative.trim_start_matches('/')))
}

fn id_of(path: &Path) -> Result<u64, CgroupError> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| CgroupError::Own {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_v1_mounts() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            mount_from_mountinfo(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let text = "41 31 0:38 / /mnt/my\\040cgroups rw shared:9 - cgroup2 none rw\n";
        assert_eq!(
            mount_from_mountinfo(text),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
        assert_eq!(
            mount_from_mountinfo("32 31 0:29 / /x rw - cgroup cgroup rw\n"),
            None
        );
    }

    #[test]
    fn the_root_cgroup_is_refused() {
        let Ok(mount) = mount(&CgroupConfig::default()) else {
            panic!("this machine has no cgroup v2 mount");
        };
        let config = CgroupConfig {
            mount: Some(mount.clone()),
            attach: Some(mount.clone()),
        };
        let err = resolve_attach(&config).unwrap_err().to_string();
        assert!(err.contains("root of the cgroup hierarchy"), "{err}");
        let config = CgroupConfig {
            mount: Some(mount),
            attach: Some(PathBuf::from(".")),
        };
        assert!(resolve_attach(&config).is_err());
    }
}
