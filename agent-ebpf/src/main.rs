//! Outrider's kernel programs, built for `bpfel-unknown-none` by `agent/build.rs`.
//!
//! - `capture`: `cgroup/connect4`, `cgroup/connect6` steer enrolled pods' TCP connects to
//!   the in-pod outbound listener and remember the original destination; `sockops`
//!   publishes it under (netns cookie, family, client port) for the agent.
//! - `counters`: `cgroup_skb/ingress`, `cgroup_skb/egress` count the packets and bytes
//!   crossing each enrolled pod's network interface (loopback excluded), per pod id.
//! - `guard`: `cgroup/bind4`, `cgroup/bind6` keep apps off the agent's reserved ports.
//! - `inbound`: `sk_lookup`, per pod namespace, steers plaintext arriving for the pod to
//!   the agent's `:15006` listener in it.
//! - `kubelet`: `sock_ops` on the kubelet's cgroup records the kubelet's TCP connections
//!   so that strict pods can tell its probes from other plaintext.
//! - `maps`: every map, named by the constants in the shared library.
//!
//! On the host this file compiles to an empty program so that `cargo` commands over the
//! whole workspace keep working.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// `counters` adds with the BPF atomic instruction, written as inline assembly.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod capture;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod guard;
#[cfg(target_arch = "bpf")]
mod inbound;
#[cfg(target_arch = "bpf")]
mod kubelet;
#[cfg(target_arch = "bpf")]
mod maps;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("outrider-ebpf is a set of kernel programs; the agent loads it");
}
