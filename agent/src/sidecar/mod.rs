//! Sidecar mode: the same proxy as node mode, run as a classic per-pod sidecar so that
//! users can compare both models on the same traffic, and so that pods in either mode
//! talk to each other (both speak the same tunnel).
//!
//! - `init`: `outrider sidecar-init`, the pod's iptables REDIRECT rules (an init
//!   container's job);
//! - `run`: `outrider sidecar`, the proxy serving its own pod;
//! - `client`: how the sidecar gets its certificate and the mesh's state from the node
//!   agent;
//! - `service`: the node agent's side of that, attesting each caller by its cgroup.
pub mod client;
pub mod init;
pub mod run;
pub mod service;

pub use init::InitArgs;
pub use run::SidecarArgs;
