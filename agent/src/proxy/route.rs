//! Routing: where an outbound connection goes, decided from its original destination and
//! the directory alone — a pure function ([`route`]), tested by tables, as ztunnel's
//! `build_request`. A Service's cluster IP is resolved here to one of its endpoints (the
//! rest follow as fallbacks, tried in order if the dial fails before any byte moved):
//! ready endpoints first, serving-but-terminating ones only when none is ready
//! (KEP-1669), only the client's node's under `internalTrafficPolicy: Local`, the
//! client's previous endpoint under `sessionAffinity: ClientIP`, else the less loaded of
//! two picked at random (power of two choices on active connections). Any other address
//! is dialed as it is: through the tunnel to a pod in the mesh, else in plaintext.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use rand::Rng;

use crate::workloads::{
    directory::{Destination, Directory, EndpointState, ResolvedService, canonical},
    service::{SessionAffinity, TrafficPolicy},
};

/// How many endpoints one connection tries, the first included.
pub const MAX_ATTEMPTS: usize = 3;

/// Who is dialing: what routing needs to know of the client.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// The client pod's node (for `internalTrafficPolicy: Local`).
    pub node: Option<&'a str>,
    /// The client pod's IP (for `sessionAffinity: ClientIP`).
    pub ip: IpAddr,
}

/// What routing reads of the live state: endpoints' loads and clients' affinities.
pub trait Loads {
    /// Connections open now to the endpoint at `ip`.
    fn active(&self, ip: IpAddr) -> usize;
    /// The endpoint the client at `client` last used for `vip`:`port`, if still
    /// remembered.
    fn affinity(&self, vip: IpAddr, port: u16, client: IpAddr) -> Option<IpAddr>;
}

/// One address to dial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The pod there when it is in the mesh: dial it through the tunnel, requiring its
    /// identity. `None`: plaintext.
    pub mesh: Option<Arc<Destination>>,
}

/// Where a connection goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Not a cluster IP: the destination as dialed.
    Direct(Target),
    /// A Service's cluster IP: its chosen endpoint first, then fallbacks (at most
    /// [`MAX_ATTEMPTS`] in all).
    Service {
        service: Arc<ResolvedService>,
        /// The cluster IP and port dialed.
        vip: SocketAddr,
        targets: Vec<Target>,
    },
}

impl Route {
    /// The endpoints to try, in order.
    pub fn targets(&self) -> &[Target] {
        match self {
            Route::Direct(t) => std::slice::from_ref(t),
            Route::Service { targets, .. } => targets,
        }
    }

    pub fn service(&self) -> Option<&Arc<ResolvedService>> {
        match self {
            Route::Direct(_) => None,
            Route::Service { service, .. } => Some(service),
        }
    }
}

/// Why a connection to a cluster IP has nowhere to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoRoute {
    /// The Service does not declare the port dialed.
    UndeclaredPort { service: String, port: u16 },
    /// No endpoint is ready or serving (of the client's node, under
    /// `internalTrafficPolicy: Local`; of the address family dialed).
    NoEndpoints {
        service: String,
        port: u16,
        local: bool,
    },
}

impl fmt::Display for NoRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoRoute::UndeclaredPort { service, port } => {
                write!(f, "service {service} has no port {port}")
            }
            NoRoute::NoEndpoints {
                service,
                port,
                local,
            } => write!(
                f,
                "service {service} port {port} has no ready endpoint{}",
                if *local {
                    " on this node (internalTrafficPolicy: Local)"
                } else {
                    ""
                }
            ),
        }
    }
}

impl std::error::Error for NoRoute {}

/// Where a connection from `src` to `dst` goes.
pub fn route(
    src: Source<'_>,
    dst: SocketAddr,
    directory: &Directory,
    loads: &impl Loads,
    rng: &mut impl Rng,
) -> Result<Route, NoRoute> {
    let Some(service) = directory.service_at(dst.ip()) else {
        let mesh = directory.lookup(dst.ip()).filter(|d| d.in_mesh());
        return Ok(Route::Direct(Target { addr: dst, mesh }));
    };
    let Some(port) = service.port(dst.port()) else {
        return Err(NoRoute::UndeclaredPort {
            service: service.fqdn.clone(),
            port: dst.port(),
        });
    };
    let local = service.internal_traffic_policy == TrafficPolicy::Local;
    let v4 = canonical(dst.ip()).is_ipv4();
    // Usable endpoints: the family dialed, serving this port, of this node if Local.
    let usable: Vec<(EndpointState, Target)> = service
        .endpoints
        .iter()
        .filter(|e| e.ip.is_ipv4() == v4 && e.state != EndpointState::NotServing)
        .filter(|e| !local || (e.node.is_some() && e.node.as_deref() == src.node))
        .filter_map(|e| {
            let addr = e.target(port)?;
            let mesh = e.pod.clone().filter(|p| p.in_mesh());
            Some((e.state, Target { addr, mesh }))
        })
        .collect();
    // Ready ones if any, else the serving-but-terminating ones.
    let best = usable.iter().map(|(state, _)| *state).min();
    let mut tier: Vec<Target> = usable
        .into_iter()
        .filter(|(state, _)| Some(*state) == best)
        .map(|(_, t)| t)
        .collect();
    if tier.is_empty() {
        return Err(NoRoute::NoEndpoints {
            service: service.fqdn.clone(),
            port: dst.port(),
            local,
        });
    }
    let sticky = (service.session_affinity == SessionAffinity::ClientIp)
        .then(|| loads.affinity(dst.ip(), dst.port(), src.ip))
        .flatten()
        .and_then(|ip| tier.iter().position(|t| t.addr.ip() == ip));
    let first = sticky.unwrap_or_else(|| two_choices(&tier, loads, rng));
    let chosen = tier.swap_remove(first);
    // Fallbacks: the least loaded first.
    tier.sort_by_key(|t| loads.active(t.addr.ip()));
    let mut targets = vec![chosen];
    targets.extend(tier.into_iter().take(MAX_ATTEMPTS - 1));
    Ok(Route::Service {
        service,
        vip: dst,
        targets,
    })
}

/// Power of two choices: of two distinct endpoints picked at random, the one with fewer
/// active connections (the first on a tie).
fn two_choices(tier: &[Target], loads: &impl Loads, rng: &mut impl Rng) -> usize {
    match tier.len() {
        0 | 1 => 0,
        n => {
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            if loads.active(tier[b].addr.ip()) < loads.active(tier[a].addr.ip()) {
                b
            } else {
                a
            }
        }
    }
}

#[cfg(test)]
mod tests;
