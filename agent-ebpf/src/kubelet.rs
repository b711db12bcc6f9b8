//! The kubelet's connections: a `sock_ops` program attached to the kubelet's cgroup only
//! (`capture.kubeletCgroup`, never the pods' cgroup) records each TCP connection the
//! kubelet opens in `KUBELET_CONNS`, under its 4-tuple, when the kernel has picked the
//! source port and not yet sent the SYN (`TCP_CONNECT_CB`), and removes it when the
//! kubelet's socket closes. The agent, accepting plaintext for a strict pod, serves it
//! only if the accepted connection's 4-tuple is there (and takes it out): a probe.
//!
//! No pod can add an entry (its sockets are not in the kubelet's cgroup), and while the
//! kubelet's socket lives no other socket of the node can hold the same 4-tuple, so
//! traffic the node NATs to its own address is not mistaken for a probe.
use agent_ebpf::{FAMILY_V4, FAMILY_V6, ProbeKey};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB},
    helpers::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};

use crate::maps::KUBELET_CONNS;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn or_kubelet_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => record(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            if let Some(key) = key(&ctx) {
                let _ = KUBELET_CONNS.remove(&key);
            }
        }
        _ => {}
    }
    0
}

#[inline(always)]
fn record(ctx: &SockOpsContext) {
    let Some(key) = key(ctx) else {
        return;
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if KUBELET_CONNS.insert(&key, &cookie, 0).is_ok() {
        // Tell us when it closes, to forget it.
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    }
}

/// The connection's 4-tuple; IPv4-mapped IPv6 as IPv4 (what the pod's side sees).
#[inline(always)]
fn key(ctx: &SockOpsContext) -> Option<ProbeKey> {
    let mut key = ProbeKey {
        src: [0; 16],
        dst: [0; 16],
        src_port: ctx.local_port() as u16,
        // Network order in the upper 16 bits (on little-endian machines).
        dst_port: u16::from_be((ctx.remote_port() >> 16) as u16),
        family: FAMILY_V4,
        _pad: 0,
    };
    match ctx.family() {
        AF_INET => {
            key.src[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
            key.dst[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
        }
        AF_INET6 => {
            let l = ctx.local_ip6();
            let r = ctx.remote_ip6();
            if r[0] == 0 && r[1] == 0 && r[2] == 0xffff_0000u32.to_be() {
                key.src[..4].copy_from_slice(&l[3].to_ne_bytes());
                key.dst[..4].copy_from_slice(&r[3].to_ne_bytes());
            } else {
                key.family = FAMILY_V6;
                for i in 0..4 {
                    key.src[i * 4..i * 4 + 4].copy_from_slice(&l[i].to_ne_bytes());
                    key.dst[i * 4..i * 4 + 4].copy_from_slice(&r[i].to_ne_bytes());
                }
            }
        }
        _ => return None,
    }
    Some(key)
}
