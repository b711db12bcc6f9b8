//! The Linux capabilities each command needs, checked when it starts: a container that was
//! not granted one (the DaemonSet and the injected init container list them) fails at
//! once with a message naming it, instead of a kernel error code half way through.
use std::fmt;

/// A capability and why Outrider needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    /// Its number (`linux/capability.h`): the bit in `CapEff`.
    pub bit: u32,
    pub why: &'static str,
}

pub const NET_ADMIN: Capability = Capability {
    name: "NET_ADMIN",
    bit: 12,
    why: "attach the cgroup, sockops and sk_lookup programs, mark the agent's sockets (SO_MARK), and deliver from clients' IPs (IP_TRANSPARENT, a rule and route in each pod)",
};
pub const SYS_PTRACE: Capability = Capability {
    name: "SYS_PTRACE",
    bit: 19,
    why: "open /proc/<pid>/ns/net of pods' processes",
};
pub const SYS_ADMIN: Capability = Capability {
    name: "SYS_ADMIN",
    bit: 21,
    why: "enter pods' network namespaces (setns)",
};
pub const PERFMON: Capability = Capability {
    name: "PERFMON",
    bit: 38,
    why: "load the kernel programs that need tracing helpers",
};
pub const BPF: Capability = Capability {
    name: "BPF",
    bit: 39,
    why: "load and pin the kernel programs and maps",
};

/// What `outrider run` needs: the capabilities the DaemonSet adds after dropping ALL.
pub const AGENT: &[Capability] = &[BPF, PERFMON, NET_ADMIN, SYS_ADMIN, SYS_PTRACE];

/// What `outrider sidecar-init` needs to set the pod's iptables rules.
pub const SIDECAR_INIT: &[Capability] = &[Capability {
    why: "set the pod's iptables rules",
    ..NET_ADMIN
}];

#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    #[error("cannot read this process's capabilities from /proc/self/status: {0}")]
    Unreadable(String),
    #[error("{0}")]
    Missing(Missing),
}

/// The capabilities `what` lacks.
#[derive(Debug)]
pub struct Missing {
    pub what: &'static str,
    pub missing: Vec<Capability>,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .missing
            .iter()
            .map(|c| format!("CAP_{}", c.name))
            .collect();
        write!(
            f,
            "{} needs the capabilit{} {}, which this process does not have: ",
            self.what,
            if self.missing.len() == 1 { "y" } else { "ies" },
            names.join(", ")
        )?;
        let reasons: Vec<String> = self
            .missing
            .iter()
            .map(|c| format!("CAP_{} to {}", c.name, c.why))
            .collect();
        write!(
            f,
            "{} (grant it with securityContext.capabilities.add, or --cap-add {})",
            reasons.join("; "),
            self.missing
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}

/// Fails naming every capability of `needed` this process does not hold (effective set).
pub fn require(what: &'static str, needed: &[Capability]) -> Result<(), CapabilityError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| CapabilityError::Unreadable(e.to_string()))?;
    let effective =
        effective(&status).ok_or_else(|| CapabilityError::Unreadable("no CapEff line".into()))?;
    let missing = lacking(effective, needed);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CapabilityError::Missing(Missing { what, missing }))
    }
}

/// The effective set from a `/proc/<pid>/status` text.
fn effective(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

fn lacking(effective: u64, needed: &[Capability]) -> Vec<Capability> {
    needed
        .iter()
        .copied()
        .filter(|c| effective & (1u64 << c.bit) == 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000201000\n";
        assert_eq!(effective(status), Some(0xc0_0020_1000));
        assert_eq!(effective("Name:\tx\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        // The DaemonSet's five: bits 12, 19, 21, 38, 39.
        let granted = (1u64 << 12) | (1 << 19) | (1 << 21) | (1 << 38) | (1 << 39);
        assert!(lacking(granted, AGENT).is_empty());
        let without_bpf = granted & !(1 << 39);
        assert_eq!(lacking(without_bpf, AGENT), [BPF]);
        let text = Missing {
            what: "the agent",
            missing: lacking(without_bpf & !(1 << 21), AGENT),
        }
        .to_string();
        assert!(
            text.starts_with("the agent needs the capabilities CAP_BPF, CAP_SYS_ADMIN,"),
            "{text}"
        );
        assert!(text.contains("--cap-add BPF,SYS_ADMIN"), "{text}");
    }

    #[test]
    fn this_test_process_can_be_checked() {
        // Whatever this process holds, reading it works, and nothing is "missing" from an
        // empty list.
        require("nothing", &[]).unwrap();
    }
}
