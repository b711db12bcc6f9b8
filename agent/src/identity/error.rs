//! What can go wrong in the identity layer outside a handshake: the CA directory, the
//! trust bundle, signing, waiting for a certificate. Every message names the path or
//! identity it is about.
use std::path::PathBuf;

use super::spiffe::SpiffeId;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The CA directory itself: missing, unreadable, not a directory, or holding no CA.
    #[error("CA directory {path}: {problem}")]
    CaDir { path: PathBuf, problem: String },
    /// One file of the CA: unreadable, not PEM, not a CA, key not matching, expired.
    #[error("CA file {path}: {problem}")]
    CaFile { path: PathBuf, problem: String },
    /// `ca init` would replace an existing file.
    #[error("{path} already exists; pass --force to replace the CA")]
    CaExists { path: PathBuf },
    /// `ca init` could not write.
    #[error("writing {path}: {source}")]
    CaWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Making a certificate or key failed (rcgen).
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("trust bundle: {0}")]
    TrustBundle(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// `CertManager::ready` for an identity nobody asked for with `ensure`.
    #[error("no certificate is managed for {0} (ensure was not called)")]
    NotManaged(SpiffeId),
    /// The identity was released while someone waited for its first certificate.
    #[error("{0} was released before its first certificate was issued")]
    Released(SpiffeId),
}
