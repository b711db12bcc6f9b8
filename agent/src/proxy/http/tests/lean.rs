//! The lean HTTP/1 path seen from raw sockets: bytes reach the app as the client sent
//! them (header case and spacing, chunk extensions, trailers), pipelined requests are
//! answered in order, smuggling attempts and broken chunking end the connection before
//! the app sees a byte too many, interim and close-delimited responses go through, an
//! app may answer before the request body is in, and a request the lean path does not
//! serve (an upgrade) hands the connection to hyper mid-way.
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{support::read_head, *};
use crate::proxy::http::Failure;

/// What a raw app read, over all its connections, and how many of them it has read to
/// their end.
#[derive(Default)]
struct Recording {
    bytes: Mutex<Vec<u8>>,
    ended: AtomicUsize,
}

impl Recording {
    fn push(&self, bytes: &[u8]) {
        self.bytes.lock().unwrap().extend_from_slice(bytes);
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }

    /// What was read once `n` bytes were (or 10 s passed).
    async fn at_least(&self, n: usize) -> String {
        for _ in 0..1000 {
            if self.bytes.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.text()
    }

    /// What was read once `n` connections were read to their end (or 10 s passed): all
    /// the proxy ever sent on them.
    async fn after_ends(&self, n: usize) -> String {
        for _ in 0..1000 {
            if self.ended.load(Ordering::SeqCst) >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            self.ended.load(Ordering::SeqCst) >= n,
            "{n} connections ended"
        );
        self.text()
    }
}

/// A raw app: records what it reads on any connection; answers `reply` once it has a
/// request head; closes after it when `close`, else reads (and records) on to the end.
async fn recording_app(reply: &'static [u8], close: bool) -> (SocketAddr, Arc<Recording>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Recording::default());
    let record = got.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0; 4096];
                while !head.ends_with(b"\r\n\r\n") {
                    let Ok(b) = tcp.read_u8().await else {
                        record.ended.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    head.push(b);
                    record.push(&[b]);
                }
                let _ = tcp.write_all(reply).await;
                if !close {
                    while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                        record.push(&buf[..n]);
                    }
                }
                record.ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, got)
}

/// A client connection to `addr` that has sent `bytes`.
async fn sent(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(bytes).await.unwrap();
    client
}

async fn read_all(client: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out))
        .await
        .expect("the proxy ends the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_bodies_and_trailers() {
    let (app, accepted) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = sent(
        proxy.addr,
        b"GET /one HTTP/1.1\r\nHost: svc\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n\
          GET /deny/two HTTP/1.1\r\nHost: svc\r\n\r\n\
          GET /three HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
    )
    .await;
    let answers = read_all(&mut client).await;
    // The echo comes back chunked as the app sends it.
    let order: Vec<usize> = [
        "GET /one host=svc",
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "RBAC: access denied",
        "GET /three host=svc",
    ]
    .iter()
    .map(|s| {
        answers
            .find(s)
            .unwrap_or_else(|| panic!("{s:?} in {answers}"))
    })
    .collect();
    assert!(order.is_sorted(), "{answers}");
    let mut reports = Vec::new();
    for _ in 0..4 {
        let r = proxy.report().await;
        reports.push((
            r.request.path().to_owned(),
            r.status.as_u16(),
            r.request_bytes,
            r.failure,
        ));
    }
    assert_eq!(
        reports,
        [
            ("/one".to_owned(), 200, 0, None),
            ("/echo".to_owned(), 200, 11, None),
            ("/deny/two".to_owned(), 403, 0, None),
            ("/three".to_owned(), 200, 0, None),
        ]
    );
    assert!(proxy.handled().await.result.is_ok());
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_app_gets_the_bytes_the_client_sent_and_a_normalized_request_line() {
    const REQUEST: &str = "GET /a/../b?q=%2e HTTP/1.1\r\nHoSt: svc\r\nX-Odd-CASE:   spaced  \r\nx-dup: 1\r\nX-Dup: 2\r\n\r\n";
    let (app, got) = recording_app(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false).await;
    let settings = Settings {
        normalize: Some(super::super::path::EscapedSlashes::RejectRequest),
        ..Settings::default()
    };
    let mut proxy = TestProxy::with_settings(app, DetectSettings::default(), settings).await;
    let mut client = sent(proxy.addr, REQUEST.as_bytes()).await;
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let want = REQUEST.replace("GET /a/../b?q=%2e HTTP/1.1", "GET /b?q=%2e HTTP/1.1");
    assert_eq!(got.at_least(want.len()).await, want);
    assert_eq!(proxy.seen()[0].uri, "/b?q=%2e");
    assert_eq!(proxy.report().await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_smuggling_attempt_is_refused_before_the_app_sees_a_byte() {
    let (app, got) = recording_app(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false).await;
    let mut proxy = TestProxy::start(app).await;
    for attack in [
        "POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /deny HTTP/1.1\r\nHost: svc\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding:\tchunked\r\n Content-Length: 4\r\n\r\n",
    ] {
        let mut client = sent(proxy.addr, attack.as_bytes()).await;
        let answer = read_all(&mut client).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{attack:?}: {answer}"
        );
        let handled = proxy.handled().await;
        assert!(matches!(handled.result, Err((true, _))), "{handled:?}");
    }
    assert!(proxy.seen().is_empty(), "the hook saw none of them");
    assert_eq!(got.after_ends(4).await, "", "the app saw none of them");
}

/// Broken chunking ends the connection: arriving with the head, before the app gets any
/// of the request; arriving later, before the app gets the bytes after the break.
#[tokio::test]
async fn broken_chunking_in_a_request_body_ends_the_connection() {
    const HEAD: &[u8] = b"POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n";
    const BROKEN: &[u8] = b"5\r\nhelloXX0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";
    for separately in [false, true] {
        let (app, got) = recording_app(b"", false).await;
        let mut proxy = TestProxy::start(app).await;
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        if separately {
            client.write_all(HEAD).await.unwrap();
            assert_eq!(got.at_least(HEAD.len()).await.as_bytes(), HEAD);
            client.write_all(BROKEN).await.unwrap();
        } else {
            client.write_all(&[HEAD, BROKEN].concat()).await.unwrap();
        }
        let answer = read_all(&mut client).await;
        assert_eq!(answer, "", "no answer: the app never answered");
        let report = proxy.report().await;
        assert_eq!(report.failure, Some(Failure::DownstreamReset));
        let handled = proxy.handled().await;
        assert!(matches!(handled.result, Err((true, _))), "{handled:?}");
        let want: &[u8] = if separately { HEAD } else { b"" };
        assert_eq!(
            got.after_ends(1).await,
            String::from_utf8_lossy(want),
            "separately: {separately}"
        );
    }
}

#[tokio::test]
async fn an_app_may_answer_before_the_request_body_is_in() {
    let (app, _) = recording_app(
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!",
        true,
    )
    .await;
    let mut proxy = TestProxy::start(app).await;
    let client = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut read, mut write) = client.into_split();
    let upload = tokio::spawn(async move {
        write
            .write_all(b"PUT /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 100000000\r\n\r\n")
            .await?;
        let block = vec![b'x'; 64 * 1024];
        loop {
            write.write_all(&block).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut read))
        .await
        .expect("the early answer arrives");
    assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
    let report = proxy.report().await;
    assert_eq!(report.status.as_u16(), 413);
    assert_eq!(report.response_bytes, 4);
    assert!(
        tokio::time::timeout(Duration::from_secs(10), upload)
            .await
            .expect("the upload is stopped")
            .unwrap()
            .is_err(),
        "the connection closed under the upload"
    );
}

#[tokio::test]
async fn interim_and_close_delimited_responses_go_through() {
    let (app, _) = recording_app(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n\r\nstreamed until close",
        true,
    )
    .await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = sent(proxy.addr, b"GET /x HTTP/1.1\r\nHost: svc\r\n\r\n").await;
    let answer = read_all(&mut client).await;
    assert_eq!(
        answer,
        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n\r\nstreamed until close"
    );
    let report = proxy.report().await;
    assert_eq!(
        (report.status, report.response_bytes, report.failure),
        (StatusCode::OK, 20, None)
    );
    assert!(proxy.handled().await.result.is_ok());
}

#[tokio::test]
async fn an_upgrade_after_plain_requests_is_handed_to_hyper_on_the_same_connections() {
    let (app, accepted) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = sent(proxy.addr, b"GET /one HTTP/1.1\r\nHost: svc\r\n\r\n").await;
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let body_len = "GET /one host=svc HTTP/1.1".len();
    let mut body = vec![0; body_len];
    client.read_exact(&mut body).await.unwrap();
    client
        .write_all(b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    client.write_all(b"ping").await.unwrap();
    let mut pong = [0; 4];
    client.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");
    drop(client);
    let first = proxy.report().await;
    let second = proxy.report().await;
    assert_eq!((first.status.as_u16(), first.upgraded), (200, false));
    assert_eq!((second.status.as_u16(), second.upgraded), (101, true));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one app connection throughout"
    );
}

#[tokio::test]
async fn an_http10_request_closes_after_its_answer_and_an_idle_app_close_ends_the_client() {
    let (app, _) = app(HttpVersion::Http1).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = sent(proxy.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    let answer = read_all(&mut client).await;
    assert!(answer.contains("GET /old host= HTTP/1.0"), "{answer}");
    assert!(proxy.handled().await.result.is_ok());

    let (app, _) = recording_app(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = sent(proxy.addr, b"GET /x HTTP/1.1\r\nHost: svc\r\n\r\n").await;
    let answer = read_all(&mut client).await;
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    assert!(proxy.handled().await.result.is_ok());
}
