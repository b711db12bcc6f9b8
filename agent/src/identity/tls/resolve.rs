//! Which certificate a tunnel end presents: the workload's current one, read from the
//! manager at each handshake, so a renewal applies to the next handshake at once.
use std::{sync::Arc, time::SystemTime};

use rustls::{
    SignatureScheme,
    client::ResolvesClientCert,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::identity::{manager::CertManager, spiffe::SpiffeId, x509};

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

/// The certificate to present now: none before the first is issued, and none once it
/// has expired (renewal failing, e.g. because the CA expired): presenting it would only
/// have the peer refuse it, and we never hand out a certificate past its dates.
fn current(manager: &CertManager, id: &SpiffeId) -> Option<Arc<CertifiedKey>> {
    let Some(cert) = manager.cert(id) else {
        tracing::warn!(identity = %id, "no certificate (yet) for this identity: handshake fails");
        return None;
    };
    if cert.not_after <= SystemTime::now() {
        tracing::warn!(identity = %id, serial = %cert.serial,
            expired_at = %x509::rfc3339(cert.not_after),
            "the certificate of this identity expired and was not renewed: handshake fails");
        return None;
    }
    Some(cert.key.clone())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::{ca, local_ca::LocalCa, testing};

    #[tokio::test]
    async fn an_expired_certificate_is_never_presented() {
        // A CA that expires in 2 s: the leaf is cut to its expiry, renewal then fails.
        let now = SystemTime::now();
        let (root, _) = ca::generate(
            "short-lived root",
            now - Duration::from_secs(3600),
            now + Duration::from_secs(2),
        )
        .unwrap();
        let ca = Arc::new(LocalCa::from_root(root, "cluster.local").unwrap());
        let manager = testing::manager_with(&ca, "cluster.local", Duration::from_secs(3600));
        let id = SpiffeId::new("cluster.local", "shop", "web").unwrap();
        manager.ensure(&id);
        let cert = manager.ready(&id).await.unwrap();
        assert!(cert.not_after <= now + Duration::from_secs(2));
        assert!(current(&manager, &id).is_some(), "valid: presented");
        let left = cert
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(left + Duration::from_millis(200)).await;
        assert!(
            manager.cert(&id).is_some(),
            "still held (for the admin API)"
        );
        assert!(current(&manager, &id).is_none(), "expired: not presented");
    }
}
