//! rustls configurations for HBONE tunnels: TLS 1.3 only, ALPN `h2`, the `ring`
//! provider, both ends authenticated by SPIFFE certificates. [`server_config`] is for
//! the tunnel listener (port 15008) of a destination pod, [`client_config`] for tunnels a
//! source pod opens, [`peer_identity`] tells who is on the other end afterwards, and
//! [`TlsFailure`] says in one line why a handshake failed. Session resumption is off:
//! every tunnel proves its identity with a full handshake and the current certificates.
mod peer;
mod resolve;
mod verify;

#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use rustls::{
    ClientConfig, ServerConfig, client::Resumption, server::NoServerSessionStorage, version::TLS13,
};

#[allow(unused_imports)]
pub(crate) use peer::spiffe_id_of;
#[allow(unused_imports)]
pub use peer::{PeerIdentityError, TlsFailure, peer_identity};

use super::{error::IdentityError, manager::CertManager, spiffe::SpiffeId};

/// The one application protocol of a tunnel (HTTP/2 CONNECT).
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// For the tunnel listener of the workload `id`: presents `id`'s current certificate,
/// requires a client certificate chained to our roots from our trust domain.
pub(crate) fn server_config(
    manager: &Arc<CertManager>,
    id: &SpiffeId,
) -> Result<Arc<ServerConfig>, IdentityError> {
    let trust = manager.trust();
    let mut config = ServerConfig::builder_with_provider(trust.provider().clone())
        .with_protocol_versions(&[&TLS13])?
        .with_client_cert_verifier(verify::ClientIdentityVerifier::new(trust.clone()))
        .with_cert_resolver(resolve::ServerCert::new(manager.clone(), id.clone()));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// For tunnels the workload `source` opens to a workload that must be
/// `expected_peer` (the identity the workload source says the destination has).
/// Presents `source`'s current certificate. The server name given to `connect` (the pod
/// IP) is not checked; the SPIFFE ID is.
pub fn client_config(
    manager: &Arc<CertManager>,
    source: &SpiffeId,
    expected_peer: &SpiffeId,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let trust = manager.trust();
    let mut config = ClientConfig::builder_with_provider(trust.provider().clone())
        .with_protocol_versions(&[&TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verify::ServerIdentityVerifier::new(
            trust.clone(),
            expected_peer.clone(),
        ))
        .with_client_cert_resolver(resolve::ClientCert::new(manager.clone(), source.clone()));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// Client configs per (source, expected peer), made once. Entries of sources the
/// manager no longer holds are dropped as new ones are added.
pub struct ClientConfigs {
    manager: Arc<CertManager>,
    cache: Mutex<HashMap<(SpiffeId, SpiffeId), Arc<ClientConfig>>>,
}

impl ClientConfigs {
    pub fn new(manager: Arc<CertManager>) -> Self {
        Self {
            manager,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(
        &self,
        source: &SpiffeId,
        expected_peer: &SpiffeId,
    ) -> Result<Arc<ClientConfig>, IdentityError> {
        let key = (source.clone(), expected_peer.clone());
        let mut cache = crate::sync::lock(&self.cache);
        if let Some(config) = cache.get(&key) {
            return Ok(config.clone());
        }
        let config = client_config(&self.manager, source, expected_peer)?;
        cache.retain(|(source, _), _| self.manager.is_managed(source));
        cache.insert(key, config.clone());
        Ok(config)
    }

    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        crate::sync::lock(&self.cache).len()
    }
}
