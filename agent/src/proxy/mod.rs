//! The proxy: per-pod listeners opened inside each enrolled pod (`pod`), and what
//! happens to the connections they accept — `outbound` (the app's own connections: on
//! through a mutual-TLS tunnel to pods in the mesh, else plain), `inbound` (plaintext from
//! outside the mesh, under the pod's mTLS mode), `tunnel` (HBONE: both ends of the
//! mutual-TLS HTTP/2 tunnel) — with `deliver` connecting to the pod's app (from the
//! client's IP, `return_path` bringing the replies back), `copy`
//! moving bytes and `app_socket` counting an HTTP connection's on the app's socket.
pub mod app_socket;
pub mod authorize;
pub mod balance;
pub mod connections;
pub mod copy;
pub mod deliver;
pub mod destination;
pub mod enforce;
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
pub mod steering;
pub mod tunnel;

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
