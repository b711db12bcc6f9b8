//! The one seam between the agent and whoever signs workload certificates: the built-in
//! CA ([`super::LocalCa`]) today, an external CA later. Object-safe and async, so the
//! manager holds an `Arc<dyn Signer>` and never knows which it has.
use std::{future::Future, pin::Pin, time::Duration};

use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};

use super::spiffe::SpiffeId;

/// What the agent asks the CA for. The private key never leaves the agent.
#[derive(Clone, Debug)]
pub struct SignRequest {
    pub id: SpiffeId,
    /// The leaf's public key, a DER `SubjectPublicKeyInfo`.
    pub public_key: SubjectPublicKeyInfoDer<'static>,
    /// Requested lifetime; the CA may cut it short (e.g. at its own expiry).
    pub ttl: Duration,
}

/// The certificate chain, leaf first, then any intermediates, then the root.
pub type CertChain = Vec<CertificateDer<'static>>;

pub type SignFuture<'a> = Pin<Box<dyn Future<Output = Result<CertChain, SignError>> + Send + 'a>>;

pub trait Signer: Send + Sync + 'static {
    /// Signs a leaf for `request.id` over `request.public_key`.
    fn sign(&self, request: SignRequest) -> SignFuture<'_>;

    /// Names the signer in logs, e.g. `local CA /var/run/secrets/outrider/ca`.
    fn describe(&self) -> String;
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum SignError {
    /// The CA will not sign this request (wrong trust domain, bad key, policy).
    #[error("CA refused: {0}")]
    Refused(String),
    /// The CA could not be reached or failed; worth retrying.
    #[error("CA unavailable: {0}")]
    Unavailable(String),
}
