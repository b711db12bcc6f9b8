//! Certificate checks for both ends of a tunnel: webpki verifies the chain to our roots
//! (via rustls), then the SPIFFE ID is checked — on the client, that the server is
//! exactly the identity expected; on the server, that the client is a well-formed
//! workload of our trust domain. Both refuse chains to a root of ours that has expired
//! (see `trust`). DNS/IP server names are ignored: SPIFFE certificates
//! carry none and tunnels go to pod IPs.
use std::sync::Arc;

use rustls::{
    DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};

use super::peer::{self, PeerIdentityError};
use crate::identity::{spiffe::SpiffeId, trust::TrustBundle};

/// Client side: the server must chain to our roots and be exactly `expected`.
#[derive(Debug)]
pub struct ServerIdentityVerifier {
    trust: TrustBundle,
    expected: SpiffeId,
}

impl ServerIdentityVerifier {
    pub fn new(trust: TrustBundle, expected: SpiffeId) -> Arc<Self> {
        Arc::new(Self { trust, expected })
    }

    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.trust.provider().signature_verification_algorithms
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.trust
            .verify_server_chain(end_entity, intermediates, now)?;
        let presented = peer::spiffe_id_of(end_entity).map_err(PeerIdentityError::into_rustls)?;
        if presented != self.expected {
            return Err(PeerIdentityError::WrongIdentity {
                expected: self.expected.clone(),
                presented,
            }
            .into_rustls());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// Server side: a client certificate is required, must chain to our roots (webpki,
/// clientAuth) and name a workload of our trust domain. Who may connect is policy's
/// business, after the handshake.
#[derive(Debug)]
pub struct ClientIdentityVerifier {
    trust: TrustBundle,
}

impl ClientIdentityVerifier {
    pub fn new(trust: TrustBundle) -> Arc<Self> {
        Arc::new(Self { trust })
    }
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.trust.client_chain().root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.trust
            .verify_client_chain(end_entity, intermediates, now)?;
        let presented = peer::spiffe_id_of(end_entity).map_err(PeerIdentityError::into_rustls)?;
        peer::check_trust_domain(presented, self.trust.trust_domain())
            .map_err(PeerIdentityError::into_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.trust
            .client_chain()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.trust
            .client_chain()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.client_chain().supported_verify_schemes()
    }
}
