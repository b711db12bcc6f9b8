//! A pod's in-pod listeners, by kind: each kind's name (as the hand-over to a new agent
//! carries it), where it listens and which accept loop serves it ([`LISTENERS`]);
//! opening them in the pod's namespace, or adopting those a previous agent handed over,
//! matched by name; and the running set ([`PodListeners`]), whose drop closes them
//! (accepted connections run on to their end). Adding a kind of listener is a variant
//! of [`ListenerKind`] and its row in [`LISTENERS`], beside its accept loop.
use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd, RawFd},
    sync::Arc,
};

use tokio::{net::TcpListener, task::JoinHandle};

use super::{
    pod::{INBOUND_PORT, PodProxy, Shared, TUNNEL_PORT},
    {inbound, outbound},
};

/// The kinds of in-pod listeners; each is the index of its row in [`LISTENERS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// `127.0.0.1:15001`: the pod's own connections, steered here.
    OutboundV4,
    /// `[::1]:15001`.
    OutboundV6,
    /// `127.0.0.1:15006` (`0.0.0.0` in sidecar mode): plaintext from outside the mesh.
    InboundV4,
    /// `[::1]:15006` (`[::]` in sidecar mode).
    InboundV6,
    /// `0.0.0.0:15008`: mutual-TLS tunnels (HBONE).
    TunnelV4,
    /// `[::]:15008`.
    TunnelV6,
}

/// One kind of listener.
pub struct ListenerSpec {
    pub kind: ListenerKind,
    /// Its name on the hand-over wire: never rename one (a new agent would not know the
    /// old name and open its own listener instead of taking the queued connections).
    pub name: &'static str,
    /// Where it listens, with the agent's settings.
    address: fn(&Shared) -> SocketAddr,
    /// Its accept loop.
    serve: fn(TcpListener, Arc<PodProxy>) -> JoinHandle<()>,
}

/// Every kind, in the order a hand-over sends them. The first six are in the order
/// agents from before named listeners expect (`restart::wire::UNNAMED_LISTENERS`), so
/// that an older agent can still take over from this one.
pub const LISTENERS: [ListenerSpec; 6] = [
    ListenerSpec {
        kind: ListenerKind::OutboundV4,
        name: "outbound-v4",
        address: |s| SocketAddr::from((Ipv4Addr::LOCALHOST, s.outbound_port)),
        serve: |l, pod| tokio::spawn(outbound::serve(l, pod)),
    },
    ListenerSpec {
        kind: ListenerKind::OutboundV6,
        name: "outbound-v6",
        address: |s| SocketAddr::from((Ipv6Addr::LOCALHOST, s.outbound_port)),
        serve: |l, pod| tokio::spawn(outbound::serve(l, pod)),
    },
    ListenerSpec {
        kind: ListenerKind::InboundV4,
        name: "inbound-v4",
        address: |s| s.steering.inbound_listen(INBOUND_PORT)[0],
        serve: |l, pod| tokio::spawn(inbound::plaintext::serve(l, pod)),
    },
    ListenerSpec {
        kind: ListenerKind::InboundV6,
        name: "inbound-v6",
        address: |s| s.steering.inbound_listen(INBOUND_PORT)[1],
        serve: |l, pod| tokio::spawn(inbound::plaintext::serve(l, pod)),
    },
    ListenerSpec {
        kind: ListenerKind::TunnelV4,
        name: "tunnel-v4",
        address: |_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, TUNNEL_PORT)),
        serve: |l, pod| tokio::spawn(inbound::tunnel::serve(l, pod)),
    },
    ListenerSpec {
        kind: ListenerKind::TunnelV6,
        name: "tunnel-v6",
        address: |_| SocketAddr::from((Ipv6Addr::UNSPECIFIED, TUNNEL_PORT)),
        serve: |l, pod| tokio::spawn(inbound::tunnel::serve(l, pod)),
    },
];

impl ListenerKind {
    pub fn spec(self) -> &'static ListenerSpec {
        &LISTENERS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The kind named `name` on the hand-over wire, if this agent knows it.
    pub fn from_name(name: &str) -> Option<Self> {
        LISTENERS.iter().find(|s| s.name == name).map(|s| s.kind)
    }
}

/// A pod's running listeners, one of each kind.
pub struct PodListeners {
    tasks: Vec<JoinHandle<()>>,
    /// Each kind's descriptor, at the kind's index; valid while `self` lives.
    fds: [RawFd; LISTENERS.len()],
}

impl PodListeners {
    /// The listener of `kind` (e.g. for the kernel's SockMap); valid while `self` lives.
    pub fn fd(&self, kind: ListenerKind) -> RawFd {
        self.fds[kind as usize]
    }

    /// Duplicates of every listener with its name, in [`LISTENERS`] order, for a new
    /// agent.
    pub fn duplicate(&self) -> io::Result<Vec<(String, OwnedFd)>> {
        LISTENERS
            .iter()
            .map(|spec| {
                // SAFETY: the listeners are open while `self` lives (its tasks own them).
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd(spec.kind)) };
                Ok((spec.name.to_string(), fd.try_clone_to_owned()?))
            })
            .collect()
    }
}

impl Drop for PodListeners {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A raw descriptor as the SockMap API wants it.
pub struct Fd(pub RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Opens all of the pod's listeners inside its namespace and starts accepting. With
/// `inherited` (a previous agent's, by name), each kind it names is accepted on when it
/// listens where this agent would listen (else it is closed and a new one made); kinds it
/// lacks are opened here; names this agent does not know are closed.
pub fn start(
    pod: Arc<PodProxy>,
    inherited: Option<Vec<(String, OwnedFd)>>,
) -> io::Result<PodListeners> {
    let took_over = inherited.is_some();
    let Sorted {
        mut by_kind,
        unknown,
    } = sort(inherited.unwrap_or_default());
    if !unknown.is_empty() {
        tracing::warn!(pod = %pod.key, ?unknown,
            "closing listeners the previous agent handed over that this agent does not know");
    }
    let mut listeners = Vec::with_capacity(LISTENERS.len());
    for spec in &LISTENERS {
        let want = (spec.address)(&pod.shared);
        let listener = match by_kind.remove(&spec.kind).map(|fd| adopt(want, fd)) {
            Some(Ok(listener)) => listener,
            Some(Err(reason)) => {
                tracing::warn!(pod = %pod.key, listener = spec.name, %reason,
                    "not using the previous agent's listener");
                bind(&pod, want)?
            }
            None => {
                if took_over {
                    tracing::info!(pod = %pod.key, listener = spec.name,
                        "the previous agent handed over no such listener; opening it");
                }
                bind(&pod, want)?
            }
        };
        listeners.push(listener);
    }
    let mut fds = [0; LISTENERS.len()];
    let mut tasks = Vec::with_capacity(LISTENERS.len());
    for (spec, listener) in LISTENERS.iter().zip(listeners) {
        fds[spec.kind as usize] = listener.as_raw_fd();
        tasks.push((spec.serve)(listener, pod.clone()));
    }
    Ok(PodListeners { tasks, fds })
}

/// Inherited sockets sorted by kind; those of names this agent does not know (or a name
/// given twice) are closed, their names kept for the log.
struct Sorted {
    by_kind: HashMap<ListenerKind, OwnedFd>,
    unknown: Vec<String>,
}

fn sort(inherited: Vec<(String, OwnedFd)>) -> Sorted {
    let mut sorted = Sorted {
        by_kind: HashMap::new(),
        unknown: Vec::new(),
    };
    for (name, fd) in inherited {
        match ListenerKind::from_name(&name) {
            Some(kind) if !sorted.by_kind.contains_key(&kind) => {
                sorted.by_kind.insert(kind, fd);
            }
            _ => sorted.unknown.push(name),
        }
    }
    sorted
}

fn bind(pod: &PodProxy, addr: SocketAddr) -> io::Result<TcpListener> {
    let s = &pod.shared;
    let std = pod.netns.listen(addr, s.backlog, s.mark).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("listen on {addr} in {}: {e}", pod.netns.path().display()),
        )
    })?;
    TcpListener::from_std(std)
}

/// The inherited socket as a listener, if it is a TCP listener on `want`.
fn adopt(want: SocketAddr, fd: OwnedFd) -> Result<TcpListener, String> {
    let std = std::net::TcpListener::from(fd);
    let local = std.local_addr().map_err(|e| e.to_string())?;
    let listening =
        nix::sys::socket::getsockopt(&std, nix::sys::socket::sockopt::AcceptConn).unwrap_or(false);
    if local != want || !listening {
        return Err(format!(
            "a socket on {local} where a listener on {want} is wanted"
        ));
    }
    std.set_nonblocking(true).map_err(|e| e.to_string())?;
    TcpListener::from_std(std).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some_fd() -> OwnedFd {
        OwnedFd::from(tempfile::tempfile().unwrap())
    }

    #[test]
    fn each_kind_is_its_rows_index_and_found_by_its_name() {
        let mut names = std::collections::HashSet::new();
        for (i, spec) in LISTENERS.iter().enumerate() {
            assert_eq!(spec.kind as usize, i, "{}", spec.name);
            assert_eq!(ListenerKind::from_name(spec.name), Some(spec.kind));
            assert_eq!(spec.kind.name(), spec.name);
            assert!(names.insert(spec.name), "{} twice", spec.name);
        }
        assert_eq!(ListenerKind::from_name("dns-v4"), None);
    }

    #[test]
    fn the_first_kinds_keep_the_order_of_agents_before_names() {
        let ours: Vec<&str> = LISTENERS.iter().map(|s| s.name).collect();
        let unnamed = crate::restart::wire::UNNAMED_LISTENERS;
        assert_eq!(&ours[..unnamed.len()], unnamed);
    }

    #[test]
    fn a_sender_with_fewer_kinds_leaves_the_rest_to_open() {
        let sorted = sort(vec![
            ("tunnel-v6".into(), some_fd()),
            ("outbound-v4".into(), some_fd()),
        ]);
        let mut got: Vec<usize> = sorted.by_kind.keys().map(|k| *k as usize).collect();
        got.sort();
        assert_eq!(
            got,
            [
                ListenerKind::OutboundV4 as usize,
                ListenerKind::TunnelV6 as usize
            ]
        );
        assert!(sorted.unknown.is_empty());
    }

    #[test]
    fn unknown_and_repeated_names_are_set_aside() {
        let sorted = sort(vec![
            ("dns-v4".into(), some_fd()),
            ("inbound-v4".into(), some_fd()),
            ("inbound-v4".into(), some_fd()),
        ]);
        assert_eq!(sorted.by_kind.len(), 1);
        assert!(sorted.by_kind.contains_key(&ListenerKind::InboundV4));
        assert_eq!(sorted.unknown, ["dns-v4", "inbound-v4"]);
    }

    #[tokio::test]
    async fn only_a_listener_on_the_wanted_address_is_adopted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fd = OwnedFd::from(listener);
        let again = fd.try_clone().unwrap();
        let adopted = adopt(addr, fd).unwrap();
        assert_eq!(adopted.local_addr().unwrap(), addr);

        let elsewhere = SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port().wrapping_add(1)));
        let err = adopt(elsewhere, again).unwrap_err();
        assert!(
            err.contains(&format!("where a listener on {elsewhere}")),
            "{err}"
        );

        // Bound but not listening.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        let bound = socket.local_addr().unwrap().as_socket().unwrap();
        let err = adopt(bound, OwnedFd::from(socket)).unwrap_err();
        assert!(err.contains("wanted"), "{err}");
    }
}
