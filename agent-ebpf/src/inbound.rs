//! Inbound plaintext capture: an `sk_lookup` program, attached to each enrolled pod's
//! network namespace, hands new TCP connections to the pod's IPs to the agent's `:15006`
//! listener in that pod (from `INBOUND_LISTENERS`); the local address the agent then sees
//! is the original destination. Left alone: the tunnel port and the agent's other
//! reserved ports, and the agent's own deliveries to the app. Those come from the
//! client's IP on a socket bound to `lo` (ingress `lo`: a route only the delivery mark
//! reaches, see `agent/src/proxy/deliver.rs`), or, as the fallback, from a loopback
//! address (127.0.0.6 or ::1). (Locally made connections to the pod's IP report the
//! pod's interface as their ingress unless bound to `lo`. Only the pod's own processes
//! send on its `lo` — and reach their app over 127.0.0.1 anyway —, while a packet from
//! the network never has a loopback source or ingress.) With the agent
//! gone, its listener's slot is empty: `fail-closed` refuses the connection (a reset),
//! `fail-open` gives it to the app.
use agent_ebpf::inbound_slot;
use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};

use crate::maps::{INBOUND_LISTENERS, INBOUND_V4, INBOUND_V6, RESERVED_PORTS, fail_open};

const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
/// `LOOPBACK_IFINDEX`: the kernel gives every namespace's `lo` this index.
const LOOPBACK_IFINDEX: u32 = 1;

#[sk_lookup]
pub fn or_sk_lookup(ctx: SkLookupContext) -> u32 {
    let l = unsafe { &*ctx.lookup };
    if l.protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let port = l.local_port as u16;
    if unsafe { RESERVED_PORTS.get(port) }.is_some() {
        return SK_PASS;
    }
    if l.ingress_ifindex == LOOPBACK_IFINDEX {
        // The agent's delivery from the client's IP (bound to `lo`).
        return SK_PASS;
    }
    let slot = match l.family {
        AF_INET => {
            if l.remote_ip4.to_ne_bytes()[0] == 127 {
                return SK_PASS;
            }
            match unsafe { INBOUND_V4.get(l.local_ip4.to_ne_bytes()) } {
                Some(pod) => inbound_slot(*pod, false),
                None => return SK_PASS,
            }
        }
        AF_INET6 => {
            let r = l.remote_ip6;
            if r[0] == 0 && r[1] == 0 && r[2] == 0 && r[3] == 1u32.to_be() {
                return SK_PASS;
            }
            let w = l.local_ip6;
            let mut ip = [0u8; 16];
            ip[0..4].copy_from_slice(&w[0].to_ne_bytes());
            ip[4..8].copy_from_slice(&w[1].to_ne_bytes());
            ip[8..12].copy_from_slice(&w[2].to_ne_bytes());
            ip[12..16].copy_from_slice(&w[3].to_ne_bytes());
            match unsafe { INBOUND_V6.get(ip) } {
                Some(pod) => inbound_slot(*pod, true),
                None => return SK_PASS,
            }
        }
        _ => return SK_PASS,
    };
    // The agent fills the slot before it adds the pod's IPs, and removes the IPs first;
    // so an empty slot for a pod's IP means the agent is gone (its listener closed with
    // it): the connection is refused (`fail-closed`) or left to the app (`fail-open`).
    match INBOUND_LISTENERS.redirect_sk_lookup(&ctx, slot, 0) {
        Ok(()) => SK_PASS,
        Err(_) if fail_open() => SK_PASS,
        Err(_) => SK_DROP,
    }
}
