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

#[cfg(test)]
mod tests {
    use super::*;

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
