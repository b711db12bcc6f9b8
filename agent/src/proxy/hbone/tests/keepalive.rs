//! Keepalive: a peer that stops answering PINGs (its process wedged, its pod or node
//! gone) ends the connection at either end, and a peer that answers is left alone.
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::*;

fn quick() -> Settings {
    Settings {
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(200),
        ..settings()
    }
}

#[tokio::test]
async fn a_silent_server_ends_the_client_connection_and_its_streams() {
    let (listener, addr) = listen().await;
    // A server that completes the handshake and accepts one CONNECT, then stops reading
    // its connection (so PINGs go unanswered) while keeping the socket open.
    let (hold_tx, mut hold_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(tcp).await.unwrap();
        let (_request, mut respond) = conn.accept().await.unwrap().unwrap();
        let response = http::Response::builder().status(200).body(()).unwrap();
        let send = respond.send_response(response, false).unwrap();
        // Drive the connection a little so the 200 goes out, then stop.
        let _ = tokio::time::timeout(Duration::from_millis(50), conn.accept()).await;
        let _ = hold_tx.send((conn, send));
    });
    let client = handshake(dial(addr).await.unwrap(), &quick())
        .await
        .unwrap();
    let mut stream = client
        .connect(&ConnectRequest::new("10.0.0.1:80".parse().unwrap()))
        .await
        .unwrap();
    let _held = hold_rx.recv().await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
        .await
        .expect("the stream ends once the peer is found silent");
    assert!(read.is_err(), "the stream ends with an error: {read:?}");
    assert!(!client.is_usable());
    // interval + timeout, with room for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_silent_client_ends_the_server_connection() {
    let server = TestServer::start(quick(), ToTcp::default()).await;
    let mut results = server.results;
    // A client that sends the preface and its SETTINGS, then never reads again.
    let tcp = dial(server.addr).await.unwrap();
    let (_send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // Drive it briefly (the SETTINGS exchange), then hold it without polling: the socket
    // stays open and PINGs go unanswered.
    let _ = tokio::time::timeout(Duration::from_millis(30), &mut conn).await;
    let result = tokio::time::timeout(Duration::from_secs(3), results.recv())
        .await
        .expect("serve returns once the client is found silent")
        .unwrap();
    let err = result.expect_err("a silent client is an error");
    assert!(matches!(err, HboneError::PeerSilent(_)), "{err}");
    assert!(err.to_string().contains("PING"), "{err}");
}

#[tokio::test]
async fn a_peer_that_answers_keeps_its_connection() {
    let upstream = echo_upstream().await;
    let server = TestServer::start(quick(), ToTcp::default()).await;
    let client = handshake(dial(server.addr).await.unwrap(), &quick())
        .await
        .unwrap();
    // Many keepalive rounds, idle.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(client.is_usable());
    let stream = client.connect(&ConnectRequest::new(upstream)).await;
    assert!(stream.is_ok(), "{:?}", stream.err());
}
