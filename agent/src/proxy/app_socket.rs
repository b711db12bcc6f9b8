//! Counting an HTTP connection's bytes on the app's socket, as ztunnel counts every
//! connection's: the bytes copied between the app's socket and the tunnel stream or
//! upstream socket, HTTP headers included, TLS and HTTP/2 tunnel framing excluded.
//!
//! The app's socket is the one whose other end is the enrolled pod's app: on an outbound
//! connection the socket the client app opened (accepted by the agent), on an inbound one
//! the socket the agent opened to the server app. HTTP is parsed and re-written by the
//! proxy, so only this socket carries exactly what the app wrote and read. Opaque
//! connections are counted by `copy` as it writes, which is the same number.
use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connections::Connection;

/// The app's end of a proxied connection: what is read from it (the app wrote it) and
/// what is written to it (the app gets it) go into the connection's counters, in the
/// direction the app's role gives them (client → server is `forward`).
pub struct AppSocket<S> {
    inner: S,
    conn: Arc<Connection>,
    /// The app opened the connection (outbound): what it writes goes client → server.
    app_is_client: bool,
}

impl<S> AppSocket<S> {
    /// `inner` is the client app's socket (`app_is_client`, an outbound connection) or
    /// the socket to the server app (an inbound one).
    pub fn new(inner: S, conn: Arc<Connection>, app_is_client: bool) -> Self {
        Self {
            inner,
            conn,
            app_is_client,
        }
    }

    /// Bytes the app wrote (read from this socket).
    fn written_by_app(&self) -> &AtomicU64 {
        if self.app_is_client {
            &self.conn.counters.forward
        } else {
            &self.conn.counters.backward
        }
    }

    /// Bytes the app is given (written to this socket).
    fn given_to_app(&self) -> &AtomicU64 {
        if self.app_is_client {
            &self.conn.counters.backward
        } else {
            &self.conn.counters.forward
        }
    }

    fn count_written(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = polled {
            self.given_to_app().fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AppSocket<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = buf.filled().len().saturating_sub(before);
            this.written_by_app().fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AppSocket<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.count_written(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.count_written(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
