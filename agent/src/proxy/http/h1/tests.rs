//! The lean path's parsers on hostile input: heads two parsers could read two ways are
//! refused, chunked coding is walked exactly (whatever the split of its bytes), and what
//! a body's framing leaves over is the next message's.
use http::{Method, StatusCode, Version};

use super::{
    framing::{Body, BodyError},
    head::{self, Framing, HeadError},
};

const MAX: usize = 8192;

fn request(raw: &str) -> Result<head::RequestHead, HeadError> {
    head::request(raw.as_bytes(), MAX).map(|h| h.expect("a complete head"))
}

fn framing(raw: &str) -> Result<Framing, HeadError> {
    request(raw).map(|h| h.framing)
}

#[test]
fn a_plain_request_is_read_in_place() {
    let raw = "GET /a/b?x=1 HTTP/1.1\r\nHoSt: web.shop\r\nX-Trace: 7\r\n\r\nGET /next";
    let head = request(raw).unwrap();
    assert_eq!(head.method, Method::GET);
    assert_eq!(head.uri, "/a/b?x=1");
    assert_eq!(&raw[head.host.clone().unwrap()], "web.shop");
    assert_eq!((head.hosts, head.version), (1, Version::HTTP_11));
    assert_eq!(&raw[..head.line_end], "GET /a/b?x=1 HTTP/1.1\r\n");
    assert_eq!(
        &raw[head.len..],
        "GET /next",
        "what follows the head is not its"
    );
    assert_eq!(head.framing, Framing::Empty);
    assert!(head.keep_alive && !head.handoff);
}

/// Found by the `http1_smuggling` fuzz target: httparse skips blank lines before the
/// request line, so the line (rewritten when normalizing) ends at the line feed after
/// the method, not at the buffer's first. Taking the first smuggled the original line
/// to the app as a second request.
#[test]
fn blank_lines_before_the_request_line_are_not_the_line() {
    let raw = "\n\r\n\nGET /b//c HTTP/1.1\r\nHost: a\r\n\r\n";
    let head = request(raw).unwrap();
    assert_eq!(head.uri, "/b//c");
    assert_eq!(&raw[..head.line_end], "\n\r\n\nGET /b//c HTTP/1.1\r\n");
    assert_eq!(&raw[head.line_end..head.len], "Host: a\r\n\r\n");
}

#[test]
fn an_incomplete_head_waits_until_the_limit() {
    assert!(
        head::request(b"GET / HTTP/1.1\r\nHost: a\r\n", MAX)
            .unwrap()
            .is_none()
    );
    let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX));
    assert_eq!(
        head::request(long.as_bytes(), MAX).unwrap_err(),
        HeadError::TooLarge
    );
    let many: String = (0..=head::MAX_HEADERS)
        .map(|i| format!("X-{i}: 1\r\n"))
        .collect();
    let err = request(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err();
    assert_eq!(err, HeadError::TooLarge);
    assert_eq!(err.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[test]
fn lengths_and_encodings_that_could_be_read_two_ways_are_refused() {
    let cases = [
        // CL.TE and TE.CL smuggling.
        "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
        // Two lengths, or lengths that are not plain digits.
        "POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 4, 5\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 0x4\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        // An encoding that does not end in one chunked.
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
        // Chunked in HTTP/1.0.
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        // Folding, whitespace before the colon, a bare CR, a NUL: not HTTP.
        "POST / HTTP/1.1\r\nX: a\r\n Transfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nX: a\rTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nX: a\0b\r\n\r\n",
        "GET  / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.2\r\n\r\n",
    ];
    for raw in cases {
        let err = framing(raw).expect_err(raw);
        assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{raw:?}: {err}");
    }
}

#[test]
fn framing_is_read_case_and_space_insensitively() {
    let cases = [
        (
            "POST / HTTP/1.1\r\ncontent-LENGTH:  12 \r\n\r\n",
            Framing::Length(12),
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            Framing::Length(5),
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            Framing::Empty,
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n",
            Framing::Chunked,
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            Framing::Chunked,
        ),
        ("POST / HTTP/1.1\r\n\r\n", Framing::Empty),
    ];
    for (raw, want) in cases {
        assert_eq!(framing(raw), Ok(want), "{raw:?}");
    }
}

#[test]
fn keep_alive_follows_the_version_and_connection() {
    let keep = |raw: &str| request(raw).unwrap().keep_alive;
    assert!(keep("GET / HTTP/1.1\r\n\r\n"));
    assert!(!keep("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
    assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
    assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    assert!(!keep(
        "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
    ));
}

#[test]
fn what_the_lean_path_does_not_serve_is_handed_to_hyper() {
    let handoff = |raw: &str| request(raw).unwrap().handoff;
    assert!(handoff(
        "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    ));
    assert!(handoff(
        "GET / HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAAA\r\n\r\n"
    ));
    assert!(handoff("CONNECT db:5432 HTTP/1.1\r\n\r\n"));
    assert!(handoff(
        "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    ));
    assert!(handoff("GET http://web.shop/ HTTP/1.1\r\n\r\n"));
    assert!(handoff("OPTIONS * HTTP/1.1\r\n\r\n"));
    assert!(!handoff("GET /upgrade HTTP/1.1\r\nX-Upgrade: no\r\n\r\n"));
}

#[test]
fn several_hosts_are_counted() {
    let head = request("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n").unwrap();
    assert_eq!(head.hosts, 2);
}

fn response(raw: &str, method: &Method) -> head::ResponseHead {
    head::response(raw.as_bytes(), MAX, method)
        .unwrap()
        .expect("a complete head")
}

#[test]
fn a_response_is_framed_as_its_request_and_status_say() {
    let get = &Method::GET;
    let r = response("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", get);
    assert_eq!(
        (r.status, r.framing, r.keep_alive),
        (StatusCode::OK, Framing::Length(3), true)
    );
    let r = response(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
        &Method::HEAD,
    );
    assert_eq!(r.framing, Framing::Empty, "no body to HEAD");
    for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
        let r = response(
            &format!("HTTP/1.1 {status}\r\nContent-Length: 3\r\n\r\n"),
            get,
        );
        assert_eq!(r.framing, Framing::Empty, "{status}");
    }
    let r = response("HTTP/1.1 200 OK\r\n\r\n", get);
    assert_eq!((r.framing, r.keep_alive), (Framing::UntilEof, false));
    let r = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", get);
    assert_eq!((r.framing, r.keep_alive), (Framing::UntilEof, false));
    let r = response("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", get);
    assert!(!r.keep_alive, "HTTP/1.0 closes unless told");
    let r = response(
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
        get,
    );
    assert!(!r.keep_alive);
    let smuggled = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(
        head::response(smuggled.as_bytes(), MAX, get).unwrap_err(),
        HeadError::LengthAndEncoding
    );
    assert!(head::response(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", MAX, get).is_err());
}

/// Feeds `raw` to a chunked body in pieces of `step` bytes: the bytes it took, its data
/// bytes, whether it ended.
fn chunked(raw: &[u8], step: usize) -> Result<(usize, u64, bool), BodyError> {
    let mut body = Body::new(Framing::Chunked);
    let mut taken = 0;
    for piece in raw.chunks(step) {
        let n = body.advance(piece)?;
        taken += n;
        if n < piece.len() {
            break;
        }
    }
    Ok((taken, body.data(), body.is_done()))
}

#[test]
fn chunked_bodies_end_where_their_last_chunk_does_whatever_the_split() {
    let body = b"5\r\nhello\r\n1A;name=\"v a\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0 \r\nX-Sum: 1\r\nX-Other: two\r\n\r\n";
    let mut raw = body.to_vec();
    raw.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
    for step in [1, 2, 3, 7, 64, raw.len()] {
        assert_eq!(
            chunked(&raw, step),
            Ok((body.len(), 31, true)),
            "step {step}"
        );
    }
}

#[test]
fn chunked_framing_is_strict() {
    let cases: [&[u8]; 12] = [
        b"x\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"5 5\r\nhello\r\n0\r\n\r\n",
        b"1000000000000000\r\n",
        b"0\r\n\n",
        b"0\r\n folded: trailer\r\n\r\n",
        b"0\r\nX: a\nY: b\r\n\r\n",
        b"3;ext\x01\r\nabc\r\n0\r\n\r\n",
    ];
    for raw in cases {
        assert!(
            matches!(chunked(raw, raw.len()), Err(BodyError::Chunked(_))),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    let long_extension = format!("1;{}\r\na\r\n0\r\n\r\n", "e".repeat(5000));
    assert!(chunked(long_extension.as_bytes(), 100).is_err());
}

#[test]
fn a_length_body_takes_its_length_and_no_more() {
    let mut body = Body::new(Framing::Length(5));
    assert_eq!(body.advance(b"hel"), Ok(3));
    assert!(!body.is_done());
    assert_eq!(body.eof(), Err(BodyError::Truncated));
    let mut body = Body::new(Framing::Length(5));
    assert_eq!(body.advance(b"helloGET / HTTP/1.1"), Ok(5));
    assert!(body.is_done());
    assert_eq!(body.data(), 5);
    let mut body = Body::new(Framing::UntilEof);
    assert_eq!(body.advance(b"anything"), Ok(8));
    assert_eq!(body.eof(), Ok(()));
    assert!(body.is_done());
}
