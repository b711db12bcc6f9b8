//! The load generator's server: one port serves every mode of [`protocol`](super::protocol).
//! Each connection is a task; a bad header or a broken connection is counted and logged
//! at debug, and the server goes on.
use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

use super::protocol::{HEADER_LEN, Header, HeaderError};

/// How long a new connection has to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Read and write chunk for sink and source.
const CHUNK: usize = 256 * 1024;

/// What the server did so far; shared with the caller of [`serve`].
#[derive(Debug, Default)]
pub struct ServerStats {
    connections: AtomicU64,
    errors: AtomicU64,
    exchanges: AtomicU64,
    sink_bytes: AtomicU64,
    source_bytes: AtomicU64,
}

/// A copy of [`ServerStats`]' counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounts {
    /// Connections accepted.
    pub connections: u64,
    /// Connections that ended badly: bad header, reset, cut short.
    pub errors: u64,
    /// Request/response answers sent.
    pub exchanges: u64,
    /// Bytes received and acknowledged in sink mode.
    pub sink_bytes: u64,
    /// Bytes sent in source mode.
    pub source_bytes: u64,
}

impl ServerStats {
    pub fn counts(&self) -> ServerCounts {
        ServerCounts {
            connections: self.connections.load(Relaxed),
            errors: self.errors.load(Relaxed),
            exchanges: self.exchanges.load(Relaxed),
            sink_bytes: self.sink_bytes.load(Relaxed),
            source_bytes: self.source_bytes.load(Relaxed),
        }
    }
}

/// A listening socket for `addr`: SO_REUSEADDR, and IPv6 sockets IPv6-only so that
/// `0.0.0.0:P` and `[::]:P` can both be bound. Call from inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Serves every listener until the returned future is dropped (the accept loops stop
/// with it; connections in progress run on as their own tasks).
pub async fn serve(listeners: Vec<TcpListener>, stats: Arc<ServerStats>) {
    let mut loops = JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(listener, stats.clone()));
    }
    while loops.join_next().await.is_some() {}
}

async fn accept_loop(listener: TcpListener, stats: Arc<ServerStats>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                stats.connections.fetch_add(1, Relaxed);
                let stats = stats.clone();
                tokio::spawn(async move {
                    if let Err(err) = handle(stream, &stats).await {
                        stats.errors.fetch_add(1, Relaxed);
                        tracing::debug!(%peer, error = %err, "loadgen connection failed");
                    }
                });
            }
            Err(err) => {
                // Out of file descriptors or memory, or an aborted handshake: wait a
                // little rather than spin, and go on.
                tracing::warn!(error = %err, "loadgen accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("bad header: {0}")]
    Header(#[from] HeaderError),
    #[error("no complete header within {} s", HEADER_TIMEOUT.as_secs())]
    HeaderTimeout,
    #[error("{0}")]
    Io(#[from] io::Error),
}

async fn handle(mut stream: TcpStream, stats: &ServerStats) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let mut header = [0u8; HEADER_LEN];
    tokio::time::timeout(HEADER_TIMEOUT, stream.read_exact(&mut header))
        .await
        .map_err(|_| ConnError::HeaderTimeout)??;
    match Header::decode(&header)? {
        Header::RequestResponse { size, exchanges } => {
            request_response(&mut stream, size as usize, exchanges, stats).await?
        }
        Header::Sink => sink(&mut stream, stats).await?,
        Header::Source { bytes } => source(&mut stream, bytes, stats).await?,
    }
    stream.shutdown().await?;
    Ok(())
}

async fn request_response(
    stream: &mut TcpStream,
    size: usize,
    limit: u32,
    stats: &ServerStats,
) -> io::Result<()> {
    let mut message = vec![0u8; size];
    let mut answered: u32 = 0;
    let result = async {
        while limit == 0 || answered < limit {
            // A half-close between messages ends the exchange; inside one, it is an error.
            let n = stream.read(&mut message).await?;
            if n == 0 {
                break;
            }
            stream.read_exact(&mut message[n..]).await?;
            stream.write_all(&message).await?;
            answered += 1;
        }
        Ok(())
    }
    .await;
    stats.exchanges.fetch_add(u64::from(answered), Relaxed);
    result
}

async fn sink(stream: &mut TcpStream, stats: &ServerStats) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut count: u64 = 0;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        count += n as u64;
    }
    // Counted before the answer goes out, so a client that has it sees it counted.
    stats.sink_bytes.fetch_add(count, Relaxed);
    stream.write_all(&count.to_be_bytes()).await
}

async fn source(stream: &mut TcpStream, bytes: u64, stats: &ServerStats) -> io::Result<()> {
    let buf = vec![0x5a_u8; CHUNK];
    let mut left = bytes;
    let result = async {
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK);
            let written = stream.write(&buf[..n]).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= written as u64;
        }
        Ok(())
    }
    .await;
    stats.source_bytes.fetch_add(bytes - left, Relaxed);
    result
}
