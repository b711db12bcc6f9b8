//! One CONNECT stream as a byte stream (`AsyncRead + AsyncWrite`), so the copy loop can
//! splice it with a TCP connection. Writes wait for flow-control capacity (nothing is
//! queued beyond the send buffer); reads give the window back as the consumer takes the
//! bytes; shutdown is END_STREAM (half-close: reads go on); [`H2Stream::reset`] sends
//! RST_STREAM(CANCEL) and a peer's RST_STREAM reads as `ConnectionReset`. Dropped before
//! our side ended, the stream is reset, never left open; dropped after our side ended
//! but before the peer's, it waits (briefly, off the caller) for the peer's end, so that
//! a normal end is never a reset (see [`linger`]).
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::client::Slot;

/// A CONNECT stream, opened by [`Client::connect`](super::Client::connect) or handed to
/// a [`Handler`](super::Handler) by the server.
pub struct H2Stream {
    send: SendStream<Bytes>,
    /// Always there until the stream is dropped, which may hand it to [`linger`].
    recv: Option<RecvStream>,
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
            recv: Some(recv),
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

    /// Waits until `pending` holds bytes, or for the stream's end (`Ok` with `pending`
    /// empty).
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let Some(recv) = self.recv.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            if self.read_done {
                return Poll::Ready(if self.reset {
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "HTTP/2 stream was reset",
                    ))
                } else {
                    Ok(())
                });
            }
            // An empty DATA frame (not the end) is skipped: empty means the end here.
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => self.pending = data,
                None => self.read_done = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }

    /// The window opens as the consumer takes the bytes, no sooner. An error here means
    /// the stream is gone, which the next read reports.
    fn taken(&mut self, n: usize) {
        if let Some(recv) = self.recv.as_mut() {
            let _ = recv.flow_control().release_capacity(n);
        }
    }

    /// Received bytes as h2 holds them, handed over without a copy (empty: the end).
    pub fn poll_read_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        ready!(self.poll_pending(cx))?;
        let data = std::mem::take(&mut self.pending);
        self.taken(data.len());
        Poll::Ready(Ok(data))
    }

    /// Waits for room to send up to `want` bytes (at most a write chunk) and says how
    /// many may go now. Room is what both windows allow and the send buffer has space
    /// for, so sending within it never queues without bound.
    fn poll_room(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                if self.reset {
                    "HTTP/2 stream was reset"
                } else {
                    "HTTP/2 stream already shut down for writing"
                },
            )));
        }
        let want = want.min(self.max_chunk);
        loop {
            let capacity = self.send.capacity();
            if capacity > 0 {
                return Poll::Ready(Ok(capacity.min(want)));
            }
            self.send.reserve_capacity(want);
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(self.send_closed_error(cx))),
            }
        }
    }

    /// Sends the front of `data` as it is (no copy), as much as there is room for, and
    /// says how much went.
    pub fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_room(cx, data.len()))?;
        self.send
            .send_data(data.split_to(n), false)
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
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
        ready!(this.poll_pending(cx))?;
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        this.taken(n);
        Poll::Ready(Ok(()))
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
        let n = ready!(this.poll_room(cx, buf.len()))?;
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
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
        if self.reset {
            return;
        }
        // Our side never ended (an error, or given up on): abort it rather than leave the
        // peer waiting on a stream nobody serves.
        if !self.write_closed {
            self.send.send_reset(Reason::CANCEL);
            return;
        }
        // Our side ended (END_STREAM queued: an explicit reset would throw away DATA
        // still queued behind it, e.g. an HTTP/1 response sent just before `Connection:
        // close`), so h2 closes the stream once its queue is sent and the peer ended too.
        // If the peer has not, dropping the receiving half now would make h2 reset the
        // stream: wait for the peer's end instead.
        let Some(mut recv) = self.recv.take() else {
            return;
        };
        if self.read_done {
            return;
        }
        // What was received and not read goes back to the window.
        let _ = recv.flow_control().release_capacity(self.pending.len());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(recv));
        }
    }
}

/// How long a stream whose reader is gone, after our END_STREAM, waits for the peer's
/// end before it is reset.
const LINGER: Duration = Duration::from_secs(5);
/// How many bytes such a stream takes (and discards) meanwhile before it is reset.
const LINGER_BYTES: usize = 64 * 1024;

/// Waits for the peer to end a stream we ended and stopped reading (an HTTP/1 exchange
/// that closes once its response is through, typically): the peer's END_STREAM is on
/// its way, and a stream reset now instead would cost both ends. The peer may reset a
/// stream it is still writing to (its response loses what was queued), and a reset
/// stream whose late frames h2 has forgotten counts as the peer's protocol error: after
/// 1024 of those in a connection's life h2 ends the connection, and every stream on it,
/// with ENHANCE_YOUR_CALM. A peer that neither ends nor resets within [`LINGER`], or
/// sends more than [`LINGER_BYTES`], has the stream reset (h2 does it when `recv` goes).
async fn linger(mut recv: RecvStream) {
    let mut budget = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(data)) = recv.data().await {
            let _ = recv.flow_control().release_capacity(data.len());
            budget = budget.saturating_sub(data.len());
            if budget == 0 {
                return;
            }
        }
    })
    .await;
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
