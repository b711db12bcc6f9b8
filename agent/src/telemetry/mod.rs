//! What the agent tells about the traffic it carries: access logs (`access`).
pub mod access;
