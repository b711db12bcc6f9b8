//! Tests of the tunnel over loopback TCP (the transport is generic, so no TLS): a test
//! server with a handler that connects to a TCP upstream, and the upstreams it reaches.
pub(super) mod counted;
mod headers;
mod keepalive;
mod pool;
mod server;
mod stream;

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, mpsc, watch},
    task::AbortHandle,
};

use super::{
    Baggage, Client, ConnectRequest, H2Stream, Handler, HboneError, Inbound, Pool, PoolConfig,
    Settings, TraceParent, handshake, serve,
};

/// Settings with a short handshake timeout, so failures show quickly.
pub(super) fn settings() -> Settings {
    Settings {
        handshake_timeout: Duration::from_secs(5),
        ..Settings::default()
    }
}

pub(super) async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A tunnel's TCP connection, as the agent would dial it (without TLS).
pub(super) async fn dial(addr: SocketAddr) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// An upstream that echoes each connection, and shuts down its write side once the
/// client shut down its own (half-close passes through).
pub(super) async fn echo_upstream() -> SocketAddr {
    echo_upstream_closing_after(Duration::ZERO).await
}

/// [`echo_upstream`], shutting down `delay` after its client did, as a server finishing
/// up does.
pub(super) async fn echo_upstream_closing_after(delay: Duration) -> SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.into_split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

/// An upstream that hands each accepted connection to the test.
pub(super) async fn manual_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<TcpStream>) {
    let (listener, addr) = listen().await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if tx.send(stream).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// An address nothing listens on.
pub(super) async fn closed_port() -> SocketAddr {
    let (listener, addr) = listen().await;
    drop(listener);
    addr
}

/// Resets a TCP connection (RST, not FIN).
pub(super) fn reset_tcp(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}

/// The server side's handler: connects to the CONNECT's authority (403 for `deny`, 502
/// when refused) and copies both ways with tokio's copy, resetting both ends on error.
#[derive(Default)]
pub(super) struct ToTcp {
    pub deny: Option<SocketAddr>,
    pub seen: Mutex<Vec<Inbound>>,
    /// Each served stream's copy result: bytes (client→upstream, upstream→client).
    pub served: Mutex<Vec<io::Result<(u64, u64)>>>,
    pub served_changed: Notify,
}

impl ToTcp {
    /// Waits until `n` streams were served, returning their results.
    pub async fn wait_served(&self, n: usize) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let notified = self.served_changed.notified();
                {
                    let served = self.served.lock().unwrap();
                    if served.len() >= n {
                        return served
                            .iter()
                            .map(|r| match r {
                                Ok((a, b)) => format!("ok {a} {b}"),
                                Err(e) => format!("error {:?}: {e}", e.kind()),
                            })
                            .collect();
                    }
                }
                notified.await;
            }
        })
        .await
        .expect("streams served in time")
    }
}

impl Handler for ToTcp {
    type Upstream = TcpStream;

    async fn open(&self, inbound: &Inbound) -> Result<TcpStream, StatusCode> {
        self.seen.lock().unwrap().push(inbound.clone());
        if self.deny == Some(inbound.authority) {
            return Err(StatusCode::FORBIDDEN);
        }
        TcpStream::connect(inbound.authority)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::ConnectionRefused => StatusCode::BAD_GATEWAY,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            })
    }

    async fn serve(&self, _inbound: Inbound, mut stream: H2Stream, mut upstream: TcpStream) {
        let result = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
        if result.is_err() {
            stream.reset();
            reset_tcp(upstream);
        }
        self.served.lock().unwrap().push(result);
        self.served_changed.notify_waiters();
    }
}

/// A tunnel server on loopback: each accepted connection is served until `shutdown`.
pub(super) struct TestServer {
    pub addr: SocketAddr,
    pub handler: Arc<ToTcp>,
    /// What `serve` returned, per connection.
    pub results: mpsc::UnboundedReceiver<Result<(), HboneError>>,
    /// Bumped to shut down the connections accepted so far.
    shutdown: watch::Sender<u64>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl TestServer {
    pub async fn start(settings: Settings, handler: ToTcp) -> Self {
        let (listener, addr) = listen().await;
        let handler = Arc::new(handler);
        let (results_tx, results) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = watch::channel(0u64);
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (h, conns) = (handler.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                stream.set_nodelay(true).unwrap();
                let (h, settings, tx) = (h.clone(), settings.clone(), results_tx.clone());
                let mut shutdown = shutdown_rx.clone();
                let born = *shutdown.borrow_and_update();
                let task = tokio::spawn(async move {
                    let stop = async move {
                        let _ = shutdown.wait_for(|generation| *generation > born).await;
                    };
                    let _ = tx.send(serve(stream, &settings, h, stop).await);
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            addr,
            handler,
            results,
            shutdown,
            connections,
        }
    }

    pub async fn client(&self) -> Client {
        handshake(dial(self.addr).await.unwrap(), &settings())
            .await
            .unwrap()
    }

    /// GOAWAY on every connection accepted so far.
    pub fn shut_down(&self) {
        self.shutdown.send_modify(|generation| *generation += 1);
    }

    /// Drops every connection's server end at once (no GOAWAY).
    pub fn kill_connections(&self) {
        for conn in self.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    pub async fn next_result(&mut self) -> Result<(), HboneError> {
        tokio::time::timeout(Duration::from_secs(10), self.results.recv())
            .await
            .expect("a connection ended in time")
            .expect("server running")
    }
}

/// Reads until EOF, with a deadline.
pub(super) async fn read_all(stream: &mut (impl AsyncReadExt + Unpin)) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "read_to_end"))??;
    Ok(out)
}
