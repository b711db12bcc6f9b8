//! A tunnel's TLS, written a batch at a time. tokio-rustls sends each write's TLS records
//! to the socket at once, so HTTP/2 writing a bulk flow's 16 KiB DATA frames one by one
//! makes one `writev` (and one TCP segment train) per frame. [`Coalesced`] lets rustls
//! encrypt each write into its own queue of records and sends them when HTTP/2 flushes
//! (it does after every batch of frames it wrote), or once [`BATCH`] bytes are queued:
//! then several records go in one `writev`. Nothing is copied for it, and nothing waits
//! past a flush. Reads and shutdown are tokio-rustls's own.
use std::{
    io::{self, IoSlice, Write},
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Records queued past this many bytes of plaintext are sent before more is encrypted: one
/// `writev` (one TCP segment train) for a bulk flow's four 16 KiB frames.
pub const BATCH: usize = 64 * 1024;

/// What rustls may queue at most (its default, 64 KiB, would cut the record that
/// crosses it in two).
const QUEUE_LIMIT: usize = 4 * BATCH;

/// A TLS stream whose session can be reached: its records queued, and written out.
pub trait TlsSession: AsyncRead + AsyncWrite + Unpin {
    /// Bounds the bytes the session queues.
    fn set_queue_limit(&mut self, bytes: usize);
    /// Encrypts what it can of `bufs` into the session's queue of records (0 when the
    /// queue is full).
    fn encrypt(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Whether records wait in the queue.
    fn wants_write(&self) -> bool;
    /// Writes queued records to the socket (as many as one `writev` takes).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>>;
}

macro_rules! session {
    ($stream:ty) => {
        impl<IO: AsyncRead + AsyncWrite + Unpin> TlsSession for $stream {
            fn set_queue_limit(&mut self, bytes: usize) {
                self.get_mut().1.set_buffer_limit(Some(bytes));
            }

            fn encrypt(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
                self.get_mut().1.writer().write_vectored(bufs)
            }

            fn wants_write(&self) -> bool {
                self.get_ref().1.wants_write()
            }

            fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
                let (io, session) = self.get_mut();
                match session.write_tls(&mut SyncWrite { io, cx }) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
                    result => Poll::Ready(result),
                }
            }
        }
    };
}

session!(tokio_rustls::client::TlsStream<IO>);
session!(tokio_rustls::server::TlsStream<IO>);

/// `io` as a blocking writer for rustls: pending is `WouldBlock`.
struct SyncWrite<'a, 'b, IO> {
    io: &'a mut IO,
    cx: &'a mut Context<'b>,
}

impl<IO: AsyncWrite + Unpin> Write for SyncWrite<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS stream whose records leave together at a flush (see the module).
pub struct Coalesced<S> {
    stream: S,
    /// Plaintext encrypted since records were last sent.
    queued: usize,
}

impl<S: TlsSession> Coalesced<S> {
    pub fn new(mut stream: S) -> Self {
        stream.set_queue_limit(QUEUE_LIMIT);
        Self { stream, queued: 0 }
    }

    /// Sends every queued record.
    fn poll_send_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.stream.wants_write() {
            if ready!(self.stream.poll_send(cx))? == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        self.queued = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: TlsSession> AsyncRead for Coalesced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: TlsSession> AsyncWrite for Coalesced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            if self.queued >= BATCH {
                ready!(self.poll_send_all(cx))?;
            }
            let n = self.stream.encrypt(bufs)?;
            if n > 0 {
                self.queued += n;
                return Poll::Ready(Ok(n));
            }
            if !self.stream.wants_write() {
                // Nothing taken, nothing to send that would make room.
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            // rustls's queue is full (a write bigger than its limit): send it all.
            ready!(self.poll_send_all(cx))?;
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_all(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // tokio-rustls sends what is queued, then close_notify.
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };
    use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

    use super::*;
    use crate::proxy::hbone::tests::counted::CountedWrites;

    /// A TLS connection over loopback: the client's end over a counted socket, and what
    /// the server reads until the client closes.
    async fn tls() -> (
        TlsStream<CountedWrites>,
        Arc<AtomicUsize>,
        tokio::task::JoinHandle<Vec<u8>>,
    ) {
        let key = rcgen::generate_simple_self_signed(vec!["tunnel.test".to_string()]).unwrap();
        let provider = crate::identity::trust::provider();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![key.cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der())),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(key.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let received = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut got = Vec::new();
            tls.read_to_end(&mut got).await.unwrap();
            got
        });
        let writes = Arc::new(AtomicUsize::new(0));
        let tcp = CountedWrites {
            tcp: TcpStream::connect(addr).await.unwrap(),
            writes: writes.clone(),
        };
        let name = ServerName::try_from("tunnel.test").unwrap();
        let tls = TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .unwrap();
        (tls, writes, received)
    }

    /// Eight 16 KiB writes, as HTTP/2 makes for a bulk flow's DATA frames, then a flush,
    /// through `wrap(the TLS stream)`: how many socket writes they took, and whether all
    /// arrived as written.
    async fn eight_frames<S: AsyncWrite + Unpin>(
        wrap: impl FnOnce(TlsStream<CountedWrites>) -> S,
    ) -> (usize, bool) {
        let (tls, writes, received) = tls().await;
        let frame: Vec<u8> = (0..16 * 1024).map(|i| (i % 253) as u8).collect();
        let mut stream = wrap(tls);
        let before = writes.load(Ordering::Relaxed);
        for _ in 0..8 {
            stream.write_all(&frame).await.unwrap();
        }
        stream.flush().await.unwrap();
        let made = writes.load(Ordering::Relaxed) - before;
        stream.shutdown().await.unwrap();
        // The stream is kept until the server has read all: closing a socket with the
        // server's session tickets unread would reset the connection.
        let got = received.await.unwrap();
        drop(stream);
        (made, got == frame.repeat(8))
    }

    #[tokio::test]
    async fn a_bulk_flows_records_leave_a_batch_at_a_time_and_arrive_whole() {
        let (coalesced, whole) = eight_frames(Coalesced::new).await;
        assert!(whole, "the bytes arrived changed");
        // A batch is 64 KiB: 128 KiB leave in two writes.
        assert!(coalesced <= 2, "8 records took {coalesced} writes");
        // tokio-rustls alone: a write (at least) per record.
        let (alone, whole) = eight_frames(|tls| tls).await;
        assert!(whole);
        assert!(alone >= 8, "tokio-rustls alone took {alone} writes");
    }

    #[tokio::test]
    async fn a_small_write_leaves_at_the_flush() {
        let (tls, writes, received) = tls().await;
        let mut stream = Coalesced::new(tls);
        let before = writes.load(Ordering::Relaxed);
        stream.write_all(b"ping").await.unwrap();
        assert_eq!(
            writes.load(Ordering::Relaxed),
            before,
            "written before the flush"
        );
        stream.flush().await.unwrap();
        assert_eq!(writes.load(Ordering::Relaxed), before + 1);
        stream.shutdown().await.unwrap();
        assert_eq!(received.await.unwrap(), b"ping");
        drop(stream);
    }
}
