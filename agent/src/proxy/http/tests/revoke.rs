//! Requests the hook leased and then revoked (a policy change now denies them): reset
//! wherever they are — waiting for the app, streaming the response (even to a client
//! that reads nothing, which hyper would not poll), upgraded — in HTTP/2
//! the stream alone (the connection carries on), in HTTP/1 the connection. Each is
//! reported once, with `Failure::Revoked`.
use http::Version;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    support::{empty, h1_client, h2_client, read_head},
    *,
};
use crate::proxy::http::Failure;

fn get(path: &str) -> Request<support::ClientBody> {
    Request::get(format!("http://svc.test{path}"))
        .version(Version::HTTP_2)
        .body(empty())
        .unwrap()
}

/// Waits until the hook has leased `n` requests.
async fn leased(proxy: &TestProxy, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.hook.leases.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "{n} leases within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_http2_stream_is_reset_waiting_or_streaming_and_its_neighbours_run_on() {
    let (app, accepted) = app(HttpVersion::Http2).await;
    let mut proxy = TestProxy::start(app).await;
    let client = h2_client(proxy.addr).await;

    // One waits for an answer that never comes, one streams a body it never finishes.
    let mut waiting = client.clone();
    let hang = tokio::spawn(async move { waiting.send_request(get("/lease/hang")).await });
    let mut streaming = client.clone();
    let response = streaming
        .send_request(get("/lease/big/1000000000"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert!(body.frame().await.unwrap().is_ok(), "streaming");
    leased(&proxy, 2).await;
    // The client reads no more: the proxy's stream is held back by flow control, and
    // hyper does not poll its body. It is reset all the same.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.revoke();
    for _ in 0..2 {
        let report = proxy.report().await;
        assert_eq!(report.failure, Some(Failure::Revoked), "{report:?}");
        assert!(report.request.path().starts_with("/lease"), "{report:?}");
    }

    assert!(hang.await.unwrap().is_err(), "the waiting stream is reset");
    let mut streamed = body.frame().await;
    while let Some(Ok(_)) = streamed {
        // Frames already in flight.
        streamed = body.frame().await;
    }
    assert!(
        matches!(streamed, Some(Err(_))),
        "the streaming one is reset"
    );
    // The connection carries on.
    let mut other = client.clone();
    let response = other.send_request(get("/after")).await.unwrap();
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, "GET /after host=svc.test HTTP/2.0");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(proxy.report().await.failure, None, "/after");
}

#[tokio::test]
async fn an_http1_response_is_cut_and_its_connection_closed() {
    let (app, _) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = h1_client(proxy.addr).await;
    let request = Request::get("/lease/big/1000000000")
        .header(http::header::HOST, "svc")
        .body(empty())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    let mut body = response.into_body();
    assert!(body.frame().await.unwrap().is_ok(), "streaming");
    // The client reads no more (its socket fills up): the connection is closed all the
    // same.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.revoke();
    let report = proxy.report().await;
    assert_eq!(report.failure, Some(Failure::Revoked));
    let mut streamed = body.frame().await;
    while let Some(Ok(_)) = streamed {
        streamed = body.frame().await;
    }
    assert!(matches!(streamed, Some(Err(_))), "cut: {streamed:?}");
    assert!(report.response_bytes < 1_000_000_000);
    // The proxy is done with the connection (`handled` waits up to 10 s).
    let handled = proxy.handled().await;
    assert_eq!(handled.protocol, Protocol::Http1);
}

#[tokio::test]
async fn an_upgraded_connection_is_closed() {
    let (app, _) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            b"GET /lease/ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    client.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    client.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    proxy.revoke();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "closed within 5 s");
    let report = proxy.report().await;
    assert!(report.upgraded);
    assert_eq!(report.failure, Some(Failure::Revoked));
    assert_eq!((report.request_bytes, report.response_bytes), (4, 4));
}
