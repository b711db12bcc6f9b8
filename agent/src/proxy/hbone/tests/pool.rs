//! The pool: reuse, the per-connection stream limit, coalesced dials, replacing closed
//! connections, closing idle ones.
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::{io::AsyncWriteExt, net::TcpStream, sync::Barrier};

use super::*;

/// Dials `server` after `delay`, counting dials.
async fn counted_dial(
    server: SocketAddr,
    dials: Arc<AtomicUsize>,
    delay: Duration,
) -> io::Result<TcpStream> {
    dials.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(delay).await;
    dial(server).await
}

async fn echo_once(
    pool: &Pool<&'static str>,
    server: SocketAddr,
    upstream: SocketAddr,
    dials: &Arc<AtomicUsize>,
) {
    let mut stream = pool
        .connect(&"key", &ConnectRequest::new(upstream), || {
            counted_dial(server, dials.clone(), Duration::ZERO)
        })
        .await
        .unwrap();
    stream.write_all(b"x").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stream).await.unwrap(), b"x");
}

#[tokio::test]
async fn sequential_streams_reuse_one_connection() {
    let upstream = echo_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    for _ in 0..200 {
        echo_once(&pool, server.addr, upstream, &dials).await;
    }
    let stats = pool.stats();
    assert_eq!(dials.load(Ordering::SeqCst), 1);
    assert_eq!(stats.connections_dialed, 1);
    assert_eq!(stats.streams_opened, 200);
    assert_eq!(stats.connections_open, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_beyond_the_limit_open_a_second_connection() {
    let upstream = echo_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let pool = Pool::new(PoolConfig {
        max_streams_per_connection: 100,
        ..PoolConfig::default()
    });
    let dials = Arc::new(AtomicUsize::new(0));
    // 150 streams held open together.
    let all_open = Arc::new(Barrier::new(150));
    let mut tasks = Vec::new();
    for _ in 0..150 {
        let (pool, dials, all_open) = (pool.clone(), dials.clone(), all_open.clone());
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut stream = pool
                .connect(&"key", &ConnectRequest::new(upstream), || {
                    counted_dial(addr, dials, Duration::from_millis(20))
                })
                .await
                .unwrap();
            all_open.wait().await;
            stream.write_all(b"y").await.unwrap();
            stream.shutdown().await.unwrap();
            assert_eq!(read_all(&mut stream).await.unwrap(), b"y");
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap()
            .unwrap();
    }
    let stats = pool.stats();
    assert_eq!(dials.load(Ordering::SeqCst), 2);
    assert_eq!(stats.connections_dialed, 2);
    assert_eq!(stats.streams_opened, 150);
    assert_eq!(pool.connections(&"key"), 2);
}

#[tokio::test]
async fn concurrent_dials_to_one_key_are_coalesced() {
    let upstream = echo_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (pool, dials) = (pool.clone(), dials.clone());
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut stream = pool
                .connect(&"key", &ConnectRequest::new(upstream), || {
                    counted_dial(addr, dials, Duration::from_millis(100))
                })
                .await
                .unwrap();
            stream.write_all(b"z").await.unwrap();
            stream.shutdown().await.unwrap();
            read_all(&mut stream).await.unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), b"z");
    }
    assert_eq!(dials.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().connections_dialed, 1);

    // A failing dial is shared too: every waiter gets its error, nobody redials.
    let refused = closed_port().await;
    let dials = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (pool, dials) = (pool.clone(), dials.clone());
        tasks.push(tokio::spawn(async move {
            pool.connect(&"elsewhere", &ConnectRequest::new(upstream), || {
                counted_dial(refused, dials, Duration::from_millis(100))
            })
            .await
            .err()
            .expect("dial refused")
        }));
    }
    for task in tasks {
        let err = task.await.unwrap();
        assert!(matches!(err, HboneError::Dial(_)), "{err:?}");
        assert_eq!(err.into_io().kind(), io::ErrorKind::ConnectionRefused);
    }
    assert_eq!(dials.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().dials_failed, 1);
    // Nothing is kept for the failed key; the next call dials again.
    assert_eq!(pool.connections(&"elsewhere"), 0);
}

#[tokio::test]
async fn a_connection_closed_by_the_server_is_replaced() {
    let upstream = echo_upstream().await;
    let mut server = TestServer::start(settings(), ToTcp::default()).await;
    let pool = Pool::new(PoolConfig::default());
    let dials = Arc::new(AtomicUsize::new(0));
    echo_once(&pool, server.addr, upstream, &dials).await;

    // Politely (GOAWAY) …
    server.shut_down();
    server.next_result().await.unwrap();
    echo_once(&pool, server.addr, upstream, &dials).await;
    assert_eq!(dials.load(Ordering::SeqCst), 2);

    // … or not (the connection just drops).
    server.kill_connections();
    tokio::time::sleep(Duration::from_millis(100)).await;
    echo_once(&pool, server.addr, upstream, &dials).await;
    assert_eq!(dials.load(Ordering::SeqCst), 3);
    let stats = pool.stats();
    assert_eq!(stats.connections_dialed, 3);
    assert_eq!(stats.connections_open, 1);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let upstream = echo_upstream().await;
    let mut server = TestServer::start(settings(), ToTcp::default()).await;
    let pool = Pool::new(PoolConfig {
        idle_timeout: Duration::from_millis(200),
        ..PoolConfig::default()
    });
    let dials = Arc::new(AtomicUsize::new(0));

    // Busy connections stay, however long the stream.
    let mut stream = pool
        .connect(&"key", &ConnectRequest::new(upstream), || {
            counted_dial(server.addr, dials.clone(), Duration::ZERO)
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool.connections(&"key"), 1);
    stream.write_all(b"w").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stream).await.unwrap(), b"w");
    drop(stream);

    // Idle ones go, and the server sees the connection end cleanly.
    server.next_result().await.unwrap();
    assert_eq!(pool.connections(&"key"), 0);
    assert_eq!(pool.stats().connections_open, 0);
    echo_once(&pool, server.addr, upstream, &dials).await;
    assert_eq!(dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_hung_or_abandoned_dial_does_not_strand_its_waiters() {
    let upstream = echo_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let pool = Pool::new(PoolConfig {
        dial_timeout: Duration::from_millis(200),
        ..PoolConfig::default()
    });

    // A dial that never completes times out, for the dialer and its waiters alike.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            pool.connect(&"hung", &ConnectRequest::new(upstream), || {
                std::future::pending::<io::Result<TcpStream>>()
            })
            .await
            .err()
            .expect("timed out")
        }));
    }
    for task in tasks {
        let err = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(err.into_io().kind(), io::ErrorKind::TimedOut);
    }

    // A dialer that gives up (its caller went away) hands the dial to a waiter.
    let dials = Arc::new(AtomicUsize::new(0));
    let abandoned = {
        let (pool, dials) = (pool.clone(), dials.clone());
        let addr = server.addr;
        tokio::spawn(async move {
            pool.connect(&"key", &ConnectRequest::new(upstream), || {
                counted_dial(addr, dials, Duration::from_secs(60))
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = {
        let (pool, dials) = (pool.clone(), dials.clone());
        let addr = server.addr;
        tokio::spawn(async move {
            let mut stream = pool
                .connect(&"key", &ConnectRequest::new(upstream), || {
                    counted_dial(addr, dials, Duration::ZERO)
                })
                .await
                .unwrap();
            stream.write_all(b"v").await.unwrap();
            stream.shutdown().await.unwrap();
            read_all(&mut stream).await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    abandoned.abort();
    let echoed = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter dialed itself")
        .unwrap();
    assert_eq!(echoed, b"v");
    assert_eq!(dials.load(Ordering::SeqCst), 2);
    assert_eq!(pool.stats().connections_dialed, 1);
}
