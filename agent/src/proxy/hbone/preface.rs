//! The server's first look at a connection: the HTTP/2 client preface must come first,
//! or the connection is refused at once with an error quoting what came instead (not a
//! protocol error some frames later, nor a wait for bytes that will never come).
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::HboneError;

pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the client preface from `io`, failing as soon as a byte differs, and returns
/// `io` with the preface put back for h2 to read.
pub async fn expect_preface<T>(mut io: T, timeout: Duration) -> Result<Rewind<T>, HboneError>
where
    T: AsyncRead + Unpin,
{
    let mut buf = [0u8; PREFACE.len()];
    let mut len = 0;
    let read = async {
        while len < buf.len() {
            let n = io
                .read(&mut buf[len..])
                .await
                .map_err(|e| HboneError::PrefaceIo(Arc::new(e)))?;
            if n == 0 {
                return Err(HboneError::ClosedBeforePreface(len));
            }
            len += n;
            if buf[..len] != PREFACE[..len] {
                return Err(HboneError::NotHttp2(
                    String::from_utf8_lossy(&buf[..len]).into_owned(),
                ));
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| HboneError::HandshakeTimeout(timeout))??;
    Ok(Rewind { replay: 0, io })
}

/// A transport whose first bytes (the preface, already read) are read again.
pub struct Rewind<T> {
    /// How much of the preface was replayed.
    replay: usize,
    io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replay < PREFACE.len() {
            let rest = &PREFACE[self.replay..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.replay += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
