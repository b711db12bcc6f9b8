//! The HTTP/2 settings of tunnel connections, the same at both ends, and why.
use std::time::Duration;

/// HTTP/2 tuning of a tunnel connection. The defaults suit bulk transfers between nodes
/// while bounding what one stream can make us buffer.
///
/// Whatever the settings, set `TCP_NODELAY` on the TCP socket under a tunnel, at both
/// ends: HTTP/2 sends small frames (WINDOW_UPDATE, SETTINGS acks, HEADERS) that Nagle's
/// algorithm holds back behind delayed ACKs, which stalls flow control (a bulk stream on
/// loopback ran 3–10× slower, erratically, without it).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bytes a peer may send on one stream before we release them by reading
    /// (SETTINGS_INITIAL_WINDOW_SIZE). 4 MiB: several times the bandwidth-delay product of
    /// a 10 Gbit/s link at in-cluster round-trip times, so one stream is never window
    /// bound; also the most a stream whose consumer stalls can make us hold.
    pub stream_window: u32,
    /// Bytes a peer may send on the whole connection before we release them. 4 × the
    /// stream window, so a few bulk streams run at full speed together and a stalled
    /// stream cannot take the whole connection's window and block the others.
    pub connection_window: u32,
    /// The largest DATA frame we accept (SETTINGS_MAX_FRAME_SIZE; the peer sends up to
    /// this). 256 KiB: bigger frames than the 16 KiB default cut per-frame work (on
    /// loopback, 16 KiB frames cost a third of a bulk stream's throughput; 256 KiB and
    /// 1 MiB measure alike), but a frame is only delivered once whole and holds the
    /// connection while it is written, so the other streams of a connection wait behind
    /// it: 256 KiB keeps that to a quarter of ztunnel's 1 MiB. (TLS records stay 16 KiB
    /// either way.)
    pub max_frame_size: u32,
    /// Most bytes one stream queues inside h2 ahead of the socket; writes wait beyond it.
    /// 1 MiB keeps a writer ahead of the connection task without holding much per stream.
    pub max_send_buffer: usize,
    /// Most bytes taken from one `poll_write` (a DATA chunk).
    pub max_write_chunk: usize,
    /// Streams a server lets a client open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    /// 200, above the pools of ztunnel and of our own [`Pool`](super::Pool) (100 each).
    pub max_concurrent_streams: u32,
    /// Largest header block accepted. CONNECT requests are small; this is generous.
    pub max_header_list_size: u32,
    /// How long the HTTP/2 handshake (preface and SETTINGS) may take.
    pub handshake_timeout: Duration,
    /// How often each end PINGs the other (see `keepalive`).
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection (and its streams) is
    /// ended: a peer that went away is noticed within interval + timeout.
    pub keepalive_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 256 * 1024,
            max_send_buffer: 1024 * 1024,
            max_write_chunk: 1024 * 1024,
            max_concurrent_streams: 200,
            max_header_list_size: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
        }
    }
}
