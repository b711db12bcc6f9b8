//! The kernel side of capture: loads Outrider's programs (built into the binary), attaches
//! them by bpf_link to the cgroup that holds the pods, and owns their maps — the enrolled
//! set (by network-namespace cookie), the original destinations of steered connections,
//! the agent-wide settings, and per-pod traffic counters. Everything is pinned (see
//! [`pins`]): dropping the [`Dataplane`] leaves the kernel steering, and the next agent
//! takes the state over; [`remove`] takes it all away.
pub mod cgroup;
mod counters;
mod inbound;
mod kubelet;
pub mod pins;
pub mod programs;

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use agent_ebpf::{
    DenyKey, FAMILY_V4, FAMILY_V6, MAP_ENROLLED, MAP_EXCLUDED_PORTS, MAP_EXCLUDED_V4,
    MAP_EXCLUDED_V6, MAP_ORIG_DST, MAP_POLICY_DENY, MAP_RESERVED_PORTS, MAP_SETTINGS, OrigDst,
    OrigDstKey, PodCounters, PodEntry, SETTINGS_FAIL_OPEN, Settings,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramFd, links::FdLink},
};
use ipnet::IpNet;

use crate::config::{Config, FailPolicy};

pub use cgroup::{CgroupError, own_cgroup_id, resolve_attach};
use counters::CounterTable;
use inbound::InboundSteering;
pub use inbound::PodInbound;
pub use kubelet::ProbeTable;

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
    #[error(transparent)]
    Pins(#[from] pins::PinError),
    #[error("kernel program {name}: attaching: {reason}")]
    Attach { name: &'static str, reason: String },
}

/// Attaches `program` by a link pinned at `path`, reusing (updating in place) the link
/// already pinned there when it is attached to `target_id`.
fn attach_pinned(
    name: &'static str,
    path: &std::path::Path,
    program: &ProgramFd,
    target_id: u64,
    attach: impl FnOnce() -> Result<FdLink, String>,
) -> Result<bool, DataplaneError> {
    use std::os::fd::AsFd;
    pins::update_or_attach(path, program.as_fd(), target_id, attach)
        .map_err(|reason| DataplaneError::Attach { name, reason })
}

/// Detaches and forgets everything the agent instance pinned: its programs stop, and
/// enrolled pods' traffic flows unmeshed. For uninstalling (`outrider cleanup`).
pub fn remove(config: &Config) -> std::io::Result<PathBuf> {
    let dir = config.capture.pin_dir(&config.instance);
    pins::remove_all(&dir)?;
    Ok(dir)
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
    /// The kubelet's live connections, when `capture.kubeletCgroup` is set.
    kubelet: Option<ProbeTable>,
    pins: pins::Pins,
    /// Pods enrolled by an earlier agent (network namespace cookie → pod id), until the
    /// first enrollment after start claims or drops them.
    adoptable: std::collections::HashMap<u64, u32>,
    /// `capture.failPolicy: fail-open`, as the programs were told.
    fail_open: bool,
    /// Holds the programs; dropped last.
    ebpf: Ebpf,
}

impl Dataplane {
    /// Loads the programs, fills the settings maps, and attaches to the pods' cgroup —
    /// reusing what an earlier agent pinned: its maps, state and all, and its links, which
    /// are switched to the new programs in place.
    pub fn load(config: &Config) -> Result<Self, DataplaneError> {
        use std::os::unix::fs::MetadataExt;
        let attach = resolve_attach(&config.cgroup)?;
        let agent_cgroup_id = own_cgroup_id(&config.cgroup)?;
        raise_memlock_limit();
        let pins = pins::Pins::open(&config.capture.pin_dir(&config.instance))?;

        let maps_dir = pins.maps_dir();
        let mut loader = EbpfLoader::new();
        for name in agent_ebpf::ALL_MAPS {
            loader.map_pin_path(name, maps_dir.join(name));
        }
        let mut ebpf = loader
            .load(aya::include_bytes_aligned!(concat!(
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
                flags: match config.capture.fail_policy {
                    FailPolicy::FailClosed => 0,
                    FailPolicy::FailOpen => SETTINGS_FAIL_OPEN,
                },
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
        let cgroup_id = cgroup
            .metadata()
            .map_err(|source| DataplaneError::OpenCgroup {
                path: attach.clone(),
                source,
            })?
            .ino();
        let mut reused = programs::attach_to_cgroup(
            &mut ebpf,
            &pins,
            programs::Target::Pods,
            (&cgroup, cgroup_id),
        )?;

        let agent_cgroup = cgroup::own_cgroup(&config.cgroup)
            .ok()
            .and_then(|p| p.canonicalize().ok());
        let counters = CounterTable::load(&mut ebpf, &attach, agent_cgroup.as_deref())?;
        let (kubelet, kubelet_reused) = kubelet::load(&mut ebpf, &pins, config, &attach)?;
        reused += usize::from(kubelet_reused);

        let enrolled: HashMap<MapData, u64, PodEntry> =
            HashMap::try_from(take_map(&mut ebpf, MAP_ENROLLED)?).map_err(map_err(MAP_ENROLLED))?;
        let adoptable: std::collections::HashMap<u64, u32> = enrolled
            .iter()
            .filter_map(|entry| entry.ok())
            .map(|(cookie, entry)| (cookie, entry.pod_id))
            .collect();
        let orig_dst =
            HashMap::try_from(take_map(&mut ebpf, MAP_ORIG_DST)?).map_err(map_err(MAP_ORIG_DST))?;
        let inbound = InboundSteering::load(&mut ebpf, &pins)?;
        let policy_deny: HashMap<MapData, DenyKey, u8> =
            HashMap::try_from(take_map(&mut ebpf, MAP_POLICY_DENY)?)
                .map_err(map_err(MAP_POLICY_DENY))?;
        let denied = policy_deny.keys().filter_map(|k| k.ok()).collect();
        pins.prune(&programs::in_force(kubelet.is_some()));
        tracing::info!(
            cgroup = %attach.display(),
            agent_cgroup_id,
            pins = %pins.dir().display(),
            links_reused = reused,
            pods_to_adopt = adoptable.len(),
            fail_policy = ?config.capture.fail_policy,
            "kernel programs attached"
        );
        Ok(Self {
            enrolled,
            orig_dst: OrigDstTable(Arc::new(orig_dst)),
            inbound,
            policy_deny,
            denied,
            counters,
            kubelet,
            pins,
            adoptable,
            fail_open: config.capture.fail_policy == FailPolicy::FailOpen,
            ebpf,
        })
    }

    /// The pod id an earlier agent gave the pod in network namespace `netns_cookie`, for
    /// the pod to keep it (and its kernel state).
    pub fn adoptable(&self) -> &std::collections::HashMap<u64, u32> {
        &self.adoptable
    }

    /// Ends the take-over from an earlier agent: what it had enrolled and nobody claimed
    /// (`claimed`: network namespace cookies) is withdrawn from the kernel.
    pub fn finish_adoption(&mut self, claimed: &std::collections::HashSet<u64>) {
        let stale: Vec<(u64, u32)> = self
            .adoptable
            .drain()
            .filter(|(cookie, _)| !claimed.contains(cookie))
            .collect();
        for (cookie, pod_id) in &stale {
            tracing::info!(
                netns_cookie = cookie,
                pod_id,
                "withdrawing a pod the previous agent had enrolled"
            );
            if let Err(error) = self.unenroll(*cookie) {
                tracing::warn!(netns_cookie = cookie, %error, "cannot withdraw a stale pod");
            }
        }
        let stale_ids: std::collections::HashSet<u32> = stale.iter().map(|(_, id)| *id).collect();
        self.inbound.withdraw_stale(&self.pins, &stale_ids, claimed);
    }

    /// Starts steering the network namespace `netns_cookie`.
    pub fn enroll(&mut self, netns_cookie: u64, pod_id: u32) -> Result<(), DataplaneError> {
        self.enrolled
            .insert(netns_cookie, PodEntry { pod_id, flags: 0 }, 0)
            .map_err(map_err(MAP_ENROLLED))
    }

    /// Stops steering `netns_cookie`; connections already steered carry on.
    pub fn unenroll(&mut self, netns_cookie: u64) -> Result<(), DataplaneError> {
        self.adoptable.remove(&netns_cookie);
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
        self.inbound.attach(&mut self.ebpf, &self.pins, pod)
    }

    /// Steers plaintext for `ips` too to the listeners of the pod `pod_id` (already
    /// attached): for a pod whose IPs changed, before its record claims them.
    pub fn add_inbound_ips(&mut self, pod_id: u32, ips: &[IpAddr]) -> Result<(), DataplaneError> {
        self.inbound.add_ips(pod_id, ips)
    }

    /// Stops steering plaintext for `ips` (addresses a pod no longer has); its other
    /// addresses and its listeners stay.
    pub fn remove_inbound_ips(&mut self, ips: &[IpAddr]) {
        self.inbound.remove_ips(ips);
    }

    /// Stops steering plaintext for the pod.
    pub fn detach_inbound(&mut self, pod_id: u32, netns_cookie: u64, ips: &[IpAddr]) {
        self.inbound.detach(&self.pins, pod_id, netns_cookie, ips);
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

    /// True when the programs let pods' traffic through unmeshed rather than refuse it
    /// (`capture.failPolicy: fail-open`).
    pub fn fails_open(&self) -> bool {
        self.fail_open
    }

    /// The kubelet's live connections (None without `capture.kubeletCgroup`).
    pub fn kubelet_probes(&self) -> Option<ProbeTable> {
        self.kubelet.clone()
    }

    pub fn orig_dst(&self) -> OrigDstTable {
        self.orig_dst.clone()
    }
}

fn fill_port_set(ebpf: &mut Ebpf, name: &'static str, ports: &[u16]) -> Result<(), DataplaneError> {
    let mut map: HashMap<_, u16, u8> =
        HashMap::try_from(ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))?)
            .map_err(map_err(name))?;
    let stale: Vec<u16> = map
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !ports.contains(k))
        .collect();
    for port in stale {
        map.remove(&port).map_err(map_err(name))?;
    }
    for port in ports {
        map.insert(port, 1, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// Pins the loaded program `name` and returns its descriptor.
fn pin_program(
    pins: &pins::Pins,
    name: &'static str,
    fd: &ProgramFd,
) -> Result<ProgramFd, DataplaneError> {
    use std::os::fd::AsFd;
    pins.pin_program(name, fd.as_fd())
        .map_err(|e| DataplaneError::Attach {
            name,
            reason: format!("pinning the program: {e}"),
        })?;
    fd.try_clone().map_err(|e| DataplaneError::Attach {
        name,
        reason: e.to_string(),
    })
}

fn fill_cidrs(ebpf: &mut Ebpf, cidrs: &[IpNet]) -> Result<(), DataplaneError> {
    let v4: Vec<(u32, [u8; 4])> = cidrs
        .iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some((u32::from(n.prefix_len()), n.trunc().addr().octets())),
            IpNet::V6(_) => None,
        })
        .collect();
    let v6: Vec<(u32, [u8; 16])> = cidrs
        .iter()
        .filter_map(|n| match n {
            IpNet::V6(n) => Some((u32::from(n.prefix_len()), n.trunc().addr().octets())),
            IpNet::V4(_) => None,
        })
        .collect();
    fill_trie(ebpf, MAP_EXCLUDED_V4, &v4)?;
    fill_trie(ebpf, MAP_EXCLUDED_V6, &v6)
}

/// Makes the trie `name` hold exactly `wanted` (prefix length, address).
fn fill_trie<const N: usize>(
    ebpf: &mut Ebpf,
    name: &'static str,
    wanted: &[(u32, [u8; N])],
) -> Result<(), DataplaneError>
where
    [u8; N]: aya::Pod,
{
    let mut trie: LpmTrie<_, [u8; N], u8> =
        LpmTrie::try_from(ebpf.map_mut(name).ok_or(DataplaneError::MissingMap(name))?)
            .map_err(map_err(name))?;
    let stale: Vec<Key<[u8; N]>> = trie
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
        .collect();
    for key in stale {
        trie.remove(&key).map_err(map_err(name))?;
    }
    for (prefix, addr) in wanted {
        trie.insert(&Key::new(*prefix, *addr), 1, 0)
            .map_err(map_err(name))?;
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
