//! Copying a connection's bytes both ways. Each direction reads into its own buffer,
//! which starts small and doubles (up to the configured size) while reads keep filling
//! it, so idle connections stay cheap and bulk ones get big reads. End-of-stream on one
//! side becomes a write shutdown on the other (half-close); an error on either side
//! resets both (a reset propagates). Nothing is buffered beyond one buffer a direction,
//! so a slow reader slows the writer (back-pressure).
use std::{
    io,
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

const INITIAL_BUFFER: usize = 4 * 1024;

/// Bytes moved in each direction, readable while the copy runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// From the first stream to the second.
    pub forward: AtomicU64,
    /// From the second stream to the first.
    pub backward: AtomicU64,
}

/// Copies between `a` and `b` until both directions end. Returns the first error.
pub async fn bidirectional(
    a: TcpStream,
    b: TcpStream,
    max_buffer: usize,
    counters: &Counters,
) -> io::Result<()> {
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let result = {
        let forward = one_way(&mut ar, &mut bw, max_buffer, &counters.forward);
        let backward = one_way(&mut br, &mut aw, max_buffer, &counters.backward);
        tokio::pin!(forward, backward);
        let (mut forward_done, mut backward_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut forward, if !forward_done => match r {
                    Ok(()) => forward_done = true,
                    Err(e) => break Err(e),
                },
                r = &mut backward, if !backward_done => match r {
                    Ok(()) => backward_done = true,
                    Err(e) => break Err(e),
                },
            }
            if forward_done && backward_done {
                break Ok(());
            }
        }
    };
    if result.is_err() {
        // Reset both ends rather than closing them politely: whole streams, so that
        // dropping a write half does not send a FIN first.
        for stream in [ar.reunite(aw), br.reunite(bw)].into_iter().flatten() {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
        }
    }
    result
}

async fn one_way<R, W>(
    reader: &mut R,
    writer: &mut W,
    max_buffer: usize,
    counter: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; INITIAL_BUFFER.min(max_buffer)];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(());
        }
        writer.write_all(&buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if n == buf.len() && buf.len() < max_buffer {
            buf.resize((buf.len() * 2).min(max_buffer), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

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
            let r = bidirectional(a, b, 64 * 1024, &counters).await;
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
