//! Every map the kernel programs use. Sizes bound kernel memory; LRU maps evict the
//! oldest hand-over entries should an agent never collect them.
use agent_ebpf::{
    DenyKey, MAX_PODS, OrigDst, OrigDstKey, PodCounters, PodEntry, ProbeKey, SETTINGS_FAIL_OPEN,
    SETTINGS_TEST_FAIL_INSERTS, Settings,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockMap},
};

#[map(name = "ENROLLED")]
pub static ENROLLED: HashMap<u64, PodEntry> = HashMap::with_max_entries(16_384, 0);

#[map(name = "SOCK_ORIG")]
pub static SOCK_ORIG: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(65_536, 0);

#[map(name = "ORIG_DST")]
pub static ORIG_DST: LruHashMap<OrigDstKey, OrigDst> = LruHashMap::with_max_entries(131_072, 0);

#[map(name = "SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map(name = "RESERVED_PORTS")]
pub static RESERVED_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);

#[map(name = "EXCLUDED_PORTS")]
pub static EXCLUDED_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

#[map(name = "EXCLUDED_V4")]
pub static EXCLUDED_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(1024, 0);

#[map(name = "EXCLUDED_V6")]
pub static EXCLUDED_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(1024, 0);

#[map(name = "POLICY_DENY")]
pub static POLICY_DENY: HashMap<DenyKey, u8> = HashMap::with_max_entries(65_536, 0);

#[map(name = "INBOUND_V4")]
pub static INBOUND_V4: HashMap<[u8; 4], u32> = HashMap::with_max_entries(MAX_PODS, 0);

#[map(name = "INBOUND_V6")]
pub static INBOUND_V6: HashMap<[u8; 16], u32> = HashMap::with_max_entries(MAX_PODS, 0);

#[map(name = "INBOUND_LISTENERS")]
pub static INBOUND_LISTENERS: SockMap = SockMap::with_max_entries(MAX_PODS * 2, 0);

#[map(name = "POD_COUNTERS")]
pub static POD_COUNTERS: PerCpuArray<PodCounters> = PerCpuArray::with_max_entries(MAX_PODS, 0);

#[map(name = "KUBELET_CONNS")]
pub static KUBELET_CONNS: LruHashMap<ProbeKey, u64> = LruHashMap::with_max_entries(65_536, 0);

/// True when the current socket belongs to the agent: by its mark or its cgroup.
#[inline(always)]
pub fn is_agent(mark: u32) -> bool {
    let Some(settings) = SETTINGS.get(0) else {
        return false;
    };
    if settings.agent_mark != 0 && mark == settings.agent_mark {
        return true;
    }
    let cgroup = unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() };
    settings.agent_cgroup_id != 0 && cgroup == settings.agent_cgroup_id
}

/// True when the agent runs `fail-open`: with the agent gone, pods' traffic flows
/// unmeshed instead of being refused.
#[inline(always)]
pub fn fail_open() -> bool {
    SETTINGS
        .get(0)
        .is_some_and(|s| s.flags & SETTINGS_FAIL_OPEN != 0)
}

/// Flags for inserting into a steering map: none, or invalid ones when a test asks for
/// the insert to fail ([`SETTINGS_TEST_FAIL_INSERTS`]).
#[inline(always)]
pub fn insert_flags() -> u64 {
    match SETTINGS.get(0) {
        Some(s) if s.flags & SETTINGS_TEST_FAIL_INSERTS != 0 => 1 << 63,
        _ => 0,
    }
}
