//! The live state behind Service load balancing, shared by every pod of the agent: active
//! connections per endpoint (a [`Lease`] counts one while it lives) and the endpoints
//! that `sessionAffinity: ClientIP` remembers per client (Kubernetes' default timeout,
//! 10800 s). [`super::route`] reads it through [`Loads`].
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::route::Loads;

/// How long a client's Service endpoint is remembered (`sessionAffinityConfig.clientIP
/// .timeoutSeconds`' default).
pub const AFFINITY_TIMEOUT: Duration = Duration::from_secs(10800);
/// Remembered clients beyond which the expired ones are swept.
const AFFINITY_SWEEP_AT: usize = 4096;

type AffinityKey = (IpAddr, u16, IpAddr);

#[derive(Default)]
pub struct Balancer {
    active: Mutex<HashMap<IpAddr, usize>>,
    affinity: Mutex<HashMap<AffinityKey, (IpAddr, Instant)>>,
}

impl Balancer {
    /// Counts one connection to the endpoint at `ip` until the lease is dropped.
    pub fn lease(self: &Arc<Self>, ip: IpAddr) -> Lease {
        *crate::sync::lock(&self.active).entry(ip).or_default() += 1;
        Lease {
            balancer: self.clone(),
            ip,
        }
    }

    /// Remembers that `client` reached `vip`:`port` through `endpoint`.
    pub fn remember(&self, vip: IpAddr, port: u16, client: IpAddr, endpoint: IpAddr) {
        let mut affinity = crate::sync::lock(&self.affinity);
        let now = Instant::now();
        if affinity.len() >= AFFINITY_SWEEP_AT {
            affinity.retain(|_, (_, at)| now.duration_since(*at) < AFFINITY_TIMEOUT);
        }
        affinity.insert((vip, port, client), (endpoint, now));
    }
}

impl Loads for Balancer {
    fn active(&self, ip: IpAddr) -> usize {
        crate::sync::lock(&self.active)
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }

    fn affinity(&self, vip: IpAddr, port: u16, client: IpAddr) -> Option<IpAddr> {
        let affinity = crate::sync::lock(&self.affinity);
        let (endpoint, at) = affinity.get(&(vip, port, client))?;
        (at.elapsed() < AFFINITY_TIMEOUT).then_some(*endpoint)
    }
}

/// One active connection to an endpoint.
pub struct Lease {
    balancer: Arc<Balancer>,
    ip: IpAddr,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut active = crate::sync::lock(&self.balancer.active);
        if let Some(n) = active.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                active.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_count_while_they_live_and_affinity_is_remembered() {
        let b = Arc::new(Balancer::default());
        let ip: IpAddr = "198.19.1.11".parse().unwrap();
        let l1 = b.lease(ip);
        let l2 = b.lease(ip);
        assert_eq!(b.active(ip), 2);
        drop(l1);
        assert_eq!(b.active(ip), 1);
        drop(l2);
        assert_eq!(b.active(ip), 0);
        assert!(b.active.lock().unwrap().is_empty(), "no entry left behind");

        let (vip, client) = ("10.96.0.1".parse().unwrap(), "198.19.1.12".parse().unwrap());
        assert_eq!(b.affinity(vip, 80, client), None);
        b.remember(vip, 80, client, ip);
        assert_eq!(b.affinity(vip, 80, client), Some(ip));
        assert_eq!(b.affinity(vip, 81, client), None, "per port");
    }
}
