//! Who is at the other end of a unix socket connection, pinned at accept: the peer's
//! credentials (`SO_PEERCRED`, as tonic reports them) and a pidfd of its process
//! (`SO_PEERPIDFD`, kernel ≥ 6.5). Attesting a caller by its PID alone has a race: the
//! process may exit and its PID be reused by a process of another pod between the
//! connection and the check. With the pidfd, a check reads what it needs under
//! `/proc/<pid>` and then confirms that the connection's own process is still alive —
//! a live process keeps its PID, so what was read was that process's.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
};

use tokio::net::UnixStream;
use tonic::transport::server::UdsConnectInfo;

/// `SO_PEERPIDFD` (include/uapi/asm-generic/socket.h; the same on x86 and arm).
const SO_PEERPIDFD: libc::c_int = 77;

/// The peer's pidfd, from the kernel.
pub fn peer_pidfd(stream: &UnixStream) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, a c_int of that size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if fd < 0 {
        return Err(io::Error::other("SO_PEERPIDFD gave no descriptor"));
    }
    // SAFETY: the kernel just gave us this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process behind `pidfd` is still alive (a signal 0 through the pidfd:
/// `ESRCH` once it has exited, even if its PID was reused since, and only then). Other
/// errors still mean it exists: `EPERM` for an agent without `CAP_KILL` asking about
/// another user's process (an unprivileged sidecar), `EINVAL` for one outside the
/// agent's PID namespace.
pub fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 sends nothing; it only checks.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// What a request on a socket whose admission pins peers
/// ([`Admission::pinning_peers`](super::admission::Admission::pinning_peers)) carries in
/// its extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub uds: UdsConnectInfo,
    /// The peer's process, pinned at accept (none on kernels before 6.5).
    pub pidfd: Option<Arc<OwnedFd>>,
}

impl PeerInfo {
    /// The peer's PID, as its credentials said at connect.
    pub fn pid(&self) -> Option<i32> {
        self.uds.peer_cred.and_then(|cred| cred.pid())
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    /// A child process connects to a socket of ours; we pin it at accept, it exits,
    /// and from then on it is not alive — whatever process may take its PID.
    #[tokio::test]
    async fn the_pinned_peer_is_alive_until_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let mut child = Command::new("socat")
            .args(["-u", "STDIN"])
            .arg(format!("UNIX-CONNECT:{}", path.display()))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let info = PeerInfo {
            uds: tonic::transport::server::Connected::connect_info(&stream),
            pidfd: peer_pidfd(&stream).ok().map(Arc::new),
        };
        assert_eq!(info.pid(), Some(child.id() as i32), "{info:?}");
        let pidfd = info.pidfd.expect("SO_PEERPIDFD (kernel >= 6.5)");
        assert!(alive(&pidfd));
        // The child goes (closing stdin ends socat) and is reaped: its PID is free.
        drop(child.stdin.take());
        child.wait().unwrap();
        assert!(
            !alive(&pidfd),
            "a pidfd of an exited process must not be alive"
        );
    }
}
