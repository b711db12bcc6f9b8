//! One CONNECT stream as a byte stream (`AsyncRead + AsyncWrite`), so the copy loop can
//! splice it with a TCP connection. Writes wait for flow-control capacity (nothing is
//! queued beyond the send buffer); reads give the window back as the consumer takes the
//! bytes; shutdown is END_STREAM (half-close: reads go on); [`H2Stream::reset`] sends
//! RST_STREAM(CANCEL) and a peer's RST_STREAM reads as `ConnectionReset`. Dropped before
//! both directions ended, the stream is reset, never left open.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::client::Slot;

/// A CONNECT stream, opened by [`Client::connect`](super::Client::connect) or handed to
/// a [`Handler`](super::Handler) by the server.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received, not yet read; its bytes are still counted against our window.
    pending: Bytes,
    max_chunk: usize,
    write_closed: bool,
    read_done: bool,
    reset: bool,
    /// The client connection's stream slot, given back on drop.
    _slot: Option<Slot>,
}

impl H2Stream {
    pub(super) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        max_chunk: usize,
        slot: Option<Slot>,
    ) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            max_chunk: max_chunk.max(1),
            write_closed: false,
            read_done: false,
            reset: false,
            _slot: slot,
        }
    }

    /// The HTTP/2 stream id, for logs.
    pub fn id(&self) -> u32 {
        self.send.stream_id().as_u32()
    }

    /// Aborts the stream both ways with RST_STREAM(CANCEL), as a TCP reset would: used
    /// when the other side of the proxied connection was reset.
    pub fn reset(&mut self) {
        if !self.reset {
            self.send.send_reset(Reason::CANCEL);
            self.reset = true;
            self.write_closed = true;
            self.read_done = true;
            self.pending.clear();
        }
    }

    /// The error for a send side h2 reports closed: the peer's reset if there was one.
    fn send_closed_error(&mut self, cx: &mut Context<'_>) -> io::Error {
        match self.send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => reset_error(reason, true),
            Poll::Ready(Err(e)) => to_io(e),
            Poll::Pending => io::Error::new(io::ErrorKind::BrokenPipe, "HTTP/2 stream closed"),
        }
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                // The window opens as the consumer takes the bytes, no sooner. An error
                // here means the stream is gone, which the next poll reports.
                let _ = this.recv.flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(if this.reset {
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "HTTP/2 stream was reset",
                    ))
                } else {
                    Ok(())
                });
            }
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.pending = data,
                None => this.read_done = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                if this.reset {
                    "HTTP/2 stream was reset"
                } else {
                    "HTTP/2 stream already shut down for writing"
                },
            )));
        }
        let want = buf.len().min(this.max_chunk);
        loop {
            // Capacity is what both windows allow and the send buffer has room for, so
            // sending within it never queues without bound.
            let capacity = this.send.capacity();
            if capacity > 0 {
                let n = capacity.min(want);
                this.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(to_io)?;
                return Poll::Ready(Ok(n));
            }
            this.send.reserve_capacity(want);
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(this.send_closed_error(cx))),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes out whatever the stream has queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(if this.reset {
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "HTTP/2 stream was reset",
                ))
            } else {
                Ok(())
            });
        }
        // Nothing more to send: drop any capacity still requested.
        this.send.reserve_capacity(0);
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => {
                this.write_closed = true;
                Poll::Ready(Ok(()))
            }
            Err(e) if e.is_reset() || e.is_go_away() || e.is_io() => Poll::Ready(Err(to_io(e))),
            Err(_) => Poll::Ready(Err(this.send_closed_error(cx))),
        }
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        // Our side never ended (an error, or given up on): abort it rather than leave the
        // peer waiting on a stream nobody serves. When it did end (END_STREAM queued),
        // an explicit reset would throw away DATA still queued behind it — e.g. an HTTP/1
        // response sent just before `Connection: close` — so h2 is left to close the
        // stream once its queue is sent.
        if !(self.reset || self.write_closed) {
            self.send.send_reset(Reason::CANCEL);
        }
    }
}

fn reset_error(reason: Reason, by_peer: bool) -> io::Error {
    let by = if by_peer { " by peer" } else { "" };
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("HTTP/2 stream reset{by} ({reason:?})"),
    )
}

/// An h2 error as the `io::Error` a TCP stream would have given.
pub(super) fn to_io(e: h2::Error) -> io::Error {
    if e.is_reset() {
        return reset_error(e.reason().unwrap_or(Reason::CANCEL), e.is_remote());
    }
    if let Some(io) = e.get_io() {
        return io::Error::new(io.kind(), e);
    }
    if e.is_go_away() {
        return io::Error::new(io::ErrorKind::ConnectionAborted, e);
    }
    io::Error::other(e)
}
