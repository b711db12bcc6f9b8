//! Handshakes over real loopback TCP (tokio-rustls) between configs built here: who is
//! accepted, who is refused and with what message, and rotation under live traffic.
use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, SanType, string::Ia5String};
use rustls::{
    ClientConfig, ProtocolVersion, ServerConfig,
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    version::TLS13,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::*;
use crate::identity::{
    Identity, ca, local_ca::LocalCa, manager::CertManager, renew::RenewPolicy, testing,
    trust::TrustBundle, x509,
};

const TD: &str = "cluster.local";

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "shop", sa).unwrap()
}

struct Outcome {
    server: io::Result<server::TlsStream<TcpStream>>,
    client: io::Result<client::TlsStream<TcpStream>>,
}

impl Outcome {
    /// The client's view: in TLS 1.3 a client may finish before the server refuses its
    /// certificate; the refusal then arrives on the first read.
    async fn client_result(self) -> io::Result<client::TlsStream<TcpStream>> {
        let mut client = self.client?;
        client.write_all(b"x").await?;
        let mut buf = [0u8; 1];
        match client.read(&mut buf).await {
            Ok(_) => Ok(client),
            Err(err) => Err(err),
        }
    }
}

async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let accepted = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = TlsConnector::from(client)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await;
    let server = tokio::time::timeout(Duration::from_secs(5), accepted)
        .await
        .unwrap()
        .unwrap();
    Outcome { server, client }
}

/// Echoes until the peer closes.
fn echo(mut stream: server::TlsStream<TcpStream>) {
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

async fn ping(client: &mut client::TlsStream<TcpStream>, msg: &[u8]) {
    client.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, msg);
}

fn failure(err: &io::Error) -> TlsFailure {
    TlsFailure::from_io(err).unwrap_or_else(|| panic!("not a TLS error: {err}"))
}

fn server_serial(client: &client::TlsStream<TcpStream>) -> String {
    let leaf = &client.get_ref().1.peer_certificates().unwrap()[0];
    x509::facts(leaf).unwrap().serial
}

/// Two nodes' managers sharing one CA, each holding one ready workload identity.
async fn two_nodes(ttl: Duration) -> (Arc<CertManager>, Arc<CertManager>, Arc<LocalCa>) {
    let ca = Arc::new(testing::ca(TD));
    let dest = testing::manager_with(&ca, TD, ttl);
    let source = testing::manager_with(&ca, TD, ttl);
    dest.ensure(&id("web"));
    source.ensure(&id("curl"));
    dest.ready(&id("web")).await.unwrap();
    source.ready(&id("curl")).await.unwrap();
    (dest, source, ca)
}

#[tokio::test]
async fn mutual_handshake_learns_both_identities() {
    let (dest, source, _) = two_nodes(Duration::from_secs(3600)).await;
    // Through the agent-facing handle, as the tunnel uses it.
    let (dest, source) = (Identity::new(dest), Identity::new(source));
    let outcome = handshake(
        dest.server_config(&id("web")).unwrap(),
        source.client_config(&id("curl"), &id("web")).unwrap(),
    )
    .await;
    let server = outcome.server.unwrap();
    let mut client = outcome.client.unwrap();

    let (_, conn) = server.get_ref();
    assert_eq!(dest.peer_identity(conn).unwrap(), id("curl"));
    assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    let (_, conn) = client.get_ref();
    assert_eq!(source.peer_identity(conn).unwrap(), id("web"));
    assert_eq!(peer_identity(conn, TD).unwrap(), id("web"));
    assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(conn.peer_certificates().unwrap().len(), 2, "leaf + root");
    assert!(matches!(
        peer_identity(conn, "other.td"),
        Err(PeerIdentityError::ForeignTrustDomain { .. })
    ));

    echo(server);
    ping(&mut client, b"hello through mTLS").await;
}

#[tokio::test]
async fn a_server_from_an_unknown_ca_is_refused() {
    let (_, source, _) = two_nodes(Duration::from_secs(3600)).await;
    let (stranger, _) = testing::manager(TD, Duration::from_secs(3600));
    stranger.ensure(&id("web"));
    stranger.ready(&id("web")).await.unwrap();
    let outcome = handshake(
        server_config(&stranger, &id("web")).unwrap(),
        client_config(&source, &id("curl"), &id("web")).unwrap(),
    )
    .await;
    let client_err = outcome.client.err().unwrap();
    assert_eq!(failure(&client_err), TlsFailure::UnknownCa);
    assert!(
        failure(&client_err)
            .to_string()
            .contains("not signed by our CA")
    );
    let server_err = outcome.server.err().unwrap();
    assert_eq!(
        failure(&server_err),
        TlsFailure::PeerRefused(rustls::AlertDescription::UnknownCA)
    );
}

#[tokio::test]
async fn a_client_from_an_unknown_ca_is_refused() {
    let (dest, _, ca) = two_nodes(Duration::from_secs(3600)).await;
    // The stranger trusts our root (so it accepts our server) but its own cert is
    // signed by another CA.
    let other = Arc::new(testing::ca(TD));
    let trust = TrustBundle::new(TD, &[other.root().clone(), ca.root().clone()]).unwrap();
    let stranger = CertManager::new(other, trust, RenewPolicy::with_ttl(Duration::from_secs(60)));
    stranger.ensure(&id("curl"));
    stranger.ready(&id("curl")).await.unwrap();
    let outcome = handshake(
        server_config(&dest, &id("web")).unwrap(),
        client_config(&stranger, &id("curl"), &id("web")).unwrap(),
    )
    .await;
    assert_eq!(
        failure(&outcome.server.err().unwrap()),
        TlsFailure::UnknownCa
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let (dest, source, _) = two_nodes(Duration::from_secs(3600)).await;
    // "nobody" was never ensured: the resolver has nothing to present.
    let outcome = handshake(
        server_config(&dest, &id("web")).unwrap(),
        client_config(&source, &id("nobody"), &id("web")).unwrap(),
    )
    .await;
    let server_err = outcome.server.as_ref().err().unwrap();
    assert_eq!(failure(server_err), TlsFailure::NoCertificate);
    assert_eq!(
        failure(server_err).to_string(),
        "peer presented no certificate"
    );
    let client_err = outcome.client_result().await.err().unwrap();
    assert_eq!(failure(&client_err), TlsFailure::PeerWantedCertificate);
}

#[tokio::test]
async fn the_wrong_server_identity_is_refused_by_the_client() {
    let (dest, source, _) = two_nodes(Duration::from_secs(3600)).await;
    let outcome = handshake(
        server_config(&dest, &id("web")).unwrap(),
        client_config(&source, &id("curl"), &id("db")).unwrap(),
    )
    .await;
    let err = outcome.client.err().unwrap();
    let message = failure(&err).to_string();
    assert_eq!(
        message,
        "wrong peer identity: expected spiffe://cluster.local/ns/shop/sa/db, \
         peer presented spiffe://cluster.local/ns/shop/sa/web"
    );
    // The raw rustls error carries the same words.
    assert!(
        err.to_string()
            .contains("expected spiffe://cluster.local/ns/shop/sa/db"),
        "{err}"
    );
    assert!(outcome.server.is_err());
}

#[tokio::test]
async fn a_client_of_another_trust_domain_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    ca::init(tmp.path(), &ca::InitOptions::default()).unwrap();
    let ours = Arc::new(LocalCa::from_dir(tmp.path(), TD).unwrap());
    let theirs = Arc::new(LocalCa::from_dir(tmp.path(), "other.td").unwrap());
    let dest = testing::manager_with(&ours, TD, Duration::from_secs(60));
    let source = testing::manager_with(&theirs, "other.td", Duration::from_secs(60));
    let other = SpiffeId::new("other.td", "shop", "curl").unwrap();
    dest.ensure(&id("web"));
    source.ensure(&other);
    dest.ready(&id("web")).await.unwrap();
    source.ready(&other).await.unwrap();
    let outcome = handshake(
        server_config(&dest, &id("web")).unwrap(),
        client_config(&source, &other, &id("web")).unwrap(),
    )
    .await;
    let err = failure(&outcome.server.err().unwrap()).to_string();
    assert_eq!(
        err,
        "peer identity spiffe://other.td/ns/shop/sa/curl is not in our trust domain cluster.local"
    );
}

#[tokio::test]
async fn an_expired_certificate_is_neither_presented_nor_accepted() {
    let ca = Arc::new(testing::ca(TD));
    // One 2-second certificate, then the CA is down: it expires in place.
    let failing = testing::FailAfter::new(ca.clone(), 1);
    let dest = CertManager::new(
        failing,
        testing::trust_for(&ca, TD),
        RenewPolicy::with_ttl(Duration::from_secs(2)),
    );
    let source = testing::manager_with(&ca, TD, Duration::from_secs(3600));
    dest.ensure(&id("web"));
    source.ensure(&id("curl"));
    let cert = dest.ready(&id("web")).await.unwrap();
    source.ready(&id("curl")).await.unwrap();
    let wait = cert
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(1100)).await;
    assert_eq!(dest.cert(&id("web")).unwrap().serial, cert.serial, "kept");
    // Our own expired certificate is not presented: the handshake fails on our side.
    let outcome = handshake(
        server_config(&dest, &id("web")).unwrap(),
        client_config(&source, &id("curl"), &id("web")).unwrap(),
    )
    .await;
    assert!(outcome.server.is_err());
    let err = failure(&outcome.client.err().unwrap());
    assert!(matches!(err, TlsFailure::PeerRefused(_)), "{err:?}");

    // A peer's expired certificate is refused.
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let now = std::time::SystemTime::now();
    let uri = SanType::URI(Ia5String::try_from(id("web").to_string()).unwrap());
    let leaf = ca
        .sign_leaf(
            vec![uri],
            &key,
            now - Duration::from_secs(600),
            now - Duration::from_secs(60),
        )
        .unwrap();
    let trust = testing::trust_for(&ca, TD);
    let mut expired = ServerConfig::builder_with_provider(trust.provider().clone())
        .with_protocol_versions(&[&TLS13])
        .unwrap()
        .with_client_cert_verifier(verify::ClientIdentityVerifier::new(trust))
        .with_single_cert(
            vec![leaf, ca.root().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    expired.alpn_protocols = vec![ALPN_H2.to_vec()];
    let outcome = handshake(
        Arc::new(expired),
        client_config(&source, &id("curl"), &id("web")).unwrap(),
    )
    .await;
    let err = failure(&outcome.client.err().unwrap());
    assert!(matches!(err, TlsFailure::Expired(_)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("peer certificate expired (not valid after "),
        "{err}"
    );
}

/// A server presenting a hand-made leaf (signed by our CA) with the given SANs.
fn server_with_sans(ca: &LocalCa, sans: Vec<SanType>) -> Arc<ServerConfig> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let now = std::time::SystemTime::now();
    let leaf = ca
        .sign_leaf(
            sans,
            &key,
            now - Duration::from_secs(60),
            now + Duration::from_secs(600),
        )
        .unwrap();
    let trust = testing::trust_for(ca, TD);
    let mut config = ServerConfig::builder_with_provider(trust.provider().clone())
        .with_protocol_versions(&[&TLS13])
        .unwrap()
        .with_client_cert_verifier(verify::ClientIdentityVerifier::new(trust))
        .with_single_cert(
            vec![leaf, ca.root().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}

#[tokio::test]
async fn malformed_or_missing_spiffe_ids_are_refused() {
    let (_, source, ca) = two_nodes(Duration::from_secs(3600)).await;
    let uri = |s: &str| SanType::URI(Ia5String::try_from(s).unwrap());
    let cases = [
        (
            vec![uri("spiffe://cluster.local/ns/shop")],
            "peer certificate has a malformed SPIFFE ID: invalid SPIFFE ID \
             \"spiffe://cluster.local/ns/shop\": path must be exactly",
        ),
        (
            vec![SanType::DnsName("web.shop".try_into().unwrap())],
            "peer certificate has no SPIFFE ID (no URI SAN)",
        ),
        (
            vec![
                uri("spiffe://cluster.local/ns/shop/sa/web"),
                uri("spiffe://cluster.local/ns/shop/sa/db"),
            ],
            "peer certificate has 2 URI SANs",
        ),
    ];
    for (sans, want) in cases {
        let outcome = handshake(
            server_with_sans(&ca, sans),
            client_config(&source, &id("curl"), &id("web")).unwrap(),
        )
        .await;
        let err = failure(&outcome.client.err().unwrap()).to_string();
        assert!(err.starts_with(want), "{err}");
    }
}

#[tokio::test]
async fn rotation_serves_new_handshakes_and_keeps_old_connections() {
    let (dest, source, _) = two_nodes(Duration::from_secs(3)).await;
    let server = server_config(&dest, &id("web")).unwrap();
    let client = client_config(&source, &id("curl"), &id("web")).unwrap();

    let outcome = handshake(server.clone(), client.clone()).await;
    echo(outcome.server.unwrap());
    let mut old = outcome.client.unwrap();
    let first = server_serial(&old);
    assert_eq!(first, dest.cert(&id("web")).unwrap().serial);
    ping(&mut old, b"before").await;

    // Renewal at half life (~1.5 s).
    let mut rx = dest.subscribe(&id("web")).unwrap();
    tokio::time::timeout(
        Duration::from_secs(4),
        rx.wait_for(|c| c.as_ref().is_some_and(|c| c.serial != first)),
    )
    .await
    .unwrap()
    .unwrap();
    let renewed = dest.cert(&id("web")).unwrap().serial.clone();

    // The same configs: a new handshake sees the new certificate...
    let outcome = handshake(server, client).await;
    echo(outcome.server.unwrap());
    let mut new = outcome.client.unwrap();
    assert_eq!(server_serial(&new), renewed);
    assert_ne!(renewed, first);
    ping(&mut new, b"after").await;
    // ...and the connection made before keeps working with the old one.
    ping(&mut old, b"still here").await;
    assert_eq!(server_serial(&old), first);
}

#[tokio::test]
async fn client_configs_are_cached_per_pair() {
    let (_, source, _) = two_nodes(Duration::from_secs(3600)).await;
    let configs = ClientConfigs::new(source.clone());
    let a = configs.get(&id("curl"), &id("web")).unwrap();
    let b = configs.get(&id("curl"), &id("web")).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    configs.get(&id("curl"), &id("db")).unwrap();
    assert_eq!(configs.cached(), 2);
    source.release(&id("curl"));
    configs.get(&id("other"), &id("db")).unwrap();
    assert_eq!(
        configs.cached(),
        1,
        "entries of released sources are dropped"
    );
}
