//! Moving a registered connection's bytes, whichever side it is on: the protocol is
//! detected first (without waiting on server-first protocols); HTTP is proxied request by
//! request through a [`RequestHook`] (policy at the destination, counting and logging
//! everywhere), anything else is copied. Both count the bytes the app's socket carried
//! into the connection's counters (client → server `forward`, server → client
//! `backward`): opaque ones as `copy` writes them, HTTP ones on the app's socket itself
//! ([`AppSocket`]: the request and response heads included). The agent can close a
//! connection at any time (its cancel token). At the destination, the connection's
//! [`Guard`] decides it: as TCP once it is found opaque, or request by request.
use std::sync::Arc;

use super::{
    app_socket::AppSocket,
    connections::Connection,
    copy::{self, Side},
    enforce::Guard,
    error::{Error, Refusal},
    http::{self, Hook, InvalidRequest, Report, RequestInfo, Verdict},
    watched::Watched,
};
use crate::telemetry::{
    facts::{Direction, RequestFacts, ResponseFlags},
    recorder::Recorder,
    refusals::Reason,
};

/// Counts, logs and (at the destination, with its guard) decides the HTTP requests of
/// one connection.
pub struct RequestHook {
    conn: Arc<Connection>,
    recorder: Recorder,
    /// Decides the connection into a pod and its requests (403 for a denied one); the
    /// source's side decides nothing.
    guard: Option<Arc<Guard>>,
}

impl RequestHook {
    pub fn new(conn: Arc<Connection>, recorder: &Recorder, guard: Option<Arc<Guard>>) -> Self {
        Self {
            conn,
            recorder: recorder.clone(),
            guard,
        }
    }

    /// Counts and logs (once) a request refused at this pod: the request's own access
    /// line follows with its status.
    fn refused(&self, request: &RequestInfo, refusal: &Refusal) {
        let facts = &self.conn.facts;
        self.recorder
            .refused(&facts.pod, facts.direction.as_str(), refusal.why);
        // A refusal's line stands alone (the pod, the peer, the reason), as the docs say.
        tracing::info!(
            pod = %facts.pod,
            peer = %facts.src,
            peer_identity = facts.peer_identity().unwrap_or(""),
            method = %request.method,
            path = request.path(),
            authority = request.authority.as_deref().unwrap_or(""),
            refusal = refusal.why.as_str(),
            reason = %refusal.reason,
            "request refused"
        );
    }
}

impl Hook for RequestHook {
    fn on_request(&self, request: &RequestInfo) -> Verdict {
        let Some(guard) = &self.guard else {
            return Verdict::Forward;
        };
        match guard.request(request) {
            Ok(lease) => Verdict::Leased(lease),
            Err(refusal) => {
                self.refused(request, &refusal);
                if refusal.why == Reason::StrictPlaintext {
                    // Not for this request only: the connection is plaintext.
                    self.conn.close(refusal.failure());
                }
                Verdict::rbac_denied()
            }
        }
    }

    fn on_invalid(&self, request: &RequestInfo, error: &InvalidRequest) {
        let why = if error.is_path() {
            Reason::InvalidPath
        } else {
            Reason::InvalidHost
        };
        self.refused(request, &Refusal::new(why, error.to_string()));
    }

    fn on_complete(&self, report: Report) {
        // The connection's byte counters are not touched here: its app socket counts the
        // bytes on the wire, heads included (see `relay`).
        let status = report.status.as_u16();
        self.conn.request_done(status);
        let request = &report.request;
        let facts = RequestFacts {
            method: request.method.as_str(),
            path: request.path(),
            authority: request.authority.as_deref().unwrap_or(""),
            protocol: version_name(request.version),
            status,
            request_bytes: report.request_bytes,
            response_bytes: report.response_bytes,
            duration: report.duration,
            denied: report.denied,
            flags: report.failure.map_or(ResponseFlags::None, |f| f.flags()),
        };
        self.recorder
            .request(&self.conn.facts, &self.conn.metrics, &facts);
    }
}

/// As access logs name HTTP versions.
fn version_name(version: ::http::Version) -> &'static str {
    match version {
        ::http::Version::HTTP_09 => "HTTP/0.9",
        ::http::Version::HTTP_10 => "HTTP/1.0",
        ::http::Version::HTTP_11 => "HTTP/1.1",
        ::http::Version::HTTP_2 => "HTTP/2.0",
        ::http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

/// Relays between `client` (the side that opened the connection) and `upstream`. The
/// app's socket is `client` on an outbound connection and `upstream` on an inbound one.
/// The hook's guard decides a connection that turns out not to be HTTP (refused: counted,
/// both ends reset). HTTP is served with `settings` (at the destination: requests
/// normalized).
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    buffer: usize,
    hook: RequestHook,
    settings: http::Settings,
) -> Result<(), Error>
where
    C: Side + Send + 'static,
    U: Side + Send + 'static,
{
    let conn = hook.conn.clone();
    let detected = http::detect(client, upstream, &settings.detect).await;
    match detected.protocol.http() {
        None => {
            let (mut client, mut upstream) = (detected.client, detected.app);
            if let Some(Err(refusal)) = hook.guard.as_ref().map(|g| g.opaque()) {
                client.abort();
                upstream.abort();
                let facts = &conn.facts;
                hook.recorder
                    .refused(&facts.pod, facts.direction.as_str(), refusal.why);
                // Its reason reaches the admin API's closed event, as any closing's does.
                conn.close(refusal.failure());
                return Err(Error::Refused(refusal));
            }
            copy::bidirectional(
                client,
                upstream,
                buffer,
                &conn.counters,
                conn.cancel_token(),
            )
            .await
            .map_err(Error::Relay)
        }
        Some(version) => {
            let hook = Arc::new(hook);
            // Polled at every poll of the connection's task: watched (see `watched`).
            let shutdown = Watched::new(conn.cancel_token().clone().cancelled_owned());
            // Count on the app's socket (what detection read from it is replayed through
            // the counter, so it is counted once).
            let served = match conn.facts.direction {
                Direction::Outbound => {
                    let client = AppSocket::new(detected.client, conn.clone(), true);
                    http::serve(client, detected.app, version, hook, &settings, shutdown).await
                }
                Direction::Inbound => {
                    let app = AppSocket::new(detected.app, conn.clone(), false);
                    http::serve(detected.client, app, version, hook, &settings, shutdown).await
                }
            };
            served.map_err(Error::Http)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        proxy::connections::{NewConnection, Registry},
        telemetry::{
            facts::{ConnectionFacts, Transport},
            metrics::{Party, Reporter, TcpLabels},
        },
    };
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    const REQUEST: &[u8] = b"POST /upload HTTP/1.1\r\nHost: db\r\nContent-Length: 5\r\n\r\nhello";
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";

    /// What each app wrote and read on its socket.
    #[derive(Debug, PartialEq)]
    struct Wire {
        client_wrote: u64,
        client_read: u64,
        server_read: u64,
        server_wrote: u64,
    }

    /// A plaintext connection of `direction` from `shop/client`, to register.
    fn new_connection(registry: &Registry, direction: Direction) -> NewConnection {
        let reporter = match direction {
            Direction::Outbound => Reporter::Source,
            Direction::Inbound => Reporter::Destination,
        };
        NewConnection {
            id: registry.next_id(),
            facts: ConnectionFacts {
                pod: "shop/client".into(),
                direction,
                transport: Transport::Plaintext,
                src: "198.19.1.12:40000".parse().unwrap(),
                dst: "198.19.2.11:80".parse().unwrap(),
                src_identity: Some("spiffe://cluster.local/ns/shop/sa/client".into()),
                dst_identity: None,
            },
            labels: TcpLabels::new(reporter, Party::unknown(), Party::unknown(), false),
            guard: None,
        }
    }

    /// Relays `conn` between two app sockets: the client app's, the server app's, and
    /// the relay's task.
    async fn start(
        registry: &Registry,
        conn: &Arc<Connection>,
    ) -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<Result<(), Error>>,
    ) {
        let (client_app, client) = pair().await;
        let (upstream, server_app) = pair().await;
        let hook = RequestHook::new(conn.clone(), registry.recorder(), None);
        let relayed = tokio::spawn(relay(
            client,
            upstream,
            64 * 1024,
            hook,
            http::Settings::default(),
        ));
        (client_app, server_app, relayed)
    }

    /// One HTTP/1 exchange, client app ⇄ relay ⇄ server app, on a connection of
    /// `direction`: what the apps' sockets carried, and the connection's counters.
    async fn exchange(direction: Direction) -> (Wire, u64, u64) {
        let registry = Registry::new(Arc::default(), Default::default());
        let registration = registry.register(new_connection(&registry, direction));
        let conn = registration.connection.clone();
        let (mut client_app, mut server_app, relayed) = start(&registry, &conn).await;
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"hello") {
                let n = server_app.read(&mut buf).await.unwrap();
                assert!(n > 0, "request cut short: {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            server_app.write_all(RESPONSE).await.unwrap();
            let rest = server_app.read_to_end(&mut got).await.unwrap_or(0);
            assert_eq!(rest, 0, "nothing after the request");
            (got.len() as u64, RESPONSE.len() as u64)
        });
        client_app.write_all(REQUEST).await.unwrap();
        client_app.shutdown().await.unwrap();
        let mut response = Vec::new();
        client_app.read_to_end(&mut response).await.unwrap();
        assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"), "{response:?}");
        assert!(response.ends_with(b"\r\n\r\nabc"), "{response:?}");
        relayed.await.unwrap().unwrap();
        let (server_read, server_wrote) = server.await.unwrap();
        let wire = Wire {
            client_wrote: REQUEST.len() as u64,
            client_read: response.len() as u64,
            server_read,
            server_wrote,
        };
        let counters = &conn.counters;
        (
            wire,
            counters.forward.load(Relaxed),
            counters.backward.load(Relaxed),
        )
    }

    /// A kept-alive HTTP/1 connection waiting for its next request ends when the
    /// connection is closed (a policy change, a drain): its shutdown is watched while
    /// the task sleeps, not only polled when something else wakes it.
    #[tokio::test]
    async fn an_idle_http_connection_ends_when_it_is_closed() {
        let registry = Registry::new(Arc::default(), Default::default());
        let registration = registry.register(new_connection(&registry, Direction::Outbound));
        let conn = registration.connection.clone();
        let (mut client_app, mut server_app, relayed) = start(&registry, &conn).await;
        const KEPT: &[u8] = b"GET / HTTP/1.1\r\nHost: db\r\n\r\n";
        client_app.write_all(KEPT).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\n") {
            let n = server_app.read(&mut buf).await.unwrap();
            assert!(n > 0, "request cut short: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        server_app.write_all(RESPONSE).await.unwrap();
        let mut response = Vec::new();
        while !response.ends_with(b"abc") {
            let n = client_app.read(&mut buf).await.unwrap();
            assert!(n > 0, "response cut short: {response:?}");
            response.extend_from_slice(&buf[..n]);
        }
        // Both apps keep their sockets open: only the close can end it.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!relayed.is_finished(), "the connection is kept alive");
        conn.cancel_token().cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), relayed)
            .await
            .expect("the idle connection ends once closed")
            .unwrap()
            .unwrap();
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), client_app.read(&mut buf))
            .await
            .expect("the client is told")
            .unwrap();
        assert_eq!(n, 0, "the client sees the connection end");
    }

    #[tokio::test]
    async fn http_is_counted_on_the_client_apps_socket_outbound() {
        let (wire, forward, backward) = exchange(Direction::Outbound).await;
        // Heads included: far more than the 5 + 3 body bytes.
        assert_eq!(
            (forward, backward),
            (wire.client_wrote, wire.client_read),
            "{wire:?}"
        );
    }

    #[tokio::test]
    async fn http_is_counted_on_the_server_apps_socket_inbound() {
        let (wire, forward, backward) = exchange(Direction::Inbound).await;
        assert_eq!(
            (forward, backward),
            (wire.server_read, wire.server_wrote),
            "{wire:?}"
        );
    }
}
