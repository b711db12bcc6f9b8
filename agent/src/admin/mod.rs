//! The admin API (`outrider.admin.v1`, gRPC): how operators and `outriderctl` see and
//! steer the agent. `service` answers the calls, `convert` makes the messages, `policies`
//! stores policies applied through it. This file owns the transports — the unix socket
//! (mode 0600, the default) and optionally TCP with mutual TLS — and who may call:
//! on the socket, root, the agent's own user and `admin.allowUids` (by the peer's
//! credentials, besides the file mode); on TCP, whoever holds a client certificate
//! from `admin.tcp.clientCaFile`. Server reflection and `grpc.health.v1` are served
//! beside the API, so grpcurl and generated clients work without the .proto files.
//! `unix_socket::admission` bounds the socket's connections (a limit, a preface timeout, silent ones
//! shed first), and HTTP/2 keepalive ends clients that stopped answering. `socket` serves
//! the unix socket, where any gRPC client works with its defaults (gRPC's C core sends
//! the socket's path as `:authority`); TCP is served by tonic's `Server`.
mod convert;
mod policies;
mod service;
mod socket;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use outrider_proto::admin::v1::{self as pb, admin_server::AdminServer};
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Status,
    service::{InterceptorLayer, Routes},
    transport::{
        Certificate, Identity, Server, ServerTlsConfig,
        server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo},
    },
};

pub use service::AdminService;

/// Each connection is PINGed after this long without traffic…
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// …and closed if the PING is not answered within this.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

use crate::{
    config::AdminConfig,
    unix_socket::admission::{Admission, accept_loop},
};

/// The running admin API; dropping it stops the servers and removes the socket.
pub struct AdminHandle {
    socket: PathBuf,
    stop: CancellationToken,
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Who may call over the unix socket.
#[derive(Clone)]
struct Callers {
    uids: Arc<[u32]>,
}

impl Callers {
    fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        if request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .is_some()
        {
            // Mutual TLS: the handshake required a client certificate from the client CA.
            return Ok(request);
        }
        let Some(info) = request.extensions().get::<UdsConnectInfo>() else {
            return Err(Status::permission_denied("unknown transport"));
        };
        let Some(cred) = info.peer_cred else {
            return Err(Status::permission_denied(
                "the caller's credentials cannot be read",
            ));
        };
        if self.uids.contains(&cred.uid()) {
            Ok(request)
        } else {
            tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "admin API call refused");
            Err(Status::permission_denied(format!(
                "user id {} may not use the admin API (allowed: root, the agent's user, admin.allowUids)",
                cred.uid()
            )))
        }
    }
}

/// Starts the admin API on the socket (and TCP, if configured).
pub async fn start(
    service: AdminService,
    config: &AdminConfig,
    instance: &str,
) -> anyhow::Result<AdminHandle> {
    let service = Arc::new(service);
    let socket = config.socket_path(instance);
    let listener = crate::unix_socket::bind(&socket, 0o600, "admin.socket")?;
    let stop = CancellationToken::new();
    let mut uids = vec![0, nix::unistd::geteuid().as_raw()];
    uids.extend(&config.allow_uids);
    let callers = Callers { uids: uids.into() };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let routes = Routes::new(AdminServer::from_arc(service))
        .add_service(health_service)
        .add_service(reflection().build_v1().context("server reflection")?)
        .add_service(reflection().build_v1alpha().context("server reflection")?)
        .prepare();
    let callers_only = InterceptorLayer::new(move |r| callers.check(r));

    let admission = Admission::new(
        "admin socket",
        config.max_connections,
        Duration::from_millis(config.preface_timeout_ms),
    );
    let incoming = accept_loop(listener, admission, stop.clone());
    tokio::spawn(socket::serve(
        incoming,
        tower::Layer::layer(&callers_only, routes.clone()),
        socket::http2_builder(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT),
        stop.clone(),
    ));
    tracing::info!(socket = %socket.display(), "admin API listening");

    if let Some(tcp) = &config.tcp {
        let read = |path: &Path| {
            std::fs::read(path)
                .with_context(|| format!("admin.tcp: cannot read {}", path.display()))
        };
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                read(&tcp.cert_file)?,
                read(&tcp.key_file)?,
            ))
            .client_ca_root(Certificate::from_pem(read(&tcp.client_ca_file)?))
            .client_auth_optional(false);
        let server = Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .tls_config(tls)
            .context("admin.tcp: TLS set-up")?
            .layer(callers_only)
            .add_routes(routes);
        let listener = tokio::net::TcpListener::bind(tcp.addr)
            .await
            .with_context(|| format!("admin.tcp.addr: cannot listen on {}", tcp.addr))?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let done = stop.clone();
        tokio::spawn(async move {
            if let Err(error) = server
                .serve_with_incoming_shutdown(incoming, done.cancelled_owned())
                .await
            {
                tracing::error!(%error, "the admin API's TCP server stopped");
            }
        });
        tracing::info!(addr = %tcp.addr, "admin API listening on TCP (mutual TLS)");
    }
    Ok(AdminHandle { socket, stop })
}
