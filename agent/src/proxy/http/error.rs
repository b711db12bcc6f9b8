//! Errors of one proxied HTTP connection. Per-request failures (a denied request, the app
//! failing one request) are not errors of the connection: they go to the hook's report.
use thiserror::Error;

use super::HttpVersion;

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
    /// The app connection could not be set up as an HTTP client connection.
    #[error("app connection ({version}) handshake: {source}")]
    AppHandshake {
        version: HttpVersion,
        #[source]
        source: hyper::Error,
    },
}

impl HttpError {
    /// True when the client sent something that is not valid HTTP (hyper answered 400
    /// or closed), as opposed to an I/O failure or a failure of the app.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, Self::Client { source, .. } if source.is_parse())
    }
}
