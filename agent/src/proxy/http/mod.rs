//! The HTTP-aware layer of the proxy, for one proxied connection whose app side the
//! caller has already connected:
//!
//! 1. [`detect`] (`detect`): HTTP/1, HTTP/2 with prior knowledge, or opaque — from the
//!    client's first bytes, without breaking server-first protocols (the app speaking
//!    first, or a silent client, means opaque). What was read comes back in
//!    [`Prefixed`] streams (`prefixed`), to be replayed.
//! 2. [`serve`] (`server`): HTTP/1 goes the lean way (`h1`: heads parsed in place,
//!    bytes forwarded as received, bodies by their framing, one task) and hands a
//!    request it does not serve itself (an upgrade, `CONNECT`, `Expect`) to hyper with
//!    the rest of the connection. Otherwise, hyper serves the client and a hyper client
//!    connection of the same version carries each request to the app (`upstream`),
//!    through the per-request logic in `service`: at the destination, each request's
//!    target is first normalized (`target`, `path`: what policy checks is what the app
//!    gets; a path that cannot be is refused with 400); the caller's [`Hook`] (`hook`)
//!    allows or denies each request and gets a [`Report`] when it is over (`exchange`); bodies
//!    stream with back-pressure (`body`); HTTP/1 upgrades are spliced (`upgrade`).
//!    Opaque connections are the caller's to copy (e.g. `proxy::copy`, which takes the
//!    `Prefixed` streams).
//!
//! Generic over both streams (a `TcpStream`, a tunnel's `H2Stream`, …). Tuning lives in
//! [`DetectSettings`] and [`Settings`] (`settings`); connection errors in [`HttpError`].
//!
//! ```text
//! let app = deliver::to_app(&pod, client_addr, dst, deliver::Via::Tunnel).await?;
//! let detected = http::detect(client, app, &detect_settings).await;
//! match detected.protocol.http() {
//!     Some(version) => http::serve(detected.client, detected.app, version, hook, &settings, shutdown).await?,
//!     None => copy::bidirectional(detected.client, detected.app, buffer, &counters, &cancel).await?,
//! }
//! ```
mod body;
mod detect;
mod error;
mod exchange;
mod h1;
mod hook;
pub mod path;
mod prefixed;
mod revoke;
mod server;
mod service;
mod settings;
mod target;
mod upgrade;
mod upstream;

#[cfg(test)]
mod tests;

pub use {
    detect::{Detected, H2_PREFACE, HttpVersion, Protocol, Reason, classify, detect},
    error::HttpError,
    hook::{Failure, Hook, Lease, Report, RequestInfo, Verdict, client_closed},
    prefixed::Prefixed,
    server::serve,
    settings::{DetectSettings, Settings},
    target::InvalidRequest,
};
