//! A stream with bytes put back in front of it: what protocol detection read, replayed
//! before anything else is read from the stream, and then how the sniffing read ended
//! (end-of-stream or an error), so whoever copies the stream next sees exactly what the
//! detector saw. Writes go straight through.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::copy::Side;

/// `inner` with `prefix` to be read first.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    /// The sniffing read saw end-of-stream: reads end there once the prefix is out.
    eof: bool,
    /// The sniffing read failed: reads fail with it once the prefix is out.
    error: Option<io::Error>,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self {
            prefix,
            eof: false,
            error: None,
            inner,
        }
    }

    /// Reads end (end-of-stream) once the prefix is out, without asking `inner`.
    pub(super) fn with_eof(mut self) -> Self {
        self.eof = true;
        self
    }

    /// Reads fail with `error` once the prefix is out.
    pub(super) fn with_error(mut self, error: io::Error) -> Self {
        self.error = Some(error);
        self
    }

    /// Once the prefix is out, how the sniffing read ended: its error (once), then
    /// end-of-stream; `None` when the stream itself is to be read.
    fn sniff_ended(&mut self) -> Option<io::Result<()>> {
        if let Some(error) = self.error.take() {
            self.eof = true;
            return Some(Err(error));
        }
        self.eof.then_some(Ok(()))
    }

    /// The bytes not yet replayed.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        if let Some(ended) = this.sniff_ended() {
            return Poll::Ready(ended);
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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

impl<S: Side> Side for Prefixed<S> {
    fn abort(&mut self) {
        self.inner.abort();
    }

    fn poll_read_bytes(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
    ) -> Poll<io::Result<Bytes>> {
        // The prefix as it is, then how the sniffing read ended, then the stream's own.
        if !self.prefix.is_empty() {
            return Poll::Ready(Ok(std::mem::take(&mut self.prefix)));
        }
        if let Some(ended) = self.sniff_ended() {
            return Poll::Ready(ended.map(|()| Bytes::new()));
        }
        self.inner.poll_read_bytes(cx, buf, max)
    }

    fn spliceable(&self) -> Option<&tokio::net::TcpStream> {
        // Only once nothing put back is left to read first.
        if self.prefix.is_empty() && !self.eof && self.error.is_none() {
            self.inner.spliceable()
        } else {
            None
        }
    }

    fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_write_bytes(cx, data)
    }
}
