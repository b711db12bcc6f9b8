//! Resetting a leased request the hook revoked, even when nothing polls it: a response
//! held back by flow control (a slow client) is not polled by hyper until the client
//! makes room, so a revocation seen only in its body could wait for ever. HTTP/2: each
//! stream's task (hyper runs one per stream through our [`StreamExecutor`]) ends when its
//! request's lease is revoked; dropping it makes h2 reset the stream (`CANCEL`), the
//! connection's other streams untouched. HTTP/1: one request at a time, so the
//! connection itself ends ([`H1Revocation`], watched by `server`). A busy request's own
//! task watches its revocation through a [`Watched`](crate::proxy::watched::Watched)
//! future.
use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
};

use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

tokio::task_local! {
    /// The running HTTP/2 stream's revocation, set by the service once leased.
    static STREAM: Arc<OnceLock<CancellationToken>>;
}

/// Says that the HTTP/2 stream whose service runs now ends when `revoked` is cancelled.
/// (Outside a stream's task, e.g. HTTP/1, it does nothing.)
pub(super) fn stream_revoked_by(revoked: &CancellationToken) {
    let _ = STREAM.try_with(|slot| slot.set(revoked.clone()));
}

/// Runs hyper's HTTP/2 stream tasks, each ending early if its request is revoked.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, stream: F) {
        let slot = Arc::new(OnceLock::new());
        // In the connection's span (hyper asks from within the connection's task).
        let stream = STREAM.scope(
            slot.clone(),
            Revocable {
                stream,
                slot,
                revoked: None,
            },
        );
        tokio::spawn(tracing::Instrument::in_current_span(stream));
    }
}

pin_project_lite::pin_project! {
    /// A stream's task: the stream, until it ends or its request is revoked.
    struct Revocable<F> {
        #[pin]
        stream: F,
        slot: Arc<OnceLock<CancellationToken>>,
        revoked: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    }
}

impl<F: Future> Future for Revocable<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.stream.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if this.revoked.is_none()
            && let Some(token) = this.slot.get()
        {
            *this.revoked = Some(Box::pin(token.clone().cancelled_owned()));
        }
        let revoked = this
            .revoked
            .as_mut()
            .is_some_and(|r| r.as_mut().poll(cx).is_ready());
        if revoked {
            tracing::debug!("HTTP/2 stream revoked: resetting it");
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// HTTP/1: the running request's revocation, which ends its connection.
#[derive(Default)]
pub(super) struct H1Revocation {
    current: Mutex<Option<CancellationToken>>,
    changed: Notify,
}

impl H1Revocation {
    /// The connection's request now running is revoked by `revoked`.
    pub(super) fn watch(&self, revoked: &CancellationToken) {
        *crate::sync::lock(&self.current) = Some(revoked.clone());
        self.changed.notify_one();
    }

    /// Resolves when the request running is revoked.
    pub(super) async fn revoked(&self) {
        loop {
            let changed = self.changed.notified();
            let current = crate::sync::lock(&self.current).clone();
            match current {
                Some(token) => tokio::select! {
                    () = token.cancelled() => return,
                    () = changed => {}
                },
                None => changed.await,
            }
        }
    }
}
