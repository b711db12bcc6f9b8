//! Tunnel connections pooled by a caller-chosen key (e.g. source identity, destination
//! identity and address): a stream goes on a connection of its key with a free slot, else
//! on a newly dialed one. Concurrent callers needing a new connection for the same key
//! wait for one dial instead of each dialing (and share its failure). Connections that
//! closed or got a GOAWAY are dropped; idle ones are closed after a timeout.
use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    io,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Notify,
};
use tracing::Instrument;

use crate::config::HboneConfig;

use super::{
    ConnectRequest, H2Stream, HboneError, Settings,
    client::{self, Client, ConnState, Slot},
};

/// How a [`Pool`] behaves, from `proxy.hbone` (where each default is given).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Streams one connection carries at once before another is dialed (also capped by
    /// what the server allows; `maxStreamsPerConnection`).
    pub max_streams_per_connection: usize,
    /// A connection without streams for this long is closed (`idleTimeoutMs`).
    pub idle_timeout: Duration,
    /// How long the caller's dial function (TCP connect and TLS handshake) may take;
    /// callers waiting on the same dial wait no longer (`dialTimeoutMs`).
    pub dial_timeout: Duration,
    /// HTTP/2 settings of the connections.
    pub settings: Settings,
}

impl PoolConfig {
    pub fn from_config(c: &HboneConfig) -> Self {
        Self {
            max_streams_per_connection: c.max_streams_per_connection,
            idle_timeout: Duration::from_millis(c.idle_timeout_ms),
            dial_timeout: Duration::from_millis(c.dial_timeout_ms),
            settings: Settings::from_config(c),
        }
    }
}

/// `proxy.hbone`'s defaults.
impl Default for PoolConfig {
    fn default() -> Self {
        Self::from_config(&HboneConfig::default())
    }
}

/// Counters since the pool was made, and the connections open now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub connections_dialed: u64,
    pub dials_failed: u64,
    pub streams_opened: u64,
    pub connections_open: usize,
}

/// A pool of tunnel connections keyed by `K`. Cheap to clone.
pub struct Pool<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Pool<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<K> {
    config: PoolConfig,
    keys: Mutex<HashMap<K, Entry>>,
    next_id: AtomicU64,
    dialed: AtomicU64,
    dials_failed: AtomicU64,
    streams_opened: AtomicU64,
}

#[derive(Default)]
struct Entry {
    conns: Vec<Pooled>,
    /// The dial in progress for this key, if any.
    dial: Option<Arc<DialAttempt>>,
}

struct Pooled {
    id: u64,
    client: Client,
}

/// One dial that others wait on; they learn its failure, or find its connection.
#[derive(Default)]
struct DialAttempt {
    done: Arc<Notify>,
    failure: OnceLock<HboneError>,
}

enum Checkout {
    Ready(Client, Slot),
    Wait(Arc<DialAttempt>, tokio::sync::futures::OwnedNotified),
    Dial(Arc<DialAttempt>),
}

/// How many times a stream refused by a closing connection (GOAWAY, REFUSED_STREAM) is
/// tried again on another.
const RETRIES: usize = 2;

impl<K> Pool<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    pub fn new(config: PoolConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                keys: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                dialed: AtomicU64::new(0),
                dials_failed: AtomicU64::new(0),
                streams_opened: AtomicU64::new(0),
            }),
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Opens a CONNECT stream to `request.authority` on a connection of `key`, dialing
    /// one with `dial` (which returns the established transport, e.g. a TLS stream) if
    /// none has a free slot. `dial` is called at most once.
    pub async fn connect<D, F, T>(
        &self,
        key: &K,
        request: &ConnectRequest,
        dial: D,
    ) -> Result<H2Stream, HboneError>
    where
        D: FnOnce() -> F,
        F: Future<Output = io::Result<T>>,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut dial = Some(dial);
        let mut retries = 0;
        loop {
            let (client, slot) = match self.inner.checkout(key) {
                Checkout::Ready(client, slot) => (client, slot),
                Checkout::Wait(attempt, notified) => {
                    notified.await;
                    if let Some(e) = attempt.failure.get() {
                        return Err(e.clone());
                    }
                    continue;
                }
                Checkout::Dial(attempt) => {
                    let guard = DialGuard {
                        inner: &self.inner,
                        key,
                        attempt,
                        finished: false,
                    };
                    let Some(dial) = dial.take() else {
                        // Only after a retry whose own dial is spent: give up.
                        return Err(guard.fail(HboneError::Dial(Arc::new(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "tunnel connection went away and was already redialed once",
                        )))));
                    };
                    match self.dial(dial).await {
                        Ok(client) => guard.succeed(client),
                        Err(e) => return Err(guard.fail(e)),
                    }
                }
            };
            match client.open(slot, request).await {
                Ok(stream) => {
                    self.inner.streams_opened.fetch_add(1, Ordering::Relaxed);
                    return Ok(stream);
                }
                Err((e, retryable)) if retryable && retries < RETRIES => {
                    tracing::debug!(error = %e, "HBONE stream refused by a closing connection, retrying");
                    retries += 1;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    async fn dial<D, F, T>(&self, dial: D) -> Result<Client, HboneError>
    where
        D: FnOnce() -> F,
        F: Future<Output = io::Result<T>>,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let timeout = self.inner.config.dial_timeout;
        let io = tokio::time::timeout(timeout, dial())
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out after {timeout:?}"),
                ))
            })
            .map_err(|e| HboneError::Dial(Arc::new(e)))?;
        client::handshake(io, &self.inner.config.settings).await
    }

    /// Counters and open connections.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            connections_dialed: self.inner.dialed.load(Ordering::Relaxed),
            dials_failed: self.inner.dials_failed.load(Ordering::Relaxed),
            streams_opened: self.inner.streams_opened.load(Ordering::Relaxed),
            connections_open: self.inner.lock().values().map(|e| e.conns.len()).sum(),
        }
    }

    /// Connections pooled for `key`.
    pub fn connections(&self, key: &K) -> usize {
        self.inner.lock().get(key).map_or(0, |e| e.conns.len())
    }
}

impl<K> Inner<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Entry>> {
        crate::sync::lock(&self.keys)
    }

    fn checkout(&self, key: &K) -> Checkout {
        let max = self.config.max_streams_per_connection.max(1);
        let mut keys = self.lock();
        let entry = keys.entry(key.clone()).or_default();
        entry.conns.retain(|c| c.client.is_usable());
        for pooled in &entry.conns {
            if let Some(slot) = pooled.client.try_slot(max) {
                return Checkout::Ready(pooled.client.clone(), slot);
            }
        }
        match &entry.dial {
            Some(attempt) => {
                // Registered now, under the lock, so the dial's notification can't be missed.
                let notified = attempt.done.clone().notified_owned();
                Checkout::Wait(attempt.clone(), notified)
            }
            None => {
                let attempt = Arc::new(DialAttempt::default());
                entry.dial = Some(attempt.clone());
                Checkout::Dial(attempt)
            }
        }
    }

    /// Ends `attempt` for `key`: with its connection pooled (and a slot of it for the
    /// dialer), or not.
    fn finish_dial(
        self: &Arc<Self>,
        key: &K,
        attempt: &Arc<DialAttempt>,
        client: Option<&Client>,
    ) -> Option<Slot> {
        let mut keys = self.lock();
        let entry = keys.entry(key.clone()).or_default();
        if entry.dial.as_ref().is_some_and(|a| Arc::ptr_eq(a, attempt)) {
            entry.dial = None;
        }
        let slot = client.map(|client| {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            entry.conns.push(Pooled {
                id,
                client: client.clone(),
            });
            tokio::spawn(
                watch(
                    Arc::downgrade(self),
                    key.clone(),
                    id,
                    client.state().clone(),
                    self.config.idle_timeout,
                )
                .in_current_span(),
            );
            // The dialer's stream goes on its own connection whatever the limits.
            client.take_slot()
        });
        if entry.conns.is_empty() && entry.dial.is_none() {
            keys.remove(key);
        }
        drop(keys);
        attempt.done.notify_waiters();
        slot
    }

    /// Drops connection `id` of `key` if it is closed, or idle when `only_idle`.
    fn evict(&self, key: &K, id: u64, only_idle: bool) -> bool {
        let mut keys = self.lock();
        let Some(entry) = keys.get_mut(key) else {
            return true;
        };
        let Some(at) = entry.conns.iter().position(|c| c.id == id) else {
            return true;
        };
        if only_idle && entry.conns[at].client.active_streams() > 0 {
            return false;
        }
        entry.conns.swap_remove(at);
        if entry.conns.is_empty() && entry.dial.is_none() {
            keys.remove(key);
        }
        true
    }
}

/// Ends a dial attempt however the dialer's future ends (cancelled included), so that
/// waiters never wait on a dial nobody runs.
struct DialGuard<'a, K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    inner: &'a Arc<Inner<K>>,
    key: &'a K,
    attempt: Arc<DialAttempt>,
    finished: bool,
}

impl<K> DialGuard<'_, K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    fn succeed(mut self, client: Client) -> (Client, Slot) {
        self.inner.dialed.fetch_add(1, Ordering::Relaxed);
        let slot = self
            .inner
            .finish_dial(self.key, &self.attempt, Some(&client));
        self.finished = true;
        // `finish_dial` returns a slot whenever it is given a client.
        let slot = slot.unwrap_or_else(|| client.take_slot());
        (client, slot)
    }

    fn fail(self, e: HboneError) -> HboneError {
        self.inner.dials_failed.fetch_add(1, Ordering::Relaxed);
        let _ = self.attempt.failure.set(e.clone());
        // Drop ends the attempt.
        e
    }
}

impl<K> Drop for DialGuard<'_, K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        if !self.finished {
            self.inner.finish_dial(self.key, &self.attempt, None);
        }
    }
}

/// Follows one pooled connection: drops it from the pool when it closes, or closes it
/// (by dropping the pool's handle: h2 then sends GOAWAY) after `idle_timeout` without
/// streams.
async fn watch<K>(
    pool: Weak<Inner<K>>,
    key: K,
    id: u64,
    state: Arc<ConnState>,
    idle_timeout: Duration,
) where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    loop {
        let notified = state.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if state.is_closed() {
            if let Some(pool) = pool.upgrade() {
                pool.evict(&key, id, false);
            }
            return;
        }
        if state.active() > 0 {
            notified.await;
            continue;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(idle_timeout) => {
                let Some(pool) = pool.upgrade() else { return };
                if pool.evict(&key, id, true) {
                    tracing::debug!(idle = ?idle_timeout, "closing idle HBONE connection");
                    return;
                }
            }
        }
    }
}
