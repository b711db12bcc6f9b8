//! The agent's live connections: each proxied connection is registered while it lives,
//! with what it is (pod, direction, transport, addresses, identities), its byte counters
//! and a way for the agent to close it (a policy change that now denies it, an operator).
//! The admin API lists them; policy re-checks walk them.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use tokio_util::sync::CancellationToken;

use super::copy::Counters;
use crate::telemetry::{
    access::{Direction, Transport},
    metrics::{ConnectionMetrics, Metrics, TcpLabels},
};

/// One live connection.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    /// `namespace/name` of the enrolled pod whose agent carries it.
    pub pod: String,
    pub direction: Direction,
    pub transport: Transport,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The peer's verified SPIFFE ID (inbound through a tunnel) or the destination's
    /// (outbound to the mesh).
    pub peer_identity: Option<String>,
    pub opened: SystemTime,
    pub counters: Counters,
    /// Its labels in metrics, and what of its bytes metrics have counted.
    pub metrics: ConnectionMetrics,
    cancel: CancellationToken,
    /// Why the agent closed it, once it did.
    closed_because: Mutex<Option<String>>,
}

impl Connection {
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Closes the connection (both ends get a reset) and remembers why.
    pub fn close(&self, reason: String) {
        if let Ok(mut slot) = self.closed_because.lock() {
            slot.get_or_insert(reason);
        }
        self.cancel.cancel();
    }

    /// Why the agent closed it, if it did.
    pub fn closed_because(&self) -> Option<String> {
        self.closed_because.lock().ok().and_then(|s| s.clone())
    }
}

/// What a connection is, when it is registered.
pub struct NewConnection {
    pub pod: String,
    pub direction: Direction,
    pub transport: Transport,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub peer_identity: Option<String>,
    pub labels: TcpLabels,
}

/// Counts connections in metrics as they open and close.
pub struct Registry {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Connection>>>,
    metrics: Arc<Metrics>,
}

/// Keeps a connection registered; dropping it unregisters.
pub struct Registration<'a> {
    registry: &'a Registry,
    pub connection: Arc<Connection>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Ok(mut live) = self.registry.live.lock() {
            live.remove(&self.connection.id);
        }
        let c = &self.connection;
        self.registry.metrics.closed(
            &c.metrics,
            c.counters.forward.load(Ordering::Relaxed),
            c.counters.backward.load(Ordering::Relaxed),
        );
    }
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            next: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Brings metrics' byte counters up to date with the live connections.
    pub fn flush_metrics(&self) {
        for c in self.snapshot() {
            self.metrics.flush(
                &c.metrics,
                c.counters.forward.load(Ordering::Relaxed),
                c.counters.backward.load(Ordering::Relaxed),
            );
        }
    }

    pub fn register(&self, new: NewConnection) -> Registration<'_> {
        let connection = Arc::new(Connection {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            pod: new.pod,
            direction: new.direction,
            transport: new.transport,
            src: new.src,
            dst: new.dst,
            peer_identity: new.peer_identity,
            opened: SystemTime::now(),
            counters: Counters::default(),
            metrics: ConnectionMetrics::new(new.labels),
            cancel: CancellationToken::new(),
            closed_because: Mutex::new(None),
        });
        if let Ok(mut live) = self.live.lock() {
            live.insert(connection.id, connection.clone());
        }
        self.metrics.opened(&connection.metrics);
        Registration {
            registry: self,
            connection,
        }
    }

    /// Every live connection, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<Connection>> {
        let mut all: Vec<_> = self
            .live
            .lock()
            .map(|live| live.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by_key(|c| c.id);
        all
    }

    pub fn len(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::{Party, Reporter};

    fn new(pod: &str) -> NewConnection {
        NewConnection {
            pod: pod.into(),
            direction: Direction::Inbound,
            transport: Transport::Plaintext,
            src: "198.19.1.12:40000".parse().unwrap(),
            dst: "198.19.2.11:80".parse().unwrap(),
            peer_identity: None,
            labels: TcpLabels::new(
                Reporter::Destination,
                Party::unknown(),
                Party::unknown(),
                false,
            ),
        }
    }

    #[test]
    fn connections_are_listed_while_they_live_and_can_be_closed_with_a_reason() {
        let registry = Registry::new(Arc::default());
        let a = registry.register(new("shop/a"));
        {
            let _b = registry.register(new("shop/b"));
            assert_eq!(registry.len(), 2);
        }
        let listed = registry.snapshot();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].pod, "shop/a");
        listed[0].close("denied by shop/deny-all".into());
        assert!(a.connection.cancel_token().is_cancelled());
        assert_eq!(
            a.connection.closed_because().as_deref(),
            Some("denied by shop/deny-all")
        );
        drop(a);
        assert!(registry.is_empty());
        let text = registry.metrics().encode();
        assert!(
            text.contains("istio_tcp_connections_closed_total{"),
            "{text}"
        );
    }
}
