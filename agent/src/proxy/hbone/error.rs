//! Why a tunnel connection or a CONNECT failed, in one line each.
use std::{io, sync::Arc, time::Duration};

use http::StatusCode;

/// A tunnel failure. Cheap to clone (a failed dial is reported to every caller that
/// waited for it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum HboneError {
    /// The caller's dial function (TCP connect + TLS handshake) failed.
    #[error("dialing the tunnel: {0}")]
    Dial(#[source] Arc<io::Error>),
    #[error("HTTP/2 handshake: {0}")]
    Handshake(#[source] Arc<h2::Error>),
    #[error("HTTP/2 handshake: no answer within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer stopped answering PINGs: the connection was ended.
    #[error("tunnel connection ended: {0}")]
    PeerSilent(String),
    /// What a server read instead of the HTTP/2 client preface.
    #[error("not HTTP/2: the connection began with {0:?}")]
    NotHttp2(String),
    #[error("not HTTP/2: the connection closed after {0} bytes, before the HTTP/2 preface")]
    ClosedBeforePreface(usize),
    #[error("HTTP/2 handshake: reading the preface: {0}")]
    PrefaceIo(#[source] Arc<io::Error>),
    /// The connection carrying the request failed or went away (GOAWAY).
    #[error("CONNECT {authority}: {source}")]
    Request {
        authority: String,
        #[source]
        source: Arc<h2::Error>,
    },
    /// The server answered the CONNECT with something other than 200.
    #[error("CONNECT {authority} refused: {status}")]
    Status {
        authority: String,
        status: StatusCode,
    },
    /// A header of the request could not be encoded.
    #[error("CONNECT {authority}: invalid request: {reason}")]
    InvalidRequest { authority: String, reason: String },
    /// The server side of a connection failed.
    #[error("HTTP/2 connection: {0}")]
    Connection(#[source] Arc<h2::Error>),
}

impl HboneError {
    /// The status a refused CONNECT was answered with.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// As an `io::Error` for the copy loop and access logs, with a kind that says what
    /// happened: a refused CONNECT is `ConnectionRefused` (502/503/504) or
    /// `PermissionDenied` (401/403), a dial keeps its own kind.
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            Self::Dial(e) | Self::PrefaceIo(e) => e.kind(),
            Self::Status { status, .. } => match *status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => io::ErrorKind::PermissionDenied,
                StatusCode::GATEWAY_TIMEOUT => io::ErrorKind::TimedOut,
                _ => io::ErrorKind::ConnectionRefused,
            },
            Self::HandshakeTimeout(_) | Self::PeerSilent(_) => io::ErrorKind::TimedOut,
            Self::InvalidRequest { .. } => io::ErrorKind::InvalidInput,
            Self::NotHttp2(_) | Self::ClosedBeforePreface(_) => io::ErrorKind::InvalidData,
            Self::Handshake(_) | Self::Request { .. } | Self::Connection(_) => {
                io::ErrorKind::ConnectionAborted
            }
        };
        io::Error::new(kind, self)
    }
}

impl From<HboneError> for io::Error {
    fn from(e: HboneError) -> Self {
        e.into_io()
    }
}
