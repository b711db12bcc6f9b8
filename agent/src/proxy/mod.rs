//! The proxy: per-pod listeners opened inside the pod, and what happens to each
//! connection they accept (`outbound`: to the original destination), with `copy` moving
//! the bytes.
pub mod copy;
pub mod outbound;

pub use outbound::{PodListeners, PodProxy};
