//! The built-in CA: signs workload leaves with the root read from the CA directory
//! (rcgen). Implements [`Signer`], so an external CA can take its place.
use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SubjectPublicKeyInfo,
    string::Ia5String,
};
use rustls::pki_types::{CertificateDer, UnixTime};

use super::{
    ca::{self, RootCa},
    error::IdentityError,
    signer::{CertChain, SignError, SignFuture, SignRequest, Signer},
    spiffe::SpiffeId,
    trust::TrustBundle,
    x509,
};

/// How far leaves are backdated, for peers whose clocks lag (never before the CA).
const LEAF_BACKDATE: Duration = Duration::from_secs(60);
/// Shortest lifetime the CA signs.
const MIN_TTL: Duration = Duration::from_secs(1);

pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
    trust_domain: String,
    cert_path: PathBuf,
}

impl LocalCa {
    /// Reads the CA directory and proves the CA works by signing and verifying a probe
    /// certificate; any problem names the file.
    pub(crate) fn from_dir(dir: &Path, trust_domain: &str) -> Result<Self, IdentityError> {
        Self::from_root(ca::load(dir)?, trust_domain)
    }

    pub(crate) fn from_root(root: RootCa, trust_domain: &str) -> Result<Self, IdentityError> {
        let cert_path = root.cert_path.clone();
        let problem = |problem: String| IdentityError::CaFile {
            path: cert_path.clone(),
            problem,
        };
        let issuer = Issuer::from_ca_cert_der(&root.cert, root.key)
            .map_err(|e| problem(format!("cannot sign with this CA: {e}")))?;
        let ca = Self {
            issuer,
            root: root.cert,
            not_before: root.not_before,
            not_after: root.not_after,
            trust_domain: trust_domain.to_string(),
            cert_path: cert_path.clone(),
        };
        ca.self_test()
            .map_err(|e| problem(format!("a certificate signed with this CA fails: {e}")))?;
        Ok(ca)
    }

    /// The root certificate, which peers must trust.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// When the CA certificate expires: no leaf is valid past it, none is signed after.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    fn self_test(&self) -> Result<(), String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let id = SpiffeId::new(&self.trust_domain, "outrider-system", "self-test")
            .map_err(|e| e.to_string())?;
        let request = SignRequest {
            id,
            public_key: key.subject_public_key_info().into(),
            ttl: Duration::from_secs(60),
        };
        let chain = self
            .issue(&request, SystemTime::now())
            .map_err(|e| e.to_string())?;
        let trust = TrustBundle::new(&self.trust_domain, std::slice::from_ref(&self.root))
            .map_err(|e| e.to_string())?;
        let (leaf, rest) = chain.split_first().ok_or("empty chain")?;
        trust
            .verify_server_chain(leaf, rest, UnixTime::now())
            .map_err(|e| e.to_string())
    }

    /// Signs a leaf as of `now`: empty subject, the SPIFFE ID as its only (URI) SAN,
    /// EKU serverAuth + clientAuth, valid from `now` - 1 min (not before the CA) to
    /// `now` + TTL (not after the CA). Chain: [leaf, root].
    pub fn issue(&self, request: &SignRequest, now: SystemTime) -> Result<CertChain, SignError> {
        let id = &request.id;
        if id.trust_domain() != self.trust_domain {
            return Err(SignError::Refused(format!(
                "{id} is not in trust domain {}",
                self.trust_domain
            )));
        }
        if request.ttl < MIN_TTL {
            return Err(SignError::Refused(format!(
                "lifetime {:?} is shorter than {MIN_TTL:?}",
                request.ttl
            )));
        }
        if self.not_after <= now {
            return Err(SignError::Unavailable(format!(
                "the CA certificate {} expired at {}",
                self.cert_path.display(),
                x509::rfc3339(self.not_after)
            )));
        }
        let public_key = SubjectPublicKeyInfo::from_der(request.public_key.as_ref())
            .map_err(|e| SignError::Refused(format!("unsupported public key: {e}")))?;
        let not_before = now
            .checked_sub(LEAF_BACKDATE)
            .unwrap_or(now)
            .max(self.not_before);
        let wanted_not_after = now + request.ttl;
        let not_after = wanted_not_after.min(self.not_after);
        if not_after < wanted_not_after {
            tracing::warn!(
                identity = %id,
                ca_not_after = %x509::rfc3339(self.not_after),
                "certificate lifetime cut short: the CA expires first"
            );
        }
        let uri = Ia5String::try_from(id.to_string())
            .map_err(|e| SignError::Refused(format!("{id}: {e}")))?;
        let leaf = self.sign_leaf(vec![SanType::URI(uri)], &public_key, not_before, not_after)?;
        Ok(vec![leaf, self.root.clone()])
    }

    /// The leaf itself, with any SANs (tests make malformed ones with it).
    pub(crate) fn sign_leaf(
        &self,
        sans: Vec<SanType>,
        public_key: &impl PublicKeyData,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertificateDer<'static>, SignError> {
        let mut params = CertificateParams::default();
        // An empty subject makes rcgen mark the SAN extension critical (RFC 5280 4.2.1.6).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(ca::random_serial());
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let leaf = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| SignError::Unavailable(format!("signing failed: {e}")))?;
        Ok(leaf.der().clone())
    }
}

impl Signer for LocalCa {
    fn sign(&self, request: SignRequest) -> SignFuture<'_> {
        // An ECDSA signature takes microseconds: no need for a blocking thread.
        Box::pin(async move { self.issue(&request, SystemTime::now()) })
    }

    fn describe(&self) -> String {
        format!("local CA {}", self.cert_path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::testing;

    fn request(id: &str, ttl: Duration) -> (KeyPair, SignRequest) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let request = SignRequest {
            id: SpiffeId::parse(id).unwrap(),
            public_key: key.subject_public_key_info().into(),
            ttl,
        };
        (key, request)
    }

    #[test]
    fn issues_a_spiffe_leaf_chained_to_the_root() {
        let ca = testing::ca("cluster.local");
        let (key, req) = request(
            "spiffe://cluster.local/ns/shop/sa/web",
            Duration::from_secs(3600),
        );
        let now = SystemTime::now();
        let chain = ca.issue(&req, now).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(&chain[1], ca.root());
        let leaf = x509::facts(&chain[0]).unwrap();
        assert_eq!(leaf.uris, vec!["spiffe://cluster.local/ns/shop/sa/web"]);
        assert!(!leaf.is_ca);
        assert_eq!(leaf.public_key, key.public_key_raw());
        let root = x509::facts(ca.root()).unwrap();
        // Backdated a minute, but never before the CA.
        let want_nb = (now - LEAF_BACKDATE).max(root.not_before);
        let got_nb = leaf
            .not_before
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let want = want_nb.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert!(got_nb.as_secs().abs_diff(want.as_secs()) <= 1);
        let ttl = leaf.not_after.duration_since(now).unwrap();
        assert!(ttl.as_secs() >= 3598 && ttl.as_secs() <= 3600, "{ttl:?}");

        let (_, parsed) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "empty subject → critical SAN");
        assert!(parsed.subject().iter().next().is_none());
    }

    #[test]
    fn refuses_foreign_trust_domains_and_clamps_to_the_ca() {
        let ca = testing::ca("cluster.local");
        let (_, req) = request("spiffe://other.td/ns/a/sa/b", Duration::from_secs(60));
        let err = ca.issue(&req, SystemTime::now()).unwrap_err().to_string();
        assert!(err.contains("not in trust domain cluster.local"), "{err}");

        let (_, req) = request(
            "spiffe://cluster.local/ns/a/sa/b",
            Duration::from_secs(100 * 365 * 24 * 3600),
        );
        let chain = ca.issue(&req, SystemTime::now()).unwrap();
        let leaf = x509::facts(&chain[0]).unwrap();
        let root = x509::facts(ca.root()).unwrap();
        assert_eq!(leaf.not_after, root.not_after);
    }
}
