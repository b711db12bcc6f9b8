//! Copying a connection's bytes both ways, between any two streams (TCP, a tunnel
//! stream). Each direction reads into its own buffer, which starts small and doubles (up
//! to the configured size) while reads keep filling it, so idle connections stay cheap
//! and bulk ones get big reads. End-of-stream on one side becomes a write shutdown on the
//! other (half-close); an error on either side aborts both (a reset propagates). Nothing
//! is buffered beyond one buffer a direction, so a slow reader slows the writer
//! (back-pressure).
use std::{
    future::{Future, poll_fn},
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

const INITIAL_BUFFER: usize = 4 * 1024;

/// Bytes moved in each direction, readable while the copy runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// From the first stream to the second.
    pub forward: AtomicU64,
    /// From the second stream to the first.
    pub backward: AtomicU64,
}

/// A stream that can be ended with a reset instead of a polite close.
pub trait Abort {
    fn abort(&mut self);
}

impl Abort for TcpStream {
    fn abort(&mut self) {
        // Closing with SO_LINGER 0 sends RST.
        let _ = socket2::SockRef::from(&*self).set_linger(Some(Duration::ZERO));
    }
}

/// Copies between `a` and `b` until both directions end, or `cancel` fires (the agent
/// closing the connection, e.g. a policy now denies it). On an error or a cancel both are
/// aborted and the first error is returned.
pub async fn bidirectional<A, B>(
    mut a: A,
    mut b: B,
    max_buffer: usize,
    counters: &Counters,
    cancel: &CancellationToken,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Abort + Unpin,
    B: AsyncRead + AsyncWrite + Abort + Unpin,
{
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
        let f = forward.poll(cx, &mut a, &mut b, &counters.forward);
        if let Poll::Ready(Err(e)) = f {
            return Poll::Ready(Err(e));
        }
        let r = backward.poll(cx, &mut b, &mut a, &counters.backward);
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

/// One direction: read into the buffer, write it all out, repeat; on end-of-stream shut
/// the writer down.
struct OneWay {
    buf: Vec<u8>,
    max: usize,
    pos: usize,
    cap: usize,
    read_done: bool,
    done: bool,
    need_flush: bool,
}

impl OneWay {
    fn new(max: usize) -> Self {
        Self {
            buf: vec![0; INITIAL_BUFFER.min(max)],
            max,
            pos: 0,
            cap: 0,
            read_done: false,
            done: false,
            need_flush: false,
        }
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        counter: &AtomicU64,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.cap && !self.read_done {
                if self.cap == self.buf.len() && self.buf.len() < self.max {
                    // The last read filled the buffer: this flow is bulky, read more.
                    let grown = (self.buf.len() * 2).min(self.max);
                    self.buf.resize(grown, 0);
                }
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        self.pos = 0;
                        self.cap = n;
                        if n == 0 {
                            self.read_done = true;
                        }
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
            while self.pos < self.cap {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
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
        tokio::task::JoinHandle<(io::Result<()>, u64, u64)>,
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
        let (result, forward, backward) = task.await.unwrap();
        result.unwrap();
        assert_eq!((forward, backward), (300_000, 8));
    }

    #[tokio::test]
    async fn a_reset_upstream_resets_the_app() {
        let (mut app, upstream, task) = proxied().await;
        socket2::SockRef::from(&upstream)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(upstream);
        let (result, _, _) = task.await.unwrap();
        assert!(result.is_err());
        let mut buf = [0u8; 16];
        let err = app.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
