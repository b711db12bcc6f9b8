//! What this agent trusts: the trust domain, the root certificates, and the one crypto
//! provider (rustls' `ring`, passed explicitly — never a process default) every TLS
//! config and check here uses. A root counts only within its own validity: webpki
//! checks the leaf's dates but not the trust anchor's, so a chain to a root that has
//! expired (or is not valid yet) is refused here, naming the root and its dates, as Go's
//! and OpenSSL's verifiers (Istio, Linkerd) do.
use std::sync::{Arc, OnceLock};

use rustls::{
    RootCertStore,
    client::verify_server_cert_signed_by_trust_anchor,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, UnixTime},
    server::{ParsedCertificate, WebPkiClientVerifier, danger::ClientCertVerifier},
};

use super::{error::IdentityError, spiffe, x509};

/// A root of ours outside its validity at the time of a check.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootValidityError {
    #[error(
        "our CA certificate ({subject}) expired at {not_after}: no certificate chaining to it is accepted"
    )]
    Expired { subject: String, not_after: String },
    #[error(
        "our CA certificate ({subject}) is not valid before {not_before} (check the clock): no certificate chaining to it is accepted"
    )]
    NotYetValid { subject: String, not_before: String },
}

/// rustls prints a certificate error's Debug form: make it the message.
impl std::fmt::Debug for RootValidityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl RootValidityError {
    fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(self),
        )))
    }
}

/// One root's dates (seconds since the epoch) and name, for the validity check.
#[derive(Clone, Debug)]
struct RootDates {
    subject: String,
    not_before: u64,
    not_after: u64,
}

impl RootDates {
    fn of(der: &CertificateDer<'_>) -> Result<Self, String> {
        let facts = x509::facts(der)?;
        let secs = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        Ok(Self {
            subject: x509::subject(der)?,
            not_before: secs(facts.not_before),
            not_after: secs(facts.not_after),
        })
    }

    /// Valid at `now` (both bounds inclusive, as RFC 5280's validity).
    fn check(&self, now: UnixTime) -> Result<(), RootValidityError> {
        let at =
            |secs: u64| x509::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        if now.as_secs() > self.not_after {
            Err(RootValidityError::Expired {
                subject: self.subject.clone(),
                not_after: at(self.not_after),
            })
        } else if now.as_secs() < self.not_before {
            Err(RootValidityError::NotYetValid {
                subject: self.subject.clone(),
                not_before: at(self.not_before),
            })
        } else {
            Ok(())
        }
    }
}

/// Which roots a check at some moment may use.
enum LiveRoots {
    /// Every root is valid: the prebuilt store and verifier.
    All,
    /// Only these are (a rare moment: one root of several out of its dates).
    Some(Arc<RootCertStore>),
}

/// rustls' `ring` provider, made once.
pub(crate) fn provider() -> Arc<CryptoProvider> {
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
    /// Their dates, in the same order.
    root_dates: Arc<[RootDates]>,
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
        let mut dates = Vec::with_capacity(roots.len());
        for (i, root) in roots.iter().enumerate() {
            dates.push(
                RootDates::of(root)
                    .map_err(|e| IdentityError::TrustBundle(format!("root #{i}: {e}")))?,
            );
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
            root_dates: dates.into(),
            provider,
            client_chain,
        })
    }

    /// The root certificates (DER).
    pub(crate) fn root_certificates(&self) -> &[CertificateDer<'static>] {
        &self.root_ders
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    pub(crate) fn client_chain(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_chain
    }

    /// The roots valid at `now`; none is an error naming the (first) root and its dates.
    fn live_roots(&self, now: UnixTime) -> Result<LiveRoots, rustls::Error> {
        let checks: Vec<Result<(), RootValidityError>> =
            self.root_dates.iter().map(|d| d.check(now)).collect();
        if checks.iter().all(Result::is_ok) {
            return Ok(LiveRoots::All);
        }
        let mut store = RootCertStore::empty();
        for (der, check) in self.root_ders.iter().zip(&checks) {
            if check.is_ok() {
                store.add(der.clone())?;
            }
        }
        if store.is_empty() {
            let first = checks.into_iter().find_map(Result::err);
            return Err(first.expect("a root out of its dates").into_rustls());
        }
        Ok(LiveRoots::Some(Arc::new(store)))
    }

    /// webpki: `end_entity` (with `intermediates`) chains to one of our roots valid at
    /// `now`, is valid at `now` itself and may serve (serverAuth). No name check: SPIFFE
    /// IDs are checked apart.
    pub(crate) fn verify_server_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let live = self.live_roots(now)?;
        let roots = match &live {
            LiveRoots::All => &self.roots,
            LiveRoots::Some(store) => store,
        };
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
    }

    /// webpki, client side: like [`Self::verify_server_chain`] with clientAuth.
    pub(crate) fn verify_client_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let verified = match self.live_roots(now)? {
            LiveRoots::All => self
                .client_chain
                .verify_client_cert(end_entity, intermediates, now),
            LiveRoots::Some(store) => {
                WebPkiClientVerifier::builder_with_provider(store, self.provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?
                    .verify_client_cert(end_entity, intermediates, now)
            }
        };
        verified.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use rcgen::{
        CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
        SanType, string::Ia5String,
    };

    use super::*;
    use crate::identity::ca::{self, RootCa};

    /// A root valid from `from` to `to` (seconds from now).
    fn root(from: i64, to: i64) -> RootCa {
        let at = |s: i64| {
            let now = SystemTime::now();
            if s >= 0 {
                now + Duration::from_secs(s.unsigned_abs())
            } else {
                now - Duration::from_secs(s.unsigned_abs())
            }
        };
        ca::generate("test root", at(from), at(to)).unwrap().0
    }

    /// A leaf for shop/web signed by `root`, itself valid an hour either side of now
    /// (as no leaf of ours is: only a signer that ignores its CA's dates makes one).
    fn leaf(root: RootCa) -> CertificateDer<'static> {
        let issuer = Issuer::from_ca_cert_der(&root.cert, root.key).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from("spiffe://cluster.local/ns/shop/sa/web").unwrap(),
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(3600)).into();
        params.signed_by(&key, &issuer).unwrap().der().clone()
    }

    fn errors(trust: &TrustBundle, leaf: &CertificateDer<'_>) -> [String; 2] {
        let now = UnixTime::now();
        let server = trust.verify_server_chain(leaf, &[], now);
        let client = trust.verify_client_chain(leaf, &[], now);
        [server, client].map(|r| match r {
            Ok(()) => "accepted".to_string(),
            Err(e) => crate::identity::TlsFailure::from_rustls(&e).to_string(),
        })
    }

    #[test]
    fn a_chain_to_an_expired_or_future_root_is_refused_naming_the_root() {
        let expired = root(-7200, -3600);
        let expired_at = x509::rfc3339(expired.not_after);
        let trust = TrustBundle::new("cluster.local", std::slice::from_ref(&expired.cert)).unwrap();
        for err in errors(&trust, &leaf(expired)) {
            assert!(err.contains("our CA certificate"), "{err}");
            assert!(err.contains("test root"), "{err}");
            assert!(err.contains(&format!("expired at {expired_at}")), "{err}");
        }

        let future = root(3600, 7200);
        let from = x509::rfc3339(future.not_before);
        let trust = TrustBundle::new("cluster.local", std::slice::from_ref(&future.cert)).unwrap();
        for err in errors(&trust, &leaf(future)) {
            assert!(err.contains(&format!("not valid before {from}")), "{err}");
        }
    }

    #[test]
    fn with_one_root_expired_the_others_still_verify() {
        let (old, new) = (root(-7200, -3600), root(-3600, 3600));
        let trust =
            TrustBundle::new("cluster.local", &[old.cert.clone(), new.cert.clone()]).unwrap();
        let old_leaf = leaf(old);
        let new_leaf = leaf(new);
        assert_eq!(errors(&trust, &new_leaf), ["accepted", "accepted"]);
        for err in errors(&trust, &old_leaf) {
            assert!(err.contains("unknown issuer"), "{err}");
        }
        // Both valid: the prebuilt store and verifier.
        let (a, b) = (root(-60, 3600), root(-60, 3600));
        let trust = TrustBundle::new("cluster.local", &[a.cert.clone(), b.cert.clone()]).unwrap();
        assert_eq!(errors(&trust, &leaf(b)), ["accepted", "accepted"]);
    }
}
