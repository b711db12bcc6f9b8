//! The few routing-netlink requests the agent makes in a pod's network namespace: add or
//! delete a policy rule `fwmark M lookup T priority P`, and the route `local default dev
//! lo table T` — what `ip rule` and `ip route` would send (`linux/rtnetlink.h`,
//! `linux/fib_rules.h`). Four messages of fixed shape, so they are written here rather
//! than brought in with a general netlink library. The socket is made inside the
//! namespace ([`Netns::enter`]) and speaks to that namespace's routing tables for as long
//! as it lives.
use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::netns::Netns;

// linux/fib_rules.h
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FR_ACT_TO_TBL: u8 = 1;
/// `lo` is this index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Which address family a rule or route is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }

    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// A routing-netlink socket in one network namespace.
pub struct RouteSocket {
    fd: OwnedFd,
    seq: u32,
}

/// What was asked when the kernel refused it.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    pub what: String,
    #[source]
    pub source: io::Error,
}

impl RouteSocket {
    /// A socket in `netns`, talking to that namespace's routing.
    pub fn open(netns: &Netns) -> io::Result<Self> {
        let fd = netns.enter(|| {
            // SAFETY: plain socket(2); the descriptor is owned below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_ROUTE,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor nobody else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })?;
        Ok(Self { fd, seq: 0 })
    }

    /// `ip rule add fwmark MARK/0xffffffff lookup TABLE priority PRIORITY`; true when it
    /// was added, false when the same rule was there already.
    pub fn add_mark_rule(
        &mut self,
        family: Family,
        mark: u32,
        table: u32,
        priority: u32,
    ) -> Result<bool, NetlinkError> {
        let msg = rule_message(family, mark, table, priority);
        let flags = libc::NLM_F_CREATE | libc::NLM_F_EXCL;
        let what = || format!("adding rule fwmark {mark:#x} lookup {table} ({family:?})");
        self.exists_ok(libc::RTM_NEWRULE, flags, &msg, what)
    }

    /// `ip rule del …` of the same rule; true when one was removed.
    pub fn delete_mark_rule(
        &mut self,
        family: Family,
        mark: u32,
        table: u32,
        priority: u32,
    ) -> Result<bool, NetlinkError> {
        let msg = rule_message(family, mark, table, priority);
        let what = || format!("deleting rule fwmark {mark:#x} lookup {table} ({family:?})");
        self.missing_ok(libc::RTM_DELRULE, &msg, what)
    }

    /// `ip route add local default dev lo table TABLE`; true when it was added.
    pub fn add_local_default(&mut self, family: Family, table: u32) -> Result<bool, NetlinkError> {
        let msg = local_default_message(family, table);
        let flags = libc::NLM_F_CREATE | libc::NLM_F_EXCL;
        let what = || format!("adding route local default dev lo table {table} ({family:?})");
        self.exists_ok(libc::RTM_NEWROUTE, flags, &msg, what)
    }

    /// `ip route del local default dev lo table TABLE`; true when one was removed.
    pub fn delete_local_default(
        &mut self,
        family: Family,
        table: u32,
    ) -> Result<bool, NetlinkError> {
        let msg = local_default_message(family, table);
        let what = || format!("deleting route local default dev lo table {table} ({family:?})");
        self.missing_ok(libc::RTM_DELROUTE, &msg, what)
    }

    fn exists_ok(
        &mut self,
        kind: u16,
        flags: libc::c_int,
        body: &[u8],
        what: impl Fn() -> String,
    ) -> Result<bool, NetlinkError> {
        match self.request(kind, flags, body) {
            Ok(()) => Ok(true),
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(source) => Err(NetlinkError {
                what: what(),
                source,
            }),
        }
    }

    fn missing_ok(
        &mut self,
        kind: u16,
        body: &[u8],
        what: impl Fn() -> String,
    ) -> Result<bool, NetlinkError> {
        match self.request(kind, 0, body) {
            Ok(()) => Ok(true),
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => Ok(false),
            Err(source) => Err(NetlinkError {
                what: what(),
                source,
            }),
        }
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, kind: u16, flags: libc::c_int, body: &[u8]) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16;
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: a sockaddr_nl zeroed then filled (the kernel as the peer).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: the buffer and address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: recv into a buffer we own, of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if let Some(result) = ack_of(&buf[..n as usize], seq) {
                return result;
            }
        }
    }
}

/// The acknowledgement of request `seq` in `buf`, if it is there: `Ok` or the errno.
fn ack_of(mut buf: &[u8], seq: u32) -> Option<io::Result<()>> {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        let msg_seq = u32::from_ne_bytes(buf[8..12].try_into().ok()?);
        if len < 16 || len > buf.len() {
            return Some(Err(io::Error::other("malformed netlink answer")));
        }
        if kind == libc::NLMSG_ERROR as u16 && msg_seq == seq && len >= 20 {
            let errno = i32::from_ne_bytes(buf[16..20].try_into().ok()?);
            return Some(if errno == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-errno))
            });
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    None
}

/// A `struct fib_rule_hdr` with its attributes.
fn rule_message(family: Family, mark: u32, table: u32, priority: u32) -> Vec<u8> {
    // family, dst_len, src_len, tos, table (in FRA_TABLE), res1, res2, action; flags
    let mut msg = vec![family.af(), 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL];
    msg.extend_from_slice(&0u32.to_ne_bytes());
    attr_u32(&mut msg, FRA_PRIORITY, priority);
    attr_u32(&mut msg, FRA_FWMARK, mark);
    attr_u32(&mut msg, FRA_FWMASK, u32::MAX);
    attr_u32(&mut msg, FRA_TABLE, table);
    msg
}

/// A `struct rtmsg` for `local default dev lo table TABLE`.
fn local_default_message(family: Family, table: u32) -> Vec<u8> {
    // family, dst_len, src_len, tos, table (in RTA_TABLE), protocol, scope, type; flags
    let mut msg = vec![
        family.af(),
        0,
        0,
        0,
        0,
        libc::RTPROT_STATIC,
        libc::RT_SCOPE_HOST,
        libc::RTN_LOCAL,
    ];
    msg.extend_from_slice(&0u32.to_ne_bytes());
    attr_u32(&mut msg, libc::RTA_TABLE, table);
    attr_u32(&mut msg, libc::RTA_OIF, LOOPBACK_IFINDEX);
    msg
}

fn attr_u32(msg: &mut Vec<u8>, kind: u16, value: u32) {
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&value.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_is_laid_out_as_fib_rule_hdr_and_attributes() {
        let msg = rule_message(Family::V6, 0x4f53, 20307, 32764);
        assert_eq!(msg.len(), 12 + 4 * 8);
        assert_eq!(msg[0], libc::AF_INET6 as u8);
        assert_eq!(msg[7], FR_ACT_TO_TBL);
        let attrs: Vec<(u16, u32)> = msg[12..]
            .chunks(8)
            .map(|a| {
                assert_eq!(u16::from_ne_bytes([a[0], a[1]]), 8);
                (
                    u16::from_ne_bytes([a[2], a[3]]),
                    u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
                )
            })
            .collect();
        assert_eq!(
            attrs,
            [
                (FRA_PRIORITY, 32764),
                (FRA_FWMARK, 0x4f53),
                (FRA_FWMASK, u32::MAX),
                (FRA_TABLE, 20307)
            ]
        );
    }

    #[test]
    fn acknowledgements_are_read_by_sequence_number() {
        let mut ack = Vec::new();
        let mut push = |seq: u32, errno: i32| {
            ack.extend_from_slice(&36u32.to_ne_bytes());
            ack.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
            ack.extend_from_slice(&0u16.to_ne_bytes());
            ack.extend_from_slice(&seq.to_ne_bytes());
            ack.extend_from_slice(&0u32.to_ne_bytes());
            ack.extend_from_slice(&errno.to_ne_bytes());
            ack.extend_from_slice(&[0u8; 16]);
        };
        push(6, -libc::EEXIST);
        push(7, 0);
        assert!(ack_of(&ack, 7).unwrap().is_ok());
        let err = ack_of(&ack, 6).unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        assert!(ack_of(&ack, 8).is_none());
        assert!(ack_of(&ack[..10], 7).is_none());
    }

    /// Needs root: a rule and a route in a namespace of its own, added, found there by
    /// adding again (EEXIST), deleted, and gone.
    #[test]
    fn rules_and_routes_are_added_once_and_deleted_in_a_namespace() {
        crate::netns::init().unwrap();
        let ns = crate::netns::tests::scratch_namespace();
        let netns = Netns::open(&ns.path()).unwrap();
        let mut sock = RouteSocket::open(&netns).unwrap();
        for family in Family::BOTH {
            assert!(sock.add_mark_rule(family, 0x77, 30001, 30001).unwrap());
            assert!(!sock.add_mark_rule(family, 0x77, 30001, 30001).unwrap());
            assert!(sock.add_local_default(family, 30001).unwrap());
            assert!(!sock.add_local_default(family, 30001).unwrap());
        }
        let shown = ns.run(&["ip", "rule"]);
        assert!(
            shown.contains("30001:\tfrom all fwmark 0x77 lookup 30001"),
            "{shown}"
        );
        let shown = ns.run(&["ip", "-6", "route", "show", "table", "30001"]);
        assert!(shown.contains("local default dev lo"), "{shown}");
        for family in Family::BOTH {
            assert!(sock.delete_mark_rule(family, 0x77, 30001, 30001).unwrap());
            assert!(!sock.delete_mark_rule(family, 0x77, 30001, 30001).unwrap());
            assert!(sock.delete_local_default(family, 30001).unwrap());
            assert!(!sock.delete_local_default(family, 30001).unwrap());
        }
        assert!(!ns.run(&["ip", "rule"]).contains("0x77"));
    }
}
