//! The proxy: per-pod listeners opened inside each enrolled pod (`pod`), and what
//! happens to the connections they accept, one module per way in:
//!
//! - `outbound`: the app's own connections — accept, route (`route`), connect (to pods
//!   in the mesh through a mutual-TLS tunnel: `outbound::tunnel`; elsewhere plain),
//!   register (`connections`), relay (`relay`), record;
//! - `inbound`: connections to the app — `inbound::plaintext` from outside the mesh,
//!   `inbound::tunnel` through HBONE — checked where they came in, delivered (`deliver`,
//!   from the client's IP, `return_path` bringing the replies back), then registered
//!   with their guard (`enforce`, which decides them again on every change), relayed and
//!   recorded.
//!
//! `relay` detects HTTP (`http`: request by request) or copies (`copy`; a bulk flow
//! between two sockets is moved in the kernel, `splice`); `app_socket`
//! counts an HTTP connection's bytes on the app's socket. Failures are typed (`error`)
//! with Istio's response flags; telemetry gets plain facts at registration and end.
//! `watched` keeps a busy task's rarely-ready futures (shutdown, revocation) cheap to poll.
pub mod app_socket;
pub mod authorize;
pub mod balance;
pub mod connections;
pub mod copy;
pub mod deliver;
pub mod enforce;
pub mod error;
pub mod hbone;
pub mod http;
pub mod inbound;
pub mod listeners;
pub mod outbound;
pub mod pod;
pub mod probes;
pub mod relay;
pub mod return_path;
pub mod route;
pub mod splice;
pub mod steering;
pub mod watched;

use std::{io, net::SocketAddr, time::Duration};

use tokio::net::{TcpSocket, TcpStream};

pub use listeners::PodListeners;
pub use pod::{PodProxy, Shared};

/// `socket.connect(dst)` within `timeout`, with errors that name the destination.
pub async fn connect_with_timeout(
    socket: TcpSocket,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(io::Error::new(err.kind(), format!("connect {dst}: {err}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect {dst}: timed out after {timeout:?}"),
        )),
    }
}

/// Closes `stream` with a reset rather than a FIN: how a refused or failed connection is
/// passed on to the app.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
