//! Bad input and failing apps: garbage after an HTTP/1 request line (400), an app that
//! closes before answering (503, `UC`), answers garbage (502, `UPE`) or closes mid-body
//! (the client's response is cut off and the connection ends in error), garbage after
//! the HTTP/2 preface.
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    support::{empty, h1_client, read_head},
    *,
};
use crate::proxy::http::Failure;

/// A raw TCP app: reads a request head, writes `reply`, closes.
async fn raw_app(reply: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let _ = read_head(&mut tcp).await;
                let _ = tcp.write_all(&reply).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn garbage_after_the_request_line_gets_400_and_the_connection_ends() {
    let (app, _) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\n\x01\x02 not a header\xff\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    client.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
    let handled = proxy.handled().await;
    assert_eq!(handled.protocol, Protocol::Http1);
    assert!(matches!(handled.result, Err((true, _))), "{handled:?}");
    assert!(proxy.seen().is_empty());
}

#[tokio::test]
async fn an_app_that_closes_before_answering_gives_503() {
    let app = raw_app(Vec::new()).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = h1_client(proxy.addr).await;
    let request = Request::get("/x")
        .header("host", "svc")
        .body(empty())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers().get("connection").unwrap(), "close");
    let report = proxy.report().await;
    assert_eq!(report.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(report.failure, Some(Failure::UpstreamReset));
    assert!(report.upstream_failed());
    assert_eq!(report.response_flags(), "UC");
}

#[tokio::test]
async fn an_app_that_answers_garbage_gives_502() {
    let app = raw_app(b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = h1_client(proxy.addr).await;
    let request = Request::get("/x")
        .header("host", "svc")
        .body(empty())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let report = proxy.report().await;
    assert_eq!(report.failure, Some(Failure::UpstreamProtocol));
    assert_eq!(report.response_flags(), "UPE");
}

#[tokio::test]
async fn an_app_that_closes_mid_response_cuts_the_client_off() {
    let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
    reply.extend_from_slice(&[b'x'; 1000]);
    let app = raw_app(reply).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = h1_client(proxy.addr).await;
    let request = Request::get("/x")
        .header("host", "svc")
        .body(empty())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err());
    let report = proxy.report().await;
    assert_eq!(report.status, StatusCode::OK);
    assert_eq!(report.response_bytes, 1000);
    assert_eq!(report.failure, Some(Failure::UpstreamReset));
    let handled = proxy.handled().await;
    assert!(matches!(handled.result, Err((false, _))), "{handled:?}");
}

#[tokio::test]
async fn garbage_after_the_http2_preface_ends_the_connection() {
    let (app, _) = app(HttpVersion::Http2).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(super::super::H2_PREFACE).await.unwrap();
    client
        .write_all(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff garbage")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest).await;
    let handled = proxy.handled().await;
    assert_eq!(handled.protocol, Protocol::Http2);
    assert!(handled.result.is_err(), "{handled:?}");
    assert!(proxy.seen().is_empty());
}
