//! Delivering to the pod's app: a connection made inside the pod, marked as the agent's,
//! from the pod's loopback (127.0.0.6 over IPv4, as Istio does; ::1 over IPv6), to the
//! address the client asked for. It arrives on loopback, so the inbound `sk_lookup`
//! program leaves it alone.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tokio::net::TcpStream;

use super::pod::PodProxy;

const DELIVERY_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

pub async fn to_app(pod: &PodProxy, dst: SocketAddr) -> io::Result<TcpStream> {
    let source = match dst.ip() {
        IpAddr::V4(_) => SocketAddr::from((DELIVERY_V4, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
    };
    let socket = pod.netns.tcp_socket(dst, pod.shared.mark)?;
    socket.bind(source)?;
    super::connect_with_timeout(socket, dst, pod.shared.connect_timeout).await
}
