//! Reading X.509 certificates (x509-parser): the facts the identity layer needs — URI
//! SANs, validity, serial, public key, CA-ness — and time conversions for logs.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use x509_parser::{extensions::GeneralName, parse_x509_certificate, time::ASN1Time};

/// What one certificate says, owned.
#[derive(Clone, Debug)]
pub struct CertFacts {
    /// Serial number, lowercase hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The raw public key (the SubjectPublicKeyInfo's bit string).
    pub public_key: Vec<u8>,
    /// Every URI SAN, in order.
    pub uris: Vec<String>,
    /// basicConstraints CA:true.
    pub is_ca: bool,
    /// keyUsage keyCertSign, or `None` if the certificate has no keyUsage extension.
    pub key_cert_sign: Option<bool>,
}

/// Parses one DER certificate. Errors are short phrases for a log line.
pub fn facts(der: &[u8]) -> Result<CertFacts, String> {
    let (rest, cert) =
        parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".to_string());
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName extension: {e}"))?;
    let mut uris = Vec::new();
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => uris.push((*uri).to_string()),
                GeneralName::Invalid(..) => {
                    return Err("subjectAltName holds an undecodable name".to_string());
                }
                _ => {}
            }
        }
    }
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| format!("bad basicConstraints extension: {e}"))?
        .is_some_and(|bc| bc.value.ca);
    let key_cert_sign = cert
        .key_usage()
        .map_err(|e| format!("bad keyUsage extension: {e}"))?
        .map(|ku| ku.value.key_cert_sign());
    let validity = cert.validity();
    Ok(CertFacts {
        serial: hex(cert.raw_serial()),
        not_before: system_time(validity.not_before),
        not_after: system_time(validity.not_after),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        uris,
        is_ca,
        key_cert_sign,
    })
}

fn system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// The subject's distinguished name (`CN=Outrider Root CA`), or why it cannot be read.
pub fn subject(der: &[u8]) -> Result<String, String> {
    let (_, cert) =
        parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(cert.subject().to_string())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3339 (UTC) for logs and messages.
pub fn rfc3339(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_clear_error() {
        let err = facts(b"hello").unwrap_err();
        assert!(err.contains("not an X.509 certificate"), "{err}");
    }

    #[test]
    fn formats_times_and_serials() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(rfc3339(t), "1970-01-01T00:00:01Z");
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }
}
