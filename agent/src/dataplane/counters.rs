//! Per-pod traffic counters: the per-CPU map indexed by pod id that the `cgroup_skb`
//! ingress and egress programs fill (attached to the pods' cgroup with the others:
//! `programs`). They count what crosses an
//! enrolled pod's network interface — loopback never — whoever's socket it is: the app's
//! own (also traffic that bypasses the agent: excluded ports and CIDRs) and the agent's
//! sockets inside the pod, provided the agent's cgroup is below the attach cgroup (as
//! the agent's pod is below `kubepods`). See [`PodCounters`] for what a packet and a
//! byte are.
use std::path::Path;

use agent_ebpf::{MAP_POD_COUNTERS, MAX_PODS, PodCounters};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuValues},
};

use super::{DataplaneError, map_err, take_map};

pub struct CounterTable {
    map: PerCpuArray<MapData, PodCounters>,
    /// Possible CPUs: the number of values per slot.
    cpus: usize,
}

impl CounterTable {
    /// Takes the counters' map; `path` is the attach cgroup, below which the agent's own
    /// cgroup should lie (else what it carries for pods is not counted: warned).
    pub fn load(
        ebpf: &mut Ebpf,
        path: &Path,
        agent_cgroup: Option<&Path>,
    ) -> Result<Self, DataplaneError> {
        let map = PerCpuArray::try_from(take_map(ebpf, MAP_POD_COUNTERS)?)
            .map_err(map_err(MAP_POD_COUNTERS))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| DataplaneError::Cpus(source))?;
        match agent_cgroup {
            Some(own) if own.starts_with(path) => {}
            own => tracing::warn!(
                attach = %path.display(),
                agent_cgroup = own.map(|p| p.display().to_string()),
                "the agent's cgroup is not below the attach cgroup: per-pod traffic counters \
                 miss what the agent itself carries for pods (steered connections, tunnels)"
            ),
        }
        Ok(Self { map, cpus })
    }

    /// The pod's counters, summed over CPUs.
    pub fn get(&self, pod_id: u32) -> Result<PodCounters, DataplaneError> {
        check_id(pod_id)?;
        let per_cpu = self
            .map
            .get(&pod_id, 0)
            .map_err(map_err(MAP_POD_COUNTERS))?;
        Ok(sum(per_cpu.iter()))
    }

    /// Zeroes the pod's counters on every CPU.
    pub fn reset(&mut self, pod_id: u32) -> Result<(), DataplaneError> {
        check_id(pod_id)?;
        let zeros = PerCpuValues::try_from(vec![PodCounters::default(); self.cpus])
            .map_err(DataplaneError::Cpus)?;
        self.map
            .set(pod_id, zeros, 0)
            .map_err(map_err(MAP_POD_COUNTERS))
    }
}

fn check_id(pod_id: u32) -> Result<(), DataplaneError> {
    if pod_id < MAX_PODS {
        Ok(())
    } else {
        Err(DataplaneError::TooManyPods(MAX_PODS))
    }
}

/// Adds per-CPU values (wrapping, as the kernel's counters do).
fn sum<'a>(values: impl Iterator<Item = &'a PodCounters>) -> PodCounters {
    values.fold(PodCounters::default(), |total, c| PodCounters {
        rx_packets: total.rx_packets.wrapping_add(c.rx_packets),
        rx_bytes: total.rx_bytes.wrapping_add(c.rx_bytes),
        tx_packets: total.tx_packets.wrapping_add(c.tx_packets),
        tx_bytes: total.tx_bytes.wrapping_add(c.tx_bytes),
        unsteered_connects: total.unsteered_connects.wrapping_add(c.unsteered_connects),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_cpu() {
        let a = PodCounters {
            rx_packets: 1,
            rx_bytes: 100,
            tx_packets: 2,
            tx_bytes: 200,
            unsteered_connects: 1,
        };
        let b = PodCounters {
            rx_packets: 3,
            rx_bytes: 300,
            tx_packets: 4,
            tx_bytes: u64::MAX,
            unsteered_connects: 2,
        };
        let total = sum([a, b].iter());
        assert_eq!(
            total,
            PodCounters {
                rx_packets: 4,
                rx_bytes: 400,
                tx_packets: 6,
                tx_bytes: 199,
                unsteered_connects: 3,
            }
        );
        assert_eq!(sum([].iter()), PodCounters::default());
    }

    #[test]
    fn pod_ids_beyond_the_map_are_refused() {
        assert!(check_id(0).is_ok());
        assert!(check_id(MAX_PODS - 1).is_ok());
        assert!(matches!(
            check_id(MAX_PODS),
            Err(DataplaneError::TooManyPods(_))
        ));
    }
}
