//! What goes wrong on a connection's way through the proxy, typed: every error says what
//! and where, and maps to Istio's response flag for metrics and the access line
//! ([`Error::flags`]). A refusal ([`Refusal`]) is the agent turning something away on
//! purpose; its reason is also counted (`outrider_refusals_total`).
use std::{io, net::SocketAddr};

use super::{hbone::HboneError, http::HttpError, route::NoRoute};
use crate::{
    identity::{SpiffeId, SpiffeIdError},
    telemetry::{
        facts::{Failure, ResponseFlags},
        refusals::Reason,
    },
};

/// Why a connection or request is not allowed (now).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub why: Reason,
    /// What a person reads in the logs.
    pub reason: String,
}

impl Refusal {
    pub fn new(why: Reason, reason: impl Into<String>) -> Self {
        Self {
            why,
            reason: reason.into(),
        }
    }

    /// Istio's flag for it.
    pub fn flags(&self) -> ResponseFlags {
        match self.why {
            Reason::Policy | Reason::StrictPlaintext => ResponseFlags::Deny,
            Reason::AppUnreachable | Reason::KernelMapInsert => ResponseFlags::ConnectFailure,
            Reason::Handshake => ResponseFlags::TlsFailure,
            Reason::NotThePods | Reason::ReservedPort => ResponseFlags::NoRoute,
            Reason::ConnectionLimit => ResponseFlags::Overflow,
            Reason::InvalidPath | Reason::InvalidHost => ResponseFlags::DownstreamProtocol,
        }
    }

    /// As the connection's failure in telemetry.
    pub fn failure(&self) -> Failure {
        Failure {
            flags: self.flags(),
            reason: self.reason.clone(),
        }
    }
}

/// A connection that failed on its way.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reached the outbound listener without being steered there.
    #[error("no original destination (not a steered connection)")]
    NoOriginalDestination,
    /// A Service dialed that cannot take it.
    #[error(transparent)]
    NoRoute(#[from] NoRoute),
    /// A route without a target (cannot happen with a route from `route::route`).
    #[error("no endpoint to dial")]
    NoEndpoint,
    /// The destination's identity cannot be named (its namespace or service account).
    #[error("destination {destination}: {source}")]
    DestinationIdentity {
        destination: String,
        #[source]
        source: SpiffeIdError,
    },
    /// This end has no certificate (yet) to open a tunnel with.
    #[error("no certificate for {id} yet")]
    NoCertificate { id: SpiffeId },
    /// A certificate is there, but no TLS configuration could be made of it.
    #[error("TLS configuration for {id}: {detail}")]
    TlsConfig { id: SpiffeId, detail: String },
    /// The TCP connect to an upstream (a pod, the app, a tunnel's peer) failed; the
    /// error names the address.
    #[error("{0}")]
    Connect(#[source] io::Error),
    #[error("TLS handshake with {addr} failed: {detail}")]
    Tls { addr: SocketAddr, detail: String },
    #[error("TLS handshake with {addr} timed out")]
    TlsTimeout { addr: SocketAddr },
    /// The tunnel (its connection or the CONNECT stream) failed.
    #[error(transparent)]
    Tunnel(#[from] HboneError),
    /// The agent refused it.
    #[error("{}", .0.reason)]
    Refused(Refusal),
    /// Copying bytes failed (a reset, a broken pipe, …).
    #[error("{0}")]
    Relay(#[source] io::Error),
    /// The HTTP connection failed (not one request: those are the hook's).
    #[error(transparent)]
    Http(#[from] HttpError),
}

impl Error {
    /// Istio's response flag for it (`-` for failures while copying, as Istio's TCP
    /// metrics leave them).
    pub fn flags(&self) -> ResponseFlags {
        match self {
            Self::NoOriginalDestination | Self::NoRoute(NoRoute::UndeclaredPort { .. }) => {
                ResponseFlags::NoRoute
            }
            Self::NoRoute(NoRoute::NoEndpoints { .. }) | Self::NoEndpoint => {
                ResponseFlags::NoHealthyUpstream
            }
            Self::DestinationIdentity { .. } | Self::NoCertificate { .. } => {
                ResponseFlags::IdentityError
            }
            Self::TlsConfig { .. } | Self::Tls { .. } | Self::TlsTimeout { .. } => {
                ResponseFlags::TlsFailure
            }
            Self::Connect(_) => ResponseFlags::ConnectFailure,
            Self::Tunnel(e) => tunnel_flags(e),
            Self::Refused(refusal) => refusal.flags(),
            Self::Relay(_) | Self::Http(_) => ResponseFlags::None,
        }
    }

    /// As the connection's failure in telemetry.
    pub fn failure(&self) -> Failure {
        Failure {
            flags: self.flags(),
            reason: self.to_string(),
        }
    }

    /// As an `io::Error` (for the tunnel pool's dial), keeping this error inside so that
    /// [`tunnel_flags`] finds it again.
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            Self::Connect(e) | Self::Relay(e) => e.kind(),
            Self::TlsTimeout { .. } | Self::NoCertificate { .. } => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

/// A tunnel failure's flag: the dial's own error (ours, inside the pool's), a refused
/// CONNECT (401/403: the peer's policy), anything else a failure to connect.
fn tunnel_flags(e: &HboneError) -> ResponseFlags {
    match e {
        HboneError::Dial(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Error>())
            .map_or(ResponseFlags::ConnectFailure, Error::flags),
        HboneError::Status { status, .. }
            if *status == http::StatusCode::FORBIDDEN
                || *status == http::StatusCode::UNAUTHORIZED =>
        {
            ResponseFlags::Deny
        }
        _ => ResponseFlags::ConnectFailure,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn each_failure_maps_to_istios_flag() {
        let addr: SocketAddr = "198.19.2.11:15008".parse().unwrap();
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "connect: refused");
        let cases = [
            (Error::NoOriginalDestination, "NR"),
            (
                Error::NoRoute(NoRoute::NoEndpoints {
                    service: "web.shop".into(),
                    port: 80,
                    local: false,
                }),
                "UH",
            ),
            (Error::Connect(refused), "CONNECT"),
            (Error::TlsTimeout { addr }, "TLS_FAILURE"),
            (
                Error::Refused(Refusal::new(Reason::Policy, "RBAC: access denied")),
                "DENY",
            ),
            (
                Error::Relay(io::Error::from(io::ErrorKind::ConnectionReset)),
                "-",
            ),
            // The tunnel pool's dial failed with our own error inside.
            (
                Error::Tunnel(HboneError::Dial(Arc::new(
                    Error::Tls {
                        addr,
                        detail: "unknown issuer".into(),
                    }
                    .into_io(),
                ))),
                "TLS_FAILURE",
            ),
            (
                Error::Tunnel(HboneError::Status {
                    authority: addr.to_string(),
                    status: http::StatusCode::FORBIDDEN,
                }),
                "DENY",
            ),
            (
                Error::Tunnel(HboneError::Status {
                    authority: addr.to_string(),
                    status: http::StatusCode::SERVICE_UNAVAILABLE,
                }),
                "CONNECT",
            ),
        ];
        for (error, flag) in cases {
            assert_eq!(error.flags().as_str(), flag, "{error}");
        }
    }

    #[test]
    fn an_error_says_what_and_where() {
        let addr: SocketAddr = "198.19.2.11:15008".parse().unwrap();
        let e = Error::Tunnel(HboneError::Dial(Arc::new(
            Error::TlsTimeout { addr }.into_io(),
        )));
        assert_eq!(
            e.to_string(),
            "dialing the tunnel: TLS handshake with 198.19.2.11:15008 timed out"
        );
        assert_eq!(
            Error::Refused(Refusal::new(Reason::StrictPlaintext, "plaintext refused"))
                .failure()
                .reason,
            "plaintext refused"
        );
    }
}
