//! Copying a connection's bytes both ways, between any two streams (TCP, a tunnel
//! stream). Each direction reads into a buffer of its own, whose reads start small and
//! double (up to the configured size) while they keep filling it, so idle connections
//! stay cheap and bulk ones get big reads. End-of-stream on one side becomes a write
//! shutdown on the other (half-close); an error on either side aborts both (a reset
//! propagates). Nothing is buffered beyond one read a direction, so a slow reader slows
//! the writer (back-pressure).
//!
//! Bytes are not copied on the way: what is read is handed to the writer as `Bytes`. A
//! tunnel stream takes them as they are (its DATA frames) and hands out what it received
//! as it is (see [`Side`]); a TCP socket is written from them, and once written the read
//! buffer is used again. Between two TCP sockets, a direction whose reads have grown to
//! [`SPLICE_FROM`] goes on in the kernel ([`splice`](super::splice)): the bytes then never
//! enter the agent's memory at all. A spliced direction idle for [`PIPE_IDLE`] gives its
//! pipe back and returns to reads.
use std::{
    future::{Future, poll_fn},
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

use super::splice::Pipe;

const INITIAL_READ: usize = 4 * 1024;

/// Between two TCP sockets, a direction whose reads have filled a buffer this big moves
/// its bytes with `splice` from then on. Small exchanges (requests, messages) never get
/// here and keep one read and one write each.
pub const SPLICE_FROM: usize = 64 * 1024;

/// A spliced direction through which nothing moved for this long gives its pipe back: two
/// descriptors, and the pipe's pages, which the kernel counts against the agent's user
/// (`root` on most nodes) even while the pipe is empty; once a user's pipes hold 64 MiB
/// (`fs.pipe-user-pages-soft`), its unprivileged processes get two-page pipes. The
/// direction goes back to reads, which must grow again before it gets another pipe.
pub const PIPE_IDLE: Duration = Duration::from_secs(2);

/// Bytes moved in each direction, readable while the copy runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// From the first stream to the second.
    pub forward: AtomicU64,
    /// From the second stream to the first.
    pub backward: AtomicU64,
    /// Of both, those moved socket to socket inside the kernel (`splice`).
    pub spliced: AtomicU64,
}

/// One side of a copied connection: a stream that can be ended with a reset instead of
/// a polite close, and that moves bytes as [`Bytes`]. By default reads go into the
/// copy's buffer and writes are `AsyncWrite`'s; a stream that holds its bytes as `Bytes`
/// already (a tunnel stream) hands them over and takes them without a copy.
pub trait Side: AsyncRead + AsyncWrite + Unpin + Sized {
    /// Ends the stream with a reset (TCP: RST; a tunnel stream: RST_STREAM).
    fn abort(&mut self);

    /// Reads up to `max` bytes, into `buf` unless the stream has bytes of its own to
    /// hand over; empty at end-of-stream. `buf` is left empty.
    fn poll_read_bytes(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
    ) -> Poll<io::Result<Bytes>> {
        // Room for `max`: the buffer's own allocation again once no `Bytes` of it is
        // left (what was read has been written), a new one otherwise.
        buf.reserve(max);
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(self),
            cx,
            &mut (&mut *buf).limit(max)
        ))?;
        Poll::Ready(Ok(buf.split_to(n).freeze()))
    }

    /// The TCP socket under this side, when bytes can be spliced to and from it directly:
    /// nothing of its own is left to hand out first. None by default.
    fn spliceable(&self) -> Option<&TcpStream> {
        None
    }

    /// Writes the front of `data` (taking it from `data`) and says how much went.
    fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(self).poll_write(cx, data))?;
        data.advance(n);
        Poll::Ready(Ok(n))
    }
}

impl Side for TcpStream {
    fn abort(&mut self) {
        // Closing with SO_LINGER 0 sends RST.
        let _ = socket2::SockRef::from(&*self).set_linger(Some(Duration::ZERO));
    }

    fn spliceable(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

/// Copies between `a` and `b` until both directions end, or `cancel` fires (the agent
/// closing the connection, e.g. a policy now denies it). On an error or a cancel both are
/// aborted and the first error is returned.
pub async fn bidirectional<A: Side, B: Side>(
    mut a: A,
    mut b: B,
    max_buffer: usize,
    counters: &Counters,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let mut forward = OneWay::new(max_buffer);
    let mut backward = OneWay::new(max_buffer);
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let result = poll_fn(|cx| {
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by the agent",
            )));
        }
        let f = forward.poll(cx, &mut a, &mut b, &counters.forward, &counters.spliced);
        if let Poll::Ready(Err(e)) = f {
            return Poll::Ready(Err(e));
        }
        let r = backward.poll(cx, &mut b, &mut a, &counters.backward, &counters.spliced);
        if let Poll::Ready(Err(e)) = r {
            return Poll::Ready(Err(e));
        }
        if f.is_ready() && r.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    if result.is_err() {
        a.abort();
        b.abort();
    }
    result
}

/// One direction: read, write it all out, repeat; on end-of-stream shut the writer down.
struct OneWay {
    /// Where reads land (unless the reader hands over bytes of its own).
    buf: BytesMut,
    /// The most the next read takes: doubles up to `max` while reads fill it.
    read: usize,
    max: usize,
    /// Read, not yet written.
    out: Bytes,
    read_done: bool,
    done: bool,
    need_flush: bool,
    /// Once the flow is bulky between two sockets: the pipe its bytes go through.
    spliced: Option<Spliced>,
    /// A pipe could not be made (descriptors or pipe memory exhausted): keep copying.
    no_pipe: bool,
    /// How long a spliced direction may idle before its pipe goes ([`PIPE_IDLE`]).
    pipe_idle: Duration,
}

/// A spliced direction's pipe, and the check that gives it back once the flow is idle.
struct Spliced {
    pipe: Pipe,
    /// Fires every `pipe_idle` while the pipe is kept.
    check: Pin<Box<tokio::time::Sleep>>,
    /// The direction's byte count at the last check.
    moved: u64,
}

impl Spliced {
    fn new(pipe: Pipe, idle: Duration, counter: &AtomicU64) -> Self {
        Self {
            pipe,
            check: Box::pin(tokio::time::sleep(idle)),
            moved: counter.load(Ordering::Relaxed),
        }
    }

    /// Whether nothing moved during a whole `idle` and the pipe holds nothing (a pipe
    /// held up by a slow writer is not idle). Otherwise the next check is set.
    fn idle(&mut self, cx: &mut Context<'_>, idle: Duration, counter: &AtomicU64) -> bool {
        while self.check.as_mut().poll(cx).is_ready() {
            let moved = counter.load(Ordering::Relaxed);
            if moved == self.moved && self.pipe.held() == 0 {
                return true;
            }
            self.moved = moved;
            self.check
                .as_mut()
                .reset(tokio::time::Instant::now() + idle);
        }
        false
    }
}

impl OneWay {
    fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            read: INITIAL_READ.min(max),
            max,
            out: Bytes::new(),
            read_done: false,
            done: false,
            need_flush: false,
            spliced: None,
            no_pipe: false,
            pipe_idle: PIPE_IDLE,
        }
    }

    /// Whether this direction moves its bytes by `splice` from now on: both ends are bare
    /// sockets and reads have grown to [`SPLICE_FROM`]. Asked only when nothing read
    /// waits to be written.
    fn splices<R: Side, W: Side>(&mut self, reader: &R, writer: &W, counter: &AtomicU64) -> bool {
        if self.spliced.is_some() {
            return true;
        }
        if self.no_pipe
            || self.read < SPLICE_FROM.min(self.max)
            || reader.spliceable().is_none()
            || writer.spliceable().is_none()
        {
            return false;
        }
        match Pipe::new(self.max) {
            Ok(pipe) => {
                self.spliced = Some(Spliced::new(pipe, self.pipe_idle, counter));
                // The copy's buffer is not needed any more.
                self.buf = BytesMut::new();
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "no pipe for splicing; copying instead");
                self.no_pipe = true;
                false
            }
        }
    }

    fn poll<R: Side, W: Side>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        counter: &AtomicU64,
        spliced: &AtomicU64,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.out.is_empty()
                && !self.read_done
                && self.splices(reader, writer, counter)
                && let (Some(s), Some(from), Some(to)) = (
                    self.spliced.as_mut(),
                    reader.spliceable(),
                    writer.spliceable(),
                )
            {
                match poll_splice(cx, &mut s.pipe, from, to, self.max, counter, spliced) {
                    // Until end-of-stream; then shut the writer down below, as copied.
                    Poll::Ready(result) => {
                        result?;
                        self.read_done = true;
                    }
                    Poll::Pending if !s.idle(cx, self.pipe_idle, counter) => {
                        return Poll::Pending;
                    }
                    Poll::Pending => {
                        // Idle and empty: the pipe goes, and reads (below) wait for more.
                        self.spliced = None;
                        self.read = INITIAL_READ.min(self.max);
                    }
                }
            }
            if self.out.is_empty() && !self.read_done {
                match reader.poll_read_bytes(cx, &mut self.buf, self.read) {
                    Poll::Ready(Ok(data)) => {
                        if data.is_empty() {
                            self.read_done = true;
                        } else if data.len() == self.read && self.read < self.max {
                            // The read took all it could: this flow is bulky, read more.
                            self.read = (self.read * 2).min(self.max);
                        }
                        self.out = data;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while !self.out.is_empty() {
                let n = ready!(writer.poll_write_bytes(cx, &mut self.out))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.need_flush = true;
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            // Let go of the buffer's allocation (an empty `Bytes` still holds it), so
            // the next read can use it again.
            self.out = Bytes::new();
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// A spliced direction until end-of-stream: fill the pipe from `from` (up to `max`),
/// drain it into `to`, counting what went.
fn poll_splice(
    cx: &mut Context<'_>,
    pipe: &mut Pipe,
    from: &TcpStream,
    to: &TcpStream,
    max: usize,
    counter: &AtomicU64,
    spliced: &AtomicU64,
) -> Poll<io::Result<()>> {
    loop {
        if pipe.held() == 0 && ready!(pipe.poll_fill(cx, from, max))? == 0 {
            return Poll::Ready(Ok(()));
        }
        while pipe.held() > 0 {
            let n = ready!(pipe.poll_drain(cx, to))?;
            counter.fetch_add(n as u64, Ordering::Relaxed);
            spliced.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    /// app ⇄ [a | proxy | b] ⇄ upstream
    async fn proxied() -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<(io::Result<()>, u64, u64, u64)>,
    ) {
        let (app, a) = pair().await;
        let (b, upstream) = pair().await;
        let task = tokio::spawn(async move {
            let counters = Counters::default();
            let r = bidirectional(a, b, 64 * 1024, &counters, &CancellationToken::new()).await;
            (
                r,
                counters.forward.load(Ordering::Relaxed),
                counters.backward.load(Ordering::Relaxed),
                counters.spliced.load(Ordering::Relaxed),
            )
        });
        (app, upstream, task)
    }

    #[tokio::test]
    async fn copies_both_ways_with_half_close_and_counts() {
        let (mut app, mut upstream, task) = proxied().await;
        let request = vec![7u8; 300_000];
        app.write_all(&request).await.unwrap();
        app.shutdown().await.unwrap(); // half-close: the response must still arrive
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, request);
        upstream.write_all(b"response").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut response = Vec::new();
        app.read_to_end(&mut response).await.unwrap();
        assert_eq!(response, b"response");
        let (result, forward, backward, spliced) = task.await.unwrap();
        result.unwrap();
        assert_eq!((forward, backward), (300_000, 8));
        assert!(spliced <= forward, "spliced {spliced}");
    }

    /// `len` bytes that differ from their neighbours, so a lost or repeated piece shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    #[tokio::test]
    async fn bulk_flows_between_two_sockets_are_spliced_both_ways_and_arrive_whole() {
        let (app, upstream, task) = proxied().await;
        let up = pattern(4 << 20, 0);
        let down = pattern(3 << 20, 0x5a);
        // Both directions at once, each half-closed when done.
        let side = |mut socket: TcpStream, send: Vec<u8>| async move {
            let (mut r, mut w) = socket.split();
            let (got, ()) = tokio::join!(
                async {
                    let mut got = Vec::new();
                    r.read_to_end(&mut got).await.unwrap();
                    got
                },
                async {
                    w.write_all(&send).await.unwrap();
                    w.shutdown().await.unwrap();
                }
            );
            got
        };
        let (at_upstream, at_app) = tokio::join!(
            tokio::spawn(side(upstream, down.clone())),
            tokio::spawn(side(app, up.clone()))
        );
        assert!(
            at_upstream.unwrap() == up,
            "the app's bytes arrived changed"
        );
        assert!(
            at_app.unwrap() == down,
            "the upstream's bytes arrived changed"
        );
        let (result, forward, backward, spliced) = task.await.unwrap();
        result.unwrap();
        assert_eq!((forward, backward), (4 << 20, 3 << 20));
        // Each direction copies until its reads reach SPLICE_FROM, then splices.
        assert!(
            spliced > (6 << 20),
            "only {spliced} of 7 MiB went by splice"
        );
    }

    #[tokio::test]
    async fn an_idle_spliced_direction_gives_its_pipe_back_and_splices_again_when_bulky() {
        use std::time::Instant;
        let (mut app, mut a) = pair().await;
        let (mut b, upstream) = pair().await;
        let mut way = OneWay::new(256 * 1024);
        way.pipe_idle = Duration::from_millis(300);
        let (counter, spliced) = (AtomicU64::new(0), AtomicU64::new(0));
        // The far end reads everything, to the end.
        let reader = tokio::spawn(async move {
            let mut upstream = upstream;
            let mut got = Vec::new();
            upstream.read_to_end(&mut got).await.unwrap();
            got
        });
        let burst = |seed: u8| pattern(2 << 20, seed);
        // Drives the direction for `time`, or until it ends.
        let drive = async |way: &mut OneWay, a: &mut TcpStream, b: &mut TcpStream, time| {
            tokio::time::timeout(time, poll_fn(|cx| way.poll(cx, a, b, &counter, &spliced)))
                .await
                .ok()
        };

        let writer = tokio::spawn(async move {
            app.write_all(&burst(1)).await.unwrap();
            app
        });
        // In steps, so as to stop as soon as all of it went (well within the idle time).
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter.load(Ordering::Relaxed) < 2 << 20 {
            assert!(
                Instant::now() < deadline,
                "the first burst did not go through"
            );
            assert!(
                drive(&mut way, &mut a, &mut b, Duration::from_millis(5))
                    .await
                    .is_none()
            );
        }
        let first = spliced.load(Ordering::Relaxed);
        assert!(first > 1 << 20, "only {first} of 2 MiB spliced");
        assert!(way.spliced.is_some(), "a bulk flow keeps its pipe");

        // Idle past the check (twice over): the pipe goes, reads start small again.
        assert!(
            drive(&mut way, &mut a, &mut b, Duration::from_millis(900))
                .await
                .is_none()
        );
        assert!(way.spliced.is_none(), "an idle direction kept its pipe");
        assert_eq!(way.read, INITIAL_READ);

        // Bulky again: copied while reads grow, then spliced through a new pipe.
        let mut app = writer.await.unwrap();
        let writer = tokio::spawn(async move {
            app.write_all(&burst(2)).await.unwrap();
            app.shutdown().await.unwrap();
        });
        let done = drive(&mut way, &mut a, &mut b, Duration::from_secs(10)).await;
        assert!(matches!(done, Some(Ok(()))), "{done:?}");
        writer.await.unwrap();
        let second = spliced.load(Ordering::Relaxed) - first;
        assert!(
            second > 1 << 20,
            "only {second} of the second 2 MiB spliced"
        );
        let mut sent = burst(1);
        sent.extend(burst(2));
        assert!(reader.await.unwrap() == sent, "the bytes arrived changed");
    }

    #[tokio::test]
    async fn small_exchanges_are_copied_not_spliced() {
        let (mut app, mut upstream, task) = proxied().await;
        let mut buf = vec![0u8; 2048];
        for i in 0..200u8 {
            let message = pattern(1024, i);
            app.write_all(&message).await.unwrap();
            upstream.read_exact(&mut buf[..1024]).await.unwrap();
            assert_eq!(&buf[..1024], &message[..]);
            upstream.write_all(&message).await.unwrap();
            app.read_exact(&mut buf[..1024]).await.unwrap();
        }
        drop((app, upstream));
        let (_, forward, backward, spliced) = task.await.unwrap();
        assert_eq!((forward, backward, spliced), (200 * 1024, 200 * 1024, 0));
    }

    #[tokio::test]
    async fn a_reset_while_splicing_resets_the_other_side() {
        let (mut app, mut upstream, task) = proxied().await;
        let writer = tokio::spawn(async move {
            // More than the sockets and the pipe can hold: the app is still writing when
            // the upstream goes.
            let chunk = pattern(1 << 20, 1);
            let mut result = Ok(());
            for _ in 0..64 {
                result = app.write_all(&chunk).await;
                if result.is_err() {
                    break;
                }
            }
            let mut buf = [0u8; 16];
            (result, app.read(&mut buf).await)
        });
        let mut got = vec![0u8; 2 << 20];
        upstream.read_exact(&mut got).await.unwrap();
        socket2::SockRef::from(&upstream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(upstream);
        let (result, forward, _, spliced) = task.await.unwrap();
        assert!(result.is_err(), "the relay ended cleanly after a reset");
        assert!(
            spliced > 0 && spliced <= forward,
            "spliced {spliced} of {forward}"
        );
        let (wrote, read) = writer.await.unwrap();
        // The app sees the reset on its write or its read.
        let reset =
            |r: &io::Result<()>| matches!(r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset);
        assert!(
            reset(&wrote) || reset(&read.map(|_| ())),
            "the app was not reset"
        );
    }

    #[tokio::test]
    async fn bytes_put_back_in_front_go_first_and_the_rest_is_spliced() {
        let (app, a) = pair().await;
        let (b, mut upstream) = pair().await;
        let task = tokio::spawn(async move {
            let counters = Counters::default();
            let a = crate::proxy::http::Prefixed::new(Bytes::from_static(b"sniffed:"), a);
            let r = bidirectional(a, b, 256 * 1024, &counters, &CancellationToken::new()).await;
            (r, counters.spliced.load(Ordering::Relaxed))
        });
        let body = pattern(2 << 20, 7);
        let mut app = app;
        let send = body.clone();
        let sender = tokio::spawn(async move {
            app.write_all(&send).await.unwrap();
            app.shutdown().await.unwrap();
            app
        });
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert!(got.starts_with(b"sniffed:"), "the prefix did not go first");
        assert!(
            got[8..] == body[..],
            "the bytes after the prefix arrived changed"
        );
        drop(upstream);
        drop(sender.await.unwrap());
        let (result, spliced) = task.await.unwrap();
        result.unwrap();
        assert!(spliced > (1 << 20), "only {spliced} bytes spliced");
    }

    #[tokio::test]
    async fn a_reset_upstream_resets_the_app() {
        let (mut app, upstream, task) = proxied().await;
        socket2::SockRef::from(&upstream)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(upstream);
        let (result, _, _, _) = task.await.unwrap();
        assert!(result.is_err());
        let mut buf = [0u8; 16];
        let err = app.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    /// What a [`Chunky`] was given: the bytes, and where each piece was in memory.
    #[derive(Default)]
    struct Written {
        bytes: Vec<u8>,
        at: Vec<(usize, usize)>,
    }

    /// A stream of the tunnel's kind: hands out the chunks it was given as they are,
    /// takes what is written to it as it comes (at most `max_write` bytes a write; the
    /// pieces are let go at once), and fails if anyone goes through
    /// `AsyncRead`/`AsyncWrite` instead, i.e. a buffer.
    struct Chunky {
        incoming: std::collections::VecDeque<Bytes>,
        written: std::sync::Arc<std::sync::Mutex<Written>>,
        max_write: usize,
    }

    impl Chunky {
        fn new(incoming: &[Bytes], max_write: usize) -> Self {
            Self {
                incoming: incoming.iter().cloned().collect(),
                written: Default::default(),
                max_write,
            }
        }
    }

    fn not_through_a_buffer() -> io::Error {
        io::Error::other("copied through a buffer")
    }

    impl AsyncRead for Chunky {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(not_through_a_buffer()))
        }
    }

    impl AsyncWrite for Chunky {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(not_through_a_buffer()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Side for Chunky {
        fn abort(&mut self) {}
        fn poll_read_bytes(
            &mut self,
            _: &mut Context<'_>,
            _: &mut BytesMut,
            _: usize,
        ) -> Poll<io::Result<Bytes>> {
            Poll::Ready(Ok(self.incoming.pop_front().unwrap_or_default()))
        }
        fn poll_write_bytes(
            &mut self,
            _: &mut Context<'_>,
            data: &mut Bytes,
        ) -> Poll<io::Result<usize>> {
            let piece = data.split_to(data.len().min(self.max_write));
            let mut written = self.written.lock().unwrap();
            written.bytes.extend_from_slice(&piece);
            written.at.push((piece.as_ptr() as usize, piece.len()));
            Poll::Ready(Ok(piece.len()))
        }
    }

    #[tokio::test]
    async fn bytes_a_tunnel_stream_hands_over_reach_another_without_a_copy() {
        let sent: Vec<Bytes> = (0..40u8)
            .map(|i| Bytes::from(vec![i; 500 + 97 * i as usize]))
            .collect();
        let a = Chunky::new(&sent, usize::MAX);
        let b = Chunky::new(&[Bytes::from_static(b"back")], 700);
        let (to_b, to_a) = (b.written.clone(), a.written.clone());
        let counters = Counters::default();
        bidirectional(a, b, 4096, &counters, &CancellationToken::new())
            .await
            .unwrap();
        let got = to_b.lock().unwrap();
        assert_eq!(got.bytes, sent.concat());
        // Every piece written lay in a chunk handed over (still held by `sent`): the
        // same memory, not a copy.
        for &(p, len) in &got.at {
            assert!(len <= 700);
            assert!(
                sent.iter().any(|c| {
                    let start = c.as_ptr() as usize;
                    p >= start && p + len <= start + c.len()
                }),
                "a piece of {len} bytes was copied"
            );
        }
        assert_eq!(to_a.lock().unwrap().bytes, b"back");
        let total: usize = sent.iter().map(Bytes::len).sum();
        assert_eq!(counters.forward.load(Ordering::Relaxed), total as u64);
        assert_eq!(counters.backward.load(Ordering::Relaxed), 4);
    }

    /// A stream like a socket (written through `AsyncWrite`, from the copy's buffer)
    /// that notes where each write's bytes were in memory, and has nothing to read.
    #[derive(Default)]
    struct Sink {
        written: std::sync::Arc<std::sync::Mutex<Written>>,
    }

    impl AsyncRead for Sink {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut written = self.written.lock().unwrap();
            written.bytes.extend_from_slice(buf);
            written.at.push((buf.as_ptr() as usize, buf.len()));
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Side for Sink {
        fn abort(&mut self) {}
    }

    /// A stream like a socket that always has more to read, until `left` is out:
    /// every read takes all the room it is given, so the reads' sizes are the copy's
    /// alone, whatever the timing.
    struct Source {
        left: usize,
        next: u8,
    }

    impl AsyncRead for Source {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = buf.remaining().min(self.left);
            for _ in 0..n {
                let b = self.next;
                buf.put_slice(&[b]);
                self.next = b.wrapping_add(1);
            }
            self.left -= n;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Source {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Side for Source {
        fn abort(&mut self) {}
    }

    #[tokio::test]
    async fn reads_grow_and_then_use_one_buffer_again() {
        let total = 2_000_000;
        let a = Source {
            left: total,
            next: 0,
        };
        let b = Sink::default();
        let written = b.written.clone();
        bidirectional(
            a,
            b,
            64 * 1024,
            &Counters::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        let got = written.lock().unwrap();
        let want: Vec<u8> = (0..total).map(|i| i as u8).collect();
        assert_eq!(got.bytes, want);
        let sizes: Vec<usize> = got.at.iter().map(|&(_, len)| len).collect();
        assert_eq!(
            &sizes[..5],
            [4096, 8192, 16384, 32768, 65536],
            "reads double"
        );
        // Once reads are of the largest size, every read went into the same memory:
        // what was read and written let the buffer go for the next one. (The read that
        // grew the buffer may sit past its start: skipped.)
        let at = got.at[5].0;
        assert!(
            got.at[5..].iter().all(|&(p, _)| p == at),
            "a read after the largest went elsewhere: {:?}",
            &got.at[5..]
        );
    }
}
