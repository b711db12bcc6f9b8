//! The certificate manager: one certificate per identity (service account) with enrolled
//! pods on the node, reference-counted by those pods. `ensure` starts minting at once and
//! keeps it renewed (see `renew`); `release` stops when the last pod goes. Readers get
//! the current certificate lock-free of any renewal: a new handshake sees the newest one,
//! established connections keep the one they were made with.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use rustls::sign::CertifiedKey;
use tokio::{sync::watch, task::AbortHandle};

use super::{
    error::IdentityError,
    renew::{self, CertSlot, RenewPolicy, WorkloadCert},
    signer::Signer,
    spiffe::SpiffeId,
    trust::TrustBundle,
};

pub struct CertManager {
    signer: Arc<dyn Signer>,
    trust: TrustBundle,
    policy: RenewPolicy,
    entries: Mutex<HashMap<SpiffeId, Entry>>,
}

struct Entry {
    /// Pods using this identity.
    refs: usize,
    slot: CertSlot,
    task: AbortHandle,
}

/// One managed identity, for the admin API.
#[derive(Clone, Debug)]
pub struct CertStatus {
    pub id: SpiffeId,
    pub refs: usize,
    /// `None` until the first certificate arrives.
    pub cert: Option<Arc<WorkloadCert>>,
}

impl CertManager {
    pub fn new(signer: Arc<dyn Signer>, trust: TrustBundle, policy: RenewPolicy) -> Arc<Self> {
        Arc::new(Self {
            signer,
            trust,
            policy,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// Who signs: the sidecars' service signs with it too.
    pub(crate) fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    pub(crate) fn trust(&self) -> &TrustBundle {
        &self.trust
    }

    pub fn trust_domain(&self) -> &str {
        self.trust.trust_domain()
    }

    pub fn policy(&self) -> RenewPolicy {
        self.policy
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<SpiffeId, Entry>> {
        crate::sync::lock(&self.entries)
    }

    /// One more pod uses `id`. The first starts minting at once, in the background (call
    /// from within the tokio runtime); await [`Self::ready`] for the certificate.
    pub fn ensure(&self, id: &SpiffeId) {
        let mut entries = self.entries();
        if let Some(entry) = entries.get_mut(id) {
            entry.refs += 1;
            return;
        }
        let (slot, _) = watch::channel(None);
        let task = tokio::spawn(renew::run(
            id.clone(),
            self.signer.clone(),
            self.trust.clone(),
            self.policy,
            slot.clone(),
        ))
        .abort_handle();
        tracing::debug!(identity = %id, "certificate managed");
        entries.insert(
            id.clone(),
            Entry {
                refs: 1,
                slot,
                task,
            },
        );
    }

    /// One pod fewer uses `id`; the last one stops its renewal and forgets it.
    /// Connections already made with its certificate are not affected.
    pub fn release(&self, id: &SpiffeId) {
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(id) else {
            tracing::warn!(identity = %id, "release of an identity that is not managed");
            return;
        };
        entry.refs -= 1;
        if entry.refs == 0 {
            if let Some(entry) = entries.remove(id) {
                entry.task.abort();
            }
            tracing::debug!(identity = %id, "certificate no longer managed");
        }
    }

    pub(crate) fn is_managed(&self, id: &SpiffeId) -> bool {
        self.entries().contains_key(id)
    }

    /// The certificate and metadata now in use for `id`, if any.
    pub fn cert(&self, id: &SpiffeId) -> Option<Arc<WorkloadCert>> {
        self.entries().get(id)?.slot.borrow().clone()
    }

    /// What rustls should present for `id` now.
    pub fn current(&self, id: &SpiffeId) -> Option<Arc<CertifiedKey>> {
        self.cert(id).map(|c| c.key.clone())
    }

    pub fn not_after(&self, id: &SpiffeId) -> Option<SystemTime> {
        self.cert(id).map(|c| c.not_after)
    }

    /// Waits for `id`'s first certificate (at once if it has one). Wrap in a timeout.
    pub async fn ready(&self, id: &SpiffeId) -> Result<Arc<WorkloadCert>, IdentityError> {
        let mut rx = self.subscribe(id)?;
        let cert = match rx.wait_for(Option::is_some).await {
            Ok(cert) => cert.clone(),
            Err(_) => None,
        };
        cert.ok_or_else(|| IdentityError::Released(id.clone()))
    }

    /// Follows `id`'s certificate as it is renewed.
    pub fn subscribe(
        &self,
        id: &SpiffeId,
    ) -> Result<watch::Receiver<Option<Arc<WorkloadCert>>>, IdentityError> {
        self.entries()
            .get(id)
            .map(|e| e.slot.subscribe())
            .ok_or_else(|| IdentityError::NotManaged(id.clone()))
    }

    /// Every managed identity, sorted.
    pub(crate) fn snapshot(&self) -> Vec<CertStatus> {
        let mut all: Vec<CertStatus> = self
            .entries()
            .iter()
            .map(|(id, e)| CertStatus {
                id: id.clone(),
                refs: e.refs,
                cert: e.slot.borrow().clone(),
            })
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("signer", &self.signer.describe())
            .field("trust", &self.trust)
            .field("policy", &self.policy)
            .field("identities", &self.entries().len())
            .finish()
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        for entry in self.entries().values() {
            entry.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::{
        local_ca::LocalCa,
        signer::{SignFuture, SignRequest},
        testing,
    };

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "shop", sa).unwrap()
    }

    #[tokio::test]
    async fn mints_at_once_and_counts_references() {
        let (manager, _) = testing::manager("cluster.local", Duration::from_secs(3600));
        let web = id("web");
        assert!(matches!(
            manager.ready(&web).await,
            Err(IdentityError::NotManaged(_))
        ));
        manager.ensure(&web);
        manager.ensure(&web);
        let cert = tokio::time::timeout(Duration::from_secs(5), manager.ready(&web))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cert.id, web);
        assert_eq!(cert.key.cert.len(), 2);
        assert_eq!(manager.not_after(&web), Some(cert.not_after));
        let status = manager.snapshot();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].refs, 2);
        assert_eq!(
            status[0].cert.as_ref().map(|c| &c.serial),
            Some(&cert.serial)
        );
        assert!(cert.not_before < cert.issued_at && cert.issued_at < cert.not_after);

        manager.release(&web);
        assert!(manager.current(&web).is_some(), "one pod still uses it");
        manager.release(&web);
        assert!(manager.current(&web).is_none());
        assert!(!manager.is_managed(&web));
    }

    #[tokio::test]
    async fn renews_at_half_life() {
        let (manager, _) = testing::manager("cluster.local", Duration::from_secs(2));
        let web = id("web");
        manager.ensure(&web);
        let first = manager.ready(&web).await.unwrap();
        // Certificates have whole-second validity, so the real lifetime is 1–2 s.
        let life = first.not_after.duration_since(first.issued_at).unwrap();
        assert!(life > Duration::from_millis(900) && life <= Duration::from_secs(2));
        let mut rx = manager.subscribe(&web).unwrap();
        tokio::time::timeout(
            Duration::from_secs(4),
            rx.wait_for(|c| c.as_ref().is_some_and(|c| c.serial != first.serial)),
        )
        .await
        .unwrap()
        .unwrap();
        let renewed = SystemTime::now();
        let due = first.renew_at();
        assert_eq!(due, first.issued_at + life / 2);
        assert!(
            renewed >= due && renewed <= due + Duration::from_millis(400),
            "renewed at {renewed:?}, due at half life {due:?}"
        );
    }

    #[tokio::test]
    async fn failing_signer_keeps_the_old_certificate_and_backs_off() {
        let ca = Arc::new(testing::ca("cluster.local"));
        let flaky = testing::FailAfter::new(ca.clone(), 1);
        let trust = testing::trust_for(&ca, "cluster.local");
        let policy = RenewPolicy {
            ttl: Duration::from_secs(4),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_millis(400),
        };
        let manager = CertManager::new(flaky.clone(), trust, policy);
        let web = id("web");
        manager.ensure(&web);
        let first = manager.ready(&web).await.unwrap();
        // Renewal starts at ~2 s; retries at +0.1, +0.2, +0.4, +0.4 … until expiry at 4 s.
        tokio::time::sleep(Duration::from_millis(3300)).await;
        let now = manager.cert(&web).unwrap();
        assert_eq!(now.serial, first.serial, "the valid certificate is kept");
        let calls = flaky.calls();
        assert!(calls.len() >= 5, "{} calls", calls.len());
        let gaps: Vec<Duration> = calls.windows(2).skip(1).map(|w| w[1] - w[0]).collect();
        let ms = |d: &Duration| d.as_millis();
        assert!(ms(&gaps[0]) >= 90 && ms(&gaps[0]) < 300, "{gaps:?}");
        assert!(ms(&gaps[1]) >= 190 && ms(&gaps[1]) < 400, "{gaps:?}");
        assert!(ms(&gaps[2]) >= 390 && ms(&gaps[2]) < 600, "{gaps:?}");
        assert!(gaps.iter().all(|g| ms(g) < 600), "capped: {gaps:?}");
    }

    #[tokio::test]
    async fn a_bad_answer_from_the_signer_is_refused() {
        struct Liar(Arc<LocalCa>);
        impl Signer for Liar {
            fn sign(&self, mut request: SignRequest) -> SignFuture<'_> {
                request.id = SpiffeId::new("cluster.local", "shop", "admin").unwrap();
                self.0.sign(request)
            }
            fn describe(&self) -> String {
                "liar".to_string()
            }
        }
        let (_, ca) = testing::manager("cluster.local", Duration::from_secs(60));
        let trust = testing::trust_for(&ca, "cluster.local");
        let err = renew::mint(&Liar(ca), &trust, &id("web"), Duration::from_secs(60))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected exactly [spiffe://cluster.local/ns/shop/sa/web]"),
            "{err}"
        );
    }
}
