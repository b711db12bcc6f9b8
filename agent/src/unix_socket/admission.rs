//! Who gets a connection on a gRPC unix socket (the admin API's, the sidecars'), so that
//! a flood of connections (a runaway script, a tool left hanging, a hostile pod) costs the
//! agent a bounded number of descriptors and never locks its real clients out: at most
//! `maxConnections` at once; a connection must send the HTTP/2 preface within
//! `prefaceTimeoutMs` or is closed; and when the limit is reached
//! a new connection takes the place of the oldest one that has not sent its preface yet
//! (as sshd's `MaxStartups` sheds unauthenticated connections first). Only when every
//! slot holds a client speaking HTTP/2 is a new connection closed at once. Clients that
//! stop answering are found by the server's HTTP/2 keepalive (see `admin::start`).
use std::{
    collections::{HashMap, VecDeque},
    io,
    os::fd::OwnedFd,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{UnixListener, UnixStream},
    sync::mpsc,
    time::Sleep,
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

use super::peer::{PeerInfo, peer_pidfd};

/// What every HTTP/2 client sends first (RFC 9113 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The slots, shared by the accept loop and the connections' guards.
#[derive(Clone)]
pub struct Admission {
    /// The socket, as log lines and errors name it (`admin socket`).
    name: &'static str,
    /// Whether each connection's peer is pinned by a pidfd at accept (`peer`).
    pin_peers: bool,
    max: usize,
    preface_timeout: Duration,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Connections holding a slot: id → cancelled when evicted.
    live: HashMap<u64, CancellationToken>,
    /// Ids that have not sent their preface, oldest first (may hold stale ids).
    pending: VecDeque<u64>,
    evicted: u64,
    refused: u64,
}

impl Admission {
    pub fn new(name: &'static str, max: usize, preface_timeout: Duration) -> Self {
        Self {
            name,
            pin_peers: false,
            max: max.max(1),
            preface_timeout,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Takes each accepted connection's pidfd (`SO_PEERPIDFD`), which requests then
    /// carry in their [`PeerInfo`]: for callers attested by their process.
    pub fn pinning_peers(mut self) -> Self {
        self.pin_peers = true;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.lock().live.len()
    }

    /// Connections evicted (for a newer one) and refused (all slots busy) so far.
    pub fn shed(&self) -> (u64, u64) {
        let state = self.lock();
        (state.evicted, state.refused)
    }

    /// Gives `stream` a slot if there is one, evicting the oldest silent connection if
    /// that is the only way.
    pub fn admit<S>(&self, stream: S) -> Option<Guarded<S>> {
        let mut state = self.lock();
        if state.live.len() >= self.max {
            let mut freed = false;
            while let Some(old) = state.pending.pop_front() {
                if let Some(token) = state.live.remove(&old) {
                    token.cancel();
                    state.evicted += 1;
                    freed = true;
                    break;
                }
            }
            if !freed {
                state.refused += 1;
                return None;
            }
        }
        let id = state.next_id;
        state.next_id += 1;
        let token = CancellationToken::new();
        state.live.insert(id, token.clone());
        state.pending.push_back(id);
        drop(state);
        Some(Guarded {
            inner: stream,
            pidfd: None,
            id,
            admission: self.clone(),
            matched: 0,
            spoke: false,
            evicted: Box::pin(token.cancelled_owned()),
            deadline: Box::pin(tokio::time::sleep(self.preface_timeout)),
        })
    }

    fn spoke(&self, id: u64) {
        let mut state = self.lock();
        state.pending.retain(|p| *p != id);
    }

    fn release(&self, id: u64) {
        let mut state = self.lock();
        if state.live.remove(&id).is_some() {
            state.pending.retain(|p| *p != id);
        }
    }
}

/// A connection holding a slot; gives it back when dropped. Until the HTTP/2 preface has
/// arrived, reading fails once the preface timeout passes or the slot is taken away.
pub struct Guarded<S> {
    inner: S,
    /// The peer's process, when the admission pins peers.
    pidfd: Option<Arc<OwnedFd>>,
    id: u64,
    admission: Admission,
    /// Bytes of the preface seen so far.
    matched: usize,
    spoke: bool,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        self.admission.release(self.id);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.spoke {
            if this.evicted.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!(
                        "{}: closed for a newer connection (connection limit reached and \
                         this one had not sent the HTTP/2 preface)",
                        this.admission.name
                    ),
                )));
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{}: no HTTP/2 preface in time", this.admission.name),
                )));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.spoke && polled.is_ready() {
            let new = &buf.filled()[before..];
            let want = &PREFACE[this.matched..];
            let n = new.len().min(want.len());
            if new[..n] == want[..n] {
                this.matched += n;
                if this.matched == PREFACE.len() {
                    this.spoke = true;
                    this.admission.spoke(this.id);
                }
            }
            // Anything else is not HTTP/2: the server closes it after reading it.
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Guarded<UnixStream> {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        PeerInfo {
            uds: self.inner.connect_info(),
            pidfd: self.pidfd.clone(),
        }
    }
}

/// Accepts on `listener` until `stop`, handing admitted connections to the server
/// through the returned channel. Connections over the limit are closed here.
pub fn accept_loop(
    listener: UnixListener,
    admission: Admission,
    stop: CancellationToken,
) -> mpsc::Receiver<io::Result<Guarded<UnixStream>>> {
    let name = admission.name;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let (mut evicted_logged, mut refused_logged) = (0, 0);
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, typically: let some go before trying again.
                    tracing::warn!(%error, socket = name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (evicted_before, _) = admission.shed();
            let pidfd = admission
                .pin_peers
                .then(|| peer_pidfd(&stream).ok().map(Arc::new))
                .flatten();
            match admission.admit(stream) {
                Some(mut conn) => {
                    conn.pidfd = pidfd;
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                    let (evicted, refused) = admission.shed();
                    if evicted > evicted_before {
                        // One line per power of two, not one per connection.
                        if evicted >= evicted_logged * 2 {
                            evicted_logged = evicted;
                            tracing::warn!(
                                socket = name,
                                open = admission.open(),
                                evicted,
                                refused,
                                limit = admission.max,
                                "connection limit reached; the oldest connection that had not \
                                 sent the HTTP/2 preface was closed for a new one"
                            );
                        }
                        // Let the evicted connection's task run and close its descriptor
                        // before accepting more: a burst then overshoots the limit little.
                        tokio::task::yield_now().await;
                    }
                }
                None => {
                    let (evicted, refused) = admission.shed();
                    // One line per power of two, not one per connection.
                    if refused >= refused_logged * 2 {
                        refused_logged = refused.max(1);
                        tracing::warn!(
                            socket = name,
                            open = admission.open(),
                            evicted,
                            refused,
                            limit = admission.max,
                            "connection limit reached, every slot busy with a client; \
                             connection closed"
                        );
                    }
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn the_oldest_silent_connection_makes_room_and_talkers_keep_their_slot() {
        let admission = Admission::new("test socket", 2, Duration::from_secs(60));
        let (mut talker, a) = duplex(64);
        let mut a = admission.admit(a).unwrap();
        talker.write_all(PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        let n = a.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], PREFACE);
        assert!(a.spoke);

        let (_silent_peer, b) = duplex(64);
        let mut b = admission.admit(b).unwrap();
        assert_eq!(admission.open(), 2);
        // Full: the silent one goes, the talker stays.
        let (_new_peer, c) = duplex(64);
        let c = admission.admit(c).unwrap();
        let err = b.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(admission.open(), 2);
        assert_eq!(admission.shed(), (1, 0));
        // The newcomer is silent too and is the next to go.
        let (_d_peer, d) = duplex(64);
        let d = admission.admit(d).unwrap();
        let mut c = c;
        let err = c.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(admission.shed(), (2, 0));
        // A talker is never evicted: its reads go on.
        talker.write_all(b"more").await.unwrap();
        let n = a.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"more");
        drop((b, c, d));
        assert_eq!(admission.open(), 1, "slots come back on drop");
        drop(a);
        assert_eq!(admission.open(), 0);
    }

    #[tokio::test]
    async fn every_slot_speaking_refuses_a_newcomer() {
        let admission = Admission::new("test socket", 1, Duration::from_secs(60));
        let (mut peer, a) = duplex(64);
        let mut a = admission.admit(a).unwrap();
        peer.write_all(PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        let n = a.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], PREFACE);
        let (_p, b) = duplex(64);
        assert!(admission.admit(b).is_none());
        assert_eq!(admission.shed(), (0, 1));
        drop(a);
        let (_p, c) = duplex(64);
        assert!(admission.admit(c).is_some());
    }

    #[tokio::test]
    async fn a_connection_without_the_preface_is_closed_after_the_timeout() {
        let admission = Admission::new("test socket", 4, Duration::from_millis(300));
        let (mut peer, conn) = duplex(64);
        let mut conn = admission.admit(conn).unwrap();
        // Garbage does not count as the preface.
        peer.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
        assert!(!conn.spoke);
        let started = std::time::Instant::now();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(300) + Duration::from_millis(200),
            "{took:?}"
        );
        drop(conn);
        assert_eq!(admission.open(), 0);
    }
}
