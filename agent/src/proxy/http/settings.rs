//! The knobs of the HTTP layer: how long and how far protocol detection looks
//! ([`DetectSettings`]) and how the HTTP/1 and HTTP/2 ends are tuned ([`Settings`]), from
//! `proxy.http` (where each default is given).
use std::time::Duration;

use super::path::EscapedSlashes;
use crate::config::{DetectConfig, HttpProxyConfig};

/// How protocol detection waits for the client's first bytes (`proxy.http.detect`).
#[derive(Clone, Debug)]
pub struct DetectSettings {
    /// How long to wait for the client's first byte before calling the connection
    /// opaque. This is the only delay a server-first protocol can see, and only when its
    /// server stays silent too (a banner ends detection at once).
    pub first_byte_timeout: Duration,
    /// Once the client has spoken, how long (from the start) it may take to send enough
    /// bytes to decide (e.g. `GE`, a pause, then `T / HTTP/1.1`). After it: opaque.
    pub timeout: Duration,
    /// The most client bytes read while deciding. A request line still well formed at
    /// this length is taken for HTTP/1 (hyper then answers a too-long target itself).
    pub max_bytes: usize,
}

impl DetectSettings {
    pub fn from_config(c: &DetectConfig) -> Self {
        Self {
            first_byte_timeout: Duration::from_millis(c.first_byte_timeout_ms),
            timeout: Duration::from_millis(c.timeout_ms),
            max_bytes: c.max_bytes,
        }
    }
}

/// `proxy.http.detect`'s defaults.
impl Default for DetectSettings {
    fn default() -> Self {
        Self::from_config(&DetectConfig::default())
    }
}

/// HTTP proxying: protocol detection, then the server end (towards the client) and the
/// client end (towards the app) of one proxied connection.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How the connection's protocol is told.
    pub detect: DetectSettings,
    /// HTTP/1: a client must send a request's head within this time (also bounds idle
    /// keep-alive connections between requests).
    pub header_read_timeout: Duration,
    /// HTTP/1: the most bytes buffered for one message head, both ends (at least 8 KiB;
    /// smaller values are raised to it).
    pub max_buf_size: usize,
    /// HTTP/2: the most concurrent streams a client may open.
    pub max_concurrent_streams: u32,
    /// HTTP/1: a denied request's body is read and dropped up to this many bytes so the
    /// connection can carry the next request; a larger body closes the connection.
    pub deny_drain_bytes: usize,
    /// HTTP/1: how long draining a denied request's body may take.
    pub deny_drain_timeout: Duration,
    /// `Some`: each request's target is normalized (`target`, `path`) before the hook
    /// sees it and the app gets the result, with this handling of `%2F`/`%5C`; one that
    /// cannot be is refused with 400. `None`: requests go on as received (the source
    /// side: the destination's agent normalizes).
    pub normalize: Option<EscapedSlashes>,
}

/// hyper's floor for `max_buf_size`.
pub(super) const MIN_BUF_SIZE: usize = 8 * 1024;

impl Settings {
    /// The settings of `proxy.http`, without normalizing (the destination's side sets
    /// `normalize` from `escapedSlashes`).
    pub fn from_config(c: &HttpProxyConfig) -> Self {
        Self {
            detect: DetectSettings::from_config(&c.detect),
            header_read_timeout: Duration::from_millis(c.header_read_timeout_ms),
            max_buf_size: c.max_head_bytes,
            max_concurrent_streams: c.max_concurrent_streams,
            deny_drain_bytes: c.deny_drain_bytes,
            deny_drain_timeout: Duration::from_millis(c.deny_drain_timeout_ms),
            normalize: None,
        }
    }
}

/// `proxy.http`'s defaults.
impl Default for Settings {
    fn default() -> Self {
        Self::from_config(&HttpProxyConfig::default())
    }
}
