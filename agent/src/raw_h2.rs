//! A raw HTTP/2 client for tests: frames written by hand, so that a test can send what no
//! HTTP/2 library would (a unix socket's path as `:authority`, a malformed request) and
//! see how the server answers each stream. Header blocks use HPACK literals only (no
//! Huffman coding, no dynamic table), which every decoder must accept. The agent's unit
//! tests use it (`lib.rs`), and the end-to-end tests include this file too
//! (`testbed/tests/support/mod.rs`).
#![allow(dead_code)]

use std::{io, time::Duration};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
/// The HTTP/2 error code PROTOCOL_ERROR.
pub const PROTOCOL_ERROR: u32 = 0x1;

/// How the server answered a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A response's HEADERS frame: the request was accepted.
    Response,
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code: the whole connection ends.
    GoAway(u32),
    /// The connection closed.
    Closed,
}

/// One HTTP/2 connection, driven frame by frame.
pub struct RawH2<S> {
    io: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawH2<S> {
    /// Sends the client preface and empty SETTINGS.
    pub async fn handshake(mut io: S) -> io::Result<Self> {
        io.write_all(PREFACE).await?;
        io.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
        Ok(Self { io })
    }

    /// Sends a request's HEADERS on `stream` (odd, increasing), ending the stream:
    /// `headers` in this order, pseudo-headers included, exactly as given.
    pub async fn send(&mut self, stream: u32, headers: &[(&str, &str)]) -> io::Result<()> {
        let mut block = Vec::new();
        for (name, value) in headers {
            // Literal header field without indexing, new name (RFC 7541 6.2.2).
            block.push(0x00);
            string(&mut block, name.as_bytes());
            string(&mut block, value.as_bytes());
        }
        let f = frame(HEADERS, END_STREAM | END_HEADERS, stream, &block);
        self.io.write_all(&f).await
    }

    /// Reads frames until the server answers `stream` (or ends the connection),
    /// acknowledging its SETTINGS and PINGs meanwhile; fails after 10 s.
    pub async fn answer(&mut self, stream: u32) -> io::Result<Answer> {
        tokio::time::timeout(Duration::from_secs(10), self.read_answer(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in 10 s"))?
    }

    async fn read_answer(&mut self, stream: u32) -> io::Result<Answer> {
        loop {
            let mut head = [0u8; 9];
            match self.io.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Answer::Closed),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(Answer::Closed),
                Err(e) => return Err(e),
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0; len];
            self.io.read_exact(&mut payload).await?;
            let code = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(u32::MAX)
            };
            // Acknowledgements are best effort: a server that has just sent GOAWAY may
            // have closed already, and what it sent is still to be read.
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    let _ = self.io.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                PING if flags & ACK == 0 => {
                    let _ = self.io.write_all(&frame(PING, ACK, 0, &payload)).await;
                }
                HEADERS if id == stream => return Ok(Answer::Response),
                RST_STREAM if id == stream => return Ok(Answer::Reset(code(0))),
                GOAWAY => return Ok(Answer::GoAway(code(4))),
                _ => {}
            }
        }
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame too long");
    assert!(
        len < 1 << 14,
        "frame over the default SETTINGS_MAX_FRAME_SIZE"
    );
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 5.2); its length fits the 7-bit
/// prefix (5.1), as every name and value of our tests does.
fn string(out: &mut Vec<u8>, s: &[u8]) {
    let len = u8::try_from(s.len())
        .ok()
        .filter(|n| *n < 0x7f)
        .expect("header name or value of 127 bytes or more");
    out.push(len);
    out.extend(s);
}
