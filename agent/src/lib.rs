//! Outrider's node agent as a library: the `outrider` binary (`main.rs`) and
//! `outriderctl` (`bin/outriderctl.rs`) are its command lines; the tooling
//! (`outrider-testbed`: testbed, load generator, fuzzing, benchmark, end-to-end tests)
//! reaches the parts through the public items here, and this crate never depends on it.
//!
//! Data flows one way through the modules: `workloads` (who runs here) → `enrollment`
//! (per-pod set-up) → `dataplane` (kernel programs and maps) + `proxy` (in-pod listeners,
//! copying) → `telemetry` (access logs). `identity` gives enrolled service accounts their
//! certificates and the proxy its mutual-TLS ends (`outrider ca` makes the mesh's root).
//! `sidecar` is the same proxy run as a classic per-pod sidecar, and the node agent's
//! service for it. `restart` hands a running agent's sockets to its successor.
//! `netns` is where sockets are made; `memory` what the process gives back to the kernel
//! once it serves.
// Tests take their own locks directly; the agent's go through `sync` (`clippy.toml`).
#![cfg_attr(test, allow(clippy::disallowed_methods))]
pub(crate) mod admin;
pub mod agent;
pub(crate) mod capabilities;
pub mod config;
pub mod ctl;
pub mod dataplane;
pub(crate) mod enrollment;
pub mod identity;
pub mod image;
pub mod limits;
pub(crate) mod logging;
pub(crate) mod memory;
pub mod netns;
pub mod policy;
pub mod proxy;
/// Tests only: a raw HTTP/2 client, shared with the end-to-end tests
/// (`testbed/tests/support` includes this file too).
#[cfg(test)]
mod raw_h2;
pub mod restart;
pub(crate) mod rtnetlink;
pub mod sidecar;
pub(crate) mod sync;
pub(crate) mod sysctl;
pub mod telemetry;
pub(crate) mod unix_socket;
pub mod wait_enrolled;
pub(crate) mod watch;
pub mod workloads;
pub mod yaml;

/// This build's version: Cargo's, unless the build set `OUTRIDER_VERSION` (as
/// `cargo xtask image --version` does, to make an image that really differs from the
/// release, e.g. to exercise an upgrade). Every place that reports or compares versions
/// (`--version`, the admin API, the hand-over, sidecars) uses it.
pub const VERSION: &str = match option_env!("OUTRIDER_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};
