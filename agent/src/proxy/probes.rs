//! Strict mode's one exemption: is a plaintext connection into a strict pod one of the
//! kubelet's health probes? Only what the kernel saw the kubelet itself open counts — in
//! node mode the kubelet's connections map (`dataplane::ProbeTable`), in sidecar mode
//! the node agent asked about it — never the client's address, which NAT and
//! host-network pods share with the kubelet.
use std::{future::Future, net::SocketAddr, pin::Pin};

use crate::dataplane::ProbeTable;

pub type Answer<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// Tells the kubelet's connections from the rest.
pub trait KubeletProbes: Send + Sync {
    /// True when the connection accepted from `peer` on `local` (the pod's address and
    /// port) is one the kubelet opened. Answers true once per connection.
    fn take(&self, peer: SocketAddr, local: SocketAddr) -> Answer<'_>;
}

impl KubeletProbes for ProbeTable {
    fn take(&self, peer: SocketAddr, local: SocketAddr) -> Answer<'_> {
        let found = ProbeTable::take(self, peer, local);
        Box::pin(std::future::ready(found))
    }
}
