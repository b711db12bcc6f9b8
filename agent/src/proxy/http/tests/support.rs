//! Test helpers: bodies of a known pseudo-random pattern (sent lazily, chunk by chunk,
//! so a test can see how far ahead of the reader the sender got), checksums, HTTP
//! clients over loopback, raw reads of a message head.
use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::TcpStream,
};

const BLOCK: usize = 64 * 1024;
const CHUNK: u64 = 50_000;

/// 64 KiB of pseudo-random bytes, stored twice so any 64 KiB window is one slice.
#[derive(Clone)]
pub(super) struct Pattern(Bytes);

impl Pattern {
    pub(super) fn new() -> Self {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let block: Vec<u8> = (0..BLOCK)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        Self(Bytes::from([block.as_slice(), block.as_slice()].concat()))
    }

    fn at(&self, offset: u64, len: usize) -> Bytes {
        let start = (offset % BLOCK as u64) as usize;
        self.0.slice(start..start + len)
    }

    /// The checksum of the first `n` bytes of the pattern.
    pub(super) fn checksum(&self, n: u64) -> u64 {
        let mut sum = Checksum::default();
        let mut offset = 0;
        while offset < n {
            let len = (n - offset).min(CHUNK) as usize;
            sum.update(&self.at(offset, len));
            offset += len as u64;
        }
        sum.0
    }
}

/// FNV-1a, 64 bits.
pub(super) struct Checksum(pub(super) u64);

impl Default for Checksum {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Checksum {
    pub(super) fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// `len` bytes of the pattern in 50 kB chunks of unknown total size (so HTTP/1 sends it
/// chunked); counts what it produced in `produced`.
pub(super) struct PatternBody {
    pattern: Pattern,
    offset: u64,
    len: u64,
    produced: Option<Arc<AtomicU64>>,
}

impl PatternBody {
    pub(super) fn new(pattern: Pattern, len: u64, produced: Option<Arc<AtomicU64>>) -> Self {
        Self {
            pattern,
            offset: 0,
            len,
            produced,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.offset >= this.len {
            return Poll::Ready(None);
        }
        let n = (this.len - this.offset).min(CHUNK) as usize;
        let chunk = this.pattern.at(this.offset, n);
        this.offset += n as u64;
        if let Some(produced) = &this.produced {
            produced.fetch_add(n as u64, Ordering::SeqCst);
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Reads a body to its end, returning its length and checksum.
pub(super) async fn drain<B>(mut body: B) -> Result<(u64, u64), B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt;
    let mut sum = Checksum::default();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            sum.update(&data);
        }
    }
    Ok((len, sum.0))
}

pub(super) type ClientBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

pub(super) fn empty() -> ClientBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

pub(super) fn bytes(b: &'static [u8]) -> ClientBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(Bytes::from_static(b))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// An HTTP/1 client connection to `addr`.
pub(super) async fn h1_client(addr: SocketAddr) -> http1::SendRequest<ClientBody> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    send
}

/// An HTTP/2 (prior knowledge) client connection to `addr`.
pub(super) async fn h2_client(addr: SocketAddr) -> http2::SendRequest<ClientBody> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// Reads up to the end of a message head (`\r\n\r\n`), byte by byte.
pub(super) async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = r.read_u8().await.expect("a message head");
        head.push(b);
    }
    String::from_utf8_lossy(&head).into_owned()
}
