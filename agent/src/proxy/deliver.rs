//! Delivering to the pod's app: a connection made inside the pod, marked as the agent's,
//! from the pod's loopback (127.0.0.6 over IPv4, as Istio does; ::1 over IPv6), to the
//! address the client asked for. It arrives on loopback, so the inbound `sk_lookup`
//! program leaves it alone.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use tokio::net::{TcpSocket, TcpStream};

use super::pod::PodProxy;

const DELIVERY_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

pub async fn to_app(pod: &PodProxy, dst: SocketAddr) -> io::Result<TcpStream> {
    let source = match dst.ip() {
        IpAddr::V4(_) => SocketAddr::from((DELIVERY_V4, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
    };
    let socket = pod.netns.tcp_socket(dst, pod.shared.mark)?;
    port_at_connect(&socket)?;
    socket.bind(source)?;
    super::connect_with_timeout(socket, dst, pod.shared.connect_timeout).await
}

/// `IP_BIND_ADDRESS_NO_PORT` (as Envoy sets it on bound upstream sockets): the source
/// port is chosen at `connect`, for this destination, rather than at `bind`, where the
/// kernel must find a port no socket on the source address holds — TIME_WAIT ones
/// included. With thousands of deliveries open and thousands more just closed, that
/// search took seconds per connection and then fails with EADDRINUSE.
fn port_at_connect(socket: &TcpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int we own, of the length given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
