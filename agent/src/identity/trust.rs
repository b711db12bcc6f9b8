//! What this agent trusts: the trust domain, the root certificates, and the one crypto
//! provider (rustls' `ring`, passed explicitly — never a process default) every TLS
//! config and check here uses.
use std::sync::{Arc, OnceLock};

use rustls::{
    RootCertStore,
    client::verify_server_cert_signed_by_trust_anchor,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, UnixTime},
    server::{ParsedCertificate, WebPkiClientVerifier, danger::ClientCertVerifier},
};

use super::{error::IdentityError, spiffe};

/// rustls' `ring` provider, made once.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The trust domain and its roots. Cheap to clone.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: String,
    roots: Arc<RootCertStore>,
    /// The roots as given (for the admin API).
    root_ders: Arc<[CertificateDer<'static>]>,
    provider: Arc<CryptoProvider>,
    /// webpki's client-certificate chain check, built once (it copies the roots).
    client_chain: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl TrustBundle {
    pub fn new(
        trust_domain: &str,
        roots: &[CertificateDer<'static>],
    ) -> Result<Self, IdentityError> {
        let roots_given = roots.to_vec();
        spiffe::check_trust_domain(trust_domain).map_err(IdentityError::TrustBundle)?;
        let mut store = RootCertStore::empty();
        for (i, root) in roots.iter().enumerate() {
            store
                .add(root.clone())
                .map_err(|e| IdentityError::TrustBundle(format!("root #{i}: {e}")))?;
        }
        if store.is_empty() {
            return Err(IdentityError::TrustBundle(
                "no root certificates".to_string(),
            ));
        }
        let roots = Arc::new(store);
        let provider = provider();
        let client_chain =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| IdentityError::TrustBundle(e.to_string()))?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            roots,
            root_ders: roots_given.into(),
            provider,
            client_chain,
        })
    }

    /// The root certificates (DER).
    pub fn root_certificates(&self) -> &[CertificateDer<'static>] {
        &self.root_ders
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    pub(crate) fn client_chain(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_chain
    }

    /// webpki: `end_entity` (with `intermediates`) chains to one of our roots, is valid
    /// at `now` and may serve (serverAuth). No name check: SPIFFE IDs are checked apart.
    pub fn verify_server_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
    }
}
