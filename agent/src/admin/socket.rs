//! Serves the admin API on its unix socket: hyper's HTTP/2 server, not tonic's `Server`
//! (which the TCP transport keeps), for one setting tonic cannot pass on. gRPC clients on
//! gRPC's C core (Python, Ruby, PHP, C++, C#) and grpc-java send the socket's path as
//! `:authority` (`run%2Foutrider%2Fadmin.sock`, `/run/outrider/admin.sock`), which h2
//! refuses as malformed (`RST_STREAM` `PROTOCOL_ERROR`). On a unix socket the authority
//! names nothing, so this server ignores one that is not a URI authority
//! (`ignore_invalid_authority`, our patch to h2 and hyper: vendor/README.md); every other
//! check of a request stays. Each request carries its connection's [`UdsConnectInfo`],
//! as tonic's server attaches it, so that `Callers` can decide who may call.
use std::{convert::Infallible, io, time::Duration};

use hyper::{body::Incoming, server::conn::http2};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::UnixStream, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{
    body::Body,
    transport::server::{Connected, UdsConnectInfo},
};
use tower::{Service, ServiceExt};

use crate::unix_socket::admission::Guarded;

/// The HTTP/2 server of the socket's connections: keepalive PINGs every `interval`,
/// answered within `timeout`, and an invalid `:authority` ignored.
pub fn http2_builder(interval: Duration, timeout: Duration) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(interval)
        .keep_alive_timeout(timeout)
        .ignore_invalid_authority(true);
    builder
}

/// Serves `service` on each connection from `incoming` until `stop`; then the open
/// connections finish their requests (HTTP/2 GOAWAY) and close.
pub async fn serve<S, B>(
    mut incoming: mpsc::Receiver<io::Result<Guarded<UnixStream>>>,
    service: S,
    server: http2::Builder<TokioExecutor>,
    stop: CancellationToken,
) where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = incoming.recv() => accepted,
        };
        let io = match accepted {
            Some(Ok(io)) => io,
            Some(Err(error)) => {
                tracing::debug!(%error, "admin socket: accept failed");
                continue;
            }
            None => return,
        };
        let info: UdsConnectInfo = io.connect_info().uds;
        let service = service
            .clone()
            .map_request(move |mut request: http::Request<Incoming>| {
                request.extensions_mut().insert(info.clone());
                request.map(Body::new)
            });
        let conn = server.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let mut stopping = false;
            let ended = loop {
                tokio::select! {
                    ended = conn.as_mut() => break ended,
                    () = stop.cancelled(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%error, "admin socket: connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        sync::{Arc, Mutex},
    };

    use tokio::net::UnixListener;

    use super::*;
    use crate::{
        raw_h2::{Answer, PROTOCOL_ERROR, RawH2},
        unix_socket::admission::{Admission, accept_loop},
    };

    /// What the service saw of each request: its URI's authority, and whether it came
    /// with the caller's credentials.
    type Seen = Arc<Mutex<Vec<(Option<String>, bool)>>>;

    struct TestSocket {
        _dir: tempfile::TempDir,
        path: PathBuf,
        seen: Seen,
        stop: CancellationToken,
    }

    impl Drop for TestSocket {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    impl TestSocket {
        /// The socket's server as `admin::start` runs it (with the option set to
        /// `ignore_invalid_authority`), answering every request with an empty 200.
        fn start(ignore_invalid_authority: bool) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("admin.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let stop = CancellationToken::new();
            let admission = Admission::new("admin socket", 8, Duration::from_secs(5));
            let incoming = accept_loop(listener, admission, stop.clone());
            let seen = Seen::default();
            let log = seen.clone();
            let service = tower::service_fn(move |request: http::Request<Body>| {
                let authority = request.uri().authority().map(|a| a.to_string());
                let info = request.extensions().get::<UdsConnectInfo>();
                let cred = info.and_then(|i| i.peer_cred).is_some();
                log.lock().unwrap().push((authority, cred));
                async { Ok::<_, Infallible>(http::Response::new(Body::empty())) }
            });
            let mut server = http2_builder(Duration::from_secs(30), Duration::from_secs(10));
            server.ignore_invalid_authority(ignore_invalid_authority);
            tokio::spawn(serve(incoming, service, server, stop.clone()));
            Self {
                _dir: dir,
                path,
                seen,
                stop,
            }
        }

        async fn connect(&self) -> RawH2<UnixStream> {
            let stream = UnixStream::connect(&self.path).await.unwrap();
            RawH2::handshake(stream).await.unwrap()
        }
    }

    /// A gRPC call's request headers with `authority`, as a client would send them.
    fn grpc(authority: Option<&str>) -> Vec<(&str, &str)> {
        let mut headers = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/outrider.admin.v1.Admin/GetVersion"),
        ];
        headers.extend(authority.map(|a| (":authority", a)));
        headers.extend([("content-type", "application/grpc"), ("te", "trailers")]);
        headers
    }

    #[tokio::test]
    async fn a_socket_path_as_authority_is_ignored_and_a_host_kept() {
        let socket = TestSocket::start(true);
        let mut conn = socket.connect().await;
        let authorities = [
            // gRPC's C core (Python, Ruby, C++…) since 1.57: the path, percent-encoded
            // (grpcio 1.85.3 sends `unix:/run/x.sock`'s as `run%2Fx.sock`), and so
            // with its leading slash.
            Some("run%2Foutrider%2Fadmin.sock"),
            Some("%2Frun%2Foutrider%2Fadmin.sock"),
            // grpc-java, older grpc-go, CSI tools: the path as it is.
            Some("/run/outrider/admin.sock"),
            // grpc-go and tonic clients.
            Some("localhost"),
            None,
        ];
        for (i, authority) in authorities.into_iter().enumerate() {
            let stream = 2 * i as u32 + 1;
            conn.send(stream, &grpc(authority)).await.unwrap();
            assert_eq!(
                conn.answer(stream).await.unwrap(),
                Answer::Response,
                "{authority:?}"
            );
        }
        let localhost = Some("localhost".to_string());
        assert_eq!(
            *socket.seen.lock().unwrap(),
            [
                (None, true),
                (None, true),
                (None, true),
                (localhost, true),
                (None, true)
            ]
        );
    }

    /// What the option changes: without it, the socket's path is a malformed request.
    #[tokio::test]
    async fn without_the_option_a_socket_path_as_authority_is_refused() {
        let socket = TestSocket::start(false);
        let mut conn = socket.connect().await;
        conn.send(1, &grpc(Some("run%2Foutrider%2Fadmin.sock")))
            .await
            .unwrap();
        assert_eq!(conn.answer(1).await.unwrap(), Answer::Reset(PROTOCOL_ERROR));
        conn.send(3, &grpc(Some("localhost"))).await.unwrap();
        assert_eq!(conn.answer(3).await.unwrap(), Answer::Response);
        assert_eq!(socket.seen.lock().unwrap().len(), 1);
    }

    /// Requests malformed otherwise are refused as before: each costs its own stream,
    /// or for an error h2 takes as the connection's, only its own connection.
    #[tokio::test]
    async fn malformed_requests_are_still_refused_and_disturb_nothing_else() {
        let socket = TestSocket::start(true);
        let mut conn = socket.connect().await;
        let path = Some("/run/outrider/admin.sock");
        let no_path: Vec<_> = grpc(path)
            .into_iter()
            .filter(|(n, _)| *n != ":path")
            .collect();
        let refused = [
            no_path,
            [grpc(path), vec![("connection", "close")]].concat(),
            [grpc(path), vec![("te", "gzip")]].concat(),
            // A CONNECT's authority is its target: it must be one.
            vec![
                (":method", "CONNECT"),
                (":authority", "/run/outrider/admin.sock"),
            ],
        ];
        for (i, headers) in refused.iter().enumerate() {
            let stream = 2 * i as u32 + 1;
            conn.send(stream, headers).await.unwrap();
            assert_eq!(
                conn.answer(stream).await.unwrap(),
                Answer::Reset(PROTOCOL_ERROR),
                "{headers:?}"
            );
        }
        conn.send(9, &grpc(path)).await.unwrap();
        assert_eq!(conn.answer(9).await.unwrap(), Answer::Response);
        // An upper-case header name ends its connection, and no other.
        let mut doomed = socket.connect().await;
        let upper = [grpc(path), vec![("Bad-Name", "1")]].concat();
        doomed.send(1, &upper).await.unwrap();
        assert_eq!(
            doomed.answer(1).await.unwrap(),
            Answer::GoAway(PROTOCOL_ERROR)
        );
        conn.send(11, &grpc(path)).await.unwrap();
        assert_eq!(conn.answer(11).await.unwrap(), Answer::Response);
        let mut other = socket.connect().await;
        other.send(1, &grpc(path)).await.unwrap();
        assert_eq!(other.answer(1).await.unwrap(), Answer::Response);
        assert_eq!(socket.seen.lock().unwrap().len(), 3, "only the good ones");
    }
}
