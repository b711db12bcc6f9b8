//! The caller's say in each request: [`Hook::on_request`] sees the request's method,
//! target, authority and version before anything goes to the app and answers
//! [`Verdict::Forward`] (or [`Verdict::Leased`]: forward, but the hook may take it back
//! while it runs) or [`Verdict::Deny`]; [`Hook::on_invalid`] hears of a request
//! refused (400) before that, its target not normalizable; [`Hook::on_complete`] gets a [`Report`]
//! once the exchange is over (status, body bytes both ways, duration, what failed).
//! Called inline on the request path: keep both cheap (no I/O, no blocking locks).
use std::time::Duration;

use std::{any::Any, fmt};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, Version};
use tokio_util::sync::CancellationToken;

use super::InvalidRequest;
use crate::telemetry::facts::ResponseFlags;

/// Policy and telemetry for the requests of one proxied connection. Usually one value
/// per connection (holding the peer's identity and shared tables), behind an `Arc`;
/// `dyn Hook` works too.
pub trait Hook: Send + Sync + 'static {
    /// Decides whether the request goes to the app.
    fn on_request(&self, request: &RequestInfo) -> Verdict;
    /// Called instead of `on_request` for a request refused with 400 before policy: its
    /// path or host cannot be put in the one form policy checks (see `target`).
    /// `request` is as received.
    fn on_invalid(&self, _request: &RequestInfo, _error: &InvalidRequest) {}
    /// Called exactly once per request seen by `on_request` or `on_invalid`, when its exchange ended:
    /// the response body was sent in full, failed, or the client went away (for an
    /// upgraded connection: when the upgraded streams closed).
    fn on_complete(&self, report: Report);
}

/// What the hook says about a request.
#[derive(Debug)]
pub enum Verdict {
    Forward,
    /// Forward, and reset the exchange wherever it is (waiting for the app's answer,
    /// streaming either body, upgraded) if the hook revokes the lease before it ends: in
    /// HTTP/2 the stream is reset, in HTTP/1 the connection closed (it cannot be told
    /// apart from the request). Reported with [`Failure::Revoked`].
    Leased(Lease),
    /// Answer with this status and body (`text/plain`) instead; the connection carries
    /// on with the next request.
    Deny {
        status: StatusCode,
        body: Bytes,
    },
}

impl Verdict {
    /// 403 `RBAC: access denied`, what Envoy (and so Istio) answers.
    pub fn rbac_denied() -> Self {
        Self::Deny {
            status: StatusCode::FORBIDDEN,
            body: Bytes::from_static(b"RBAC: access denied"),
        }
    }

    /// 400 with the reason, for a request whose target cannot be normalized.
    pub fn bad_request(error: &InvalidRequest) -> Self {
        Self::Deny {
            status: StatusCode::BAD_REQUEST,
            body: Bytes::from(format!("Bad Request: {error}")),
        }
    }
}

/// A forwarded request the hook may take back (a policy change that now denies it):
/// held by the exchange until it ends, then dropped, which drops its `release` (e.g.
/// what removes the request from the hook's table of running ones).
pub struct Lease {
    revoked: CancellationToken,
    _release: Option<Box<dyn Any + Send + Sync>>,
}

impl Lease {
    /// A lease ended by cancelling `revoked`; `release` is dropped with it.
    pub fn new(revoked: CancellationToken, release: Option<Box<dyn Any + Send + Sync>>) -> Self {
        Self {
            revoked,
            _release: release,
        }
    }

    /// Cancelled when the hook revokes the request.
    pub(super) fn revoked(&self) -> CancellationToken {
        self.revoked.clone()
    }

    /// True once the hook revoked the request.
    pub fn is_revoked(&self) -> bool {
        self.revoked.is_cancelled()
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("revoked", &self.revoked.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// The parts of a request that policy and telemetry look at.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    pub method: Method,
    /// Origin-form (`/path?q`) in HTTP/1, with scheme and authority in HTTP/2; at the
    /// destination, normalized (as the app gets it) unless the request was refused.
    pub uri: Uri,
    /// `:authority` (HTTP/2, or an absolute-form HTTP/1 target), else the `Host` header.
    pub authority: Option<String>,
    pub version: Version,
}

impl RequestInfo {
    pub fn from_request<B>(request: &Request<B>) -> Self {
        let authority = match request.uri().authority() {
            Some(authority) => Some(authority.as_str().to_owned()),
            None => request
                .headers()
                .get(http::header::HOST)
                .and_then(|host| host.to_str().ok())
                .map(str::to_owned),
        };
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            authority,
            version: request.version(),
        }
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// The host, without a port (`[v6]` brackets kept).
    pub fn host(&self) -> Option<&str> {
        let authority = self.authority.as_deref()?;
        Some(match authority.rsplit_once(':') {
            Some((host, port))
                if !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && (!host.starts_with('[') || host.ends_with(']')) =>
            {
                host
            }
            _ => authority,
        })
    }
}

/// The status reported for a request whose client went away before it was answered:
/// 499, nginx's "client closed request" (Envoy logs 0), with [`Failure::DownstreamReset`].
pub fn client_closed() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// What went wrong in an exchange, if anything, with Envoy's response flag for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The app's connection failed or closed before the response head (the client got
    /// 503), or during the response body (the client's response was cut off). `UC`.
    UpstreamReset,
    /// The app's answer was not valid HTTP (the client got 502). `UPE`.
    UpstreamProtocol,
    /// The client went away (reset, closed) before the response was sent in full. `DC`.
    DownstreamReset,
    /// The hook revoked the request while it ran (a policy change now denies it): the
    /// exchange was reset. `DENY`, ztunnel's flag for a connection a policy denied.
    Revoked,
}

impl Failure {
    /// Envoy's response flag (as in Istio's access logs and `response_flags` label).
    pub fn flags(self) -> ResponseFlags {
        match self {
            Self::UpstreamReset => ResponseFlags::UpstreamReset,
            Self::UpstreamProtocol => ResponseFlags::UpstreamProtocol,
            Self::DownstreamReset => ResponseFlags::DownstreamReset,
            Self::Revoked => ResponseFlags::Deny,
        }
    }

    /// True when the app's side failed.
    pub fn is_upstream(self) -> bool {
        matches!(self, Self::UpstreamReset | Self::UpstreamProtocol)
    }
}

/// One finished exchange.
#[derive(Clone, Debug)]
pub struct Report {
    pub request: RequestInfo,
    /// The status sent to the client (the app's, the hook's on a deny, or ours: 502/503
    /// when the app failed), or [`client_closed`] (499) when the client went away first.
    pub status: StatusCode,
    /// Request body bytes received from the client (for an upgrade: bytes the client
    /// sent over the upgraded connection).
    pub request_bytes: u64,
    /// Response body bytes sent to the client (for an upgrade: bytes the app sent).
    pub response_bytes: u64,
    /// From the request's head to the end of the response (or of the upgraded streams).
    pub duration: Duration,
    /// The hook denied the request.
    pub denied: bool,
    /// The connection was upgraded (`101 Switching Protocols`, or a CONNECT).
    pub upgraded: bool,
    pub failure: Option<Failure>,
}

impl Report {
    /// True when the app failed this request (telemetry sets a response flag).
    pub fn upstream_failed(&self) -> bool {
        self.failure.is_some_and(Failure::is_upstream)
    }

    /// Envoy's response flags: `-` when none.
    pub fn response_flags(&self) -> &'static str {
        self.failure
            .map_or(ResponseFlags::None, Failure::flags)
            .as_str()
    }
}
