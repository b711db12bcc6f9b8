//! Delivering to the pod's app: a connection made inside the pod, to the address the
//! client asked for, from the client's own IP — as ztunnel delivers — where the pod's
//! namespace allows (`sourceIp: client`, the default). The socket is transparent (it may
//! bind an address the pod does not hold), bound to `lo` and marked
//! `capture.deliveryMark`: only that mark routes the pod's own IP over `lo` (see
//! `return_path`), so the delivery arrives on `lo` and the inbound `sk_lookup` program,
//! which passes what comes in on `lo`, leaves it alone; the app's replies come back
//! over `lo` too. The port is the kernel's choice, as with ztunnel: at `connect` for a
//! tunnelled client (cheap with thousands of deliveries from one pod), at `bind` for a
//! plaintext one. The plaintext client's own connection sits in the pod under the same
//! addresses (`sk_lookup` keeps its destination), and `connect` would pick the very port
//! the client's kernel picked (same hash of the same addresses), whose mirror the
//! kernel does not check: the delivery's SYN would land on the client's connection.
//!
//! Otherwise, from the pod's loopback (127.0.0.6 over IPv4, as Istio's sidecars; ::1
//! over IPv6), marked as the agent's: when the namespace says `sourceIp: loopback`, when
//! the client is the pod itself, of the other family or link-local, after the pod has
//! left the mesh, and when the kernel refuses — logged once per pod. A refused way back
//! or transparent socket keeps the pod's deliveries on loopback from then on; a refused
//! bind to one client's address, that delivery only.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::net::{TcpSocket, TcpStream};

use super::{pod::PodProxy, return_path::ReturnPath};
use crate::{rtnetlink::Family, workloads::SourceIp};

const DELIVERY_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// A pod's side of delivering from clients' IPs: its namespace's way back, once set up,
/// and whether the kernel refused it (then the pod's deliveries come from loopback).
#[derive(Default)]
pub struct PodDelivery {
    return_path: OnceLock<Option<Arc<ReturnPath>>>,
    refused: AtomicBool,
    logged: AtomicBool,
}

impl PodDelivery {
    /// The pod left: its way back goes once its last connection does, and none is set
    /// up for it any more (a tunnel still open may bring it streams).
    pub fn withdraw(&self) {
        if let Some(path) = self.return_path.get_or_init(|| None) {
            path.withdraw();
        }
    }

    /// Logs, the first time only, why a delivery to the pod comes from loopback; for good
    /// when `for_good`.
    fn refuse(&self, pod: &str, reason: &dyn std::fmt::Display, for_good: bool) {
        if for_good {
            self.refused.store(true, Ordering::Relaxed);
        }
        if !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(%pod, %reason, for_good,
                "deliveries to this pod come from 127.0.0.6 / ::1, not the client's IP");
        }
    }
}

/// How the connection to deliver arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A tunnel stream: the client's address is the tunnel's TCP peer.
    Tunnel,
    /// Plaintext on `:15006`, accepted under the client's own addresses.
    Plaintext,
}

/// Connects to the app at `dst` for a connection from `client`.
pub async fn to_app(
    pod: &PodProxy,
    client: SocketAddr,
    dst: SocketAddr,
    via: Via,
) -> io::Result<TcpStream> {
    let timeout = pod.shared.connect_timeout;
    if let Some(socket) = from_client(pod, client, dst, via) {
        match super::connect_with_timeout(socket, dst, timeout).await {
            // No route to the pod's own IP from `lo`: the way back is gone (removed by
            // hand?); nothing was sent.
            Err(err) if err.kind() == io::ErrorKind::NetworkUnreachable => {
                pod.delivery.refuse(&pod.key, &err, true);
            }
            connected => return connected,
        }
    }
    let source = match dst.ip() {
        IpAddr::V4(_) => SocketAddr::from((DELIVERY_V4, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
    };
    let socket = pod.netns.tcp_socket(dst, pod.shared.mark)?;
    port_at_connect(&socket)?;
    socket.bind(source)?;
    super::connect_with_timeout(socket, dst, timeout).await
}

/// A socket bound to `client` for the delivery to `dst`, when it is to keep the
/// client's IP and can.
fn from_client(pod: &PodProxy, from: SocketAddr, dst: SocketAddr, via: Via) -> Option<TcpSocket> {
    let client = crate::workloads::directory::canonical(from.ip());
    let d = &pod.delivery;
    if d.refused.load(Ordering::Relaxed)
        || !keeps_client_ip(pod.source_ip(), client, dst.ip())
        || pod.owns(client)
    {
        return None;
    }
    let paths = pod.shared.return_paths.as_ref()?;
    let path = d
        .return_path
        .get_or_init(|| match paths.acquire(&pod.netns) {
            Ok(path) => Some(path),
            Err(error) => {
                d.refuse(&pod.key, &error, true);
                None
            }
        })
        .as_ref()?;
    if !path.serves(Family::of(dst.ip())) {
        return None;
    }
    let mark = paths.settings().mark;
    let avoid = (via == Via::Plaintext).then_some(from.port());
    match transparent_socket(pod, client, dst, mark, avoid) {
        Ok(socket) => Some(socket),
        Err(error) => {
            // The kernel refusing the socket options refuses every delivery; a bind
            // refused is about this client's address.
            let for_good = matches!(
                error.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
            ) || error.raw_os_error() == Some(libc::ENOPROTOOPT);
            d.refuse(&pod.key, &error, for_good);
            None
        }
    }
}

/// True when a delivery from `client` to `dst` is to keep the client's IP: the
/// namespace wants it and the client's is a unicast address of the same family, not a
/// loopback one, nor an IPv6 link-local one (which needs its interface).
fn keeps_client_ip(setting: SourceIp, client: IpAddr, dst: IpAddr) -> bool {
    let link_local = matches!(client, IpAddr::V6(v6) if v6.is_unicast_link_local());
    setting == SourceIp::Client
        && client.is_ipv4() == dst.is_ipv4()
        && !client.is_loopback()
        && !client.is_unspecified()
        && !client.is_multicast()
        && !link_local
}

/// A transparent socket bound to `client` for `dst`: its port picked at `connect`, or,
/// with `avoid` (a plaintext client's own port), at `bind`, and never that one.
fn transparent_socket(
    pod: &PodProxy,
    client: IpAddr,
    dst: SocketAddr,
    mark: u32,
    avoid: Option<u16>,
) -> io::Result<TcpSocket> {
    let socket = bound_transparent(pod, client, dst, mark, avoid.is_none())?;
    let Some(avoid) = avoid else {
        return Ok(socket);
    };
    if socket.local_addr()?.port() != avoid {
        return Ok(socket);
    }
    // One chance in tens of thousands; the next pick is another port (the first still
    // holds this one).
    bound_transparent(pod, client, dst, mark, false)
}

fn bound_transparent(
    pod: &PodProxy,
    client: IpAddr,
    dst: SocketAddr,
    mark: u32,
    port_at_connect_time: bool,
) -> io::Result<TcpSocket> {
    let socket = pod.netns.tcp_socket(dst, mark)?;
    let sock = socket2::SockRef::from(&socket);
    let transparent = match client {
        IpAddr::V4(_) => sock.set_ip_transparent_v4(true),
        IpAddr::V6(_) => sock.set_ip_transparent_v6(true),
    };
    transparent.map_err(|e| io::Error::new(e.kind(), format!("IP_TRANSPARENT: {e}")))?;
    sock.bind_device(Some(b"lo"))
        .map_err(|e| io::Error::new(e.kind(), format!("SO_BINDTODEVICE lo: {e}")))?;
    if port_at_connect_time {
        port_at_connect(&socket)?;
    }
    socket
        .bind(SocketAddr::new(client, 0))
        .map_err(|e| io::Error::new(e.kind(), format!("bind {client}: {e}")))?;
    Ok(socket)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_withdrawn_pod_sets_up_no_way_back() {
        let d = PodDelivery::default();
        d.withdraw();
        assert!(matches!(d.return_path.get(), Some(None)));
    }

    #[test]
    fn only_a_unicast_client_of_the_same_family_is_kept_and_only_if_the_namespace_wants() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let pod4 = ip("198.19.1.11");
        let pod6 = ip("fd6f:7264:1::11");
        assert!(keeps_client_ip(SourceIp::Client, ip("198.19.2.12"), pod4));
        assert!(keeps_client_ip(
            SourceIp::Client,
            ip("fd6f:7264:2::12"),
            pod6
        ));
        assert!(!keeps_client_ip(
            SourceIp::Loopback,
            ip("198.19.2.12"),
            pod4
        ));
        assert!(!keeps_client_ip(
            SourceIp::Client,
            ip("fd6f:7264:2::12"),
            pod4
        ));
        assert!(!keeps_client_ip(SourceIp::Client, ip("198.19.2.12"), pod6));
        assert!(!keeps_client_ip(SourceIp::Client, ip("127.0.0.1"), pod4));
        assert!(!keeps_client_ip(SourceIp::Client, ip("::1"), pod6));
        assert!(!keeps_client_ip(SourceIp::Client, ip("0.0.0.0"), pod4));
        assert!(!keeps_client_ip(SourceIp::Client, ip("224.0.0.1"), pod4));
        assert!(!keeps_client_ip(SourceIp::Client, ip("fe80::1"), pod6));
    }
}
