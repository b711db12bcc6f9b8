//! Which certificate a tunnel end presents: the workload's current one, read from the
//! manager at each handshake, so a renewal applies to the next handshake at once.
use std::sync::Arc;

use rustls::{
    SignatureScheme,
    client::ResolvesClientCert,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::identity::{manager::CertManager, spiffe::SpiffeId};

/// The destination workload's certificate, for the tunnel listener in its pod.
#[derive(Debug)]
pub struct ServerCert {
    manager: Arc<CertManager>,
    id: SpiffeId,
}

/// The source workload's certificate, for tunnels it opens.
#[derive(Debug)]
pub struct ClientCert {
    manager: Arc<CertManager>,
    id: SpiffeId,
}

impl ServerCert {
    pub fn new(manager: Arc<CertManager>, id: SpiffeId) -> Arc<Self> {
        Arc::new(Self { manager, id })
    }
}

impl ClientCert {
    pub fn new(manager: Arc<CertManager>, id: SpiffeId) -> Arc<Self> {
        Arc::new(Self { manager, id })
    }
}

fn current(manager: &CertManager, id: &SpiffeId) -> Option<Arc<CertifiedKey>> {
    let cert = manager.current(id);
    if cert.is_none() {
        tracing::warn!(identity = %id, "no certificate (yet) for this identity: handshake fails");
    }
    cert
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        current(&self.manager, &self.id)
    }
}

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        current(&self.manager, &self.id)
    }

    fn has_certs(&self) -> bool {
        true
    }
}
