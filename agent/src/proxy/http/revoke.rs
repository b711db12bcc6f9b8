//! Resetting a leased request the hook revoked, even when nothing polls it: a response
//! held back by flow control (a slow client) is not polled by hyper until the client
//! makes room, so a revocation seen only in its body could wait for ever. HTTP/2: each
//! stream's task (hyper runs one per stream through our [`StreamExecutor`]) ends when its
//! request's lease is revoked; dropping it makes h2 reset the stream (`CANCEL`), the
//! connection's other streams untouched. HTTP/1: one request at a time, so the
//! connection itself ends ([`H1Revocation`], watched by `server`). A busy request's own
//! task watches its revocation through a [`Watch`].
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::task::AtomicWaker;
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

/// A request's revocation, checked at every poll of the task that carries the request.
///
/// The token's own future takes two locks each time it is polled (`is_cancelled` and
/// the `Notify`'s waiter list), and a busy exchange is polled several times per request:
/// about 1 % of a server agent's CPU under HTTP load (`docs/bench/profile.md`). A watch
/// polls that future at its first poll and afterwards only once the future's waker has
/// fired (the token was cancelled, or the `Notify` woke it spuriously); in between, a
/// poll costs an atomic swap and keeping the task's waker.
pub(super) struct Watch {
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    woken: Arc<Woken>,
    /// The token's future has been polled once (and so is registered).
    armed: bool,
}

/// The waker the token's future is polled with: it marks itself and wakes the task.
#[derive(Default)]
struct Woken {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Watch {
    pub(super) fn new(token: CancellationToken) -> Self {
        Self {
            cancelled: Box::pin(token.cancelled_owned()),
            woken: Arc::default(),
            armed: false,
        }
    }

    /// Ready once the request is revoked; until then, wakes `cx`'s task when it is.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the flag is read: a wake-up between the two is not lost.
        self.woken.task.register(cx.waker());
        if self.armed && !self.woken.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        self.armed = true;
        let waker = Waker::from(self.woken.clone());
        self.cancelled
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod watch_tests {
    use std::{
        sync::atomic::AtomicUsize,
        task::{Context, Poll, Wake, Waker},
    };

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_watch_is_ready_once_revoked_and_wakes_its_task_when_it_is() {
        let token = CancellationToken::new();
        let mut watch = Watch::new(token.clone());
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(watch.poll(&mut cx).is_pending());
        assert!(watch.poll(&mut cx).is_pending(), "pending between wake-ups");
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        token.cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the task is woken");
        assert_eq!(watch.poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn a_watch_wakes_the_waker_of_its_latest_poll() {
        let token = CancellationToken::new();
        let mut watch = Watch::new(token.clone());
        let (first, second) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let w1 = Waker::from(first.clone());
        let w2 = Waker::from(second.clone());
        assert!(watch.poll(&mut Context::from_waker(&w1)).is_pending());
        assert!(watch.poll(&mut Context::from_waker(&w2)).is_pending());
        token.cancel();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert_eq!(watch.poll(&mut Context::from_waker(&w2)), Poll::Ready(()));
    }

    #[test]
    fn a_watch_of_a_token_revoked_before_it_is_ready_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        let mut watch = Watch::new(token);
        let waker = Waker::from(Arc::new(Count::default()));
        assert_eq!(
            watch.poll(&mut Context::from_waker(&waker)),
            Poll::Ready(())
        );
    }
}
