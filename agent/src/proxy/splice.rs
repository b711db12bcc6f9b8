//! Moving a bulk flow's bytes from one TCP socket to another inside the kernel: `splice`
//! from the reading socket into a pipe, then from the pipe into the writing socket. The
//! pipe holds references to the received pages, not copies, and the sending socket takes
//! those pages as they are, so the bytes never enter the agent's memory: two copies per
//! byte fewer than a read and a write. `copy` switches a direction to it once the flow
//! has shown itself bulky (see `copy::SPLICE_FROM`); small exchanges stay on reads and
//! writes, which cost fewer system calls per message.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    task::{Context, Poll, ready},
};

use tokio::{io::Interest, net::TcpStream};

/// One direction's pipe, and how many bytes wait in it.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Spliced in, not yet out.
    held: usize,
}

impl Pipe {
    /// A pipe that holds up to `size` bytes if the kernel allows it (the default 64 KiB
    /// otherwise: `fs.pipe-max-size` and the per-user pipe limits apply).
    pub fn new(size: usize) -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is two ints for the kernel to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors nobody else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // Best effort: a smaller pipe only means more, smaller splices.
        // SAFETY: F_SETPIPE_SZ on a pipe we own.
        let _ = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        Ok(Self {
            read,
            write,
            held: 0,
        })
    }

    /// Bytes in the pipe, waiting to go out.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Splices up to `max` bytes from `from` into the (empty) pipe; 0 at end-of-stream.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        debug_assert_eq!(self.held, 0, "fill only an empty pipe");
        loop {
            ready!(from.poll_read_ready(cx))?;
            // The pipe is empty, so a would-block can only be the socket's: `try_io`
            // clears its readiness and the next poll waits for more.
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), self.write.as_raw_fd(), max)
            }) {
                Ok(n) => {
                    self.held = n;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Splices what the pipe holds into `to`, as much as it takes; says how much went.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>, to: &TcpStream) -> Poll<io::Result<usize>> {
        loop {
            ready!(to.poll_write_ready(cx))?;
            match to.try_io(Interest::WRITABLE, || {
                splice(self.read.as_raw_fd(), to.as_raw_fd(), self.held)
            }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.held -= n;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// One non-blocking `splice` of up to `len` bytes from `from` to `to`.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both are open descriptors; null offsets (a socket and a pipe have none).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
