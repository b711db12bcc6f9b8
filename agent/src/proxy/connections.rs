//! The agent's live connections: each proxied connection is registered while it lives,
//! with what it is (pod, direction, transport, addresses, identities), its byte counters
//! and a way for the agent to close it (a policy change that now denies it, an operator).
//! The admin API lists them and streams their opening and closing; policy re-checks walk
//! them. Per pod, totals since the pod was enrolled ([`PodStats`]) sum up the closed ones.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime},
};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{copy::Counters, enforce::Guard, error::Error};
use crate::config::AccessLogConfig;
use crate::telemetry::{
    facts::{ConnectionFacts, Direction, Ending, Failure},
    metrics::{ConnectionMetrics, Metrics, TcpLabels},
    recorder::Recorder,
};

/// One live connection.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    /// What it is: pod, direction, transport, addresses, identities.
    pub facts: ConnectionFacts,
    pub opened: SystemTime,
    started: Instant,
    /// Bytes client → server (`forward`: from the opener to its destination) and server
    /// → client (`backward`), as the app's socket carried them (HTTP heads included).
    pub counters: Counters,
    /// Its labels in metrics, and what of its bytes metrics have counted.
    pub metrics: ConnectionMetrics,
    /// Its pod's totals.
    pub stats: Arc<PodStats>,
    /// What decides it again when policies change (connections into a pod).
    pub guard: Option<Arc<Guard>>,
    cancel: CancellationToken,
    /// Why the agent closed it, once it did.
    closing: Mutex<Option<Failure>>,
}

impl Connection {
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Closes the connection (both ends get a reset) and remembers why.
    pub fn close(&self, why: Failure) {
        crate::sync::lock(&self.closing).get_or_insert(why);
        self.cancel.cancel();
    }

    /// Why the agent closed it, if it did.
    pub fn closed_because(&self) -> Option<String> {
        self.closing().map(|f| f.reason)
    }

    fn closing(&self) -> Option<Failure> {
        crate::sync::lock(&self.closing).clone()
    }
}

/// A pod's connection and request totals since it was enrolled (closed connections;
/// [`Registry::totals`] adds the live ones).
#[derive(Debug, Default)]
pub struct PodStats {
    pub connections: AtomicU64,
    /// Connections that ended in an error.
    pub failed: AtomicU64,
    /// Bytes of closed connections from the pod and to it.
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub requests: AtomicU64,
    /// Requests answered 5xx (or not at all, which the proxy answers 502/503).
    pub failed_requests: AtomicU64,
}

impl PodStats {
    /// The totals of the pod's closed connections (no live ones).
    fn closed_totals(&self) -> PodTotals {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PodTotals {
            active: 0,
            connections: r(&self.connections),
            failed: r(&self.failed),
            sent: r(&self.sent),
            received: r(&self.received),
            requests: r(&self.requests),
            failed_requests: r(&self.failed_requests),
        }
    }
}

/// A pod's totals, live connections included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodTotals {
    pub active: u64,
    pub connections: u64,
    pub failed: u64,
    pub sent: u64,
    pub received: u64,
    pub requests: u64,
    pub failed_requests: u64,
}

impl Connection {
    /// Bytes (from the pod, to the pod) so far: an outbound connection's opener is the
    /// pod, an inbound one's the peer.
    pub fn pod_bytes(&self) -> (u64, u64) {
        let forward = self.counters.forward.load(Ordering::Relaxed);
        let backward = self.counters.backward.load(Ordering::Relaxed);
        match self.facts.direction {
            Direction::Outbound => (forward, backward),
            Direction::Inbound => (backward, forward),
        }
    }

    /// Records an HTTP request's answer.
    pub fn request_done(&self, status: u16) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.stats.failed_requests.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A connection opening or closing, for the admin API's stream.
#[derive(Clone, Debug)]
pub enum Event {
    Opened(Arc<Connection>),
    /// With its final byte counts in its counters.
    Closed(Arc<Connection>),
}

/// Events buffered per watcher before it is told it missed some.
const EVENT_BUFFER: usize = 4096;

/// What a connection is, when it is registered.
pub struct NewConnection {
    /// From [`Registry::next_id`], taken when it was accepted (its span names it).
    pub id: u64,
    pub facts: ConnectionFacts,
    pub labels: TcpLabels,
    /// Connections into a pod: what decides it again when policies change.
    pub guard: Option<Arc<Guard>>,
}

/// The live connections, each recorded as it opens and ends.
pub struct Registry {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Connection>>>,
    pods: Mutex<HashMap<String, Arc<PodStats>>>,
    events: broadcast::Sender<Event>,
    recorder: Recorder,
}

/// Keeps a connection registered; [`finish`](Self::finish) says how it ended. Dropped,
/// it is unregistered and recorded (ended well, unless the agent closed it).
pub struct Registration<'a> {
    registry: &'a Registry,
    pub connection: Arc<Connection>,
    /// How it ended, once [`finish`](Self::finish) was told.
    failure: Option<Failure>,
}

impl Registration<'_> {
    /// Records the connection's end: metrics, its pod's totals and the access line.
    /// When the agent closed it, the agent's reason is its failure.
    pub fn finish(mut self, result: Result<(), Error>) {
        self.failure = result
            .err()
            .map(|e| self.connection.closing().unwrap_or_else(|| e.failure()));
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        crate::sync::lock(&self.registry.live).remove(&self.connection.id);
        let c = &self.connection;
        let (sent, received) = c.pod_bytes();
        c.stats.sent.fetch_add(sent, Ordering::Relaxed);
        c.stats.received.fetch_add(received, Ordering::Relaxed);
        if self.failure.is_some() {
            c.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.registry.publish(|| Event::Closed(c.clone()));
        let ending = Ending {
            bytes_sent: c.counters.forward.load(Ordering::Relaxed),
            bytes_received: c.counters.backward.load(Ordering::Relaxed),
            duration: c.started.elapsed(),
            failure: self.failure.take(),
        };
        self.registry.recorder.closed(&c.facts, &c.metrics, &ending);
    }
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>, access_log: AccessLogConfig) -> Self {
        Self {
            next: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            events: broadcast::channel(EVENT_BUFFER).0,
            recorder: Recorder::new(metrics, access_log),
        }
    }

    /// Connection events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Sends an event when someone listens (no cost otherwise).
    fn publish(&self, event: impl FnOnce() -> Event) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event());
        }
    }

    fn stats_of(&self, pod: &str) -> Arc<PodStats> {
        let mut pods = crate::sync::lock(&self.pods);
        if let Some(stats) = pods.get(pod) {
            return stats.clone();
        }
        pods.entry(pod.to_string()).or_default().clone()
    }

    /// Every pod's totals since it was enrolled, live connections included, in one pass.
    /// A connection still running from a pod of the same name that left is not counted.
    pub fn totals(&self) -> HashMap<String, PodTotals> {
        let pods = crate::sync::lock(&self.pods);
        let mut out: HashMap<String, PodTotals> = pods
            .iter()
            .map(|(pod, stats)| (pod.clone(), stats.closed_totals()))
            .collect();
        for c in crate::sync::lock(&self.live).values() {
            let pod = &c.facts.pod;
            let current = pods.get(pod).is_some_and(|s| Arc::ptr_eq(s, &c.stats));
            if let (true, Some(t)) = (current, out.get_mut(pod)) {
                let (sent, received) = c.pod_bytes();
                t.active += 1;
                t.sent += sent;
                t.received += received;
            }
        }
        out
    }

    /// Forgets a pod's totals (it left the node); a pod of that name starts from zero.
    pub fn forget_pod(&self, pod: &str) {
        crate::sync::lock(&self.pods).remove(pod);
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.recorder.metrics()
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// A new connection's id: taken when it is accepted, so that its span and every line
    /// it logs name it before it is registered.
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Brings metrics' byte counters up to date with the live connections.
    pub fn flush_metrics(&self) {
        for c in self.snapshot() {
            self.recorder.flush(
                &c.metrics,
                c.counters.forward.load(Ordering::Relaxed),
                c.counters.backward.load(Ordering::Relaxed),
            );
        }
    }

    pub fn register(&self, new: NewConnection) -> Registration<'_> {
        let stats = self.stats_of(&new.facts.pod);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            stats,
            id: new.id,
            facts: new.facts,
            opened: SystemTime::now(),
            started: Instant::now(),
            counters: Counters::default(),
            metrics: self.recorder.opened(new.labels),
            guard: new.guard,
            cancel: CancellationToken::new(),
            closing: Mutex::new(None),
        });
        crate::sync::lock(&self.live).insert(connection.id, connection.clone());
        self.publish(|| Event::Opened(connection.clone()));
        Registration {
            registry: self,
            connection,
            failure: None,
        }
    }

    /// Every live connection that carries a guard (connections into pods), in no order.
    pub fn guarded(&self) -> Vec<Arc<Connection>> {
        crate::sync::lock(&self.live)
            .values()
            .filter(|c| c.guard.is_some())
            .cloned()
            .collect()
    }

    /// Every live connection, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<Connection>> {
        let mut all: Vec<_> = crate::sync::lock(&self.live).values().cloned().collect();
        all.sort_by_key(|c| c.id);
        all
    }

    pub fn len(&self) -> usize {
        crate::sync::lock(&self.live).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{
        facts::{ResponseFlags, Transport},
        metrics::{Party, Reporter},
    };

    fn new(registry: &Registry, pod: &str) -> NewConnection {
        NewConnection {
            id: registry.next_id(),
            facts: ConnectionFacts {
                pod: pod.into(),
                direction: Direction::Inbound,
                transport: Transport::Plaintext,
                src: "198.19.1.12:40000".parse().unwrap(),
                dst: "198.19.2.11:80".parse().unwrap(),
                src_identity: None,
                dst_identity: None,
            },
            labels: TcpLabels::new(
                Reporter::Destination,
                Party::unknown(),
                Party::unknown(),
                false,
            ),
            guard: None,
        }
    }

    #[test]
    fn a_panic_holding_the_registry_does_not_hide_or_leak_connections() {
        let registry = Registry::new(Arc::default(), Default::default());
        let poison = std::panic::AssertUnwindSafe(|| {
            let _live = registry.live.lock().unwrap();
            let _pods = registry.pods.lock().unwrap();
            panic!("a holder panics");
        });
        assert!(std::panic::catch_unwind(poison).is_err());
        let a = registry.register(new(&registry, "shop/a"));
        // Listed (and so closed by a policy that now denies it), counted, and gone once it ends.
        assert_eq!(registry.snapshot().len(), 1);
        assert_eq!(registry.totals()["shop/a"].active, 1);
        registry.snapshot()[0].close(Failure {
            flags: ResponseFlags::Deny,
            reason: "denied by shop/deny-all".into(),
        });
        assert_eq!(
            a.connection.closed_because().as_deref(),
            Some("denied by shop/deny-all")
        );
        drop(a);
        assert_eq!(registry.len(), 0);
        assert_eq!(registry.totals()["shop/a"].connections, 1);
    }

    #[test]
    fn connections_are_listed_while_they_live_and_can_be_closed_with_a_reason() {
        let registry = Registry::new(Arc::default(), Default::default());
        let a = registry.register(new(&registry, "shop/a"));
        {
            let _b = registry.register(new(&registry, "shop/b"));
            assert_eq!(registry.len(), 2);
        }
        let listed = registry.snapshot();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].facts.pod, "shop/a");
        listed[0].close(Failure {
            flags: ResponseFlags::Deny,
            reason: "denied by shop/deny-all".into(),
        });
        assert!(a.connection.cancel_token().is_cancelled());
        assert_eq!(
            a.connection.closed_because().as_deref(),
            Some("denied by shop/deny-all")
        );
        let totals = registry.totals();
        assert_eq!(totals["shop/a"].active, 1);
        assert_eq!(totals["shop/a"].connections, 1);
        assert_eq!(totals["shop/b"].active, 0);
        assert_eq!(totals["shop/b"].connections, 1);
        // Ended with an error the agent's reason replaces, counted as failed.
        a.finish(Err(Error::Relay(std::io::Error::from(
            std::io::ErrorKind::ConnectionAborted,
        ))));
        assert!(registry.is_empty());
        assert_eq!(registry.totals()["shop/a"].failed, 1);
        assert_eq!(registry.totals()["shop/b"].failed, 0);
        let text = registry.metrics().encode();
        let closed: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_closed_total{"))
            .collect();
        assert_eq!(closed.len(), 2, "{text}");
        assert!(
            closed.iter().any(|l| l.contains("response_flags=\"DENY\"")),
            "{text}"
        );
    }
}
