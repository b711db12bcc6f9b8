//! What the agent tells about the traffic it carries. The proxy hands it plain
//! [`facts`]: what a connection is, how it ended, each HTTP exchange; the [`recorder`]
//! turns them into Prometheus metrics with Istio's names ([`metrics`], served on
//! `:15020/metrics` by [`endpoint`]) and access-log lines ([`access`]); [`refusals`]
//! names what the agent turned away. Nothing here knows the proxy.
pub mod access;
pub mod endpoint;
pub mod facts;
pub mod metrics;
pub mod recorder;
pub mod refusals;
