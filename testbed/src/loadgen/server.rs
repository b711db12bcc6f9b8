//! The load generator's server: one port serves every mode of [`protocol`](super::protocol),
//! and HTTP/1.1 `GET /N` with keep-alive.
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

use super::protocol::{
    HEADER_LEN, HTTP_BAD_REQUEST, HTTP_GET, Header, HeaderError, HttpError, MAX_HTTP_HEAD,
    http_head_end, http_response_head, parse_http_request,
};

/// How long a new connection has to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Read and write chunk for sink and source.
const CHUNK: usize = 256 * 1024;
/// What an HTTP response body is made of.
const PAYLOAD_BYTE: u8 = 0x5a;

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
    /// Request/response answers and HTTP responses sent.
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
    #[error("HTTP: {0}")]
    Http(#[from] HttpError),
    #[error("HTTP: a request head over {MAX_HTTP_HEAD} bytes")]
    HttpHeadTooLong,
    #[error("{0}")]
    Io(#[from] io::Error),
}

async fn handle(mut stream: TcpStream, stats: &ServerStats) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let mut header = [0u8; HEADER_LEN];
    tokio::time::timeout(HEADER_TIMEOUT, stream.read_exact(&mut header))
        .await
        .map_err(|_| ConnError::HeaderTimeout)??;
    if header.starts_with(HTTP_GET) {
        return http(&mut stream, &header, stats).await;
    }
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

/// HTTP/1.1 keep-alive: answers each `GET /N` with N bytes until the client closes or
/// asks to; anything else gets a 400 and the connection closes (counted as an error).
async fn http(stream: &mut TcpStream, first: &[u8], stats: &ServerStats) -> Result<(), ConnError> {
    let mut buf = first.to_vec();
    let mut chunk = vec![0u8; 4096];
    let mut body: Vec<u8> = Vec::new();
    let mut answered: u64 = 0;
    let result = async {
        loop {
            let end = loop {
                if let Some(end) = http_head_end(&buf) {
                    break end;
                }
                if buf.len() > MAX_HTTP_HEAD {
                    return Err(ConnError::HttpHeadTooLong);
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    // A close between requests ends the connection; inside one, it is an error.
                    if buf.is_empty() {
                        return Ok(());
                    }
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let request = match parse_http_request(&buf[..end]) {
                Ok(request) => request,
                Err(err) => {
                    stream.write_all(HTTP_BAD_REQUEST).await?;
                    return Err(err.into());
                }
            };
            buf.drain(..end);
            body.resize(request.size as usize, PAYLOAD_BYTE);
            let mut response = http_response_head(request.size, request.close);
            response.extend_from_slice(&body);
            stream.write_all(&response).await?;
            answered += 1;
            if request.close {
                return Ok(());
            }
        }
    }
    .await;
    stats.exchanges.fetch_add(answered, Relaxed);
    if result.is_ok() {
        stream.shutdown().await?;
    }
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
