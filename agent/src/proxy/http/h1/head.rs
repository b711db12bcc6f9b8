//! HTTP/1 message heads, read in place: `httparse` finds the request or status line and
//! the headers in the bytes as received, and this module decides what the proxy needs
//! from them — how the body is framed, whether the connection stays open, the request's
//! `Host` — without copying the head. The bytes go to the other side as they came (header
//! case and order kept), so the framing decided here is the framing the receiver sees.
//!
//! Anything two parsers could read two ways is refused (request smuggling): both
//! `Content-Length` and `Transfer-Encoding`, `Content-Length` values that differ or are
//! not plain digits, a `Transfer-Encoding` whose last coding is not `chunked` (or names
//! `chunked` twice), `Transfer-Encoding` in HTTP/1.0, line folding, whitespace before a
//! colon. Requests the lean path leaves to hyper (upgrades, `CONNECT`, `Expect`, a
//! target not in origin form) are marked [`RequestHead::handoff`].
use std::ops::Range;

use http::{Method, StatusCode, Uri, Version};

/// The most headers a head may have (hyper's default too); more is "too large" (431).
pub(super) const MAX_HEADERS: usize = 100;

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes (a response without a length).
    UntilEof,
}

/// Why a head was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed message head: {0}")]
    Syntax(httparse::Error),
    #[error("message head larger than the limit (or more than {MAX_HEADERS} headers)")]
    TooLarge,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndEncoding,
    #[error("Transfer-Encoding whose last coding is not a single chunked")]
    TransferEncoding,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    EncodingInHttp10,
    #[error("invalid request target")]
    Target,
    #[error("101 Switching Protocols to a request that offered no upgrade")]
    UnexpectedUpgrade,
}

impl HeadError {
    /// The status a client gets for a request refused with this error.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A request head at the start of a buffer.
#[derive(Debug)]
pub(super) struct RequestHead {
    /// Bytes of the head, its blank line included.
    pub len: usize,
    /// Where the request line ends (its line feed included; blank lines before it, which
    /// httparse skips, are before it too).
    pub line_end: usize,
    pub method: Method,
    /// The target, parsed.
    pub uri: Uri,
    pub version: Version,
    /// The first `Host` header's value, and how many there were.
    pub host: Option<Range<usize>>,
    pub hosts: usize,
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// An upgrade, `CONNECT`, `Expect`, an `HTTP2-Settings` offer or a target not in
    /// origin form: served by hyper from this request on.
    pub handoff: bool,
}

/// A response head at the start of a buffer.
#[derive(Debug)]
pub(super) struct ResponseHead {
    pub len: usize,
    pub status: StatusCode,
    pub framing: Framing,
    /// The app keeps the connection open after this response.
    pub keep_alive: bool,
}

/// What the framing headers of a head said.
#[derive(Default)]
struct Fields {
    length: Option<u64>,
    /// `Transfer-Encoding` was present; `chunked` is its last coding.
    encoded: bool,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    expect: bool,
    host: Option<Range<usize>>,
    hosts: usize,
}

impl Fields {
    fn read(buf: &[u8], headers: &[httparse::Header<'_>]) -> Result<Self, HeadError> {
        let mut f = Self::default();
        let mut chunked_seen = false;
        for h in headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = content_length(h.value)?;
                if f.length.is_some_and(|m| m != n) {
                    return Err(HeadError::ContentLength);
                }
                f.length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                f.encoded = true;
                for coding in h.value.split(|b| *b == b',') {
                    let coding = coding.trim_ascii();
                    if coding.is_empty() {
                        continue;
                    }
                    f.chunked = coding.eq_ignore_ascii_case(b"chunked");
                    if f.chunked && chunked_seen {
                        return Err(HeadError::TransferEncoding);
                    }
                    chunked_seen |= f.chunked;
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    f.close |= token.eq_ignore_ascii_case(b"close");
                    f.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                    f.upgrade |= token.eq_ignore_ascii_case(b"upgrade");
                }
            } else if name.eq_ignore_ascii_case(b"upgrade")
                || name.eq_ignore_ascii_case(b"http2-settings")
            {
                f.upgrade = true;
            } else if name.eq_ignore_ascii_case(b"expect") {
                f.expect = true;
            } else if name.eq_ignore_ascii_case(b"host") {
                f.hosts += 1;
                if f.host.is_none() {
                    f.host = Some(range_in(buf, h.value));
                }
            }
        }
        if f.encoded && f.length.is_some() {
            return Err(HeadError::LengthAndEncoding);
        }
        Ok(f)
    }

    fn keep_alive(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }
}

/// Parses the request head at the start of `buf`: `None` while it is incomplete (and
/// under `max` bytes).
pub(super) fn request(buf: &[u8], max: usize) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(len) = head_len(req.parse(buf), buf.len(), max)? else {
        return Ok(None);
    };
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Syntax(httparse::Error::Token));
    };
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let method_at = range_in(buf, method.as_bytes()).start;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Target)?;
    let fields = Fields::read(buf, req.headers)?;
    let framing = if fields.encoded {
        if version == Version::HTTP_10 {
            return Err(HeadError::EncodingInHttp10);
        }
        if !fields.chunked {
            return Err(HeadError::TransferEncoding);
        }
        Framing::Chunked
    } else {
        match fields.length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    let handoff =
        method == Method::CONNECT || fields.upgrade || fields.expect || !path.starts_with('/');
    // httparse skips blank lines before the request line: the line ends at the first
    // line feed after the method, not the first in the buffer.
    let line_end = buf[method_at..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(len, |at| method_at + at + 1);
    Ok(Some(RequestHead {
        len,
        line_end,
        uri: Uri::try_from(path).map_err(|_| HeadError::Target)?,
        version,
        host: fields.host.clone(),
        hosts: fields.hosts,
        keep_alive: fields.keep_alive(version),
        framing,
        method,
        handoff,
    }))
}

/// Parses the response head at the start of `buf`, the answer to a `method` request.
pub(super) fn response(
    buf: &[u8],
    max: usize,
    method: &Method,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let Some(len) = head_len(res.parse(buf), buf.len(), max)? else {
        return Ok(None);
    };
    let (Some(code), Some(minor)) = (res.code, res.version) else {
        return Err(HeadError::Syntax(httparse::Error::Status));
    };
    let status =
        StatusCode::from_u16(code).map_err(|_| HeadError::Syntax(httparse::Error::Status))?;
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let fields = Fields::read(buf, res.headers)?;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || method == Method::HEAD;
    let framing = if bodiless {
        Framing::Empty
    } else if fields.encoded {
        // RFC 9112 6.3: a response whose last coding is not chunked runs to the close.
        if fields.chunked {
            Framing::Chunked
        } else {
            Framing::UntilEof
        }
    } else {
        match fields.length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilEof,
        }
    };
    Ok(Some(ResponseHead {
        len,
        status,
        keep_alive: fields.keep_alive(version) && framing != Framing::UntilEof,
        framing,
    }))
}

/// Where a head `httparse` read from `buffered` bytes ends: `None` while it is
/// incomplete and under `max` bytes.
fn head_len(
    parsed: httparse::Result<usize>,
    buffered: usize,
    max: usize,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len <= max => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buffered < max => Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Syntax(e)),
    }
}

/// A `Content-Length` value: digits only (no sign, no list), at most 18 of them.
fn content_length(value: &[u8]) -> Result<u64, HeadError> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::ContentLength);
    }
    Ok(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Where `part` (a slice of `buf`) is in `buf`.
fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    start..start + part.len()
}
