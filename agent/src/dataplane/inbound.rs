//! Inbound plaintext steering: the `sk_lookup` program attached to each enrolled pod's
//! network namespace, and its maps — the pod's IPs (→ pod id) and the pod's `:15006`
//! listeners (one slot per family). Order matters because an empty slot fails open:
//! listeners are set before the IPs are published, and the IPs withdrawn first.
use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
};

use agent_ebpf::{
    MAP_INBOUND_LISTENERS, MAP_INBOUND_V4, MAP_INBOUND_V6, MAX_PODS, PROG_SK_LOOKUP, inbound_slot,
};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, SockMap},
    programs::{SkLookup, sk_lookup::SkLookupLinkId},
};

use super::{DataplaneError, map_err, prog_err, program, take_map};

pub struct InboundSteering {
    v4: HashMap<MapData, [u8; 4], u32>,
    v6: HashMap<MapData, [u8; 16], u32>,
    listeners: SockMap<MapData>,
    links: StdHashMap<u32, SkLookupLinkId>,
}

/// What one pod contributes: its id, namespace, IPs and the two `:15006` listeners.
pub struct PodInbound<'a, N: AsFd, L: AsRawFd> {
    pub pod_id: u32,
    pub netns: N,
    pub ips: &'a [IpAddr],
    pub listener_v4: &'a L,
    pub listener_v6: &'a L,
}

fn sk_lookup(ebpf: &mut Ebpf) -> Result<&mut SkLookup, DataplaneError> {
    program(ebpf, PROG_SK_LOOKUP)
}

impl InboundSteering {
    /// Loads the program (attached per pod later) and takes its maps.
    pub fn load(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        sk_lookup(ebpf)?.load().map_err(prog_err(PROG_SK_LOOKUP))?;
        Ok(Self {
            v4: HashMap::try_from(take_map(ebpf, MAP_INBOUND_V4)?)
                .map_err(map_err(MAP_INBOUND_V4))?,
            v6: HashMap::try_from(take_map(ebpf, MAP_INBOUND_V6)?)
                .map_err(map_err(MAP_INBOUND_V6))?,
            listeners: SockMap::try_from(take_map(ebpf, MAP_INBOUND_LISTENERS)?)
                .map_err(map_err(MAP_INBOUND_LISTENERS))?,
            links: StdHashMap::new(),
        })
    }

    /// Starts steering plaintext for the pod's IPs to its listeners.
    pub fn attach<N: AsFd, L: AsRawFd>(
        &mut self,
        ebpf: &mut Ebpf,
        pod: PodInbound<'_, N, L>,
    ) -> Result<(), DataplaneError> {
        if pod.pod_id >= MAX_PODS {
            return Err(DataplaneError::TooManyPods(MAX_PODS));
        }
        let result = self.try_attach(ebpf, &pod);
        if result.is_err() {
            self.detach(ebpf, pod.pod_id, pod.ips);
        }
        result
    }

    fn try_attach<N: AsFd, L: AsRawFd>(
        &mut self,
        ebpf: &mut Ebpf,
        pod: &PodInbound<'_, N, L>,
    ) -> Result<(), DataplaneError> {
        self.listeners
            .set(inbound_slot(pod.pod_id, false), pod.listener_v4, 0)
            .map_err(map_err(MAP_INBOUND_LISTENERS))?;
        self.listeners
            .set(inbound_slot(pod.pod_id, true), pod.listener_v6, 0)
            .map_err(map_err(MAP_INBOUND_LISTENERS))?;
        let link = sk_lookup(ebpf)?
            .attach(pod.netns.as_fd())
            .map_err(prog_err(PROG_SK_LOOKUP))?;
        self.links.insert(pod.pod_id, link);
        for ip in pod.ips {
            match ip {
                IpAddr::V4(v4) => self
                    .v4
                    .insert(v4.octets(), pod.pod_id, 0)
                    .map_err(map_err(MAP_INBOUND_V4))?,
                IpAddr::V6(v6) => self
                    .v6
                    .insert(v6.octets(), pod.pod_id, 0)
                    .map_err(map_err(MAP_INBOUND_V6))?,
            }
        }
        Ok(())
    }

    /// Stops steering for the pod; what fails to be removed is logged (maps are bounded
    /// and the pod's slots are overwritten when its id is reused).
    pub fn detach(&mut self, ebpf: &mut Ebpf, pod_id: u32, ips: &[IpAddr]) {
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
        if let Some(link) = self.links.remove(&pod_id)
            && let Ok(program) = sk_lookup(ebpf)
            && let Err(err) = program.detach(link)
        {
            tracing::warn!(pod_id, error = %err, "inbound: cannot detach sk_lookup");
        }
        for ipv6 in [false, true] {
            let _ = self.listeners.clear_index(&inbound_slot(pod_id, ipv6));
        }
    }
}
