//! Types shared by the kernel programs (`src/main.rs`, BPF target) and the agent
//! (userspace, feature `user`). Everything here is `#[repr(C)]` plain data whose layout
//! both sides must agree on; map names are constants so that neither side spells them.
#![no_std]

/// Map: network-namespace cookie (u64) → [`PodEntry`]. A pod is enrolled while present.
pub const MAP_ENROLLED: &str = "ENROLLED";
/// Map: [`OrigDstKey`] → [`OrigDst`]; the original destination of a steered connection.
pub const MAP_ORIG_DST: &str = "ORIG_DST";
/// Map: socket cookie (u64) → [`OrigDst`]; connect() → sockops hand-over, short-lived.
pub const MAP_SOCK_ORIG: &str = "SOCK_ORIG";
/// Map: index 0 → [`Settings`].
pub const MAP_SETTINGS: &str = "SETTINGS";
/// Map: port (u16, host order) → 1; apps in enrolled pods may not bind these and
/// connections to them are never steered.
pub const MAP_RESERVED_PORTS: &str = "RESERVED_PORTS";
/// Map: destination port (u16, host order) → 1; connections to these pass untouched.
pub const MAP_EXCLUDED_PORTS: &str = "EXCLUDED_PORTS";
/// LPM tries of destination CIDRs that pass untouched (key data: address bytes).
pub const MAP_EXCLUDED_V4: &str = "EXCLUDED_V4";
pub const MAP_EXCLUDED_V6: &str = "EXCLUDED_V6";

/// Map: pod IPv4 (network-order bytes) → pod id; pods whose plaintext inbound is steered.
pub const MAP_INBOUND_V4: &str = "INBOUND_V4";
/// Map: pod IPv6 (bytes) → pod id.
pub const MAP_INBOUND_V6: &str = "INBOUND_V6";
/// SockMap: [`inbound_slot`] → the pod's `:15006` listener.
pub const MAP_INBOUND_LISTENERS: &str = "INBOUND_LISTENERS";
/// Map: [`ProbeKey`] → the kubelet socket's cookie (u64); the kubelet's live TCP
/// connections, recorded by `or_kubelet_ops` on the kubelet's cgroup (see `kubelet.rs`).
pub const MAP_KUBELET_CONNS: &str = "KUBELET_CONNS";
/// Every map, for pinning.
pub const ALL_MAPS: [&str; 14] = [
    MAP_ENROLLED,
    MAP_ORIG_DST,
    MAP_SOCK_ORIG,
    MAP_SETTINGS,
    MAP_RESERVED_PORTS,
    MAP_EXCLUDED_PORTS,
    MAP_EXCLUDED_V4,
    MAP_EXCLUDED_V6,
    MAP_INBOUND_V4,
    MAP_INBOUND_V6,
    MAP_INBOUND_LISTENERS,
    MAP_POLICY_DENY,
    MAP_POD_COUNTERS,
    MAP_KUBELET_CONNS,
];

/// Pods per node the inbound slots can hold (pod ids are below this).
pub const MAX_PODS: u32 = 16_384;

/// Where a pod's inbound plaintext listener sits in `INBOUND_LISTENERS`.
#[inline(always)]
pub const fn inbound_slot(pod_id: u32, ipv6: bool) -> u32 {
    pod_id * 2 + ipv6 as u32
}

/// Map: [`DenyKey`] → 1; connections a pod may not open, refused in `connect()`.
pub const MAP_POLICY_DENY: &str = "POLICY_DENY";

/// Key of `POLICY_DENY`: a pod (by id), a destination address and port (0: any port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DenyKey {
    pub pod_id: u32,
    /// Port, host order; 0 means every port.
    pub port: u16,
    pub family: u16,
    /// Address bytes in network order; IPv4 uses the first 4.
    pub addr: [u8; 16],
}

/// Map: per-CPU array indexed by pod id (`MAX_PODS` slots) → [`PodCounters`]; the
/// traffic that crosses an enrolled pod's network interface (never its loopback).
pub const MAP_POD_COUNTERS: &str = "POD_COUNTERS";

/// Counters of one pod (value of `POD_COUNTERS`, per CPU; userspace sums them): its
/// traffic, and its connects the kernel could not steer.
///
/// What crosses the pod's network interface, never its loopback: `rx` came in, `tx` went
/// out. Counted at the sockets of the pod's network namespace (`cgroup_skb`): the app's
/// own, also where they bypass the agent (excluded ports and CIDRs), and the agent's
/// in-pod sockets (passthrough, tunnels), while the agent's cgroup is below the attach
/// cgroup. A packet is an skb as the socket layer sees it: with TSO/GSO (veth) or GRO one
/// stands for up to 64 KiB of segments on the wire. Its bytes are `skb->len`, from the IP
/// header on: IP and transport headers once per packet, plus the payload — for TCP with
/// timestamps, payload + 52 bytes a packet over IPv4 and + 72 over IPv6 (+ 8 for a SYN's
/// options); measured exactly so on 6.18.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Connects of the pod's apps whose original destination could not be recorded (a
    /// map insert failed): refused under `fail-closed`, let through unmeshed under
    /// `fail-open`. Counted by connect4/6, not cgroup_skb.
    pub unsteered_connects: u64,
}

/// Program names (the kernel keeps 15 characters; these fit, so leaks are easy to spot).
/// What each attaches to, and how, is the agent's table `dataplane::programs::PROGRAMS`.
pub const PROG_CONNECT4: &str = "or_connect4";
pub const PROG_CONNECT6: &str = "or_connect6";
pub const PROG_SOCKOPS: &str = "or_sockops";
pub const PROG_BIND4: &str = "or_bind4";
pub const PROG_BIND6: &str = "or_bind6";
pub const PROG_SK_LOOKUP: &str = "or_sk_lookup";
pub const PROG_SKB_INGRESS: &str = "or_skb_ingress";
pub const PROG_SKB_EGRESS: &str = "or_skb_egress";
/// `sock_ops` on the kubelet's cgroup only (`capture.kubeletCgroup`), never the pods'.
pub const PROG_KUBELET_OPS: &str = "or_kubelet_ops";
/// Every program of ours starts with this.
pub const PROG_PREFIX: &str = "or_";

pub const FAMILY_V4: u16 = 4;
pub const FAMILY_V6: u16 = 6;

/// Per enrolled pod (value of `ENROLLED`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodEntry {
    /// The agent's handle for the pod; copied into [`OrigDst::pod_id`].
    pub pod_id: u32,
    /// Reserved for per-pod switches (strict mTLS, ...).
    pub flags: u32,
}

/// The destination an app asked for before we steered it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// Address bytes in network order; IPv4 uses the first 4.
    pub addr: [u8; 16],
    /// Port, host order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`] (IPv4-mapped IPv6 destinations are V4).
    pub family: u16,
    pub pod_id: u32,
}

/// Key of `ORIG_DST`: what the agent knows when it accepts a steered connection —
/// the pod (by its listener's namespace), the address family and the client's port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDstKey {
    pub netns_cookie: u64,
    /// Client (source) port, host order.
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
}

/// Key of `KUBELET_CONNS`: one TCP connection the kubelet opened, as the pod's side sees
/// it on accept — the kubelet's address and port (`src`), the pod's (`dst`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProbeKey {
    /// Address bytes in network order; IPv4 uses the first 4 (IPv4-mapped IPv6 is V4).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ports, host order.
    pub src_port: u16,
    pub dst_port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u16,
    pub _pad: u16,
}

/// [`Settings::flags`]: when the agent is gone (its in-pod listeners closed, as after a
/// crash), let pods' traffic flow unmeshed instead of refusing it (`fail-open`).
pub const SETTINGS_FAIL_OPEN: u16 = 1;
/// [`Settings::flags`], testing only (the agent never sets it): connect4/6 record the
/// original destination with invalid map flags, so the insert fails in the kernel as it
/// would in a broken or exhausted map. End-to-end tests set it in the pinned `SETTINGS`
/// map to show that such a connect fails closed and is counted.
pub const SETTINGS_TEST_FAIL_INSERTS: u16 = 2;

/// Version of the maps' layout: the agent pins its maps under a directory named for it,
/// so that an agent never reuses maps whose keys or values it reads differently. Raise
/// it whenever a map's key, value or size changes.
pub const MAPS_LAYOUT: u32 = 2;

/// Agent-wide settings the programs read (value of `SETTINGS[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Sockets carrying this SO_MARK belong to the agent and are never steered.
    pub agent_mark: u32,
    /// Port of the in-pod outbound listener (127.0.0.1 / ::1).
    pub outbound_port: u16,
    /// [`SETTINGS_FAIL_OPEN`], ...
    pub flags: u16,
    /// cgroup v2 id of the agent's own cgroup; its sockets are never steered.
    pub agent_cgroup_id: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are #[repr(C)] plain data with no padding holes that matter, valid for
    // any bit pattern.
    unsafe impl aya::Pod for super::PodEntry {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::OrigDstKey {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::DenyKey {}
    unsafe impl aya::Pod for super::PodCounters {}
    unsafe impl aya::Pod for super::ProbeKey {}
}
