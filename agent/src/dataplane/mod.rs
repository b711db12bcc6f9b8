//! The kernel side of capture: loads Outrider's programs (built into the binary), attaches
//! them by bpf_link to the cgroup that holds the pods, and owns their maps — the enrolled
//! set (by network-namespace cookie), the original destinations of steered connections,
//! the agent-wide settings, and per-pod traffic counters. Dropping the [`Dataplane`]
//! detaches everything.
pub mod cgroup;
mod counters;
mod inbound;

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use agent_ebpf::{
    DenyKey, FAMILY_V4, FAMILY_V6, MAP_ENROLLED, MAP_EXCLUDED_PORTS, MAP_EXCLUDED_V4,
    MAP_EXCLUDED_V6, MAP_ORIG_DST, MAP_POLICY_DENY, MAP_RESERVED_PORTS, MAP_SETTINGS, OrigDst,
    OrigDstKey, PodCounters, PodEntry, Settings,
};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{CgroupAttachMode, CgroupSockAddr, SockOps},
};
use ipnet::IpNet;

use crate::config::Config;

pub use cgroup::{CgroupError, own_cgroup_id, resolve_attach};
use counters::CounterTable;
use inbound::InboundSteering;
pub use inbound::PodInbound;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(
        "loading the kernel programs: {0} (the agent needs root or CAP_BPF+CAP_NET_ADMIN+CAP_SYS_ADMIN)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("kernel program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("kernel map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("kernel map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("kernel program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("at most {0} pods per node can be enrolled")]
    TooManyPods(u32),
    #[error("counting the possible CPUs: {0}")]
    Cpus(#[source] std::io::Error),
    #[error("cgroup {path}: {source}")]
    OpenCgroup {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program { name, source }
}

/// Takes the map `name` out of the object, for the agent to own.
fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, DataplaneError> {
    ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name))
}

/// The program `name` of the object, as the kind of program `P` it must be.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DataplaneError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name))
}

/// Looks up where steered connections were going; cheap to clone, shared by every pod's
/// accept loop.
#[derive(Clone)]
pub struct OrigDstTable(Arc<HashMap<MapData, OrigDstKey, OrigDst>>);

impl OrigDstTable {
    /// The original destination of the connection a pod's app opened from `client`
    /// (the peer address the agent's in-pod listener saw).
    pub fn lookup(&self, netns_cookie: u64, client: SocketAddr) -> Option<SocketAddr> {
        let family = match client.ip() {
            IpAddr::V4(_) => FAMILY_V4,
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => FAMILY_V4,
            IpAddr::V6(_) => FAMILY_V6,
        };
        let key = OrigDstKey {
            netns_cookie,
            port: client.port(),
            family,
            _pad: 0,
        };
        let orig = self.0.get(&key, 0).ok()?;
        Some(orig_to_socket_addr(&orig))
    }
}

fn orig_to_socket_addr(orig: &OrigDst) -> SocketAddr {
    let ip = if orig.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(
            orig.addr[0],
            orig.addr[1],
            orig.addr[2],
            orig.addr[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(orig.addr))
    };
    SocketAddr::new(ip, orig.port)
}

pub struct Dataplane {
    enrolled: HashMap<MapData, u64, PodEntry>,
    orig_dst: OrigDstTable,
    inbound: InboundSteering,
    policy_deny: HashMap<MapData, DenyKey, u8>,
    /// What `policy_deny` holds now.
    denied: std::collections::HashSet<DenyKey>,
    counters: CounterTable,
    /// Holds the programs and their links; dropped last.
    ebpf: Ebpf,
}

const CONNECT_PROGRAMS: [&str; 4] = [
    agent_ebpf::PROG_CONNECT4,
    agent_ebpf::PROG_CONNECT6,
    agent_ebpf::PROG_BIND4,
    agent_ebpf::PROG_BIND6,
];

impl Dataplane {
    /// Loads the programs, fills the settings maps, and attaches to the pods' cgroup.
    pub fn load(config: &Config) -> Result<Self, DataplaneError> {
        let attach = resolve_attach(&config.cgroup)?;
        let agent_cgroup_id = own_cgroup_id(&config.cgroup)?;
        raise_memlock_limit();

        let mut ebpf = Ebpf::load(aya::include_bytes_aligned!(concat!(
            env!("OUT_DIR"),
            "/outrider-ebpf"
        )))
        .map_err(DataplaneError::Load)?;

        // Settings first: the programs must never run without them.
        {
            let mut settings: Array<_, Settings> = Array::try_from(
                ebpf.map_mut(MAP_SETTINGS)
                    .ok_or(DataplaneError::MissingMap(MAP_SETTINGS))?,
            )
            .map_err(map_err(MAP_SETTINGS))?;
            let value = Settings {
                agent_mark: config.capture.agent_mark,
                outbound_port: config.capture.outbound_port,
                _pad: 0,
                agent_cgroup_id,
            };
            settings.set(0, value, 0).map_err(map_err(MAP_SETTINGS))?;
        }
        fill_port_set(
            &mut ebpf,
            MAP_RESERVED_PORTS,
            &config.capture.reserved_ports,
        )?;
        fill_port_set(&mut ebpf, MAP_EXCLUDED_PORTS, &config.capture.exclude_ports)?;
        fill_cidrs(&mut ebpf, &config.capture.exclude_cidrs)?;

        let cgroup = File::open(&attach).map_err(|source| DataplaneError::OpenCgroup {
            path: attach.clone(),
            source,
        })?;
        for name in CONNECT_PROGRAMS {
            let program: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            program.load().map_err(prog_err(name))?;
            program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(prog_err(name))?;
        }
        let name = agent_ebpf::PROG_SOCKOPS;
        let sockops: &mut SockOps = program(&mut ebpf, name)?;
        sockops.load().map_err(prog_err(name))?;
        sockops
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(prog_err(name))?;

        let agent_cgroup = cgroup::own_cgroup(&config.cgroup)
            .ok()
            .and_then(|p| p.canonicalize().ok());
        let counters = CounterTable::load(&mut ebpf, &cgroup, &attach, agent_cgroup.as_deref())?;

        let enrolled =
            HashMap::try_from(take_map(&mut ebpf, MAP_ENROLLED)?).map_err(map_err(MAP_ENROLLED))?;
        let orig_dst =
            HashMap::try_from(take_map(&mut ebpf, MAP_ORIG_DST)?).map_err(map_err(MAP_ORIG_DST))?;
        let inbound = InboundSteering::load(&mut ebpf)?;
        let policy_deny = HashMap::try_from(take_map(&mut ebpf, MAP_POLICY_DENY)?)
            .map_err(map_err(MAP_POLICY_DENY))?;
        tracing::info!(cgroup = %attach.display(), agent_cgroup_id, "kernel programs attached");
        Ok(Self {
            enrolled,
            orig_dst: OrigDstTable(Arc::new(orig_dst)),
            inbound,
            policy_deny,
            denied: Default::default(),
            counters,
            ebpf,
        })
    }

    /// Starts steering the network namespace `netns_cookie`.
    pub fn enroll(&mut self, netns_cookie: u64, pod_id: u32) -> Result<(), DataplaneError> {
        self.enrolled
            .insert(netns_cookie, PodEntry { pod_id, flags: 0 }, 0)
            .map_err(map_err(MAP_ENROLLED))
    }

    /// Stops steering `netns_cookie`; connections already steered carry on.
    pub fn unenroll(&mut self, netns_cookie: u64) -> Result<(), DataplaneError> {
        match self.enrolled.remove(&netns_cookie) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(MAP_ENROLLED)(e)),
        }
    }

    /// Makes the kernel's policy denials exactly `wanted`: connects from those pods to
    /// those destinations fail at once with ECONNREFUSED. Returns how many entries
    /// changed.
    pub fn set_policy_denials(
        &mut self,
        wanted: std::collections::HashSet<DenyKey>,
    ) -> Result<usize, DataplaneError> {
        let mut changed = 0;
        for stale in self.denied.difference(&wanted) {
            match self.policy_deny.remove(stale) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => changed += 1,
                Err(e) => return Err(map_err(MAP_POLICY_DENY)(e)),
            }
        }
        for new in wanted.difference(&self.denied) {
            self.policy_deny
                .insert(new, 1, 0)
                .map_err(map_err(MAP_POLICY_DENY))?;
            changed += 1;
        }
        self.denied = wanted;
        Ok(changed)
    }

    /// Starts steering plaintext arriving for the pod to its `:15006` listeners.
    pub fn attach_inbound<N: std::os::fd::AsFd, L: std::os::fd::AsRawFd>(
        &mut self,
        pod: PodInbound<'_, N, L>,
    ) -> Result<(), DataplaneError> {
        self.inbound.attach(&mut self.ebpf, pod)
    }

    /// Stops steering plaintext for the pod.
    pub fn detach_inbound(&mut self, pod_id: u32, ips: &[IpAddr]) {
        self.inbound.detach(&mut self.ebpf, pod_id, ips);
    }

    /// The pod's traffic counters since [`Dataplane::reset_pod_counters`], summed over
    /// CPUs (see [`PodCounters`]).
    pub fn pod_counters(&self, pod_id: u32) -> Result<PodCounters, DataplaneError> {
        self.counters.get(pod_id)
    }

    /// Zeroes the pod's traffic counters: for a pod id given to a new pod.
    pub fn reset_pod_counters(&mut self, pod_id: u32) -> Result<(), DataplaneError> {
        self.counters.reset(pod_id)
    }

    pub fn orig_dst(&self) -> OrigDstTable {
        self.orig_dst.clone()
    }
}

fn fill_port_set(ebpf: &mut Ebpf, name: &'static str, ports: &[u16]) -> Result<(), DataplaneError> {
    let mut map: HashMap<_, u16, u8> =
        HashMap::try_from(ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))?)
            .map_err(map_err(name))?;
    for port in ports {
        map.insert(port, 1, 0).map_err(map_err(name))?;
    }
    Ok(())
}

fn fill_cidrs(ebpf: &mut Ebpf, cidrs: &[IpNet]) -> Result<(), DataplaneError> {
    {
        let mut v4: LpmTrie<_, [u8; 4], u8> = LpmTrie::try_from(
            ebpf.map_mut(MAP_EXCLUDED_V4)
                .ok_or(DataplaneError::MissingMap(MAP_EXCLUDED_V4))?,
        )
        .map_err(map_err(MAP_EXCLUDED_V4))?;
        for net in cidrs.iter().filter_map(|n| match n {
            IpNet::V4(n) => Some(n.trunc()),
            IpNet::V6(_) => None,
        }) {
            let key = Key::new(u32::from(net.prefix_len()), net.addr().octets());
            v4.insert(&key, 1, 0).map_err(map_err(MAP_EXCLUDED_V4))?;
        }
    }
    let mut v6: LpmTrie<_, [u8; 16], u8> = LpmTrie::try_from(
        ebpf.map_mut(MAP_EXCLUDED_V6)
            .ok_or(DataplaneError::MissingMap(MAP_EXCLUDED_V6))?,
    )
    .map_err(map_err(MAP_EXCLUDED_V6))?;
    for net in cidrs.iter().filter_map(|n| match n {
        IpNet::V6(n) => Some(n.trunc()),
        IpNet::V4(_) => None,
    }) {
        let key = Key::new(u32::from(net.prefix_len()), net.addr().octets());
        v6.insert(&key, 1, 0).map_err(map_err(MAP_EXCLUDED_V6))?;
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it where that applies.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not lift RLIMIT_MEMLOCK; fine on kernels ≥ 5.11");
    }
}
