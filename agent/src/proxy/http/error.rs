//! Errors of one proxied HTTP connection. Per-request failures (a denied request, the app
//! failing one request) are not errors of the connection: they go to the hook's report.
use std::io;

use thiserror::Error;

use super::{HttpVersion, h1::Malformed};

#[derive(Debug, Error)]
pub enum HttpError {
    /// The client connection could not be read as the detected protocol, or ended
    /// badly (a malformed request was answered with 400, a header read timed out, a
    /// response body was cut off because the app failed mid-response, …).
    #[error("client connection ({version}): {source}")]
    Client {
        version: HttpVersion,
        #[source]
        source: hyper::Error,
    },
    /// HTTP/1: the client's request was not valid HTTP/1 (its head, answered with 400 or
    /// 431, or its body's framing).
    #[error("client connection (HTTP/1): {0}")]
    Request(#[source] Malformed),
    /// HTTP/1: the app's response was not valid HTTP/1 (before its head the client got
    /// 502; after it, its response was cut off).
    #[error("app connection (HTTP/1): {0}")]
    Response(#[source] Malformed),
    /// HTTP/1: a connection failed or closed in the middle of an exchange (or of a head),
    /// or no request head came within the header read timeout.
    #[error("HTTP/1 connection: {0}")]
    Io(#[source] io::Error),
    /// The app connection could not be set up as an HTTP client connection.
    #[error("app connection ({version}) handshake: {source}")]
    AppHandshake {
        version: HttpVersion,
        #[source]
        source: hyper::Error,
    },
}

impl HttpError {
    /// True when the client sent something that is not valid HTTP (answered with 400
    /// or closed), as opposed to an I/O failure or a failure of the app.
    pub fn is_bad_request(&self) -> bool {
        match self {
            Self::Client { source, .. } => source.is_parse(),
            Self::Request(_) => true,
            _ => false,
        }
    }
}
