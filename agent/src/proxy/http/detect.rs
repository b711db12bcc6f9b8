//! Protocol detection on a proxied connection, before any byte goes to the app.
//!
//! The caller connects to the app first, then calls [`detect`] with both streams. It
//! reads the client and the app at once:
//!
//! - the client's bytes are classified as soon as they allow it — the HTTP/2 preface
//!   (`PRI * HTTP/2.0␍␊␍␊SM␍␊␍␊`), an HTTP/1.x request line (`METHOD SP target SP
//!   HTTP/1.x`, decided at the version's digit, without waiting for the line's end), or
//!   anything else (opaque, at the first byte that cannot start such a line). A client
//!   that speaks first pays no round trip: the decision comes with its first packet,
//!   or with the packet that completes a split one (`GE`, a pause, `T / HTTP/1.1`);
//! - if the app speaks first (a server-first protocol: SMTP, MySQL, a banner) the
//!   connection is opaque at once, whatever the client sent — unless what it sends is
//!   an HTTP/2 SETTINGS frame: HTTP/2 servers (hyper's, Go's) send theirs as soon as
//!   they accept, without waiting for the client's preface. Then the app is read no
//!   further and the client still decides, but only HTTP/2 (what that app speaks)
//!   counts: anything else from the client is opaque;
//! - if the client says nothing for [`DetectSettings::first_byte_timeout`] (100 ms by
//!   default) the connection is opaque: a server-first protocol whose server is slow to
//!   greet loses only that much;
//! - a client that started but has not said enough by [`DetectSettings::timeout`], ends
//!   its stream, or fails, makes the connection opaque too.
//!
//! Whatever was read is handed back inside [`Prefixed`] streams, to be replayed to
//! whoever reads them next (hyper, or the opaque copy), with how the read ended.
//!
//! Opaque is also what a client gets that speaks something else to dodge HTTP policy:
//! the caller decides what an opaque connection may do on a port whose policy has HTTP
//! rules (deny it, as Istio does for a port it knows is HTTP).
use std::{fmt, io, time::Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{DetectSettings, Prefixed};

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest method token taken for HTTP (the longest registered method is 17 bytes).
const MAX_METHOD: usize = 24;
/// Empty lines allowed before an HTTP/1 request line (RFC 9112 §2.2 says to ignore some).
const MAX_LEADING_NEWLINES: usize = 4;
/// The smallest `max_bytes` honoured: enough to decide the preface and any method.
const MIN_SNIFF_BYTES: usize = 64;

/// What a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c), which includes h2 inside our own tunnel.
    Http2,
    /// Anything else: copied as bytes.
    Opaque,
}

impl Protocol {
    /// The HTTP version, if it is HTTP.
    pub fn http(self) -> Option<HttpVersion> {
        match self {
            Self::Http1 => Some(HttpVersion::Http1),
            Self::Http2 => Some(HttpVersion::Http2),
            Self::Opaque => None,
        }
    }
}

/// The two HTTP flavours the proxy serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http1,
    Http2,
}

impl fmt::Display for HttpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http1 => "HTTP/1",
            Self::Http2 => "HTTP/2",
        })
    }
}

/// Why detection ended as it did (for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The client's bytes decided.
    Classified,
    /// The app sent bytes before the client's decided anything (or sent an HTTP/2
    /// SETTINGS frame and the client did not speak HTTP/2).
    AppSpokeFirst,
    /// The app's stream ended or failed first.
    AppClosed,
    /// The client sent nothing within the first-byte timeout.
    ClientSilent,
    /// The client started but had not said enough by the timeout.
    Timeout,
    /// The client's stream ended or failed before its bytes decided.
    ClientClosed,
}

/// The outcome of [`detect`]: the protocol and both streams, with what was read from
/// them put back.
#[derive(Debug)]
pub struct Detected<C, A> {
    pub protocol: Protocol,
    pub reason: Reason,
    pub client: Prefixed<C>,
    pub app: Prefixed<A>,
}

/// Decides what `client` speaks, watching `app` (already connected) for a server-first
/// protocol. Never fails: a read error ends detection (opaque) and is replayed by the
/// returned stream after its prefix. See the module's documentation for the rules.
pub async fn detect<C, A>(mut client: C, mut app: A, settings: &DetectSettings) -> Detected<C, A>
where
    C: AsyncRead + Unpin,
    A: AsyncRead + Unpin,
{
    let started = Instant::now();
    let max = settings.max_bytes.max(MIN_SNIFF_BYTES);
    let first_deadline = (started + settings.first_byte_timeout).into();
    let deadline = (started + settings.timeout.max(settings.first_byte_timeout)).into();
    let mut sniffed = BytesMut::with_capacity(1024);
    let mut banner = BytesMut::new();
    let mut client_end: Option<io::Result<()>> = None;
    let mut app_end: Option<io::Result<()>> = None;
    // The app sent an HTTP/2 SETTINGS frame's head: read it no further.
    let mut app_h2 = false;

    let (protocol, reason) = loop {
        let until = if sniffed.is_empty() {
            first_deadline
        } else {
            deadline
        };
        // Room for one more read, never much past `max`.
        sniffed.reserve((max - sniffed.len().min(max)).clamp(1, 4096));
        tokio::select! {
            // The app first: if both have spoken, the server spoke (too) and the
            // connection is not ours to parse.
            biased;
            read = app.read_buf(&mut banner), if !app_h2 => {
                match read {
                    Ok(0) => {
                        app_end = Some(Ok(()));
                        break (Protocol::Opaque, Reason::AppClosed);
                    }
                    Ok(_) => match h2_settings(&banner) {
                        Some(true) => app_h2 = true,
                        Some(false) => {}
                        None => break (Protocol::Opaque, Reason::AppSpokeFirst),
                    },
                    Err(e) => {
                        app_end = Some(Err(e));
                        break (Protocol::Opaque, Reason::AppClosed);
                    }
                }
            }
            read = client.read_buf(&mut sniffed) => {
                match read {
                    Ok(0) => {
                        client_end = Some(Ok(()));
                        break (Protocol::Opaque, Reason::ClientClosed);
                    }
                    Ok(_) => match classify(&sniffed, max) {
                        Some(protocol) if banner.is_empty() || protocol == Protocol::Http2 => {
                            break (protocol, Reason::Classified);
                        }
                        // An HTTP/2 app, and a client that speaks something else.
                        Some(_) => break (Protocol::Opaque, Reason::AppSpokeFirst),
                        None => {}
                    },
                    Err(e) => {
                        client_end = Some(Err(e));
                        break (Protocol::Opaque, Reason::ClientClosed);
                    }
                }
            }
            () = tokio::time::sleep_until(until) => {
                break if sniffed.is_empty() {
                    (Protocol::Opaque, Reason::ClientSilent)
                } else {
                    (Protocol::Opaque, Reason::Timeout)
                };
            }
        }
    };
    tracing::debug!(
        ?protocol,
        ?reason,
        client_bytes = sniffed.len(),
        app_bytes = banner.len(),
        elapsed = ?started.elapsed(),
        "protocol detected"
    );
    Detected {
        protocol,
        reason,
        client: replay(sniffed, client, client_end),
        app: replay(banner, app, app_end),
    }
}

/// Whether `bytes` (non-empty) begin with an HTTP/2 SETTINGS frame's head (type 4, no
/// flags, stream 0, a whole number of settings): `Some(true)` once the 9 bytes are in,
/// `Some(false)` while they could still be, `None` when they cannot.
fn h2_settings(bytes: &[u8]) -> Option<bool> {
    let n = bytes.len().min(9);
    let head = &bytes[..n];
    let plausible = head.iter().enumerate().all(|(i, &b)| match i {
        0 => b == 0,     // length < 64 KiB: a few settings
        3 => b == 4,     // SETTINGS
        4..=8 => b == 0, // no flags (not an ACK), stream 0
        _ => true,       // length, checked below
    });
    if !plausible {
        return None;
    }
    if n < 9 {
        return Some(false);
    }
    let length = usize::from(head[1]) << 8 | usize::from(head[2]);
    (length % 6 == 0).then_some(true)
}

fn replay<S>(bytes: BytesMut, stream: S, end: Option<io::Result<()>>) -> Prefixed<S> {
    let prefixed = Prefixed::new(bytes.freeze(), stream);
    match end {
        None => prefixed,
        Some(Ok(())) => prefixed.with_eof(),
        Some(Err(e)) => prefixed.with_error(e),
    }
}

/// Where an undecided request line stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Preface,
    Method,
    Target,
    Version,
}

/// The protocol of a connection that began with `buf`, or `None` while more bytes could
/// change the answer. Never `None` once `buf` holds `max` bytes: a request line still
/// well formed by then is HTTP/1 (a very long target), anything else opaque.
pub fn classify(buf: &[u8], max: usize) -> Option<Protocol> {
    match sniff(buf) {
        Ok(protocol) => Some(protocol),
        Err(_) if buf.len() < max.max(MIN_SNIFF_BYTES) => None,
        Err(Stage::Target | Stage::Version) => Some(Protocol::Http1),
        Err(Stage::Preface | Stage::Method) => Some(Protocol::Opaque),
    }
}

fn sniff(buf: &[u8]) -> Result<Protocol, Stage> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf.is_empty() {
        return Err(Stage::Method);
    }
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Ok(Protocol::Http2)
        } else {
            Err(Stage::Preface)
        };
    }
    request_line(buf)
}

/// `METHOD SP target SP HTTP/1.<digit>`, after at most a few empty lines.
fn request_line(buf: &[u8]) -> Result<Protocol, Stage> {
    let mut i = 0;
    while i < buf.len() && matches!(buf[i], b'\r' | b'\n') {
        i += 1;
        if i > MAX_LEADING_NEWLINES {
            return Ok(Protocol::Opaque);
        }
    }
    // Method: a token.
    let start = i;
    while i < buf.len() && is_tchar(buf[i]) {
        i += 1;
        if i - start > MAX_METHOD {
            return Ok(Protocol::Opaque);
        }
    }
    if i == buf.len() {
        return Err(Stage::Method);
    }
    if i == start || buf[i] != b' ' {
        return Ok(Protocol::Opaque);
    }
    i += 1;
    // Target: visible bytes (hyper's parser also takes bytes above 0x7f).
    let start = i;
    while i < buf.len() && (buf[i] > b' ' && buf[i] != 0x7f) {
        i += 1;
    }
    if i == buf.len() {
        return Err(Stage::Target);
    }
    if i == start || buf[i] != b' ' {
        return Ok(Protocol::Opaque);
    }
    i += 1;
    // Version: `HTTP/1.` and a digit (hyper answers a version it does not serve).
    const VERSION: &[u8] = b"HTTP/1.";
    let rest = &buf[i..];
    let n = rest.len().min(VERSION.len());
    if rest[..n] != VERSION[..n] {
        return Ok(Protocol::Opaque);
    }
    match rest.get(VERSION.len()) {
        None => Err(Stage::Version),
        Some(digit) if digit.is_ascii_digit() => Ok(Protocol::Http1),
        Some(_) => Ok(Protocol::Opaque),
    }
}

/// RFC 9110 `tchar`.
pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
