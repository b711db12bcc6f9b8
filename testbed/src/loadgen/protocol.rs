//! The load generator's wire protocol. A connection opens with one 16-byte header from the
//! client; the mode in it says what follows, so one server port serves every mode.
//!
//! ```text
//! offset size field
//!      0    4 magic, b"ORLG"
//!      4    1 version, 1
//!      5    1 mode: 1 = request/response, 2 = sink, 3 = source
//!      6    2 reserved, zero
//!      8    8 the mode's argument, big-endian:
//!               request/response: size u32 (message size, 1..=16 MiB), then
//!                                 exchanges u32 (the server closes after that many
//!                                 answers; 0 = when the client half-closes)
//!               sink:             zero
//!               source:           bytes u64 (how many bytes the server sends)
//! ```
//!
//! - request/response: the client sends `size` bytes, the server answers with `size`
//!   bytes, repeated. When the client half-closes at a message boundary, or after
//!   `exchanges` answers, the server closes (in the second case the server closes first,
//!   so the client's ephemeral ports do not pile up in TIME_WAIT: `connect` mode uses it).
//! - sink: the client streams bytes, then half-closes; the server answers the number of
//!   bytes it received as a big-endian u64, then closes.
//! - source: the server sends `bytes` bytes, then closes.
//!
//! Anything else (bad magic, version, mode or reserved bytes, a size out of range, a
//! header cut short or that does not come in time) and the server closes without answering.
//!
//! HTTP/1.1 instead: a connection whose first 16 bytes start with `GET ` (any real request
//! line and head is longer) is served as HTTP/1.1 with keep-alive. `GET /N` answers `200`
//! with an N-byte body (N in 0..=[`MAX_MESSAGE`]); the connection stays open until the
//! client closes it or sends `Connection: close`. Any other request head is answered
//! `400` and closed. Request bodies are not supported. The client's `http` mode speaks it,
//! and so does any HTTP client (`curl http://ADDR/1024`), so the load goes through a
//! proxy's HTTP parsing as real HTTP would.

/// `b"ORLG"`.
pub const MAGIC: [u8; 4] = *b"ORLG";
pub const VERSION: u8 = 1;
/// Length of the header.
pub const HEADER_LEN: usize = 16;
/// The largest request/response message.
pub const MAX_MESSAGE: u32 = 16 << 20;

const MODE_RR: u8 = 1;
const MODE_SINK: u8 = 2;
const MODE_SOURCE: u8 = 3;

/// What a connection asks of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Echo `size`-byte messages; close after `exchanges` answers (0: at the client's
    /// half-close).
    RequestResponse { size: u32, exchanges: u32 },
    /// Count what the client streams; answer the count at its half-close.
    Sink,
    /// Send `bytes` bytes, then close.
    Source { bytes: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("bad magic \"{}\" (expected \"ORLG\")", .0.escape_ascii())]
    BadMagic([u8; 4]),
    #[error("unsupported protocol version {0} (this server speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown mode {0}")]
    UnknownMode(u8),
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("message size {0} is out of range 1..={MAX_MESSAGE}")]
    SizeOutOfRange(u32),
    #[error("sink mode takes no argument")]
    SinkArgument,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        match *self {
            Header::RequestResponse { size, exchanges } => {
                out[5] = MODE_RR;
                out[8..12].copy_from_slice(&size.to_be_bytes());
                out[12..16].copy_from_slice(&exchanges.to_be_bytes());
            }
            Header::Sink => out[5] = MODE_SINK,
            Header::Source { bytes } => {
                out[5] = MODE_SOURCE;
                out[8..16].copy_from_slice(&bytes.to_be_bytes());
            }
        }
        out
    }

    pub fn decode(buf: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
        let magic = [buf[0], buf[1], buf[2], buf[3]];
        if magic != MAGIC {
            return Err(HeaderError::BadMagic(magic));
        }
        if buf[4] != VERSION {
            return Err(HeaderError::UnsupportedVersion(buf[4]));
        }
        if buf[6] != 0 || buf[7] != 0 {
            return Err(HeaderError::Reserved);
        }
        let word = |at: usize| u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let mut argument = [0u8; 8];
        argument.copy_from_slice(&buf[8..16]);
        match buf[5] {
            MODE_RR => {
                let size = word(8);
                if size == 0 || size > MAX_MESSAGE {
                    return Err(HeaderError::SizeOutOfRange(size));
                }
                Ok(Header::RequestResponse {
                    size,
                    exchanges: word(12),
                })
            }
            MODE_SINK if argument == [0; 8] => Ok(Header::Sink),
            MODE_SINK => Err(HeaderError::SinkArgument),
            MODE_SOURCE => Ok(Header::Source {
                bytes: u64::from_be_bytes(argument),
            }),
            other => Err(HeaderError::UnknownMode(other)),
        }
    }
}

/// The first bytes of a request that makes a connection HTTP/1.1 (see the module doc).
pub const HTTP_GET: &[u8; 4] = b"GET ";
/// The longest request or response head either side accepts.
pub const MAX_HTTP_HEAD: usize = 16 * 1024;

/// What an HTTP request asks for: a body of `size` bytes, and whether to close after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpRequest {
    pub size: u32,
    pub close: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("the head is not UTF-8")]
    NotText,
    #[error("bad request line {0:?} (expected \"GET /BYTES HTTP/1.1\")")]
    RequestLine(String),
    #[error("the request has a body (Content-Length {0})")]
    RequestBody(String),
    #[error("bad status line {0:?} (expected \"HTTP/1.1 200 …\")")]
    StatusLine(String),
    #[error("the response has no valid Content-Length")]
    ContentLength,
}

/// Where a head ends (the index after its blank line), if `buf` holds all of it.
pub fn http_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A header's value in a head (name case-insensitive; the first occurrence).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Parses a request head (through its blank line).
pub fn parse_http_request(head: &[u8]) -> Result<HttpRequest, HttpError> {
    let head = std::str::from_utf8(head).map_err(|_| HttpError::NotText)?;
    let line = head.split("\r\n").next().unwrap_or_default();
    let bad = || HttpError::RequestLine(line.chars().take(80).collect());
    let mut parts = line.split(' ');
    let (Some("GET"), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad());
    }
    let size: u32 = target
        .strip_prefix('/')
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .filter(|n| *n <= MAX_MESSAGE)
        .ok_or_else(bad)?;
    if let Some(length) = header(head, "content-length").filter(|l| *l != "0") {
        return Err(HttpError::RequestBody(length.to_string()));
    }
    let connection = header(head, "connection");
    let close = match version {
        "HTTP/1.0" => !connection.is_some_and(|c| c.eq_ignore_ascii_case("keep-alive")),
        _ => connection.is_some_and(|c| c.eq_ignore_ascii_case("close")),
    };
    Ok(HttpRequest { size, close })
}

/// The request the client sends for a `size`-byte body.
pub fn http_request(host: &str, size: u32) -> Vec<u8> {
    format!("GET /{size} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: outrider-loadgen\r\n\r\n")
        .into_bytes()
}

/// The server's response head for a `size`-byte body.
pub fn http_response_head(size: u32, close: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// The answer to a request the server cannot serve; the server closes after it.
pub const HTTP_BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Parses a response head (through its blank line): the body's length, if it is a 200.
pub fn parse_http_response(head: &[u8]) -> Result<u64, HttpError> {
    let head = std::str::from_utf8(head).map_err(|_| HttpError::NotText)?;
    let line = head.split("\r\n").next().unwrap_or_default();
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some("HTTP/1.1" | "HTTP/1.0"), Some("200")) => {}
        _ => return Err(HttpError::StatusLine(line.chars().take(80).collect())),
    }
    header(head, "content-length")
        .and_then(|l| l.parse().ok())
        .ok_or(HttpError::ContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_requests_and_responses_parse_as_documented() {
        let request = http_request("10.0.0.2:9000", 1024);
        let end = http_head_end(&request).unwrap();
        assert_eq!(end, request.len());
        assert_eq!(http_head_end(&request[..end - 1]), None);
        assert_eq!(
            parse_http_request(&request),
            Ok(HttpRequest {
                size: 1024,
                close: false
            })
        );
        let closing = b"GET /0 HTTP/1.1\r\nconnection: Close\r\n\r\n";
        assert_eq!(
            parse_http_request(closing),
            Ok(HttpRequest {
                size: 0,
                close: true
            })
        );
        assert!(
            parse_http_request(b"GET /7 HTTP/1.0\r\n\r\n")
                .unwrap()
                .close
        );
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET /x HTTP/1.1\r\n\r\n",
            b"GET /-1 HTTP/1.1\r\n\r\n",
            b"GET /99999999999 HTTP/1.1\r\n\r\n",
            b"GET /1 HTTP/2\r\n\r\n",
            b"GET /1 HTTP/1.1 extra\r\n\r\n",
            b"POST /1 HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_http_request(bad), Err(HttpError::RequestLine(_))),
                "{}",
                bad.escape_ascii()
            );
        }
        assert_eq!(
            parse_http_request(b"GET /1 HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Err(HttpError::RequestBody("5".into()))
        );
        assert_eq!(
            parse_http_response(&http_response_head(1024, false)),
            Ok(1024)
        );
        let closing = String::from_utf8(http_response_head(3, true)).unwrap();
        assert!(closing.contains("\r\nConnection: close\r\n"), "{closing}");
        assert!(matches!(
            parse_http_response(HTTP_BAD_REQUEST),
            Err(HttpError::StatusLine(_))
        ));
        assert_eq!(
            parse_http_response(b"HTTP/1.1 200 OK\r\n\r\n"),
            Err(HttpError::ContentLength)
        );
    }

    #[test]
    fn headers_round_trip_with_the_documented_layout() {
        let rr = Header::RequestResponse {
            size: 1024,
            exchanges: 1,
        };
        let bytes = rr.encode();
        assert_eq!(
            bytes,
            [b'O', b'R', b'L', b'G', 1, 1, 0, 0, 0, 0, 4, 0, 0, 0, 0, 1]
        );
        assert_eq!(Header::decode(&bytes), Ok(rr));
        let source = Header::Source {
            bytes: 0x0102_0304_0506_0708,
        };
        assert_eq!(
            source.encode(),
            [b'O', b'R', b'L', b'G', 1, 3, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(Header::decode(&source.encode()), Ok(source));
        assert_eq!(Header::decode(&Header::Sink.encode()), Ok(Header::Sink));
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = Header::RequestResponse {
            size: 10,
            exchanges: 0,
        }
        .encode();
        let with = |at: usize, value: u8| {
            let mut b = good;
            b[at] = value;
            Header::decode(&b)
        };
        assert_eq!(with(0, b'X'), Err(HeaderError::BadMagic(*b"XRLG")));
        assert_eq!(
            HeaderError::BadMagic(*b"GET ").to_string(),
            "bad magic \"GET \" (expected \"ORLG\")"
        );
        assert_eq!(with(4, 2), Err(HeaderError::UnsupportedVersion(2)));
        assert_eq!(with(5, 9), Err(HeaderError::UnknownMode(9)));
        assert_eq!(with(7, 1), Err(HeaderError::Reserved));
        assert_eq!(with(11, 0), Err(HeaderError::SizeOutOfRange(0)));
        assert_eq!(with(8, 0xff), Err(HeaderError::SizeOutOfRange(0xff00_000a)));
        let mut sink = Header::Sink.encode();
        sink[15] = 1;
        assert_eq!(Header::decode(&sink), Err(HeaderError::SinkArgument));
    }
}
