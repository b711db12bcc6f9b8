//! The plain facts the proxy tells telemetry: what a connection is (known when it is
//! registered), how it ended, and one HTTP request's exchange; failures carry Istio's
//! response flags. Telemetry reads nothing else of the proxy.
use std::{net::SocketAddr, time::Duration};

/// Which way a connection went, seen from the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Opened by the pod's app.
    Outbound,
    /// Opened to the pod's app.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// How the bytes crossed the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// As the app sent them.
    Plaintext,
    /// Inside the mutual-TLS HTTP/2 tunnel (HBONE).
    Hbone,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Plaintext => "plaintext",
            Transport::Hbone => "hbone",
        }
    }
}

/// What a connection is: set once, when it is registered (or refused).
#[derive(Clone, Debug)]
pub struct ConnectionFacts {
    /// `namespace/name` of the enrolled pod whose agent carries it.
    pub pod: String,
    pub direction: Direction,
    pub transport: Transport,
    /// Where it came from, as the receiving side saw it.
    pub src: SocketAddr,
    /// Where it went: the original destination, or the endpoint dialed for a Service.
    pub dst: SocketAddr,
    /// SPIFFE IDs of both ends, where known (the peer's only when verified).
    pub src_identity: Option<String>,
    pub dst_identity: Option<String>,
}

impl ConnectionFacts {
    /// The other end's identity: the destination's outbound, the source's inbound.
    pub fn peer_identity(&self) -> Option<&str> {
        match self.direction {
            Direction::Outbound => self.dst_identity.as_deref(),
            Direction::Inbound => self.src_identity.as_deref(),
        }
    }
}

/// Istio's (Envoy's and ztunnel's) response flags: what went wrong, as the
/// `response_flags` label and access-log field name it (`-`: nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    #[default]
    None,
    /// An authorization policy (or a namespace's strict mTLS) denied it, when it opened
    /// or later. `DENY`, as ztunnel.
    Deny,
    /// A Service with no endpoint ready to take it. `UH`, Envoy's no healthy upstream.
    NoHealthyUpstream,
    /// A Service without the port dialed. `NR`, Envoy's no route.
    NoRoute,
    /// The upstream could not be connected to (refused, timed out, unreachable), or the
    /// tunnel's peer refused the stream. `CONNECT`, as ztunnel.
    ConnectFailure,
    /// The tunnel's TLS handshake failed. `TLS_FAILURE`, as ztunnel.
    TlsFailure,
    /// No certificate for this end, or the peer's identity could not be known.
    /// `IDENTITY_ERROR`, as ztunnel.
    IdentityError,
    /// An HTTP exchange's upstream reset or closed before the response ended. `UC`.
    UpstreamReset,
    /// An HTTP exchange's upstream answered something that is not HTTP. `UPE`.
    UpstreamProtocol,
    /// An HTTP exchange's client went away before the response ended. `DC`.
    DownstreamReset,
    /// The client sent what could not be served (a path or host refused before policy).
    /// `DPE`, Envoy's downstream protocol error.
    DownstreamProtocol,
    /// A listener of the pod held its most connections. `UO`, Envoy's overflow.
    Overflow,
}

impl ResponseFlags {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::Deny => "DENY",
            Self::NoHealthyUpstream => "UH",
            Self::NoRoute => "NR",
            Self::ConnectFailure => "CONNECT",
            Self::TlsFailure => "TLS_FAILURE",
            Self::IdentityError => "IDENTITY_ERROR",
            Self::UpstreamReset => "UC",
            Self::UpstreamProtocol => "UPE",
            Self::DownstreamReset => "DC",
            Self::DownstreamProtocol => "DPE",
            Self::Overflow => "UO",
        }
    }
}

/// Why a connection failed: its flags and what a person reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub flags: ResponseFlags,
    pub reason: String,
}

/// How a connection ended.
#[derive(Clone, Debug)]
pub struct Ending {
    /// Bytes client → server (what the opener sent), as the app's socket carried them.
    pub bytes_sent: u64,
    /// Bytes server → client.
    pub bytes_received: u64,
    pub duration: Duration,
    /// `None`: it ended well.
    pub failure: Option<Failure>,
}

/// One HTTP exchange of a connection, finished.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Without the query.
    pub path: &'a str,
    pub authority: &'a str,
    /// `HTTP/1.1`, `HTTP/2.0`, …
    pub protocol: &'a str,
    /// As sent to the client (499: it went away first).
    pub status: u16,
    /// Body bytes each way.
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration: Duration,
    /// The destination's policy denied it.
    pub denied: bool,
    pub flags: ResponseFlags,
}
