//! Where an HTTP/1 body ends, read incrementally as its bytes arrive: a length counted
//! down, or chunked coding walked chunk by chunk (sizes, extensions, data, trailers) in
//! one state machine that takes any split of the bytes. The proxy forwards exactly the
//! bytes this says are the body, framing included, so the receiver sees the same message;
//! anything it does not read one way only (a bare LF, a size that is not plain hex, a
//! chunk not followed by CRLF, a folded trailer) is an error, never a guess.
use super::head::Framing;
use crate::proxy::http::detect::is_tchar;

/// The longest chunk size in hex digits (15: under 2^60, no overflow).
const MAX_SIZE_DIGITS: u8 = 15;
/// The most bytes of chunk extensions on one size line, and of trailers in all.
const MAX_EXTENSION: u32 = 4 * 1024;
const MAX_TRAILERS: u32 = 16 * 1024;

/// The body was not valid chunked coding, or ended before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("invalid chunked coding: {0}")]
    Chunked(&'static str),
    #[error("the body ended before its length")]
    Truncated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// In the size: its value so far and how many digits.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size.
    SizeSpace {
        size: u64,
    },
    /// In an extension (`;name=value`), this many bytes so far.
    Extension {
        size: u64,
        len: u32,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final blank line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunk),
    UntilEof,
    Done,
}

/// One body in transit.
#[derive(Debug)]
pub(super) struct Body {
    state: State,
    /// Payload bytes so far (without chunked framing).
    data: u64,
    trailers: u32,
}

impl Body {
    pub(super) fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
            Framing::UntilEof => State::UntilEof,
        };
        Self {
            state,
            data: 0,
            trailers: 0,
        }
    }

    pub(super) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Payload bytes seen so far.
    pub(super) fn data(&self) -> u64 {
        self.data
    }

    /// How many of `buf`'s leading bytes belong to this body; it is done when they end it
    /// (the rest is the next message's).
    pub(super) fn advance(&mut self, buf: &[u8]) -> Result<usize, BodyError> {
        let mut at = 0;
        while at < buf.len() {
            match &mut self.state {
                State::Done => break,
                State::UntilEof => {
                    self.data += (buf.len() - at) as u64;
                    at = buf.len();
                }
                State::Length(left) => {
                    let n = (*left).min((buf.len() - at) as u64);
                    *left -= n;
                    self.data += n;
                    at += n as usize;
                    if *left == 0 {
                        self.state = State::Done;
                    }
                }
                State::Chunked(Chunk::Data(left)) => {
                    let n = (*left).min((buf.len() - at) as u64);
                    *left -= n;
                    self.data += n;
                    at += n as usize;
                    if *left == 0 {
                        self.state = State::Chunked(Chunk::DataCr);
                    }
                }
                State::Chunked(chunk) => {
                    let chunk = *chunk;
                    let next = self.step(chunk, buf[at])?;
                    at += 1;
                    self.state = next;
                }
            }
        }
        Ok(at)
    }

    /// The sender closed: fine for a body that runs to the close (or is done).
    pub(super) fn eof(&mut self) -> Result<(), BodyError> {
        match self.state {
            State::Done => Ok(()),
            State::UntilEof => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(BodyError::Truncated),
        }
    }

    /// One byte of chunked framing (not data).
    fn step(&mut self, chunk: Chunk, b: u8) -> Result<State, BodyError> {
        let err = |why| Err(BodyError::Chunked(why));
        let next = match (chunk, b) {
            (Chunk::Size { size, digits }, _) if b.is_ascii_hexdigit() => {
                if digits == MAX_SIZE_DIGITS {
                    return err("chunk size too large");
                }
                let d = (b as char).to_digit(16).map_or(0, u64::from);
                Chunk::Size {
                    size: size * 16 + d,
                    digits: digits + 1,
                }
            }
            (Chunk::Size { digits: 0, .. }, _) => return err("chunk size is not hex"),
            (Chunk::Size { size, .. } | Chunk::SizeSpace { size }, b' ' | b'\t') => {
                Chunk::SizeSpace { size }
            }
            (Chunk::Size { size, .. } | Chunk::SizeSpace { size }, b';') => {
                Chunk::Extension { size, len: 0 }
            }
            (
                Chunk::Size { size, .. }
                | Chunk::SizeSpace { size }
                | Chunk::Extension { size, .. },
                b'\r',
            ) => Chunk::SizeLf { size },
            (Chunk::Size { .. } | Chunk::SizeSpace { .. }, _) => {
                return err("invalid byte after the chunk size");
            }
            (Chunk::Extension { size, len }, _) => {
                if !is_field_byte(b) {
                    return err("invalid byte in a chunk extension");
                }
                if len == MAX_EXTENSION {
                    return err("chunk extension too long");
                }
                Chunk::Extension { size, len: len + 1 }
            }
            (Chunk::SizeLf { size: 0 }, b'\n') => Chunk::TrailerStart,
            (Chunk::SizeLf { size }, b'\n') => Chunk::Data(size),
            (Chunk::SizeLf { .. }, _) => return err("chunk size line not ended by CRLF"),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Size { size: 0, digits: 0 },
            (Chunk::DataCr | Chunk::DataLf, _) => return err("chunk data not followed by CRLF"),
            (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
            (Chunk::EndLf, b'\n') => return Ok(State::Done),
            (Chunk::EndLf, _) => return err("last chunk not ended by CRLF"),
            (Chunk::TrailerStart, _) if is_tchar(b) => self.trailer_byte(Chunk::TrailerLine)?,
            (Chunk::TrailerStart, _) => return err("invalid trailer line"),
            (Chunk::TrailerLine, b'\r') => self.trailer_byte(Chunk::TrailerLf)?,
            (Chunk::TrailerLine, _) if is_field_byte(b) => self.trailer_byte(Chunk::TrailerLine)?,
            (Chunk::TrailerLine, _) => return err("invalid byte in a trailer"),
            (Chunk::TrailerLf, b'\n') => self.trailer_byte(Chunk::TrailerStart)?,
            (Chunk::TrailerLf, _) => return err("trailer line not ended by CRLF"),
            // Data is taken in bulk by `advance`, never byte by byte.
            (Chunk::Data(_), _) => return err("data where framing was expected"),
        };
        Ok(State::Chunked(next))
    }

    fn trailer_byte(&mut self, next: Chunk) -> Result<Chunk, BodyError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(BodyError::Chunked("trailers too long"));
        }
        Ok(next)
    }
}

/// A byte allowed in a field value (and so in an extension): tab, visible ASCII, space,
/// and obs-text; no controls, no CR or LF.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}
