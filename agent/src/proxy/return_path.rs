//! The way back for deliveries that keep the client's IP. The agent delivers to a pod's
//! app from the client's own address (a transparent socket in the pod's namespace, bound
//! to `lo` and marked `capture.deliveryMark`: see `deliver`); the app answers that
//! address, which is not the pod's, so the pod's namespace must send the answers back
//! over `lo` instead of out of its interface:
//!
//! - `net.ipv4.tcp_fwmark_accept = 1`: the app's accepted socket takes the mark of the
//!   delivery's SYN (IPv6 too); `net.ipv4.fwmark_reflect = 1` and `net.ipv6.
//!   fwmark_reflect = 1`: what the kernel answers without a socket (a reset from a port
//!   nobody listens on) takes the mark of what it answers;
//! - per family, the route `local default dev lo table T` and the rule `fwmark M lookup
//!   T` (priority P): whatever carries the mark — the delivery and the app's end of it,
//!   nothing else — is local. The pod's other traffic never carries it (the agent's own
//!   sockets carry `capture.agentMark`; marks do not cross the pod's veth).
//!
//! The same as Istio's in-pod rules, with the sysctl in place of iptables' CONNMARK.
//! One [`ReturnPath`] per network namespace, shared by the deliveries through it
//! ([`ReturnPaths`]): set up at the pod's first delivery (again by each new agent: every
//! step is idempotent, and it was never taken down in between), and taken down once the
//! pod has been unenrolled ([`ReturnPath::withdraw`]) and the last connection holding it
//! is gone — never under an open delivery, whose replies would otherwise leave by the
//! pod's interface. An agent that hands over leaves it to the next; one that stops with
//! none taking over takes them all down ([`ReturnPaths::take_down_all`]).
use std::{
    collections::HashMap,
    io,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::{
    config::CaptureConfig,
    netns::Netns,
    rtnetlink::{Family, NetlinkError, RouteSocket},
    sysctl,
};

/// The sysctls set to 1 while the way back is up (0, the kernel's default, after).
/// IPv6's may be missing (IPv6 off in the pod).
const SYSCTLS: [&str; 3] = [
    "net/ipv4/tcp_fwmark_accept",
    "net/ipv4/fwmark_reflect",
    "net/ipv6/fwmark_reflect",
];

fn set_sysctls(netns: &Netns, value: &str) -> Result<(), ReturnPathError> {
    for name in SYSCTLS {
        match sysctl::write(netns, name, value) {
            Ok(()) => {}
            Err(e) if name.starts_with("net/ipv6") && e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ReturnPathError::Sysctl {
                    netns: netns_name(netns),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The mark, table and rule priority of the way back (`capture.delivery*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub mark: u32,
    pub table: u32,
    pub priority: u32,
}

impl Settings {
    pub fn from_config(capture: &CaptureConfig) -> Self {
        Self {
            mark: capture.delivery_mark,
            table: capture.delivery_table,
            priority: capture.delivery_rule_priority,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReturnPathError {
    #[error("in {netns}: {source}")]
    Sysctl { netns: String, source: io::Error },
    #[error("in {netns}: routing socket: {source}")]
    Socket { netns: String, source: io::Error },
    #[error("in {netns}: {source}")]
    Netlink { netns: String, source: NetlinkError },
}

type Live = Arc<Mutex<HashMap<u64, Weak<ReturnPath>>>>;

/// The node's return paths, one per pod network namespace in use.
pub struct ReturnPaths {
    settings: Settings,
    live: Live,
    /// Set up and taken down here (node mode), or by `outrider sidecar-init
    /// --keep-source-ip` in the pod (sidecar mode, where iptables' CONNMARK stands in for
    /// the sysctl).
    managed: bool,
}

impl ReturnPaths {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            live: Default::default(),
            managed: true,
        }
    }

    /// A sidecar's: its init step set the way back up in the pod, for both families.
    pub fn set_up_by_init(settings: Settings) -> Self {
        Self {
            managed: false,
            ..Self::new(settings)
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The agent stops with no agent taking over: every way back it set up is taken
    /// down (its deliveries end with it; the next agent sets up again at its first
    /// delivery). Returns how many.
    pub fn take_down_all(&self) -> usize {
        if !self.managed {
            return 0;
        }
        let live = crate::sync::lock(&self.live);
        let mut done = 0;
        for path in live.values().filter_map(Weak::upgrade) {
            match remove(&path.netns, self.settings) {
                Ok(()) => done += 1,
                Err(error) => tracing::warn!(%error,
                    "cannot remove the way back for deliveries from clients' IPs"),
            }
        }
        done
    }

    /// The return path of `netns`, set up if no connection holds it yet. A pod enrolled
    /// again in the same namespace takes back one that was withdrawn but not yet down.
    pub fn acquire(&self, netns: &Arc<Netns>) -> Result<Arc<ReturnPath>, ReturnPathError> {
        let mut live = crate::sync::lock(&self.live);
        if let Some(path) = live.get(&netns.cookie()).and_then(Weak::upgrade) {
            path.withdrawn.store(false, Ordering::Relaxed);
            return Ok(path);
        }
        let families = if self.managed {
            install(netns, self.settings)?
        } else {
            [true; 2]
        };
        let path = Arc::new(ReturnPath {
            netns: netns.clone(),
            settings: self.settings,
            managed: self.managed,
            families,
            withdrawn: AtomicBool::new(false),
            live: self.live.clone(),
        });
        live.insert(netns.cookie(), Arc::downgrade(&path));
        Ok(path)
    }
}

/// A pod namespace's way back, up while this lives (or for good, unless withdrawn).
pub struct ReturnPath {
    netns: Arc<Netns>,
    settings: Settings,
    managed: bool,
    /// Which families have their rule and route: [IPv4, IPv6].
    families: [bool; 2],
    /// The pod was unenrolled: take it all down when the last holder goes.
    withdrawn: AtomicBool,
    live: Live,
}

impl ReturnPath {
    /// True when deliveries of `family` can come back this way.
    pub fn serves(&self, family: Family) -> bool {
        self.families[family as usize]
    }

    /// The pod left: once no connection holds this any more, it is taken down.
    pub fn withdraw(&self) {
        self.withdrawn.store(true, Ordering::Relaxed);
    }
}

impl Drop for ReturnPath {
    fn drop(&mut self) {
        let mut live = crate::sync::lock(&self.live);
        let cookie = self.netns.cookie();
        if live.get(&cookie).is_some_and(|w| w.strong_count() > 0) {
            // Set up again meanwhile (the pod enrolled anew): it stays.
            return;
        }
        live.remove(&cookie);
        if self.managed && self.withdrawn.load(Ordering::Relaxed) {
            match remove(&self.netns, self.settings) {
                Ok(()) => tracing::debug!(netns = %self.netns.path().display(),
                    "the way back for deliveries from clients' IPs is removed"),
                Err(error) => tracing::warn!(%error,
                    "cannot remove the way back for deliveries from clients' IPs"),
            }
        }
    }
}

fn netns_name(netns: &Netns) -> String {
    netns.path().display().to_string()
}

/// Sets up the way back in `netns`; which families have it. IPv6 may be off in a pod
/// (then only IPv4 deliveries keep the client's IP); IPv4 must work.
pub fn install(netns: &Netns, s: Settings) -> Result<[bool; 2], ReturnPathError> {
    set_sysctls(netns, "1")?;
    let mut sock = RouteSocket::open(netns).map_err(|source| ReturnPathError::Socket {
        netns: netns_name(netns),
        source,
    })?;
    let mut families = [false; 2];
    for family in Family::BOTH {
        // The route first: a rule pointing at an empty table would fall through to `main`.
        let added = sock
            .add_local_default(family, s.table)
            .and_then(|_| sock.add_mark_rule(family, s.mark, s.table, s.priority));
        match added {
            Ok(_) => families[family as usize] = true,
            Err(e)
                if family == Family::V6 && e.source.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
            {
                tracing::debug!(netns = %netns.path().display(), "IPv6 is off in the pod");
            }
            Err(source) => {
                return Err(ReturnPathError::Netlink {
                    netns: netns_name(netns),
                    source,
                });
            }
        }
    }
    Ok(families)
}

/// Takes the way back down in `netns`: rules first, then routes, then the sysctls (back
/// to the kernel's default).
pub fn remove(netns: &Netns, s: Settings) -> Result<(), ReturnPathError> {
    let netlink = |source| ReturnPathError::Netlink {
        netns: netns_name(netns),
        source,
    };
    let mut sock = RouteSocket::open(netns).map_err(|source| ReturnPathError::Socket {
        netns: netns_name(netns),
        source,
    })?;
    for family in Family::BOTH {
        sock.delete_mark_rule(family, s.mark, s.table, s.priority)
            .map_err(netlink)?;
        sock.delete_local_default(family, s.table)
            .map_err(netlink)?;
    }
    set_sysctls(netns, "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings = Settings {
        mark: 0x4f53,
        table: 0x4f53,
        priority: 32764,
    };

    /// Needs root. Shared while held, idempotent, and down only once withdrawn and let go.
    #[test]
    fn the_way_back_is_shared_and_taken_down_only_when_withdrawn_and_unused() {
        crate::netns::init().unwrap();
        let ns = crate::netns::tests::scratch_namespace();
        let netns = Arc::new(Netns::open(&ns.path()).unwrap());
        let paths = ReturnPaths::new(SETTINGS);
        let rules = || ns.run(&["ip", "rule"]) + &ns.run(&["ip", "-6", "rule"]);
        let sysctl = || {
            ns.run(&[
                "cat",
                "/proc/sys/net/ipv4/tcp_fwmark_accept",
                "/proc/sys/net/ipv4/fwmark_reflect",
                "/proc/sys/net/ipv6/fwmark_reflect",
            ])
            .split_whitespace()
            .collect::<String>()
        };

        let first = paths.acquire(&netns).unwrap();
        assert!(first.serves(Family::V4) && first.serves(Family::V6));
        let second = paths.acquire(&netns).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(rules().matches("fwmark 0x4f53 lookup 20307").count(), 2);
        assert_eq!(sysctl(), "111");
        let routes = ns.run(&["ip", "route", "show", "table", "20307"]);
        assert!(routes.contains("local default dev lo"), "{routes}");

        // Not withdrawn: dropping leaves it (an agent that stops leaves it for the next).
        drop((first, second));
        assert_eq!(rules().matches("fwmark 0x4f53").count(), 2);
        // A new agent sets it up again over what is there.
        let again = paths.acquire(&netns).unwrap();
        again.withdraw();
        // Enrolled anew before the last holder went: it stays up.
        let anew = paths.acquire(&netns).unwrap();
        drop(again);
        assert_eq!(rules().matches("fwmark 0x4f53").count(), 2);
        anew.withdraw();
        drop(anew);
        assert!(!rules().contains("0x4f53"), "{}", rules());
        assert_eq!(sysctl(), "000");
        let routes = ns.run(&["ip", "route", "show", "table", "20307"]);
        assert!(routes.is_empty(), "{routes}");
    }
}
