//! Protocol detection: the classifier on byte strings, `detect` on loopback pairs
//! (client-first, server-first, silent, split), and the test proxy end to end.
use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{super::classify, *};

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (a.unwrap(), b.unwrap().0)
}

/// (the client's end, the proxy's end of the client) and (the proxy's end of the app,
/// the app's end).
async fn streams() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
    (pair().await, pair().await)
}

fn settings(first_byte: Duration) -> DetectSettings {
    DetectSettings {
        first_byte_timeout: first_byte,
        ..DetectSettings::default()
    }
}

#[test]
fn classifies_byte_strings() {
    use Protocol::*;
    let cases: &[(&[u8], Option<Protocol>)] = &[
        (b"", None),
        (b"G", None),
        (b"GE", None),
        (b"GET", None),
        (b"GET ", None),
        (b"GET /", None),
        (b"GET /index.html HTTP/1", None),
        (b"GET /index.html HTTP/1.", None),
        (b"GET /index.html HTTP/1.1", Some(Http1)),
        (b"GET / HTTP/1.0\r\n", Some(Http1)),
        (b"\r\nPOST /x HTTP/1.1\r\n", Some(Http1)),
        (b"PURGE-CACHE * HTTP/1.1", Some(Http1)),
        (b"PR", None),
        (b"PRI * HTTP/2.0\r\n", None),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Http2)),
        (b"PRI * HTTP/1.1\r\n", Some(Http1)),
        (b"GET / HTTP/2.0\r\n", Some(Opaque)),
        (b"GET / HTXP", Some(Opaque)),
        (b"GET  / HTTP/1.1", Some(Opaque)),
        (b"GET /\r\n", Some(Opaque)),
        (b"SET key value\r\n", Some(Opaque)),
        (b"get key\r\n", Some(Opaque)),
        (b"\x16\x03\x01\x02\x00\x01", Some(Opaque)),
        (b"*1\r\n$4\r\nPING\r\n", Some(Opaque)),
        (b"\0\0\0\x08", Some(Opaque)),
        (b"\r\n\r\n\r\nGET", Some(Opaque)),
        (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1", Some(Opaque)),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            classify(bytes, 16 * 1024),
            *want,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // At the limit a well-formed line so far is HTTP/1 (a long target), anything else not.
    let mut long = b"GET /".to_vec();
    long.resize(100, b'a');
    assert_eq!(classify(&long, 1000), None);
    assert_eq!(classify(&long, 100), Some(Protocol::Http1));
}

#[tokio::test]
async fn http1_is_decided_at_the_version_with_the_bytes_put_back() {
    let ((mut client, proxied), (app, _app_end)) = streams().await;
    let request = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    client.write_all(request).await.unwrap();
    let started = Instant::now();
    let detected = detect(proxied, app, &settings(Duration::from_secs(5))).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(detected.protocol, Protocol::Http1);
    assert_eq!(detected.reason, Reason::Classified);
    let mut replayed = detected.client;
    let mut got = vec![0; request.len()];
    replayed.read_exact(&mut got).await.unwrap();
    assert_eq!(got, request);
    assert!(detected.app.prefix().is_empty());
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let ((mut client, proxied), (app, _app_end)) = streams().await;
    client.write_all(super::super::H2_PREFACE).await.unwrap();
    client.write_all(b"\0\0\0\x04\0\0\0\0\0").await.unwrap(); // SETTINGS
    let detected = detect(proxied, app, &settings(Duration::from_secs(5))).await;
    assert_eq!(detected.protocol, Protocol::Http2);
    assert!(
        detected
            .client
            .prefix()
            .starts_with(super::super::H2_PREFACE)
    );
}

#[tokio::test]
async fn client_first_binary_is_opaque_at_once() {
    let ((mut client, proxied), (app, _app_end)) = streams().await;
    client.write_all(b"\x16\x03\x01\x00\xa5\x01").await.unwrap();
    let started = Instant::now();
    let detected = detect(proxied, app, &settings(Duration::from_secs(5))).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        (detected.protocol, detected.reason),
        (Protocol::Opaque, Reason::Classified)
    );
    assert_eq!(detected.client.prefix(), b"\x16\x03\x01\x00\xa5\x01");
}

#[tokio::test]
async fn server_first_ends_detection_when_the_app_speaks() {
    let ((_client, proxied), (app, mut app_end)) = streams().await;
    app_end
        .write_all(b"220 mail.example ESMTP\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // A long first-byte timeout: detection must not wait for it.
    let detected = detect(proxied, app, &settings(Duration::from_secs(5))).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(500), "took {elapsed:?}");
    assert_eq!(
        (detected.protocol, detected.reason),
        (Protocol::Opaque, Reason::AppSpokeFirst)
    );
    assert_eq!(detected.app.prefix(), b"220 mail.example ESMTP\r\n");
}

#[tokio::test]
async fn a_silent_client_is_opaque_after_the_first_byte_timeout() {
    let ((_client, proxied), (app, _app_end)) = streams().await;
    let started = Instant::now();
    let detected = detect(proxied, app, &settings(Duration::from_millis(100))).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(100) && elapsed < Duration::from_secs(1),
        "took {elapsed:?}"
    );
    assert_eq!(
        (detected.protocol, detected.reason),
        (Protocol::Opaque, Reason::ClientSilent)
    );
}

#[tokio::test]
async fn a_request_line_split_by_a_pause_is_still_http() {
    let ((mut client, proxied), (app, _app_end)) = streams().await;
    let writer = tokio::spawn(async move {
        client.write_all(b"GE").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.write_all(b"T / HTTP/1.1\r\n\r\n").await.unwrap();
        client
    });
    let detected = detect(proxied, app, &settings(Duration::from_millis(100))).await;
    assert_eq!(
        (detected.protocol, detected.reason),
        (Protocol::Http1, Reason::Classified)
    );
    let _client = writer.await.unwrap();
}

#[tokio::test]
async fn a_client_that_closes_is_opaque_and_its_end_is_replayed() {
    let ((mut client, proxied), (app, _app_end)) = streams().await;
    client.write_all(b"GET /").await.unwrap();
    client.shutdown().await.unwrap();
    let detected = detect(proxied, app, &settings(Duration::from_secs(5))).await;
    assert_eq!(
        (detected.protocol, detected.reason),
        (Protocol::Opaque, Reason::ClientClosed)
    );
    let mut replayed = Vec::new();
    let mut client = detected.client;
    client.read_to_end(&mut replayed).await.unwrap();
    assert_eq!(replayed, b"GET /");
}

/// A raw TCP app: sends `banner` (if any), then echoes.
async fn echo_app(banner: &'static [u8]) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                tcp.write_all(banner).await.unwrap();
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn server_first_protocol_through_the_proxy() {
    let app = echo_app(b"220 ready\r\n").await;
    let mut proxy = TestProxy::with(app, settings(Duration::from_secs(3))).await;
    let started = Instant::now();
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let mut banner = [0u8; 11];
    client.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"220 ready\r\n");
    assert!(started.elapsed() < Duration::from_secs(1));
    client.write_all(b"EHLO client\r\n").await.unwrap();
    let mut echoed = [0u8; 13];
    client.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"EHLO client\r\n");
    drop(client);
    let handled = proxy.handled().await;
    assert_eq!(
        (handled.protocol, handled.reason),
        (Protocol::Opaque, Reason::AppSpokeFirst)
    );
    assert!(handled.detect_time < Duration::from_secs(1));
}

#[tokio::test]
async fn client_first_opaque_through_the_proxy() {
    let app = echo_app(b"").await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let hello = b"\x00\x01binary hello\xff";
    client.write_all(hello).await.unwrap();
    let mut echoed = [0u8; 15];
    client.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, hello);
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    let handled = proxy.handled().await;
    assert_eq!(handled.protocol, Protocol::Opaque);
    assert_eq!(handled.result, Ok(()));
}

#[tokio::test]
async fn a_split_request_through_the_proxy_is_served_as_http() {
    let (app, _) = super::app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::with(app, settings(Duration::from_millis(100))).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(b"GE").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .write_all(b"T /split HTTP/1.1\r\nHost: split.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    client.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.ends_with("GET /split host=split.test HTTP/1.1"),
        "{response}"
    );
    let report = proxy.report().await;
    assert_eq!(report.status, StatusCode::OK);
    assert_eq!(proxy.handled().await.protocol, Protocol::Http1);
}

/// An HTTP/2 server's SETTINGS frame with one setting (MAX_CONCURRENT_STREAMS = 100).
const SERVER_SETTINGS: &[u8] = b"\0\0\x06\x04\0\0\0\0\0\0\x03\0\0\0\x64";

#[tokio::test]
async fn an_http2_app_sending_settings_first_still_waits_for_the_client() {
    let ((mut client, proxied), (app, mut app_end)) = streams().await;
    app_end.write_all(SERVER_SETTINGS).await.unwrap();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(super::super::H2_PREFACE).await.unwrap();
        client
    });
    let detected = detect(proxied, app, &settings(Duration::from_secs(2))).await;
    assert_eq!(
        (detected.protocol, detected.reason),
        (Protocol::Http2, Reason::Classified)
    );
    assert_eq!(detected.app.prefix(), SERVER_SETTINGS);
    let _client = writer.await.unwrap();

    // The same app, and a client speaking HTTP/1: not ours to parse.
    let ((mut client, proxied), (app, mut app_end)) = streams().await;
    app_end.write_all(SERVER_SETTINGS).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let detected = detect(proxied, app, &settings(Duration::from_secs(2))).await;
    assert_eq!(
        (detected.protocol, detected.reason),
        (Protocol::Opaque, Reason::AppSpokeFirst)
    );
}

#[tokio::test]
async fn a_banner_that_is_not_http2_settings_is_server_first() {
    // A MySQL-style greeting: length, sequence 0, protocol 10.
    let ((_client, proxied), (app, mut app_end)) = streams().await;
    app_end.write_all(b"\x4a\0\0\0\x0a8.0.36\0").await.unwrap();
    let detected = detect(proxied, app, &settings(Duration::from_secs(5))).await;
    assert_eq!(
        (detected.protocol, detected.reason),
        (Protocol::Opaque, Reason::AppSpokeFirst)
    );
}

#[tokio::test]
async fn an_http2_app_that_greets_first_through_the_proxy() {
    let (app, _) = super::app(HttpVersion::Http2).await;
    let mut proxy = TestProxy::with(app, settings(Duration::from_secs(2))).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    // Give the app time to send its SETTINGS before the client's preface.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = Request::get("http://svc.test/deny")
        .body(super::support::empty())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(proxy.report().await.denied);
    drop((response, client));
    assert_eq!(proxy.handled().await.protocol, Protocol::Http2);
}
