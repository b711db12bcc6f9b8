//! HBONE's HTTP/2 layer: one mutual-TLS connection between two nodes' agents carries one
//! HTTP/2 `CONNECT` stream per proxied TCP connection, as Istio ambient's ztunnel does.
//!
//! Generic over the transport (in practice a tokio-rustls stream to or from port 15008,
//! whose records [`Coalesced`] (`coalesce`) sends a batch at a time): this module knows
//! nothing of certificates, identities or namespaces.
//!
//! - [`H2Stream`] (`stream`): one CONNECT stream as `AsyncRead + AsyncWrite`, with flow
//!   control, half-close ([`shutdown`](tokio::io::AsyncWriteExt::shutdown) = END_STREAM)
//!   and resets ([`H2Stream::reset`], a peer's RST_STREAM reads as `ConnectionReset`).
//! - [`Client`] (`client`): the client end of one connection; [`Pool`] (`pool`) keeps
//!   several per key, dials through the caller's function, reuses, coalesces and expires.
//! - [`serve`] (`server`): the server end of one accepted connection, calling a
//!   [`Handler`] per CONNECT.
//! - [`ConnectRequest`] (`headers`): what a CONNECT carries (authority, `baggage`,
//!   `forwarded`, `traceparent`), built on the client and parsed on the server.
//! - [`Settings`] (`settings`): the HTTP/2 tuning both ends use; `keepalive` ends a
//!   connection whose peer stopped answering PINGs.

mod client;
mod coalesce;
mod error;
mod headers;
mod keepalive;
mod pool;
mod preface;
mod server;
mod settings;
mod stream;

#[cfg(test)]
mod tests;

// The module's API for the proxy.
pub use {
    client::{Client, handshake},
    coalesce::Coalesced,
    error::HboneError,
    headers::{Baggage, ConnectRequest, TraceParent, format_authority},
    pool::{Pool, PoolConfig, PoolStats},
    server::{BadConnect, Handler, Inbound, parse_connect, serve},
    settings::Settings,
    stream::H2Stream,
};

/// The port a destination pod's tunnel listener is on.
pub const PORT: u16 = 15008;
