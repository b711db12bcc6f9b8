//! Network sysctls of a pod's namespace. A `net.*` sysctl belongs to a network namespace:
//! its file shows (and sets) the value of the namespace of the thread that opens it, so
//! it is opened inside [`Netns::enter`]. A container's `/proc/sys` is read-only (the
//! runtime mounts it so, also in the DaemonSet); the agent goes through a procfs of its
//! own instead, mounted nowhere (`fsopen`/`fsmount`, which take the CAP_SYS_ADMIN the
//! agent holds to enter namespaces), and through `/proc/sys` where it cannot make one.
use std::{
    ffi::CString,
    fs::File,
    io::{self, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::OnceLock,
};

use crate::netns::Netns;

// linux/mount.h
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

/// The agent's own procfs, if it could make one (once per process).
fn private_proc() -> Option<&'static OwnedFd> {
    static PROC: OnceLock<Option<OwnedFd>> = OnceLock::new();
    PROC.get_or_init(|| match mount_proc() {
        Ok(fd) => Some(fd),
        Err(error) => {
            tracing::debug!(%error, "no procfs of the agent's own; sysctls go through /proc/sys");
            None
        }
    })
    .as_ref()
}

fn mount_proc() -> io::Result<OwnedFd> {
    let fs = c"proc";
    // SAFETY: fsopen with a NUL-terminated name; the descriptor is owned at once.
    let ctx = unsafe { libc::syscall(libc::SYS_fsopen, fs.as_ptr(), FSOPEN_CLOEXEC) };
    if ctx < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    let ctx = unsafe { OwnedFd::from_raw_fd(ctx as i32) };
    // SAFETY: FSCONFIG_CMD_CREATE takes no key or value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            ctx.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsmount of the configured context; the mount's descriptor is owned.
    let mnt = unsafe { libc::syscall(libc::SYS_fsmount, ctx.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
    if mnt < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as i32) })
}

/// Opens `net/…` (a path under `/proc/sys`) as seen from the calling thread's namespace.
fn open(name: &str, write: bool) -> io::Result<File> {
    let flags = libc::O_CLOEXEC
        | if write {
            libc::O_WRONLY
        } else {
            libc::O_RDONLY
        };
    if let Some(proc) = private_proc() {
        let path = CString::new(format!("sys/{name}")).map_err(io::Error::other)?;
        // SAFETY: openat relative to our procfs with a NUL-terminated path.
        let fd = unsafe { libc::openat(proc.as_raw_fd(), path.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: a fresh descriptor.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
    }
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open(format!("/proc/sys/{name}"))
}

/// Sets the sysctl `name` (`net/ipv4/…`) of `netns` to `value`.
pub fn write(netns: &Netns, name: &str, value: &str) -> io::Result<()> {
    let mut file = netns
        .enter(|| open(name, true))
        .map_err(|e| io::Error::new(e.kind(), format!("sysctl {name}: {e}")))?;
    file.write_all(value.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("sysctl {name} = {value}: {e}")))
}

/// The value of the sysctl `name` in `netns`, trimmed (the tests read back what
/// [`write`] set; the agent only writes).
#[cfg(test)]
pub fn read(netns: &Netns, name: &str) -> io::Result<String> {
    use std::io::Read;
    let mut file = netns
        .enter(|| open(name, false))
        .map_err(|e| io::Error::new(e.kind(), format!("sysctl {name}: {e}")))?;
    let mut value = String::new();
    file.read_to_string(&mut value)
        .map_err(|e| io::Error::new(e.kind(), format!("sysctl {name}: {e}")))?;
    Ok(value.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root: the value set in a namespace of the test's own is that namespace's
    /// (the test's own stays as it was).
    #[test]
    fn a_sysctl_is_set_in_the_namespace_it_is_asked_for() {
        crate::netns::init().unwrap();
        let own = Netns::open(std::path::Path::new("/proc/self/ns/net")).unwrap();
        let before = read(&own, "net/ipv4/tcp_fwmark_accept").unwrap();
        let ns = crate::netns::tests::scratch_namespace();
        let netns = Netns::open(&ns.path()).unwrap();
        assert_eq!(read(&netns, "net/ipv4/tcp_fwmark_accept").unwrap(), "0");
        write(&netns, "net/ipv4/tcp_fwmark_accept", "1").unwrap();
        assert_eq!(read(&netns, "net/ipv4/tcp_fwmark_accept").unwrap(), "1");
        let shown = ns.run(&["cat", "/proc/sys/net/ipv4/tcp_fwmark_accept"]);
        assert_eq!(shown.trim(), "1");
        assert_eq!(read(&own, "net/ipv4/tcp_fwmark_accept").unwrap(), before);
        assert!(
            private_proc().is_some(),
            "root can make a procfs of its own"
        );
    }
}
