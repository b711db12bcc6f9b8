//! Test helpers: in-memory CAs, managers and trust bundles.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use super::{
    ca,
    local_ca::LocalCa,
    manager::CertManager,
    renew::RenewPolicy,
    signer::{SignError, SignFuture, SignRequest, Signer},
    trust::TrustBundle,
};

/// A fresh CA, valid from ten days ago for a year.
pub fn ca(trust_domain: &str) -> LocalCa {
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let (root, _) = ca::generate("test root", now - 10 * day, now + 365 * day).unwrap();
    LocalCa::from_root(root, trust_domain).unwrap()
}

pub(crate) fn trust_for(ca: &LocalCa, trust_domain: &str) -> TrustBundle {
    TrustBundle::new(trust_domain, &[ca.root().clone()]).unwrap()
}

/// A manager signing with `ca`, retrying fast.
pub(crate) fn manager_with(
    ca: &Arc<LocalCa>,
    trust_domain: &str,
    ttl: Duration,
) -> Arc<CertManager> {
    let policy = RenewPolicy {
        ttl,
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(1),
    };
    CertManager::new(ca.clone(), trust_for(ca, trust_domain), policy)
}

/// A manager with a CA of its own.
pub fn manager(trust_domain: &str, ttl: Duration) -> (Arc<CertManager>, Arc<LocalCa>) {
    let ca = Arc::new(ca(trust_domain));
    (manager_with(&ca, trust_domain, ttl), ca)
}

/// Signs through `ca` for the first `good` requests, then fails; records each request.
pub struct FailAfter {
    pub ca: Arc<LocalCa>,
    good: usize,
    calls: Mutex<Vec<Instant>>,
}

impl FailAfter {
    pub fn new(ca: Arc<LocalCa>, good: usize) -> Arc<Self> {
        Arc::new(Self {
            ca,
            good,
            calls: Mutex::new(Vec::new()),
        })
    }

    /// When each request came.
    pub fn calls(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().clone()
    }
}

impl Signer for FailAfter {
    fn sign(&self, request: SignRequest) -> SignFuture<'_> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Instant::now());
            calls.len()
        };
        Box::pin(async move {
            if n <= self.good {
                self.ca.sign(request).await
            } else {
                Err(SignError::Unavailable("test CA is down".to_string()))
            }
        })
    }

    fn describe(&self) -> String {
        "failing test CA".to_string()
    }
}
