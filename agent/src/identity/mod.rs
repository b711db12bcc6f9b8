//! Workload identity and mutual TLS: SPIFFE IDs (`spiffe`), the built-in CA on disk
//! (`ca`) and as a signer (`local_ca`) behind the [`Signer`] seam, certificates per
//! service account kept fresh (`manager`, `renew`), what we trust (`trust`), and the
//! rustls configs of tunnel ends (`tls`). `cli` is `outrider ca …`.
//!
//! At start the agent calls [`Identity::from_config`]; enrollment then calls
//! `manager().ensure(id)` / `release(id)` per pod, and the tunnel builds its TLS ends with
//! [`Identity::server_config`] / [`Identity::client_config`].

pub mod ca;
pub mod cli;
mod error;
pub mod local_ca;
pub mod manager;
pub mod renew;
pub mod signer;
pub mod spiffe;
pub mod tls;
pub mod trust;
pub mod x509;

#[cfg(test)]
mod testing;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls::{ClientConfig, CommonState, ServerConfig};

// The module's API for the proxy, enrollment and the admin API.
pub use {
    error::IdentityError,
    local_ca::LocalCa,
    manager::{CertManager, CertStatus},
    renew::{RenewPolicy, WorkloadCert},
    signer::{SignError, SignRequest, Signer},
    spiffe::{SpiffeId, SpiffeIdError},
    tls::{PeerIdentityError, TlsFailure},
    trust::TrustBundle,
};

use crate::config::IdentityConfig;

/// The agent's identity layer: the certificate manager and the TLS configs built on it.
/// Cheap to clone.
#[derive(Clone)]
pub struct Identity {
    manager: Arc<CertManager>,
    client_configs: Arc<tls::ClientConfigs>,
}

impl Identity {
    /// Reads and checks the CA directory (`identity.caDir`); any problem stops the agent
    /// with an error naming the path. Nothing is minted until `ensure`.
    pub fn from_config(config: &IdentityConfig) -> Result<Self, IdentityError> {
        let ca = LocalCa::from_dir(&config.ca_dir, &config.trust_domain)?;
        let trust = TrustBundle::new(&config.trust_domain, &[ca.root().clone()])?;
        let policy = RenewPolicy::with_ttl(Duration::from_secs(config.cert_ttl_seconds));
        let ca_not_after = x509::rfc3339(ca.not_after());
        tracing::info!(
            ca = %config.ca_dir.display(),
            %ca_not_after,
            trust_domain = %config.trust_domain,
            cert_ttl = ?policy.ttl,
            "identity: CA loaded"
        );
        if ca.not_after() < SystemTime::now() + policy.ttl {
            // Istio's and Linkerd's rule: no workload certificate outlives its CA.
            tracing::warn!(
                ca = %config.ca_dir.display(),
                %ca_not_after,
                "the CA certificate expires within the certificates' lifetime: they are cut \
                 short at its expiry, after which none is issued and tunnels fail; \
                 replace the CA (outrider ca init)"
            );
        }
        Ok(Self::new(CertManager::new(Arc::new(ca), trust, policy)))
    }

    /// Around any manager, e.g. one whose signer is an external CA.
    pub fn new(manager: Arc<CertManager>) -> Self {
        Self {
            client_configs: Arc::new(tls::ClientConfigs::new(manager.clone())),
            manager,
        }
    }

    pub fn manager(&self) -> &Arc<CertManager> {
        &self.manager
    }

    pub fn trust_domain(&self) -> &str {
        self.manager.trust_domain()
    }

    /// The identity of pods running as `service_account` in `namespace`.
    pub fn workload_id(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::new(self.trust_domain(), namespace, service_account)
    }

    /// See [`tls::server_config`].
    pub(crate) fn server_config(&self, id: &SpiffeId) -> Result<Arc<ServerConfig>, IdentityError> {
        tls::server_config(&self.manager, id)
    }

    /// See [`tls::client_config`]; cached per (source, expected peer).
    pub fn client_config(
        &self,
        source: &SpiffeId,
        expected_peer: &SpiffeId,
    ) -> Result<Arc<ClientConfig>, IdentityError> {
        self.client_configs.get(source, expected_peer)
    }

    /// See [`tls::peer_identity`], with our trust domain.
    pub fn peer_identity(&self, conn: &CommonState) -> Result<SpiffeId, PeerIdentityError> {
        tls::peer_identity(conn, self.trust_domain())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_config_reads_the_ca_or_names_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = IdentityConfig {
            ca_dir: tmp.path().join("missing"),
            ..IdentityConfig::default()
        };
        let err = Identity::from_config(&config).err().unwrap().to_string();
        assert!(err.contains(&config.ca_dir.display().to_string()), "{err}");

        config.ca_dir = tmp.path().join("ca");
        ca::init(&config.ca_dir, &ca::InitOptions::default()).unwrap();
        let identity = Identity::from_config(&config).unwrap();
        assert_eq!(identity.trust_domain(), "cluster.local");
        let id = identity.workload_id("shop", "web").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(identity.manager().policy().ttl, Duration::from_secs(86_400));
    }
}
