//! Inbound plaintext steering: the `sk_lookup` program attached to each enrolled pod's
//! network namespace, and its maps — the pod's IPs (→ pod id) and the pod's `:15006`
//! listeners (one slot per family). Order matters because an empty slot fails open:
//! listeners are set before the IPs are published, and the IPs withdrawn first. Each
//! pod's link is pinned (`netns/<cookie>`), so steering outlives the agent.
use std::{
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
};

use agent_ebpf::{
    MAP_INBOUND_LISTENERS, MAP_INBOUND_V4, MAP_INBOUND_V6, MAX_PODS, PROG_SK_LOOKUP, inbound_slot,
};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, SockMap},
    programs::{ProgramFd, SkLookup, links::FdLink},
};

use super::{
    DataplaneError, attach_pinned, map_err, pin_program, pins::Pins, prog_err, program, take_map,
};

pub struct InboundSteering {
    v4: HashMap<MapData, [u8; 4], u32>,
    v6: HashMap<MapData, [u8; 16], u32>,
    listeners: SockMap<MapData>,
    program: ProgramFd,
}

/// What one pod contributes: its id, namespace, IPs and the two `:15006` listeners.
pub struct PodInbound<'a, N: AsFd, L: AsRawFd> {
    pub pod_id: u32,
    pub netns: N,
    pub netns_cookie: u64,
    pub ips: &'a [IpAddr],
    pub listener_v4: &'a L,
    pub listener_v6: &'a L,
}

fn sk_lookup(ebpf: &mut Ebpf) -> Result<&mut SkLookup, DataplaneError> {
    program(ebpf, PROG_SK_LOOKUP)
}

impl InboundSteering {
    /// Loads the program (attached per pod later) and takes its maps.
    pub fn load(ebpf: &mut Ebpf, pins: &Pins) -> Result<Self, DataplaneError> {
        let program = sk_lookup(ebpf)?;
        program.load().map_err(prog_err(PROG_SK_LOOKUP))?;
        let program = pin_program(
            pins,
            PROG_SK_LOOKUP,
            program.fd().map_err(prog_err(PROG_SK_LOOKUP))?,
        )?;
        Ok(Self {
            program,
            v4: HashMap::try_from(take_map(ebpf, MAP_INBOUND_V4)?)
                .map_err(map_err(MAP_INBOUND_V4))?,
            v6: HashMap::try_from(take_map(ebpf, MAP_INBOUND_V6)?)
                .map_err(map_err(MAP_INBOUND_V6))?,
            listeners: SockMap::try_from(take_map(ebpf, MAP_INBOUND_LISTENERS)?)
                .map_err(map_err(MAP_INBOUND_LISTENERS))?,
        })
    }

    /// Starts steering plaintext for the pod's IPs to its listeners; a link an earlier
    /// agent pinned for the pod's namespace is switched to this agent's program.
    pub fn attach<N: AsFd, L: AsRawFd>(
        &mut self,
        ebpf: &mut Ebpf,
        pins: &Pins,
        pod: PodInbound<'_, N, L>,
    ) -> Result<(), DataplaneError> {
        if pod.pod_id >= MAX_PODS {
            return Err(DataplaneError::TooManyPods(MAX_PODS));
        }
        let result = self.try_attach(ebpf, pins, &pod);
        if result.is_err() {
            self.detach(pins, pod.pod_id, pod.netns_cookie, pod.ips);
        }
        result
    }

    fn try_attach<N: AsFd, L: AsRawFd>(
        &mut self,
        ebpf: &mut Ebpf,
        pins: &Pins,
        pod: &PodInbound<'_, N, L>,
    ) -> Result<(), DataplaneError> {
        use std::os::unix::fs::MetadataExt;
        self.listeners
            .set(inbound_slot(pod.pod_id, false), pod.listener_v4, 0)
            .map_err(map_err(MAP_INBOUND_LISTENERS))?;
        self.listeners
            .set(inbound_slot(pod.pod_id, true), pod.listener_v6, 0)
            .map_err(map_err(MAP_INBOUND_LISTENERS))?;
        let netns_ino =
            std::fs::File::from(pod.netns.as_fd().try_clone_to_owned().map_err(|e| {
                DataplaneError::Attach {
                    name: PROG_SK_LOOKUP,
                    reason: e.to_string(),
                }
            })?)
            .metadata()
            .map_err(|e| DataplaneError::Attach {
                name: PROG_SK_LOOKUP,
                reason: e.to_string(),
            })?
            .ino();
        let program = sk_lookup(ebpf)?;
        attach_pinned(
            PROG_SK_LOOKUP,
            &pins.netns_link(pod.netns_cookie),
            &self.program,
            netns_ino,
            || {
                let id = program
                    .attach(pod.netns.as_fd())
                    .map_err(|e| e.to_string())?;
                let link = program.take_link(id).map_err(|e| e.to_string())?;
                Ok(FdLink::from(link))
            },
        )?;
        self.add_ips(pod.pod_id, pod.ips)
    }

    /// Publishes `ips` as the pod `pod_id`'s (its listeners must be set): each insert
    /// replaces an address's entry at once, so an address is never unsteered meanwhile.
    pub fn add_ips(&mut self, pod_id: u32, ips: &[IpAddr]) -> Result<(), DataplaneError> {
        for ip in ips {
            match ip {
                IpAddr::V4(v4) => self
                    .v4
                    .insert(v4.octets(), pod_id, 0)
                    .map_err(map_err(MAP_INBOUND_V4))?,
                IpAddr::V6(v6) => self
                    .v6
                    .insert(v6.octets(), pod_id, 0)
                    .map_err(map_err(MAP_INBOUND_V6))?,
            }
        }
        Ok(())
    }

    /// Withdraws `ips`; what fails to be removed is logged.
    pub fn remove_ips(&mut self, ips: &[IpAddr]) {
        for ip in ips {
            let removed = match ip {
                IpAddr::V4(v4) => self.v4.remove(&v4.octets()),
                IpAddr::V6(v6) => self.v6.remove(&v6.octets()),
            };
            if let Err(err) = removed
                && !matches!(err, aya::maps::MapError::KeyNotFound)
            {
                tracing::warn!(%ip, error = %err, "inbound: cannot withdraw a pod IP");
            }
        }
    }

    /// Stops steering for the pod; what fails to be removed is logged (maps are bounded
    /// and the pod's slots are overwritten when its id is reused).
    pub fn detach(&mut self, pins: &Pins, pod_id: u32, netns_cookie: u64, ips: &[IpAddr]) {
        self.remove_ips(ips);
        let link = pins.netns_link(netns_cookie);
        if let Err(err) = std::fs::remove_file(&link)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(pod_id, link = %link.display(), error = %err, "inbound: cannot detach sk_lookup");
        }
        for ipv6 in [false, true] {
            let _ = self.listeners.clear_index(&inbound_slot(pod_id, ipv6));
        }
    }
}

impl InboundSteering {
    /// After a take-over: withdraws the IPs of pods the earlier agent had and nobody
    /// claimed (`stale` pod ids), and the links of namespaces not `claimed`.
    pub fn withdraw_stale(
        &mut self,
        pins: &Pins,
        stale: &std::collections::HashSet<u32>,
        claimed: &std::collections::HashSet<u64>,
    ) {
        let v4: Vec<[u8; 4]> = self
            .v4
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, id)| stale.contains(id))
            .map(|(ip, _)| ip)
            .collect();
        for ip in v4 {
            let _ = self.v4.remove(&ip);
        }
        let v6: Vec<[u8; 16]> = self
            .v6
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, id)| stale.contains(id))
            .map(|(ip, _)| ip)
            .collect();
        for ip in v6 {
            let _ = self.v6.remove(&ip);
        }
        for cookie in pins.netns_links() {
            if !claimed.contains(&cookie) {
                let _ = std::fs::remove_file(pins.netns_link(cookie));
            }
        }
    }
}
