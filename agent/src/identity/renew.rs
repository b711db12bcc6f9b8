//! One identity's certificate over time: mint (fresh key in the agent, signed by the
//! [`Signer`], checked), renew at half life, and on failure keep the valid certificate
//! and retry with capped exponential backoff, never sleeping past its expiry.
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use rustls::{
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime},
    sign::CertifiedKey,
};
use tokio::sync::watch;

use super::{
    signer::{SignError, SignRequest, Signer},
    spiffe::SpiffeId,
    trust::TrustBundle,
    x509::{self, rfc3339},
};

/// Never renew more often than this, even if a certificate is cut very short.
const MIN_RENEW_DELAY: Duration = Duration::from_millis(500);

/// A workload's current certificate and what the admin API shows about it.
#[derive(Debug)]
pub struct WorkloadCert {
    pub id: SpiffeId,
    /// What rustls presents: chain [leaf, root] and the leaf's signing key.
    pub key: Arc<CertifiedKey>,
    /// The leaf's serial number, lowercase hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When the agent received it; half life counts from here.
    pub issued_at: SystemTime,
}

impl WorkloadCert {
    /// When the manager replaces it: half way from issue to expiry.
    pub fn renew_at(&self) -> SystemTime {
        half_life(self.issued_at, self.not_after)
    }
}

fn half_life(issued_at: SystemTime, not_after: SystemTime) -> SystemTime {
    issued_at + not_after.duration_since(issued_at).unwrap_or_default() / 2
}

/// How certificates are requested and retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewPolicy {
    /// Requested lifetime.
    pub ttl: Duration,
    /// First retry delay after a failure; doubles on each further failure.
    pub retry_initial: Duration,
    /// Cap of the retry delay.
    pub retry_max: Duration,
}

impl RenewPolicy {
    /// 1 s doubling up to 1 min.
    pub(crate) fn with_ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("generating the key: {0}")]
    Key(String),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("the signer's certificate is unusable: {0}")]
    Check(String),
}

/// Makes a key, has it signed and checks the result: the leaf carries our key and
/// exactly our SPIFFE ID, is valid now and chains to the trust bundle.
pub(crate) async fn mint(
    signer: &dyn Signer,
    trust: &TrustBundle,
    id: &SpiffeId,
    ttl: Duration,
) -> Result<WorkloadCert, MintError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| MintError::Key(e.to_string()))?;
    let request = SignRequest {
        id: id.clone(),
        public_key: key.subject_public_key_info().into(),
        ttl,
    };
    let chain = signer.sign(request).await?;
    let check = |m: String| MintError::Check(m);
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| check("empty certificate chain".to_string()))?;
    let facts = x509::facts(leaf).map_err(check)?;
    if facts.public_key != key.public_key_raw() {
        return Err(check("the leaf does not carry our public key".to_string()));
    }
    if facts.uris != [id.to_string()] {
        return Err(check(format!(
            "the leaf's URI SANs are {:?}, expected exactly [{id}]",
            facts.uris
        )));
    }
    let now = SystemTime::now();
    if facts.not_after <= now {
        return Err(check(format!(
            "the leaf expired at {}",
            rfc3339(facts.not_after)
        )));
    }
    trust
        .verify_server_chain(leaf, rest, UnixTime::now())
        .map_err(|e| check(format!("the chain does not verify against our roots: {e}")))?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let certified = CertifiedKey::from_der(chain, private, trust.provider())
        .map_err(|e| MintError::Key(e.to_string()))?;
    Ok(WorkloadCert {
        id: id.clone(),
        key: Arc::new(certified),
        serial: facts.serial,
        not_before: facts.not_before,
        not_after: facts.not_after,
        issued_at: now,
    })
}

pub type CertSlot = watch::Sender<Option<Arc<WorkloadCert>>>;

/// Runs until aborted: keeps `slot` holding a valid certificate for `id`.
pub async fn run(
    id: SpiffeId,
    signer: Arc<dyn Signer>,
    trust: TrustBundle,
    policy: RenewPolicy,
    slot: CertSlot,
) {
    let mut backoff = policy.retry_initial;
    let mut failures: u32 = 0;
    loop {
        let delay = match mint(signer.as_ref(), &trust, &id, policy.ttl).await {
            Ok(cert) => {
                let cert = Arc::new(cert);
                let delay = cert
                    .renew_at()
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .max(MIN_RENEW_DELAY);
                let first = slot.borrow().is_none();
                let (serial, not_after) = (cert.serial.clone(), rfc3339(cert.not_after));
                slot.send_replace(Some(cert));
                if first {
                    tracing::info!(identity = %id, %serial, %not_after, renew_in = ?delay,
                        "certificate issued");
                } else {
                    tracing::info!(identity = %id, %serial, %not_after, renew_in = ?delay,
                        "certificate renewed");
                }
                backoff = policy.retry_initial;
                failures = 0;
                delay
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let now = SystemTime::now();
                let current = slot.borrow().clone();
                let remaining = current
                    .as_ref()
                    .and_then(|c| c.not_after.duration_since(now).ok())
                    .filter(|r| !r.is_zero());
                let delay = retry_delay(backoff, remaining);
                let signer = signer.describe();
                match (&current, remaining) {
                    (Some(cert), Some(left)) => tracing::warn!(identity = %id, %error, %signer,
                        failures, retry_in = ?delay, serial = %cert.serial, expires_in = ?left,
                        "certificate renewal failed; keeping the current certificate"),
                    (Some(cert), None) => tracing::error!(identity = %id, %error, %signer,
                        failures, retry_in = ?delay, serial = %cert.serial,
                        expired_at = %rfc3339(cert.not_after),
                        "certificate expired and renewal keeps failing; handshakes as this identity fail"),
                    (None, _) => tracing::warn!(identity = %id, %error, %signer, failures,
                        retry_in = ?delay, "certificate issuance failed; no certificate yet"),
                }
                backoff = backoff.saturating_mul(2).min(policy.retry_max);
                delay
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// The backoff, but no later than the current certificate's expiry (`remaining`).
fn retry_delay(backoff: Duration, remaining: Option<Duration>) -> Duration {
    match remaining {
        Some(left) => backoff.min(left),
        None => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a log line or a debug dump of a certificate could print: never its key.
    #[tokio::test]
    async fn formatting_a_certificate_never_shows_its_private_key() {
        let ca = crate::identity::testing::ca("cluster.local");
        let trust = crate::identity::testing::trust_for(&ca, "cluster.local");
        let id = SpiffeId::new("cluster.local", "shop", "web").unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let request = SignRequest {
            id: id.clone(),
            public_key: key.subject_public_key_info().into(),
            ttl: Duration::from_secs(60),
        };
        let chain = ca.issue(&request, SystemTime::now()).unwrap();
        let pkcs8 = key.serialize_der();
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.clone()));
        let cert = WorkloadCert {
            id,
            key: Arc::new(CertifiedKey::from_der(chain, private, trust.provider()).unwrap()),
            serial: "01".to_string(),
            not_before: SystemTime::now(),
            not_after: SystemTime::now(),
            issued_at: SystemTime::now(),
        };
        // The P-256 scalar: the OCTET STRING after ECPrivateKey's version 1.
        let at = pkcs8
            .windows(5)
            .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
            .unwrap();
        let scalar = &pkcs8[at + 5..at + 37];
        let hex: String = scalar.iter().map(|b| format!("{b:02x}")).collect();
        // As a byte list prints it (a derived Debug of a Vec<u8>), also in hex.
        let list = |text: String| text.trim_matches(['[', ']']).to_string();
        let decimal = list(format!("{:?}", &scalar[..8]));
        let hex_list = list(format!("{:02x?}", &scalar[..8]));
        assert!(format!("{pkcs8:?}").contains(&decimal), "the needle works");
        assert!(format!("{pkcs8:02x?}").contains(&hex_list));
        for text in [
            format!("{cert:?}"),
            format!("{cert:#?}"),
            format!("{:?}", cert.key),
        ] {
            // The certificate itself is there (as DER bytes): the key is not.
            assert!(text.contains("CertifiedKey"), "{text}");
            assert!(!text.contains(&hex), "hex key in {text}");
            assert!(!text.contains(&hex.to_uppercase()), "hex key in {text}");
            assert!(!text.contains(&decimal), "key bytes in {text}");
            assert!(!text.contains(&hex_list), "key bytes in {text}");
            assert!(!text.contains("PRIVATE KEY"), "{text}");
        }
    }

    #[test]
    fn retry_never_sleeps_past_expiry() {
        let s = Duration::from_secs;
        assert_eq!(retry_delay(s(8), None), s(8));
        assert_eq!(retry_delay(s(8), Some(s(3))), s(3));
        assert_eq!(retry_delay(s(2), Some(s(3))), s(2));
    }

    #[test]
    fn renews_at_half_life() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            half_life(t, t + Duration::from_secs(100)),
            t + Duration::from_secs(50)
        );
        assert_eq!(half_life(t, t - Duration::from_secs(1)), t);
    }
}
