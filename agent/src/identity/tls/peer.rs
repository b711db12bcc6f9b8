//! The identity a peer proves in a handshake: reading its SPIFFE ID from the certificate,
//! checking it, and turning handshake errors into one clear line for logs.
use std::{fmt, io, sync::Arc};

use rustls::{
    AlertDescription, CertificateError, CommonState, OtherError, pki_types::CertificateDer,
};

use crate::identity::{
    spiffe::{SpiffeId, SpiffeIdError},
    trust::RootValidityError,
    x509,
};

#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("peer presented no certificate")]
    NoCertificate,
    #[error("peer certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("peer certificate has no SPIFFE ID (no URI SAN)")]
    NoSpiffeId,
    #[error("peer certificate has {0} URI SANs; a SPIFFE certificate has exactly one")]
    ManyUris(usize),
    #[error("peer certificate has a malformed SPIFFE ID: {0}")]
    Malformed(SpiffeIdError),
    #[error("peer identity {presented} is not in our trust domain {expected}")]
    ForeignTrustDomain {
        presented: SpiffeId,
        expected: String,
    },
    #[error("wrong peer identity: expected {expected}, peer presented {presented}")]
    WrongIdentity {
        expected: SpiffeId,
        presented: SpiffeId,
    },
}

/// rustls prints a certificate error's Debug form: make it the message.
impl fmt::Debug for PeerIdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PeerIdentityError {
    /// As a rustls verification error (the peer gets a `certificate_unknown` alert).
    pub(super) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// The SPIFFE ID of a certificate: exactly one URI SAN, a well-formed workload ID.
pub(crate) fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, PeerIdentityError> {
    let facts = x509::facts(cert).map_err(PeerIdentityError::Unreadable)?;
    match facts.uris.as_slice() {
        [] => Err(PeerIdentityError::NoSpiffeId),
        [uri] => SpiffeId::parse(uri).map_err(PeerIdentityError::Malformed),
        many => Err(PeerIdentityError::ManyUris(many.len())),
    }
}

/// The peer's identity after a handshake (either side), checked to be a well-formed
/// workload ID of `trust_domain`.
pub fn peer_identity(
    conn: &CommonState,
    trust_domain: &str,
) -> Result<SpiffeId, PeerIdentityError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(PeerIdentityError::NoCertificate)?;
    let id = spiffe_id_of(leaf)?;
    check_trust_domain(id, trust_domain)
}

pub(super) fn check_trust_domain(
    id: SpiffeId,
    trust_domain: &str,
) -> Result<SpiffeId, PeerIdentityError> {
    if id.trust_domain() == trust_domain {
        Ok(id)
    } else {
        Err(PeerIdentityError::ForeignTrustDomain {
            presented: id,
            expected: trust_domain.to_string(),
        })
    }
}

/// Why a handshake failed, in words for a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// We required a certificate and the peer sent none.
    NoCertificate,
    /// The peer required a certificate and we had none to send.
    PeerWantedCertificate,
    /// The peer's chain does not lead to our root.
    UnknownCa,
    /// A signature does not verify: the certificate's (by a CA with our root's name but
    /// another key) or the handshake's.
    BadSignature,
    /// The peer's certificate expired (detail: when).
    Expired(String),
    NotYetValid(String),
    /// The chain was fine but the identity was not (missing, malformed, wrong).
    Identity(PeerIdentityError),
    /// The peer refused us, e.g. it does not trust our CA or our identity.
    PeerRefused(AlertDescription),
    Other(String),
}

impl TlsFailure {
    /// Classifies an error from tokio-rustls' `accept`/`connect` (or a later read).
    /// `None` if it is not a TLS error (e.g. the connection was reset).
    pub(crate) fn from_io(err: &io::Error) -> Option<Self> {
        let inner = err.get_ref()?.downcast_ref::<rustls::Error>()?;
        Some(Self::from_rustls(inner))
    }

    pub(crate) fn from_rustls(err: &rustls::Error) -> Self {
        use rustls::Error as E;
        match err {
            E::NoCertificatesPresented => Self::NoCertificate,
            E::AlertReceived(AlertDescription::CertificateRequired) => Self::PeerWantedCertificate,
            E::AlertReceived(alert) => Self::PeerRefused(*alert),
            E::InvalidCertificate(cert) => match cert {
                CertificateError::UnknownIssuer => Self::UnknownCa,
                CertificateError::BadSignature => Self::BadSignature,
                CertificateError::Expired => Self::Expired(String::new()),
                CertificateError::ExpiredContext { time, not_after } => Self::Expired(format!(
                    "not valid after {}, now {}",
                    rfc3339_unix(not_after.as_secs()),
                    rfc3339_unix(time.as_secs())
                )),
                CertificateError::NotValidYet => Self::NotYetValid(String::new()),
                CertificateError::NotValidYetContext { time, not_before } => {
                    Self::NotYetValid(format!(
                        "not valid before {}, now {}",
                        rfc3339_unix(not_before.as_secs()),
                        rfc3339_unix(time.as_secs())
                    ))
                }
                CertificateError::Other(OtherError(other)) => {
                    if let Some(id) = other.downcast_ref::<PeerIdentityError>() {
                        Self::Identity(id.clone())
                    } else if let Some(root) = other.downcast_ref::<RootValidityError>() {
                        // Not the peer's fault: our own root is out of its dates.
                        Self::Other(root.to_string())
                    } else {
                        Self::Other(format!("invalid peer certificate: {other}"))
                    }
                }
                other => Self::Other(format!("invalid peer certificate: {other}")),
            },
            other => Self::Other(other.to_string()),
        }
    }
}

fn rfc3339_unix(secs: u64) -> String {
    x509::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCertificate => write!(f, "peer presented no certificate"),
            Self::PeerWantedCertificate => {
                write!(f, "peer requires a client certificate and we had none")
            }
            Self::UnknownCa => write!(
                f,
                "peer certificate is not signed by our CA (unknown issuer)"
            ),
            Self::BadSignature => write!(
                f,
                "peer signature does not verify (certificate from another CA with our CA's name?)"
            ),
            Self::Expired(when) if when.is_empty() => write!(f, "peer certificate expired"),
            Self::Expired(when) => write!(f, "peer certificate expired ({when})"),
            Self::NotYetValid(when) if when.is_empty() => {
                write!(f, "peer certificate not valid yet")
            }
            Self::NotYetValid(when) => write!(f, "peer certificate not valid yet ({when})"),
            Self::Identity(err) => write!(f, "{err}"),
            Self::PeerRefused(alert) => write!(f, "peer refused the handshake (alert {alert:?})"),
            Self::Other(msg) => write!(f, "{msg}"),
        }
    }
}
