//! Bind guard: an app inside an enrolled pod may not bind the agent's reserved ports
//! (15001, 15006, 15008, ...), on IPv4 or IPv6 (a `[::]` bind would slip past bind4 alone).
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_netns_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};

use crate::maps::{ENROLLED, RESERVED_PORTS, is_agent};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[cgroup_sock_addr(bind4)]
pub fn or_bind4(ctx: SockAddrContext) -> i32 {
    guard(&ctx)
}

#[cgroup_sock_addr(bind6)]
pub fn or_bind6(ctx: SockAddrContext) -> i32 {
    guard(&ctx)
}

#[inline(always)]
fn guard(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    let port = u16::from_be(sa.user_port as u16);
    if port == 0 || unsafe { RESERVED_PORTS.get(port) }.is_none() {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if unsafe { ENROLLED.get(cookie) }.is_none() {
        return ALLOW;
    }
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    let mark = if sk.is_null() {
        0
    } else {
        unsafe { (*sk).mark }
    };
    if is_agent(mark) {
        return ALLOW;
    }
    DENY
}
