//! What the agent tells about the traffic it carries: access logs (`access`), and
//! Prometheus metrics with Istio's names (`metrics`) served on `:15020/metrics`
//! (`endpoint`).
pub mod access;
pub mod endpoint;
pub mod metrics;
pub mod refusals;
