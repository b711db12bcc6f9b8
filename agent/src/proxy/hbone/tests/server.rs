//! The server end: refusals, malformed requests, garbage instead of HTTP/2, the stream
//! limit, GOAWAY on shutdown.
use std::{io, time::Duration};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[tokio::test]
async fn refusals_reach_the_client_as_errors_naming_the_status() {
    let upstream = echo_upstream().await;
    let refused = closed_port().await;
    let server = TestServer::start(
        settings(),
        ToTcp {
            deny: Some(upstream),
            ..ToTcp::default()
        },
    )
    .await;
    let client = server.client().await;

    let err = client
        .connect(&ConnectRequest::new(upstream))
        .await
        .err()
        .expect("policy refused");
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(
        err.to_string(),
        format!("CONNECT {upstream} refused: 403 Forbidden")
    );
    assert_eq!(err.into_io().kind(), io::ErrorKind::PermissionDenied);

    let err = client
        .connect(&ConnectRequest::new(refused))
        .await
        .err()
        .expect("upstream refused");
    assert_eq!(err.status(), Some(StatusCode::BAD_GATEWAY));
    assert!(err.to_string().contains("502 Bad Gateway"), "{err}");
    assert_eq!(err.into_io().kind(), io::ErrorKind::ConnectionRefused);

    // The refusals cost the connection nothing.
    assert_eq!(client.active_streams(), 0);
    assert!(client.is_usable());
}

/// A raw h2 client, to send what ours never would.
async fn raw_client(server: &TestServer) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (sender, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn status_of(
    sender: &mut h2::client::SendRequest<Bytes>,
    request: Request<()>,
) -> StatusCode {
    let mut sender = sender.clone().ready().await.unwrap();
    let (response, _send) = sender.send_request(request, false).unwrap();
    response.await.unwrap().status()
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_connection_carries_on() {
    let upstream = echo_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let mut sender = raw_client(&server).await;

    let get = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{upstream}/"))
        .body(())
        .unwrap();
    assert_eq!(status_of(&mut sender, get).await, StatusCode::BAD_REQUEST);

    let by_name = Request::builder()
        .method(Method::CONNECT)
        .uri("example.com:80")
        .body(())
        .unwrap();
    assert_eq!(
        status_of(&mut sender, by_name).await,
        StatusCode::BAD_REQUEST
    );

    // A proper CONNECT on the same connection still works.
    let connect = ConnectRequest::new(upstream).to_http().unwrap();
    let mut ready = sender.clone().ready().await.unwrap();
    let (response, mut send) = ready.send_request(connect, false).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    send.send_data(Bytes::from_static(b"ping"), true).unwrap();
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
        got.extend_from_slice(&data);
    }
    assert_eq!(got, b"ping");
    // Neither 400 reached the handler.
    assert_eq!(server.handler.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn garbage_instead_of_http2_ends_that_connection_at_once() {
    let mut server = TestServer::start(settings(), ToTcp::default()).await;

    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let started = std::time::Instant::now();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: outrider\r\n\r\n")
        .await
        .unwrap();
    let err = server.next_result().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, HboneError::NotHttp2(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("not HTTP/2: the connection began with \"GET "),
        "{err}"
    );
    // The server let go of it.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);

    // A TLS ClientHello (a client that forgot it is already inside TLS): refused after
    // its first byte, without waiting for more.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let err = server.next_result().await.unwrap_err();
    assert!(matches!(err, HboneError::NotHttp2(_)), "{err:?}");

    // Closed before a whole preface.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0").await.unwrap();
    drop(tcp);
    let err = server.next_result().await.unwrap_err();
    assert!(
        matches!(err, HboneError::ClosedBeforePreface(14)),
        "{err:?}"
    );

    // Other connections are not disturbed.
    let upstream = echo_upstream().await;
    let client = server.client().await;
    let mut stream = client
        .connect(&ConnectRequest::new(upstream))
        .await
        .unwrap();
    stream.write_all(b"fine").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stream).await.unwrap(), b"fine");
}

#[tokio::test]
async fn the_servers_stream_limit_holds() {
    let upstream = echo_upstream().await;
    let server = TestServer::start(
        Settings {
            max_concurrent_streams: 1,
            ..settings()
        },
        ToTcp::default(),
    )
    .await;
    let client = server.client().await;
    let first = client
        .connect(&ConnectRequest::new(upstream))
        .await
        .unwrap();
    // A second stream waits for the first to go.
    let request = ConnectRequest::new(upstream);
    let second = client.connect(&request);
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "a second stream opened beyond the server's limit of 1"
    );
    drop(first);
    let mut second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("opened once the first stream went")
        .unwrap();
    second.write_all(b"2").await.unwrap();
    second.shutdown().await.unwrap();
    assert_eq!(read_all(&mut second).await.unwrap(), b"2");
}

#[tokio::test]
async fn shutdown_sends_goaway_and_lets_streams_finish() {
    let (upstream, mut accepted) = manual_upstream().await;
    let mut server = TestServer::start(settings(), ToTcp::default()).await;
    let client = server.client().await;
    let mut stream = client
        .connect(&ConnectRequest::new(upstream))
        .await
        .unwrap();
    let mut app = accepted.recv().await.unwrap();

    server.shut_down();
    // The client learns of the GOAWAY: no new streams on this connection.
    tokio::time::timeout(Duration::from_secs(5), async {
        while client.is_usable() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("client saw the GOAWAY");
    assert!(
        client
            .connect(&ConnectRequest::new(upstream))
            .await
            .is_err()
    );

    // The stream under way runs to its end.
    stream.write_all(b"after goaway").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_all(&mut app).await.unwrap(), b"after goaway");
    app.write_all(b"reply").await.unwrap();
    drop(app);
    assert_eq!(read_all(&mut stream).await.unwrap(), b"reply");
    drop(stream);
    server.next_result().await.unwrap();
}

/// The tunnel's h2 server keeps refusing what the admin socket tolerates (the socket
/// alone opts in to `ignore_invalid_authority`, vendor/README.md): a unix socket's path
/// as `:authority` is malformed here, with any method, and so are requests malformed
/// otherwise. Each costs only its own stream, or for an error h2 takes as the
/// connection's (an upper-case header name), only its own connection.
#[tokio::test]
async fn a_path_as_authority_and_malformed_requests_are_refused_and_disturb_nothing_else() {
    use crate::raw_h2::{Answer, PROTOCOL_ERROR, RawH2};

    let upstream = echo_upstream().await;
    let server = TestServer::start(settings(), ToTcp::default()).await;
    let connect = || async {
        RawH2::handshake(dial(server.addr).await.unwrap())
            .await
            .unwrap()
    };
    let get = |authority| {
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", authority),
        ]
    };
    let no_path = get("localhost")[..2]
        .iter()
        .chain(&[(":authority", "localhost")])
        .copied()
        .collect();
    let refused = [
        // gRPC's C core, grpc-java: the socket's path, percent-encoded or raw.
        get("run%2Foutrider%2Fadmin.sock"),
        get("/run/outrider/admin.sock"),
        vec![
            (":method", "CONNECT"),
            (":authority", "/run/outrider/admin.sock"),
        ],
        no_path,
        [get("localhost"), vec![("connection", "close")]].concat(),
    ];
    let mut raw = connect().await;
    for (i, headers) in refused.iter().enumerate() {
        let stream = 2 * i as u32 + 1;
        raw.send(stream, headers).await.unwrap();
        assert_eq!(
            raw.answer(stream).await.unwrap(),
            Answer::Reset(PROTOCOL_ERROR),
            "{headers:?}"
        );
    }
    // The connection carries on: a well-formed request is answered (400, not a CONNECT).
    raw.send(11, &get("localhost")).await.unwrap();
    assert_eq!(raw.answer(11).await.unwrap(), Answer::Response);
    // An upper-case header name ends its connection…
    let mut doomed = connect().await;
    doomed
        .send(1, &[get("localhost"), vec![("Bad-Name", "1")]].concat())
        .await
        .unwrap();
    assert_eq!(
        doomed.answer(1).await.unwrap(),
        Answer::GoAway(PROTOCOL_ERROR)
    );
    // …and no other: the first still answers, and a tunnel through a new one echoes.
    raw.send(13, &get("localhost")).await.unwrap();
    assert_eq!(raw.answer(13).await.unwrap(), Answer::Response);
    let client = server.client().await;
    let mut stream = client
        .connect(&ConnectRequest::new(upstream))
        .await
        .unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    // Only that CONNECT reached the handler.
    assert_eq!(server.handler.seen.lock().unwrap().len(), 1);
}
