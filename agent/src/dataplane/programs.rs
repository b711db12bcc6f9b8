//! Every kernel program the agent attaches, in one table ([`PROGRAMS`]): its name in the
//! object (shared with the kernel side, `agent-ebpf`), how it hooks in, what it attaches
//! to, and so its pins — `programs/<name>`, and `links/<name>` for one link, or
//! `netns/<cookie>` per pod. Attaching at start (over the links a previous agent pinned,
//! switched to the new programs in place), pruning the pins of programs no longer in
//! force, and the restart tests all walk it: a new program is one row here (and, for a
//! new kind of target, its attach step).
use std::fs::File;

use agent_ebpf::{
    PROG_BIND4, PROG_BIND6, PROG_CONNECT4, PROG_CONNECT6, PROG_KUBELET_OPS, PROG_SK_LOOKUP,
    PROG_SKB_EGRESS, PROG_SKB_INGRESS, PROG_SOCKOPS,
};
use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps, links::FdLink,
    },
};

use super::{DataplaneError, attach_pinned, pin_program, pins::Pins, prog_err, program};

/// How a program hooks in (its aya type and attach type).
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// `cgroup/connect4|6`, `cgroup/bind4|6` (the attach type is the program's own).
    SockAddr,
    /// `sock_ops`.
    SockOps,
    /// `cgroup_skb`, ingress or egress.
    Skb(CgroupSkbAttachType),
    /// `sk_lookup`, attached to a network namespace.
    SkLookup,
}

/// What a program attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The cgroup holding the pods (`cgroup.attach`): one link, `links/<name>`.
    Pods,
    /// The kubelet's cgroup (`capture.kubeletCgroup`), only when set: `links/<name>`.
    Kubelet,
    /// Each enrolled pod's network namespace (`dataplane::inbound`): `netns/<cookie>`.
    PodNetns,
}

/// One kernel program.
#[derive(Debug)]
pub struct Program {
    pub name: &'static str,
    pub hook: Hook,
    pub target: Target,
}

/// Every program, in the order they are attached.
pub const PROGRAMS: [Program; 9] = [
    Program {
        name: PROG_CONNECT4,
        hook: Hook::SockAddr,
        target: Target::Pods,
    },
    Program {
        name: PROG_CONNECT6,
        hook: Hook::SockAddr,
        target: Target::Pods,
    },
    Program {
        name: PROG_BIND4,
        hook: Hook::SockAddr,
        target: Target::Pods,
    },
    Program {
        name: PROG_BIND6,
        hook: Hook::SockAddr,
        target: Target::Pods,
    },
    Program {
        name: PROG_SOCKOPS,
        hook: Hook::SockOps,
        target: Target::Pods,
    },
    Program {
        name: PROG_SKB_INGRESS,
        hook: Hook::Skb(CgroupSkbAttachType::Ingress),
        target: Target::Pods,
    },
    Program {
        name: PROG_SKB_EGRESS,
        hook: Hook::Skb(CgroupSkbAttachType::Egress),
        target: Target::Pods,
    },
    Program {
        name: PROG_KUBELET_OPS,
        hook: Hook::SockOps,
        target: Target::Kubelet,
    },
    Program {
        name: PROG_SK_LOOKUP,
        hook: Hook::SkLookup,
        target: Target::PodNetns,
    },
];

/// The programs of `target`.
pub fn of(target: Target) -> impl Iterator<Item = &'static Program> {
    PROGRAMS.iter().filter(move |p| p.target == target)
}

/// The names of the programs in force: all but the kubelet's when it has no cgroup.
pub fn in_force(kubelet: bool) -> Vec<&'static str> {
    PROGRAMS
        .iter()
        .filter(|p| kubelet || p.target != Target::Kubelet)
        .map(|p| p.name)
        .collect()
}

/// Loads and pins every program of `target` (a cgroup target) and attaches it to
/// `cgroup` (with its id) by a pinned link, reusing (updating in place) a link already
/// pinned there for that cgroup. Returns how many pinned links were reused.
pub fn attach_to_cgroup(
    ebpf: &mut Ebpf,
    pins: &Pins,
    target: Target,
    (cgroup, cgroup_id): (&File, u64),
) -> Result<usize, DataplaneError> {
    let mut reused = 0;
    for entry in of(target) {
        let name = entry.name;
        let link = pins.link(name);
        let single = CgroupAttachMode::Single;
        // Loads and pins the program as a `$ty`, then attaches it by a pinned link with
        // `attach(cgroup, $args…)` (each aya type has its own `attach`).
        macro_rules! load_and_attach {
            ($ty:ty, $($arg:expr),+) => {{
                let p: &mut $ty = program(ebpf, name)?;
                p.load().map_err(prog_err(name))?;
                let fd = pin_program(pins, name, p.fd().map_err(prog_err(name))?)?;
                attach_pinned(name, &link, &fd, cgroup_id, || {
                    let id = p.attach(cgroup, $($arg),+).map_err(|e| e.to_string())?;
                    FdLink::try_from(p.take_link(id).map_err(|e| e.to_string())?)
                        .map_err(|e| e.to_string())
                })?
            }};
        }
        let reuse = match entry.hook {
            Hook::SockAddr => load_and_attach!(CgroupSockAddr, single),
            Hook::SockOps => load_and_attach!(SockOps, single),
            Hook::Skb(attach_type) => load_and_attach!(CgroupSkb, attach_type, single),
            Hook::SkLookup => {
                return Err(DataplaneError::Attach {
                    name,
                    reason: "an sk_lookup program attaches to a network namespace, not a cgroup"
                        .into(),
                });
            }
        };
        reused += usize::from(reuse);
    }
    Ok(reused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_ours_and_each_once() {
        let mut names: Vec<&str> = PROGRAMS.iter().map(|p| p.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PROGRAMS.len(), "a name twice");
        for name in &names {
            assert!(name.starts_with(agent_ebpf::PROG_PREFIX), "{name}");
        }
    }

    #[test]
    fn only_namespace_programs_are_sk_lookup() {
        for p in &PROGRAMS {
            assert_eq!(
                matches!(p.hook, Hook::SkLookup),
                p.target == Target::PodNetns,
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn the_kubelets_program_is_in_force_only_with_its_cgroup() {
        assert!(in_force(true).contains(&PROG_KUBELET_OPS));
        assert!(!in_force(false).contains(&PROG_KUBELET_OPS));
        assert!(in_force(false).contains(&PROG_SK_LOOKUP));
        assert_eq!(in_force(true).len(), PROGRAMS.len());
        assert_eq!(of(Target::Pods).count(), 7);
    }
}
