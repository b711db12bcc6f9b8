//! Capture: steer an enrolled pod's TCP `connect()` to the agent's in-pod outbound
//! listener (127.0.0.1:15001 / [::1]:15001), remembering where it was going.
//!
//! connect4/6 record the original destination under the socket's cookie (the client port
//! is not known yet) and rewrite the destination; sockops, once the kernel has picked the
//! client port (TCP_CONNECT_CB), moves the record to `ORIG_DST` under
//! (netns cookie, family, client port) — what the agent sees on accept — and drops it
//! again when the socket closes. A destination a policy denies the pod outright
//! (`POLICY_DENY`) fails the connect at once with ECONNREFUSED, in the kernel.
//!
//! When the agent is gone (its in-pod listener closed: crashed, or between a stop and a
//! start) the connect is still steered to the closed port and refused — `fail-closed` —
//! unless the settings say `fail-open`: then a connect whose pod has no outbound
//! listener goes where the app asked, unmeshed.
//!
//! Likewise when the original destination cannot be recorded (the insert into
//! `SOCK_ORIG` fails): the connect is counted for the pod (`POD_COUNTERS`) and refused
//! with EPERM (`fail-closed`) or let through unmeshed (`fail-open`); never steered
//! without its record, never passed unsteered under `fail-closed`. (An `ORIG_DST` insert
//! that fails in sockops leaves the steered connection without a record: the agent then
//! resets it.)
use agent_ebpf::{DenyKey, FAMILY_V4, FAMILY_V6, OrigDst, OrigDstKey};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock,
        bpf_sock_addr, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
    },
    helpers::{
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval, bpf_sk_lookup_tcp,
        bpf_sk_release,
    },
    macros::{cgroup_sock_addr, sock_ops},
    maps::lpm_trie::Key,
    programs::{SockAddrContext, SockOpsContext},
};

use crate::{
    counters::atomic_add,
    maps::{
        ENROLLED, EXCLUDED_PORTS, EXCLUDED_V4, EXCLUDED_V6, ORIG_DST, POD_COUNTERS, POLICY_DENY,
        RESERVED_PORTS, SETTINGS, SOCK_ORIG, fail_open, insert_flags, is_agent,
    },
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const AF_INET: u32 = 2;
const TCP_CLOSE: u32 = 7;

#[cgroup_sock_addr(connect4)]
pub fn or_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some((pod_id, port, outbound_port)) = steerable(&ctx) else {
        return ALLOW;
    };
    let ip = unsafe { (*sa).user_ip4 }.to_ne_bytes();
    if !capture_v4(ip, port) {
        return ALLOW;
    }
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip);
    if denied(pod_id, addr, port, FAMILY_V4) {
        return refuse();
    }
    if fail_open() && !agent_listening_v4(&ctx, outbound_port) {
        return ALLOW;
    }
    if !remember(&ctx, addr, port, FAMILY_V4, pod_id) {
        return unrecorded(pod_id);
    }
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip4, u32::from_ne_bytes([127, 0, 0, 1]));
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(outbound_port.to_be()));
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn or_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some((pod_id, port, outbound_port)) = steerable(&ctx) else {
        return ALLOW;
    };
    let words = unsafe { (*sa).user_ip6 };
    let mut ip = [0u8; 16];
    ip[0..4].copy_from_slice(&words[0].to_ne_bytes());
    ip[4..8].copy_from_slice(&words[1].to_ne_bytes());
    ip[8..12].copy_from_slice(&words[2].to_ne_bytes());
    ip[12..16].copy_from_slice(&words[3].to_ne_bytes());

    // An IPv4-mapped destination (::ffff:a.b.c.d) is IPv4 on the wire.
    let mapped = ip[..10] == [0u8; 10] && ip[10] == 0xff && ip[11] == 0xff;
    let loopback = if mapped {
        let v4 = [ip[12], ip[13], ip[14], ip[15]];
        if !capture_v4(v4, port) {
            return ALLOW;
        }
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&v4);
        if denied(pod_id, addr, port, FAMILY_V4) {
            return refuse();
        }
        if fail_open() && !agent_listening_v4(&ctx, outbound_port) {
            return ALLOW;
        }
        if !remember(&ctx, addr, port, FAMILY_V4, pod_id) {
            return unrecorded(pod_id);
        }
        [
            0,
            0,
            0xffff_0000u32.to_be(),
            u32::from_ne_bytes([127, 0, 0, 1]),
        ]
    } else {
        if !capture_v6(&ip, port) {
            return ALLOW;
        }
        if denied(pod_id, ip, port, FAMILY_V6) {
            return refuse();
        }
        if fail_open() && !agent_listening_v6(&ctx, outbound_port) {
            return ALLOW;
        }
        if !remember(&ctx, ip, port, FAMILY_V6, pod_id) {
            return unrecorded(pod_id);
        }
        [0, 0, 0, 1u32.to_be()]
    };
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip6[0], loopback[0]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[1], loopback[1]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[2], loopback[2]);
        core::ptr::write_volatile(&mut (*sa).user_ip6[3], loopback[3]);
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(outbound_port.to_be()));
    }
    ALLOW
}

/// The pod id, destination port and outbound port when this connect belongs to an
/// enrolled pod's app: TCP, enrolled network namespace, not the agent itself.
#[inline(always)]
fn steerable(ctx: &SockAddrContext) -> Option<(u32, u16, u16)> {
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    if sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return None;
    }
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let pod = unsafe { ENROLLED.get(cookie) }?;
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    let mark = if sk.is_null() {
        0
    } else {
        unsafe { (*sk).mark }
    };
    if is_agent(mark) {
        return None;
    }
    let settings = SETTINGS.get(0)?;
    let port = u16::from_be(sa.user_port as u16);
    if port == 0
        || unsafe { RESERVED_PORTS.get(port) }.is_some()
        || unsafe { EXCLUDED_PORTS.get(port) }.is_some()
    {
        return None;
    }
    Some((pod.pod_id, port, settings.outbound_port))
}

#[inline(always)]
fn capture_v4(ip: [u8; 4], _port: u16) -> bool {
    // Loopback and the unspecified address stay inside the pod.
    if ip[0] == 127 || ip == [0, 0, 0, 0] {
        return false;
    }
    EXCLUDED_V4.get(Key::new(32, ip)).is_none()
}

#[inline(always)]
fn capture_v6(ip: &[u8; 16], _port: u16) -> bool {
    let loopback = ip[..15] == [0u8; 15] && ip[15] == 1;
    let unspecified = ip[..15] == [0u8; 15] && ip[15] == 0;
    if loopback || unspecified {
        return false;
    }
    EXCLUDED_V6.get(Key::new(128, *ip)).is_none()
}

/// True when the agent's outbound listener `127.0.0.1:port` is open in the caller's
/// network namespace.
#[inline(always)]
fn agent_listening_v4(ctx: &SockAddrContext, port: u16) -> bool {
    let loopback = u32::from_ne_bytes([127, 0, 0, 1]);
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: unsafe { core::mem::zeroed() },
    };
    tuple.__bindgen_anon_1.ipv4 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
        saddr: loopback,
        daddr: loopback,
        sport: 0,
        dport: port.to_be(),
    };
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    found(ctx, &mut tuple, size)
}

/// True when the agent's outbound listener `[::1]:port` is open in the caller's network
/// namespace.
#[inline(always)]
fn agent_listening_v6(ctx: &SockAddrContext, port: u16) -> bool {
    let loopback = [0, 0, 0, 1u32.to_be()];
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: unsafe { core::mem::zeroed() },
    };
    tuple.__bindgen_anon_1.ipv6 = bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
        saddr: loopback,
        daddr: loopback,
        sport: 0,
        dport: port.to_be(),
    };
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>() as u32;
    found(ctx, &mut tuple, size)
}

/// Looks a TCP socket up by `tuple` in the caller's network namespace.
#[inline(always)]
fn found(ctx: &SockAddrContext, tuple: &mut bpf_sock_tuple, size: u32) -> bool {
    const CURRENT_NETNS: u64 = u64::MAX;
    let sk: *mut bpf_sock =
        unsafe { bpf_sk_lookup_tcp(ctx.as_ptr(), tuple, size, CURRENT_NETNS, 0) };
    if sk.is_null() {
        return false;
    }
    unsafe { bpf_sk_release(sk.cast()) };
    true
}

/// True when a policy denies the pod this destination (this port, or every port).
#[inline(always)]
fn denied(pod_id: u32, addr: [u8; 16], port: u16, family: u16) -> bool {
    let mut key = DenyKey {
        pod_id,
        port,
        family,
        addr,
    };
    if unsafe { POLICY_DENY.get(key) }.is_some() {
        return true;
    }
    key.port = 0;
    unsafe { POLICY_DENY.get(key) }.is_some()
}

/// Fails the `connect()` at once with ECONNREFUSED, as a closed port would.
#[inline(always)]
fn refuse() -> i32 {
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    DENY
}

#[inline(always)]
fn remember(ctx: &SockAddrContext, addr: [u8; 16], port: u16, family: u16, pod_id: u32) -> bool {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OrigDst {
        addr,
        port,
        family,
        pod_id,
    };
    SOCK_ORIG.insert(cookie, orig, insert_flags()).is_ok()
}

/// A connect whose original destination could not be recorded: counted for the pod;
/// refused (EPERM, the verdict's default error) under `fail-closed`, let through to
/// where the app asked, unmeshed, under `fail-open`.
#[inline(always)]
fn unrecorded(pod_id: u32) -> i32 {
    if let Some(counters) = POD_COUNTERS.get_ptr_mut(pod_id) {
        unsafe { atomic_add(&raw mut (*counters).unsteered_connects, 1) };
    }
    if fail_open() { ALLOW } else { DENY }
}

#[sock_ops]
pub fn or_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => publish(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => forget(&ctx),
        _ => {}
    }
    0
}

#[inline(always)]
fn key(ctx: &SockOpsContext, family: u16) -> OrigDstKey {
    OrigDstKey {
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        port: ctx.local_port() as u16,
        family,
        _pad: 0,
    }
}

/// Wire family of a sockops socket: IPv4, or IPv6 unless the peer is IPv4-mapped.
#[inline(always)]
fn wire_family(ctx: &SockOpsContext) -> u16 {
    if ctx.family() == AF_INET {
        return FAMILY_V4;
    }
    let r = ctx.remote_ip6();
    if r[0] == 0 && r[1] == 0 && r[2] == 0xffff_0000u32.to_be() {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

#[inline(always)]
fn publish(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(orig) = (unsafe { SOCK_ORIG.get(cookie) }) else {
        return;
    };
    let orig = *orig;
    let _ = SOCK_ORIG.remove(cookie);
    let _ = ORIG_DST.insert(key(ctx, wire_family(ctx)), orig, 0);
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
}

#[inline(always)]
fn forget(ctx: &SockOpsContext) {
    let _ = ORIG_DST.remove(key(ctx, wire_family(ctx)));
}
