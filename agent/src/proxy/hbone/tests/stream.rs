//! CONNECT streams end to end: round trip with HBONE headers, bulk transfer, half-close
//! both ways, resets both ways, back-pressure.
use std::{
    io,
    net::{IpAddr, Ipv6Addr},
    pin::Pin,
    sync::atomic::{AtomicUsize, Ordering},
    task::Poll,
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{counted::CountedWrites, *};

#[tokio::test]
async fn connect_round_trip_carries_hbone_headers() {
    let upstream = echo_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let client = server.client().await;

    let source: IpAddr = "10.0.0.7".parse().unwrap();
    let traceparent = TraceParent::random();
    let baggage = Baggage {
        cluster: Some("Kubernetes".into()),
        namespace: Some("shop".into()),
        workload: Some(("deployment".into(), "web".into())),
        service_name: Some("web".into()),
        service_version: Some("v1".into()),
        ..Baggage::default()
    };
    let request = ConnectRequest::new(upstream)
        .with_source(source)
        .with_baggage(baggage.clone())
        .with_traceparent(traceparent);
    let mut stream = client.connect(&request).await.unwrap();
    assert_eq!(client.active_streams(), 1);
    let stream_id = stream.id();
    assert_eq!(stream_id % 2, 1, "client streams have odd ids");

    stream.write_all(b"hello through the tunnel").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(
        read_all(&mut stream).await.unwrap(),
        b"hello through the tunnel"
    );
    drop(stream);
    assert_eq!(client.active_streams(), 0);
    assert_eq!(
        server.handler.wait_served(1).await,
        ["ok 24 24"],
        "server copy result"
    );

    let seen = server.handler.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let inbound = &seen[0];
    assert_eq!(inbound.authority, upstream);
    assert_eq!(inbound.stream_id, stream_id);
    assert_eq!(
        inbound.headers["forwarded"].to_str().unwrap(),
        "for=\"10.0.0.7\""
    );
    assert_eq!(
        inbound.headers["baggage"].to_str().unwrap(),
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=web,\
         service.name=web,service.version=v1"
    );
    // What the server reads back is what the client meant.
    assert_eq!(inbound.request(), request);
}

/// xorshift64: deterministic bytes that do not repeat with any short period.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// FNV-1a over 8-byte words of a byte stream, whatever sizes it comes in.
#[derive(Clone, Copy)]
struct Checksum {
    hash: u64,
    word: [u8; 8],
    len: usize,
}

impl Checksum {
    fn new() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            word: [0; 8],
            len: 0,
        }
    }

    fn update(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            if self.len == 0 && buf.len() >= 8 {
                let (word, rest) = buf.split_at(8);
                self.mix(word.try_into().unwrap());
                buf = rest;
                continue;
            }
            let n = (8 - self.len).min(buf.len());
            self.word[self.len..self.len + n].copy_from_slice(&buf[..n]);
            self.len += n;
            buf = &buf[n..];
            if self.len == 8 {
                self.len = 0;
                self.mix(self.word);
            }
        }
    }

    fn mix(&mut self, word: [u8; 8]) {
        self.hash = (self.hash ^ u64::from_le_bytes(word)).wrapping_mul(0x0100_0000_01b3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_64_mib_through_one_stream_both_ways() {
    const TOTAL: usize = 64 * 1024 * 1024;
    let upstream = echo_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let client = server.client().await;
    let stream = client
        .connect(&ConnectRequest::new(upstream))
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);

    let started = Instant::now();
    let send = tokio::spawn(async move {
        let mut pattern = Pattern(0x9e37_79b9_7f4a_7c15);
        let mut sum = Checksum::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            pattern.fill(&mut buf);
            writer.write_all(&buf).await.unwrap();
            sum.update(&buf);
            sent += buf.len();
        }
        writer.shutdown().await.unwrap();
        (sum, writer)
    });
    let mut sum = Checksum::new();
    let mut received = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
        received += n;
    }
    let (sent_sum, writer) = send.await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(received, TOTAL);
    let _ = reader.unsplit(writer);
    eprintln!(
        "64 MiB each way in {elapsed:?}: {:.0} MiB/s per direction",
        64.0 / elapsed.as_secs_f64()
    );
    let mut expected = Checksum::new();
    let mut pattern = Pattern(0x9e37_79b9_7f4a_7c15);
    let mut chunk = vec![0u8; 256 * 1024];
    for _ in 0..TOTAL / chunk.len() {
        pattern.fill(&mut chunk);
        expected.update(&chunk);
    }
    assert_eq!((sent_sum.hash, sent_sum.len), (expected.hash, 0));
    assert_eq!(
        (sum.hash, sum.len),
        (expected.hash, 0),
        "bytes arrived changed"
    );
}

#[tokio::test]
async fn half_close_client_first_then_the_answer_arrives() {
    let (upstream, mut accepted) = manual_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let client = server.client().await;
    let mut stream = client
        .connect(&ConnectRequest::new(upstream))
        .await
        .unwrap();
    let mut app = accepted.recv().await.unwrap();

    stream.write_all(b"request").await.unwrap();
    stream.shutdown().await.unwrap();
    // The upstream sees the request and then EOF, while its own side stays open.
    assert_eq!(read_all(&mut app).await.unwrap(), b"request");
    app.write_all(b"the answer, after the request ended")
        .await
        .unwrap();
    app.shutdown().await.unwrap();
    assert_eq!(
        read_all(&mut stream).await.unwrap(),
        b"the answer, after the request ended"
    );
    assert_eq!(server.handler.wait_served(1).await, ["ok 7 35"]);
}

#[tokio::test]
async fn half_close_upstream_first_and_the_client_keeps_sending() {
    let (upstream, mut accepted) = manual_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let client = server.client().await;
    let mut stream = client
        .connect(&ConnectRequest::new(upstream))
        .await
        .unwrap();
    let mut app = accepted.recv().await.unwrap();

    app.write_all(b"banner").await.unwrap();
    app.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stream).await.unwrap(), b"banner");
    // Our read side ended; our write side still works.
    stream.write_all(b"more from the client").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_all(&mut app).await.unwrap(), b"more from the client");
    assert_eq!(server.handler.wait_served(1).await, ["ok 20 6"]);
}

#[tokio::test]
async fn upstream_reset_reaches_the_client_as_connection_reset() {
    let (upstream, mut accepted) = manual_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let client = server.client().await;
    let mut stream = client
        .connect(&ConnectRequest::new(upstream))
        .await
        .unwrap();
    let app = accepted.recv().await.unwrap();

    reset_tcp(app);
    let mut buf = [0u8; 16];
    let err = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    // Writes fail too, and the connection carries on for other streams.
    let err = stream.write_all(b"x").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let echo = echo_upstream().await;
    let mut other = client.connect(&ConnectRequest::new(echo)).await.unwrap();
    other.write_all(b"still fine").await.unwrap();
    other.shutdown().await.unwrap();
    assert_eq!(read_all(&mut other).await.unwrap(), b"still fine");
}

#[tokio::test]
async fn client_reset_and_drop_reset_the_upstream() {
    let (upstream, mut accepted) = manual_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let client = server.client().await;

    // An explicit reset.
    let mut stream = client
        .connect(&ConnectRequest::new(upstream))
        .await
        .unwrap();
    let mut app = accepted.recv().await.unwrap();
    stream.write_all(b"partial").await.unwrap();
    stream.reset();
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    let err = loop {
        match app.read(&mut buf).await {
            Ok(0) => panic!("upstream saw a clean EOF, not a reset"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(b"partial".starts_with(&got));
    let err = stream.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);

    // Dropped mid-way, without shutdown or reset.
    let stream = client
        .connect(&ConnectRequest::new(upstream))
        .await
        .unwrap();
    let mut app = accepted.recv().await.unwrap();
    drop(stream);
    let err = tokio::time::timeout(Duration::from_secs(5), app.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let served = server.handler.wait_served(2).await;
    assert!(served.iter().all(|r| r.starts_with("error")), "{served:?}");
}

#[tokio::test]
async fn a_stalled_reader_stops_the_writer_within_the_window() {
    let (upstream, mut accepted) = manual_upstream().await;
    let settings = settings();
    let server = TestServer::start(settings.clone(), ToTcp::default()).await;
    let client = server.client().await;
    let mut stream = client
        .connect(&ConnectRequest::new(upstream))
        .await
        .unwrap();
    let mut app = accepted.recv().await.unwrap();

    // The upstream does not read: write until writes stall.
    let chunk = vec![1u8; 64 * 1024];
    let mut written = 0usize;
    while let Ok(r) = tokio::time::timeout(Duration::from_millis(300), stream.write(&chunk)).await {
        written += r.unwrap();
        assert!(written < 256 * 1024 * 1024, "writes never stalled");
    }
    eprintln!("{written} bytes written before the writer stalled");
    // Bounded by the stream window, our send buffer, and the sockets' buffers in
    // between (two loopback TCP connections, autotuned to a few MiB each).
    let window = settings.stream_window as usize;
    assert!(written >= window, "stalled early, after {written} bytes");
    assert!(
        written <= window + settings.max_send_buffer + 24 * 1024 * 1024,
        "{written} bytes written to a reader that reads nothing"
    );
    // Once the upstream reads, everything arrives.
    let reader = tokio::spawn(async move {
        let mut n = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match app.read(&mut buf).await.unwrap() {
                0 => return n,
                k => n += k,
            }
        }
    });
    stream.write_all(&chunk).await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(reader.await.unwrap(), written + chunk.len());
}

#[tokio::test]
async fn ipv6_destinations_go_in_brackets() {
    let listener = match tokio::net::TcpListener::bind("[::1]:0").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("no IPv6 loopback here ({e}); skipping");
            return;
        }
    };
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (mut r, mut w) = s.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let client = server.client().await;
    let request = ConnectRequest::new(upstream).with_source(IpAddr::V6(Ipv6Addr::LOCALHOST));
    let mut stream = client.connect(&request).await.unwrap();
    stream.write_all(b"v6").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stream).await.unwrap(), b"v6");
    let seen = server.handler.seen.lock().unwrap().clone();
    assert_eq!(seen[0].authority, upstream);
    assert_eq!(seen[0].headers["forwarded"], "for=\"[::1]\"");
    assert_eq!(
        seen[0].request().source,
        Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
    );
}

/// An HTTP/1 exchange that ends with `Connection: close` over a tunnel: the client has the
/// whole response and has shut down its side, and lets the stream go before the server's
/// END_STREAM arrives. That is a normal end, not an abort: h2 counts every frame that
/// arrives on a stream it reset and forgot as the peer's protocol error, and after 1024
/// of them in a connection's life ends the connection with ENHANCE_YOUR_CALM, failing
/// every stream on it. Found under `ab` through two agents, 26,000 connections in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_let_go_after_their_own_end_do_not_wear_out_the_connection() {
    // The client has its answer before the server's END_STREAM is sent.
    let upstream = echo_upstream_closing_after(Duration::from_millis(2)).await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let client = server.client().await;
    streams_through(&client, 1500, 8, upstream, |i, mut stream| async move {
        let request = format!("request {i}");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        stream
            .shutdown()
            .await
            .map_err(|e| format!("shutdown: {e}"))?;
        // The whole answer, not the end of the stream: then let it go.
        let mut answer = vec![0; request.len()];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        assert_eq!(answer, request.as_bytes());
        Ok(())
    })
    .await;
    assert!(client.is_usable(), "the connection was ended");
    // Every stream closed cleanly on the server's side too.
    let served = server.handler.wait_served(1500).await;
    let failed: Vec<_> = served.iter().filter(|r| !r.starts_with("ok")).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

/// Clients that abort downloads: each stream is reset by us while the server is still
/// sending, so frames the server sent before our RST_STREAM reached it arrive after.
/// h2 drops them on a stream it remembers resetting; on one it has forgotten, it counts
/// them as the peer's protocol errors, and after 1024 ends the connection (and every
/// stream on it) with ENHANCE_YOUR_CALM. Aborts faster than h2 remembers (50 streams
/// by default) must not wear out the connection either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_downloads_do_not_wear_out_the_connection() {
    // A server that streams until its client goes.
    let (listener, firehose) = listen().await;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![7u8; 16 * 1024];
                while stream.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let echo = echo_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let client = server.client().await;
    streams_through(&client, 2000, 16, firehose, |_, mut stream| async move {
        let mut some = [0u8; 4096];
        stream
            .read_exact(&mut some)
            .await
            .map_err(|e| format!("read: {e}"))?;
        stream.reset();
        Ok(())
    })
    .await;
    assert!(client.is_usable(), "the connection was ended");
    // And it still carries a stream.
    let mut stream = client.connect(&ConnectRequest::new(echo)).await.unwrap();
    stream.write_all(b"still here").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stream).await.unwrap(), b"still here");
}

/// Opens `streams` streams to `upstream` over `client`, `at_once` at a time, and runs
/// `each` on every one; panics naming the first stream that failed.
async fn streams_through<F, Fut>(
    client: &Client,
    streams: usize,
    at_once: usize,
    upstream: SocketAddr,
    each: F,
) where
    F: Fn(usize, H2Stream) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let mut workers = Vec::new();
    for worker in 0..at_once {
        let (client, each) = (client.clone(), each.clone());
        workers.push(tokio::spawn(async move {
            for i in (worker..streams).step_by(at_once) {
                let stream = client
                    .connect(&ConnectRequest::new(upstream))
                    .await
                    .map_err(|e| format!("stream {i}: connect: {e}"))?;
                each(i, stream)
                    .await
                    .map_err(|e| format!("stream {i}: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
}

/// Small frames queued together leave together: eight streams each send a 1 KiB
/// message and their END_STREAM before the connection's task runs, and the connection
/// writes them in one go (over TLS: one record, one system call), not a write per
/// message and another per END_STREAM. Upstream h2 flushes before any frame that follows
/// a DATA payload of 256 bytes or more; `settings::COPIED_DATA_BELOW` is what changes it.
#[tokio::test(flavor = "current_thread")]
async fn small_frames_of_many_streams_go_out_in_one_write() {
    let upstream = echo_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let writes = Arc::new(AtomicUsize::new(0));
    let io = CountedWrites {
        tcp: dial(server.addr).await.unwrap(),
        writes: writes.clone(),
    };
    let client = handshake(io, &settings()).await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut stream = client
            .connect(&ConnectRequest::new(upstream))
            .await
            .unwrap();
        // Room to send, taken now, so that the writes below need not wait for it.
        stream.write_all(b"x").await.unwrap();
        streams.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = writes.load(Ordering::Relaxed);
    let message = vec![7u8; 1024];
    for stream in &mut streams {
        // Neither call waits (the test's single thread runs nothing else meanwhile).
        std::future::poll_fn(|cx| {
            let sent = Pin::new(&mut *stream).poll_write(cx, &message);
            assert!(
                matches!(sent, Poll::Ready(Ok(1024))),
                "a 1 KiB write waited: {sent:?}"
            );
            let ended = Pin::new(&mut *stream).poll_shutdown(cx);
            assert!(matches!(ended, Poll::Ready(Ok(()))), "{ended:?}");
            Poll::Ready(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let made = writes.load(Ordering::Relaxed) - before;
    assert_eq!(made, 1, "16 frames (8 KiB) took {made} writes");
    for mut stream in streams {
        let mut want = b"x".to_vec();
        want.extend_from_slice(&message);
        assert_eq!(read_all(&mut stream).await.unwrap(), want);
    }
}
