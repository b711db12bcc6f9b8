//! The HTTP/2 settings of tunnel connections, the same at both ends, and why.
use std::time::Duration;

use crate::config::HboneConfig;

/// HTTP/2 tuning of a tunnel connection, from `proxy.hbone` (where each default is
/// given, with its reason). The defaults suit bulk transfers between nodes while
/// bounding what one stream can make us buffer.
///
/// Whatever the settings, set `TCP_NODELAY` on the TCP socket under a tunnel, at both
/// ends: HTTP/2 sends small frames (WINDOW_UPDATE, SETTINGS acks, HEADERS) that Nagle's
/// algorithm holds back behind delayed ACKs, which stalls flow control (a bulk stream on
/// loopback ran 3–10× slower, erratically, without it).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bytes a peer may send on one stream before we release them by reading
    /// (SETTINGS_INITIAL_WINDOW_SIZE; `streamWindowBytes`).
    pub stream_window: u32,
    /// Bytes a peer may send on the whole connection before we release them
    /// (`connectionWindowBytes`).
    pub connection_window: u32,
    /// The largest DATA frame we accept (SETTINGS_MAX_FRAME_SIZE; the peer sends up to
    /// this; `maxFrameBytes`). A frame is only delivered once whole and holds the
    /// connection while it is written. (TLS records stay 16 KiB either way.)
    pub max_frame_size: u32,
    /// Most bytes one stream queues inside h2 ahead of the socket; writes wait beyond it
    /// (`maxSendBufferBytes`).
    pub max_send_buffer: usize,
    /// Most bytes taken from one `poll_write` (a DATA chunk; `maxWriteChunkBytes`).
    pub max_write_chunk: usize,
    /// Streams a server lets a client open at once (SETTINGS_MAX_CONCURRENT_STREAMS;
    /// `maxConcurrentStreams`), above what our own [`Pool`](super::Pool) opens.
    pub max_concurrent_streams: u32,
    /// Largest header block accepted (`maxHeaderListBytes`).
    pub max_header_list_size: u32,
    /// How long the HTTP/2 handshake (preface and SETTINGS) may take
    /// (`h2HandshakeTimeoutMs`).
    pub handshake_timeout: Duration,
    /// How often each end PINGs the other (see `keepalive`; `keepaliveIntervalMs`).
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection (and its streams) is
    /// ended: a peer that went away is noticed within interval + timeout
    /// (`keepaliveTimeoutMs`).
    pub keepalive_timeout: Duration,
}

/// Streams reset by us that each end of a tunnel remembers (for h2's second), to drop
/// the frames the peer had already sent on them. h2 remembers 50, forgets the oldest
/// beyond that, and counts a frame on a forgotten stream as the peer's protocol error:
/// after 1024 of those in a connection's life it ends the connection, and every stream
/// on it, with ENHANCE_YOUR_CALM. Clients aborting downloads (a load generator stopping,
/// a browser navigating away) reset more than 50 streams a second on a busy pooled
/// connection; 4096 a second is covered, each held as h2's state of a closed stream for
/// that second.
pub const RESET_STREAMS_REMEMBERED: usize = 4096;

/// DATA payloads smaller than this are copied into the connection's write buffer
/// (our h2 patch, `copy_data_frames_below`), at both ends. Upstream h2 writes any payload
/// of 256 bytes or more from its own buffer, and so flushes before the next frame: each
/// such frame became a TLS record and a `writev` of its own. Measured over mTLS, one
/// connection of `ab` cost the server's agent 2.5 `writev` (the 200, the response, its
/// END_STREAM alone), and `wrk`'s 16 keep-alive connections one `writev` per response,
/// though many were ready at once. Copying what is under 4 KiB (the head and body of a
/// small exchange) lets frames queued together go out in one record and one write;
/// bulk data (16 KiB frames) is still written from its own buffer, with no copy.
pub const COPIED_DATA_BELOW: usize = 4096;

impl Settings {
    pub fn from_config(c: &HboneConfig) -> Self {
        Self {
            stream_window: c.stream_window_bytes,
            connection_window: c.connection_window_bytes,
            max_frame_size: c.max_frame_bytes,
            max_send_buffer: c.max_send_buffer_bytes,
            max_write_chunk: c.max_write_chunk_bytes,
            max_concurrent_streams: c.max_concurrent_streams,
            max_header_list_size: c.max_header_list_bytes,
            handshake_timeout: Duration::from_millis(c.h2_handshake_timeout_ms),
            keepalive_interval: Duration::from_millis(c.keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(c.keepalive_timeout_ms),
        }
    }
}

/// `proxy.hbone`'s defaults.
impl Default for Settings {
    fn default() -> Self {
        Self::from_config(&HboneConfig::default())
    }
}
