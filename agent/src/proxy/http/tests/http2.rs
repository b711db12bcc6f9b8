//! HTTP/2 with prior knowledge through the proxy: concurrent streams on one connection,
//! one denied, bodies streamed; `:authority` kept; curl as the client.
use std::sync::atomic::Ordering;

use http::{Method, Version};
use http_body_util::BodyExt as _;
use tokio::task::JoinSet;

use super::{
    support::{drain, empty, h2_client},
    *,
};

#[tokio::test]
async fn concurrent_streams_with_one_denied() {
    let (app, accepted) = app(HttpVersion::Http2).await;
    let mut proxy = TestProxy::start(app).await;
    let client = h2_client(proxy.addr).await;
    let pattern = Pattern::new();
    let upload = 1024 * 1024 + 7;

    let mut streams = JoinSet::new();
    for i in 0..24u32 {
        let mut client = client.clone();
        let pattern = pattern.clone();
        streams.spawn(async move {
            let (method, path, body) = match i {
                7 => (Method::GET, "/deny".to_owned(), empty()),
                i if i % 3 == 0 => (
                    Method::POST,
                    "/echo".to_owned(),
                    PatternBody::new(pattern.clone(), upload, None).boxed_unsync(),
                ),
                i => (Method::GET, format!("/item/{i}"), empty()),
            };
            let request = Request::builder()
                .method(method)
                .uri(format!("http://svc.test{path}"))
                .version(Version::HTTP_2)
                .body(body)
                .unwrap();
            client.ready().await.unwrap();
            let response = client.send_request(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (i, status, body)
        });
    }
    let mut results = Vec::new();
    while let Some(result) = streams.join_next().await {
        results.push(result.unwrap());
    }
    results.sort_by_key(|(i, _, _)| *i);
    for (i, status, body) in &results {
        match i {
            7 => {
                assert_eq!(*status, StatusCode::FORBIDDEN);
                assert_eq!(body, "RBAC: access denied");
            }
            i if i % 3 == 0 => {
                assert_eq!(*status, StatusCode::OK);
                let (len, sum) = drain(http_body_util::Full::new(body.clone()))
                    .await
                    .unwrap();
                assert_eq!((len, sum), (upload, pattern.checksum(upload)));
            }
            i => {
                assert_eq!(*status, StatusCode::OK);
                assert_eq!(body, &format!("GET /item/{i} host=svc.test HTTP/2.0"));
            }
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let mut reports = Vec::new();
    for _ in 0..24 {
        reports.push(proxy.report().await);
    }
    let denied: Vec<_> = reports.iter().filter(|r| r.denied).collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].status, StatusCode::FORBIDDEN);
    assert_eq!(denied[0].request.authority.as_deref(), Some("svc.test"));
    for report in reports.iter().filter(|r| r.request.path() == "/echo") {
        assert_eq!(
            (report.request_bytes, report.response_bytes),
            (upload, upload)
        );
        assert_eq!(report.request.version, Version::HTTP_2);
    }
    assert!(reports.iter().all(|r| r.failure.is_none()));
}

#[tokio::test]
async fn curl_with_prior_knowledge() {
    let (app, accepted) = app(HttpVersion::Http2).await;
    let mut proxy = TestProxy::start(app).await;
    // One URL per run: curl 7.88 fails to reuse a prior-knowledge connection (it does so
    // against hyper's server directly too).
    let mut outputs = String::new();
    for path in ["/hello", "/deny"] {
        let output = tokio::process::Command::new("curl")
            .args([
                "-s",
                "--http2-prior-knowledge",
                "-w",
                " %{http_code} %{http_version}\\n",
            ])
            .arg(format!("http://{}{path}", proxy.addr))
            .output()
            .await
            .expect("curl runs");
        assert!(output.status.success(), "{output:?}");
        outputs.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    assert_eq!(
        outputs,
        format!(
            "GET /hello host={} HTTP/2.0 200 2\nRBAC: access denied 403 2\n",
            proxy.addr
        )
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let statuses = [proxy.report().await.status, proxy.report().await.status];
    assert_eq!(statuses, [StatusCode::OK, StatusCode::FORBIDDEN]);
    assert_eq!(proxy.handled().await.protocol, Protocol::Http2);
}

#[tokio::test]
async fn a_stream_cancelled_before_its_answer_is_reported() {
    let (app, _) = app(HttpVersion::Http2).await;
    let mut proxy = TestProxy::start(app).await;
    let mut client = h2_client(proxy.addr).await;
    let request = Request::get("http://svc.test/hang").body(empty()).unwrap();
    // Dropping the response future resets the stream.
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        client.send_request(request),
    )
    .await;
    assert!(gave_up.is_err());
    let report = proxy.report().await;
    assert_eq!(report.request.path(), "/hang");
    assert_eq!(report.status, crate::proxy::http::client_closed());
    assert_eq!(report.status.as_u16(), 499);
    assert_eq!(report.response_flags(), "DC");
    // The connection carries on.
    let request = Request::get("http://svc.test/after").body(empty()).unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
