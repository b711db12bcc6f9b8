//! HTTP/1.1 through the proxy: keep-alive with a denied request in the middle, bodies of
//! several MiB streamed both ways (chunked) with back-pressure, `Expect: 100-continue`,
//! an upgrade, and curl reusing one connection.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{Method, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    support::{bytes, drain, empty, h1_client, read_head},
    *,
};

fn request(method: Method, path: &str, body: support::ClientBody) -> Request<support::ClientBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "svc.test:8080")
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn keep_alive_with_a_denied_request_in_the_middle() {
    let (app, accepted) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = h1_client(proxy.addr).await;

    let mut statuses = Vec::new();
    let mut bodies = Vec::new();
    for (method, path, body) in [
        (Method::GET, "/first?q=1", empty()),
        (Method::GET, "/deny/this", empty()),
        (Method::POST, "/deny/that", bytes(b"some body")),
        (Method::GET, "/last", empty()),
    ] {
        client.ready().await.unwrap();
        let response = client
            .send_request(request(method, path, body))
            .await
            .unwrap();
        statuses.push(response.status());
        bodies.push(response.into_body().collect().await.unwrap().to_bytes());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::FORBIDDEN,
            StatusCode::FORBIDDEN,
            StatusCode::OK
        ]
    );
    assert_eq!(bodies[0], "GET /first host=svc.test:8080 HTTP/1.1");
    assert_eq!(bodies[1], "RBAC: access denied");
    assert_eq!(bodies[2], "RBAC: access denied");
    assert_eq!(bodies[3], "GET /last host=svc.test:8080 HTTP/1.1");
    // One client connection, one app connection, all four requests on them.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let mut reports = Vec::new();
    for _ in 0..4 {
        reports.push(proxy.report().await);
    }
    let summary: Vec<_> = reports
        .iter()
        .map(|r| {
            (
                r.request.path().to_owned(),
                r.status.as_u16(),
                r.denied,
                r.request_bytes,
                r.response_bytes,
                r.response_flags(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("/first".into(), 200, false, 0, 38, "-"),
            ("/deny/this".into(), 403, true, 0, 19, "-"),
            ("/deny/that".into(), 403, true, 9, 19, "-"),
            ("/last".into(), 200, false, 0, 37, "-"),
        ]
    );
    let seen = proxy.seen();
    assert_eq!(seen[0].method, Method::GET);
    assert_eq!(seen[0].uri, "/first?q=1");
    assert_eq!(seen[0].authority.as_deref(), Some("svc.test:8080"));
    assert_eq!(seen[0].host(), Some("svc.test"));
    assert_eq!(seen[0].version, Version::HTTP_11);
    assert_eq!(seen[2].method, Method::POST);
}

#[tokio::test]
async fn chunked_bodies_of_several_mib_stream_both_ways() {
    let (app, _) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = h1_client(proxy.addr).await;
    let pattern = Pattern::new();
    let len = 6 * 1024 * 1024 + 12_345;

    // Upload, echoed back: chunked both ways.
    let body = PatternBody::new(pattern.clone(), len, None);
    use http_body_util::BodyExt as _;
    let response = client
        .send_request(request(Method::POST, "/echo", body.boxed_unsync()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("transfer-encoding").unwrap(),
        "chunked"
    );
    let (got, sum) = drain(response.into_body()).await.unwrap();
    assert_eq!((got, sum), (len, pattern.checksum(len)));
    let report = proxy.report().await;
    assert_eq!((report.request_bytes, report.response_bytes), (len, len));
    assert_eq!(report.failure, None);

    // Download on the same connection.
    client.ready().await.unwrap();
    let response = client
        .send_request(request(Method::GET, "/big/5000000", empty()))
        .await
        .unwrap();
    let (got, sum) = drain(response.into_body()).await.unwrap();
    assert_eq!((got, sum), (5_000_000, pattern.checksum(5_000_000)));
    let report = proxy.report().await;
    assert_eq!(
        (report.request_bytes, report.response_bytes),
        (0, 5_000_000)
    );
}

#[tokio::test]
async fn a_slow_reader_holds_the_app_back() {
    // An app that would send 1 GiB, counting what it produced.
    let produced = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let counter = produced.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let counter = counter.clone();
        let service = service_fn(move |_req: Request<Incoming>| {
            let body = PatternBody::new(Pattern::new(), 1 << 30, Some(counter.clone()));
            async move { Ok::<_, Infallible>(Response::new(body)) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    });
    let proxy = TestProxy::start(app).await;
    let mut client = h1_client(proxy.addr).await;
    let response = client
        .send_request(request(Method::GET, "/huge", empty()))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut read = 0;
    while read < 1 << 20 {
        let frame = body.frame().await.unwrap().unwrap();
        read += frame.data_ref().map_or(0, |d| d.len());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ahead = produced.load(Ordering::SeqCst);
    // Socket buffers and hyper's hold some MiB; nothing like the whole body.
    assert!(
        ahead < 64 << 20,
        "the app produced {ahead} bytes ahead of the reader"
    );
}

#[tokio::test]
async fn expect_100_continue() {
    let (app, _) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert_eq!(head, "HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(b"hello").await.unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let mut body = [0u8; 5];
    client.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"hello");
    assert_eq!(proxy.report().await.request_bytes, 5);

    // Denied: no 100, the final answer at once, and the connection closes (the client
    // would otherwise still owe the body).
    client
        .write_all(
            b"POST /deny HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"RBAC: access denied");
}

#[tokio::test]
async fn an_upgrade_is_spliced() {
    let (app, _) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("upgrade: echo\r\n"), "{head}");
    for message in [&b"ping"[..], b"a longer message\x00\xff"] {
        client.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message);
    }
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    let report = proxy.report().await;
    assert_eq!(report.status, StatusCode::SWITCHING_PROTOCOLS);
    assert!(report.upgraded);
    assert_eq!((report.request_bytes, report.response_bytes), (22, 22));
    assert_eq!(report.failure, None);
}

#[tokio::test]
async fn curl_reuses_one_connection_across_a_deny() {
    let (app, accepted) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let base = format!("http://{}", proxy.addr);
    let output = tokio::process::Command::new("curl")
        .args(["-s", "--http1.1", "-w", "%{http_code} %{num_connects}\\n"])
        .args(["-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null"])
        .args([
            format!("{base}/a"),
            format!("{base}/deny"),
            format!("{base}/b"),
        ])
        .output()
        .await
        .expect("curl runs");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "200 1\n403 0\n200 0\n"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    for _ in 0..3 {
        proxy.report().await;
    }
}

#[tokio::test]
async fn an_h2c_upgrade_offer_is_removed() {
    let (app, _) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            b"GET /h2c HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = String::new();
    client.read_to_string(&mut response).await.unwrap();
    // The test app would have switched to an echo had it seen the offer.
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.ends_with("GET /h2c host=svc HTTP/1.1"),
        "{response}"
    );
    assert!(!proxy.report().await.upgraded);
}

#[tokio::test]
async fn a_denied_request_with_a_large_body_closes_the_connection() {
    let (app, _) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let client = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut read, mut write) = client.into_split();
    let writer = tokio::spawn(async move {
        let len = 1024 * 1024;
        let head = format!("POST /deny HTTP/1.1\r\nHost: svc\r\nContent-Length: {len}\r\n\r\n");
        write.write_all(head.as_bytes()).await.unwrap();
        // The proxy may stop reading (and close) before all of it is in.
        let _ = write.write_all(&vec![b'x'; len]).await;
    });
    let head = read_head(&mut read).await;
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    let mut body = Vec::new();
    let _ = read.read_to_end(&mut body).await;
    assert!(body.starts_with(b"RBAC: access denied"));
    let report = proxy.report().await;
    assert!(report.denied);
    // Not read: its announced length is over the drain limit.
    assert_eq!(report.request_bytes, 0);
    assert_eq!(report.response_bytes, 19);
    let _ = writer.await;
}

#[tokio::test]
async fn a_denied_head_request_gets_no_body() {
    let (app, _) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = h1_client(proxy.addr).await;
    let response = client
        .send_request(request(Method::HEAD, "/deny", empty()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.headers().get("content-length").unwrap(), "19");
    let report = proxy.report().await;
    assert_eq!((report.response_bytes, report.failure), (0, None));
    // The connection carries on.
    client.ready().await.unwrap();
    let response = client
        .send_request(request(Method::GET, "/after", empty()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// With normalization on (as at a destination): the hook and the app see the normal form,
/// a path that has none is answered 400 without reaching either, and the connection
/// carries on.
#[tokio::test]
async fn paths_are_normalized_before_the_hook_and_the_app() {
    let (app, accepted) = app(HttpVersion::Http1).await;
    let settings = Settings {
        normalize: Some(super::super::path::EscapedSlashes::RejectRequest),
        ..Settings::default()
    };
    let mut proxy = TestProxy::with_settings(app, DetectSettings::default(), settings).await;
    let mut client = h1_client(proxy.addr).await;
    let mut answers = Vec::new();
    for path in [
        "/ok/../deny/x?q=%2e%2e",
        "/ok/%2e%2e/ok2?q=%2e%2e",
        "/ok/..%2fdeny",
        "/ok/..;/deny",
        "//ok/./%61",
    ] {
        client.ready().await.unwrap();
        let response = client
            .send_request(request(Method::GET, path, empty()))
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        answers.push((status, String::from_utf8_lossy(&body).into_owned()));
    }
    assert_eq!(
        answers,
        [
            (403, "RBAC: access denied".to_owned()),
            (200, "GET /ok2 host=svc.test:8080 HTTP/1.1".to_owned()),
            (
                400,
                "Bad Request: invalid path: the path holds an encoded `/` or `\\` (%2F, %5C)"
                    .to_owned()
            ),
            (
                400,
                "Bad Request: invalid path: the path holds a `.` or `..` segment with `;` parameters"
                    .to_owned()
            ),
            (200, "GET /ok/a host=svc.test:8080 HTTP/1.1".to_owned()),
        ]
    );
    let seen: Vec<String> = proxy.seen().iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(
        seen,
        ["/deny/x?q=%2e%2e", "/ok2?q=%2e%2e", "/ok/a"],
        "only normalized requests reach the hook"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one app connection throughout"
    );
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let report = proxy.report().await;
        statuses.push((report.status.as_u16(), report.denied));
    }
    assert_eq!(
        statuses,
        [
            (403, true),
            (200, false),
            (400, true),
            (400, true),
            (200, false)
        ]
    );
}
