//! How connections reach a pod's proxy, and where they were going. In node mode the
//! kernel programs steer them (connect4/6 rewrite, `sk_lookup`) and record the original
//! destination of outbound connections in a map; inbound ones keep it as their local
//! address. In sidecar mode iptables REDIRECT rules (`outrider sidecar-init`) steer them,
//! and the kernel's connection tracking keeps the original destination of both
//! (`SO_ORIGINAL_DST`). The listeners' addresses differ accordingly.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
};

use crate::dataplane::OrigDstTable;

/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST`
/// (linux/netfilter_ipv6/ip6_tables.h): both 80, at `SOL_IP` and `SOL_IPV6`.
const SO_ORIGINAL_DST: libc::c_int = 80;

pub enum Steering {
    /// Node mode: the kernel programs; the original destinations of outbound connections
    /// are in their map.
    Kernel(OrigDstTable),
    /// Sidecar mode: iptables REDIRECT in the pod's own network namespace.
    Redirect,
}

impl Steering {
    /// Where an outbound connection accepted from `peer` (in the namespace with
    /// `netns_cookie`) was going; `None` if it was not steered.
    pub fn outbound_dst(
        &self,
        netns_cookie: u64,
        stream: &impl AsRawFd,
        peer: SocketAddr,
    ) -> Option<SocketAddr> {
        match self {
            Steering::Kernel(table) => table.lookup(netns_cookie, peer),
            Steering::Redirect => original_dst(stream, peer).ok(),
        }
    }

    /// Where an inbound plaintext connection was going: its local address (kept by
    /// `sk_lookup`), or the one before REDIRECT rewrote it.
    pub fn inbound_dst(&self, stream: &tokio::net::TcpStream) -> io::Result<SocketAddr> {
        match self {
            Steering::Kernel(_) => stream.local_addr(),
            Steering::Redirect => original_dst(stream, stream.local_addr()?),
        }
    }

    /// Where the inbound plaintext listener of `port` binds: on loopback in node mode
    /// (`sk_lookup` hands it connections whatever its address), on every address in
    /// sidecar mode (REDIRECT rewrites the destination to the address the packet came in
    /// on).
    pub fn inbound_listen(&self, port: u16) -> [SocketAddr; 2] {
        match self {
            Steering::Kernel(_) => [
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            ],
            Steering::Redirect => [
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            ],
        }
    }
}

/// The destination a REDIRECTed connection had before netfilter rewrote it. `local` is
/// the socket's local address, which tells the family to ask in.
pub fn original_dst(socket: &impl AsRawFd, local: SocketAddr) -> io::Result<SocketAddr> {
    let fd = socket.as_raw_fd();
    let mapped_v4 = matches!(local.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
    if local.is_ipv4() || mapped_v4 {
        // SAFETY: a valid fd and a sockaddr_in out-buffer of the length we pass.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                (&mut addr as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        )))
    } else {
        // SAFETY: as above, with a sockaddr_in6.
        let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                (&mut addr as *mut libc::sockaddr_in6).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(addr.sin6_addr.s6_addr),
            u16::from_be(addr.sin6_port),
            addr.sin6_flowinfo,
            addr.sin6_scope_id,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_was_not_redirected_has_no_original_destination() {
        // Without a NAT entry the kernel answers ENOENT: the proxy resets such a
        // connection rather than guessing.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let err = original_dst(&accepted, accepted.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
        drop(client);
    }
}
