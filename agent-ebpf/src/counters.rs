//! Per-pod traffic counters: `cgroup_skb/ingress` and `cgroup_skb/egress` add every
//! packet of an enrolled pod's sockets that crosses a device other than loopback to the
//! pod's slot in `POD_COUNTERS` — what the app sends around the agent (excluded ports and
//! CIDRs) as well as what the agent's in-pod sockets carry for it. The app ↔ agent hop,
//! like any traffic inside the pod, stays on `lo` and is not counted.
//!
//! The pod is found by the network namespace of the packet's socket (`ENROLLED`), so
//! sockets the agent opens inside the pod count for the pod and its sockets in the node's
//! namespace for nobody. `__sk_buff.ifindex` is the device the packet leaves by (egress)
//! or came in by (ingress) — measured on 6.18: 1 on `lo`, the pod's `eth0` otherwise,
//! both ways (`ingress_ifindex` is the same on ingress and 0 on egress, so unusable
//! there); loopback is ifindex 1 in every network namespace. Packets are never dropped.
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_netns_cookie, macros::cgroup_skb, programs::SkBuffContext,
};

use crate::maps::{ENROLLED, POD_COUNTERS};

const ALLOW: i32 = 1;
/// `LOOPBACK_IFINDEX`: the kernel gives every namespace's `lo` this index.
const LOOPBACK_IFINDEX: u32 = 1;

#[cgroup_skb(ingress)]
pub fn or_skb_ingress(ctx: SkBuffContext) -> i32 {
    count(&ctx, false);
    ALLOW
}

#[cgroup_skb(egress)]
pub fn or_skb_egress(ctx: SkBuffContext) -> i32 {
    count(&ctx, true);
    ALLOW
}

#[inline(always)]
fn count(ctx: &SkBuffContext, egress: bool) {
    let skb = unsafe { &*ctx.skb.skb };
    if skb.ifindex == LOOPBACK_IFINDEX {
        return;
    }
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(pod) = (unsafe { ENROLLED.get(cookie) }) else {
        return;
    };
    let Some(counters) = POD_COUNTERS.get_ptr_mut(pod.pod_id) else {
        return;
    };
    let (packets, bytes) = unsafe {
        if egress {
            (
                &raw mut (*counters).tx_packets,
                &raw mut (*counters).tx_bytes,
            )
        } else {
            (
                &raw mut (*counters).rx_packets,
                &raw mut (*counters).rx_bytes,
            )
        }
    };
    // Atomic adds: on one CPU an ingress or egress run in softirq can interrupt an egress
    // run in process context of the same pod.
    unsafe {
        atomic_add(packets, 1);
        atomic_add(bytes, u64::from(skb.len));
    }
}

/// `*ptr += value` as one BPF atomic add (`lock *(u64 *)(ptr + 0) += value`); Rust offers
/// no `fetch_add` on this target.
#[inline(always)]
pub(crate) unsafe fn atomic_add(ptr: *mut u64, value: u64) {
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({ptr} + 0) += {value}",
            ptr = in(reg) ptr,
            value = in(reg) value,
            options(nostack),
        );
    }
}
