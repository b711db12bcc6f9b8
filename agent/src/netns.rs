//! Where the agent's sockets are made. A pod's sockets are made *inside* the pod's
//! network namespace (the thread enters it with setns, makes the socket, and returns at
//! once — no await in between), so that listeners sit in the pod and upstream connections
//! leave with the pod's IP. Every socket carries the agent's SO_MARK (unless the mark is
//! 0: a sidecar without the capability to mark is recognized by its user instead). A
//! sidecar already lives in its pod's namespace: [`Netns::current`] makes sockets there
//! without entering anything.
use std::{
    fs::File,
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};

/// `SO_NETNS_COOKIE` (linux/asm-generic/socket.h); the same cookie the kernel programs
/// read with `bpf_get_netns_cookie`.
const SO_NETNS_COOKIE: libc::c_int = 71;
/// `NSFS_MAGIC` (linux/magic.h): the file system of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a network namespace file")]
    NotANamespace { path: PathBuf },
    #[error("network namespace {path}: cannot enter: {source}")]
    Enter { path: PathBuf, source: io::Error },
}

/// The agent's own network namespace, captured once, before any thread has moved.
fn home() -> &'static io::Result<File> {
    static HOME: OnceLock<io::Result<File>> = OnceLock::new();
    HOME.get_or_init(|| File::open("/proc/self/ns/net"))
}

/// Records the agent's own namespace. Call once at start, on the main thread.
pub fn init() -> io::Result<()> {
    match home() {
        Ok(_) => Ok(()),
        Err(err) => Err(io::Error::new(
            err.kind(),
            format!("/proc/self/ns/net: {err}"),
        )),
    }
}

/// An open network namespace and its cookie.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
    cookie: u64,
    /// The process's own namespace: nothing to enter (and no CAP_SYS_ADMIN needed).
    current: bool,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| NetnsError::Open {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(NetnsError::NotANamespace {
                path: path.to_path_buf(),
            });
        }
        let mut ns = Self {
            file,
            path: path.to_path_buf(),
            cookie: 0,
            current: false,
        };
        let probe = ns
            .enter(|| Socket::new(Domain::IPV4, Type::DGRAM, None))
            .map_err(|source| NetnsError::Enter {
                path: path.to_path_buf(),
                source,
            })?;
        ns.cookie = netns_cookie(&probe).map_err(|source| NetnsError::Enter {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ns)
    }

    /// The namespace this process runs in (a sidecar's: its pod's).
    pub fn current() -> Result<Self, NetnsError> {
        let path = PathBuf::from("/proc/self/ns/net");
        let file = File::open(&path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        let probe =
            Socket::new(Domain::IPV4, Type::DGRAM, None).map_err(|source| NetnsError::Open {
                path: path.clone(),
                source,
            })?;
        let cookie = netns_cookie(&probe).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            file,
            path,
            cookie,
            current: true,
        })
    }

    pub(crate) fn cookie(&self) -> u64 {
        self.cookie
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on this thread inside the namespace, then returns to the agent's own.
    /// `f` must not block or yield: it should only make sockets.
    pub fn enter<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        if self.current {
            return f();
        }
        let home = home()
            .as_ref()
            .map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)?;
        struct Return<'a>(&'a File);
        impl Drop for Return<'_> {
            fn drop(&mut self) {
                if let Err(err) = setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET) {
                    // A thread stuck in a pod's namespace would make later sockets there.
                    tracing::error!(error = %err, "cannot return to the agent's network namespace");
                    std::process::abort();
                }
            }
        }
        let _back = Return(home);
        f()
    }

    /// A listening TCP socket bound to `addr` inside the namespace.
    pub fn listen(
        &self,
        addr: SocketAddr,
        backlog: u32,
        mark: u32,
    ) -> io::Result<std::net::TcpListener> {
        let socket = self.enter(|| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            if mark != 0 {
                socket.set_mark(mark)?;
            }
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.set_reuse_address(true)?;
            Ok(socket)
        })?;
        socket.bind(&addr.into())?;
        socket.listen(backlog.min(i32::MAX as u32) as i32)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    }

    /// An unconnected TCP socket inside the namespace for a connection to `dest`.
    pub fn tcp_socket(&self, dest: SocketAddr, mark: u32) -> io::Result<tokio::net::TcpSocket> {
        let socket = self.enter(|| {
            // Non-blocking from the start (SOCK_NONBLOCK), not by two fcntl calls.
            Socket::new(
                Domain::for_address(dest),
                Type::STREAM.nonblocking(),
                Some(Protocol::TCP),
            )
        })?;
        // Neither option depends on the namespace the thread is in.
        if mark != 0 {
            socket.set_mark(mark)?;
        }
        socket.set_tcp_nodelay(true)?;
        let std: std::net::TcpStream = socket.into();
        Ok(tokio::net::TcpSocket::from_std_stream(std))
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The network-namespace cookie of the namespace `socket` lives in.
pub(crate) fn netns_cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, a u64 out-buffer of the length we pass.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    /// A named network namespace of a unit test's own (`ip netns add`, needs root),
    /// deleted when dropped; `lo` is up.
    pub(crate) struct ScratchNetns {
        name: String,
    }

    impl ScratchNetns {
        pub(crate) fn path(&self) -> PathBuf {
            PathBuf::from("/run/netns").join(&self.name)
        }

        /// Runs `cmd` in the namespace and returns its standard output.
        pub(crate) fn run(&self, cmd: &[&str]) -> String {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(cmd)
                .output()
                .unwrap();
            assert!(out.status.success(), "{cmd:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }

    impl Drop for ScratchNetns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    pub(crate) fn scratch_namespace() -> ScratchNetns {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("outrider-ut-{}-{n}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        let ns = ScratchNetns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    #[test]
    fn own_namespace_has_a_cookie_and_sockets_are_marked() {
        init().unwrap();
        let ns = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        assert_ne!(ns.cookie(), 0);
        let listener = ns
            .listen("127.0.0.1:0".parse().unwrap(), 16, 0x4f52)
            .unwrap();
        let mark = socket2::SockRef::from(&listener).mark().unwrap();
        assert_eq!(mark, 0x4f52);
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(netns_cookie(&probe).unwrap(), ns.cookie());
    }

    #[tokio::test]
    async fn upstream_sockets_are_made_in_the_namespace_marked_and_non_blocking() {
        init().unwrap();
        let scratch = scratch_namespace();
        let ns = Netns::open(&scratch.path()).unwrap();
        let own = netns_cookie(&std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        assert_ne!(ns.cookie(), own);
        let listener = ns.listen("127.0.0.1:0".parse().unwrap(), 16, 0).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let socket = ns.tcp_socket(addr, 0x4f52).unwrap();
        assert_eq!(netns_cookie(&socket).unwrap(), ns.cookie());
        assert_eq!(socket2::SockRef::from(&socket).mark().unwrap(), 0x4f52);
        // Non-blocking (tokio's connect would hang otherwise), and it reaches a listener
        // only the namespace has.
        let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
            .await
            .unwrap()
            .unwrap();
        assert!(stream.nodelay().unwrap());
        listener.accept().await.unwrap();
        // The thread is back in the agent's namespace.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(netns_cookie(&probe).unwrap(), own);
    }

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused() {
        let err = Netns::open(Path::new("/proc/self/status")).unwrap_err();
        assert!(matches!(err, NetnsError::NotANamespace { .. }), "{err}");
        let err = Netns::open(Path::new("/nonexistent/ns")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ns"), "{err}");
    }
}
