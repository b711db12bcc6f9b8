//! Futures a busy task polls far more often than they finish: a connection's shutdown, a
//! request's revocation (a `CancellationToken`'s future).
//!
//! A task polls every future it waits on each time it is woken, whatever woke it. A
//! token's future takes two locks at each poll (`is_cancelled`, and the `Notify`'s
//! waiter list to keep the task's waker), and an HTTP exchange waits on two of them at
//! every wake-up (its connection's shutdown and its request's revocation): about 1 % of
//! a server agent's CPU under HTTP load over mTLS (`docs/bench/profile.md`). [`Watched`]
//! polls the future it wraps at its first poll, and afterwards only once the future has
//! woken it (its event came, or it woke spuriously); in between, a poll costs an atomic
//! swap and keeping the task's waker.
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::task::AtomicWaker;

pin_project_lite::pin_project! {
    /// `inner`, polled again only after it woke its task.
    pub struct Watched<F> {
        #[pin]
        inner: F,
        woken: Arc<Woken>,
        // `inner` has been polled once (and so holds our waker, if it waits).
        armed: bool,
    }
}

/// The waker `inner` is polled with: it marks itself and wakes the task.
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

impl<F> Watched<F> {
    pub fn new(inner: F) -> Self {
        Self {
            inner,
            woken: Arc::default(),
            armed: false,
        }
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read: a wake-up between the two is not lost.
        this.woken.task.register(cx.waker());
        if *this.armed && !this.woken.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        *this.armed = true;
        // The same waker at every poll, so `inner` keeps the one it has.
        let waker = Waker::from(this.woken.clone());
        this.inner.poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        pin::pin,
        sync::atomic::AtomicUsize,
        task::{Context, Poll, Wake, Waker},
    };

    use tokio_util::sync::CancellationToken;

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn ready_once_its_event_came_and_it_wakes_the_task_when_it_does() {
        let token = CancellationToken::new();
        let mut watch = pin!(Watched::new(token.cancelled()));
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(watch.as_mut().poll(&mut cx).is_pending());
        assert!(
            watch.as_mut().poll(&mut cx).is_pending(),
            "pending between wake-ups"
        );
        assert_eq!(count.get(), 0);
        token.cancel();
        assert_eq!(count.get(), 1, "the task is woken");
        assert_eq!(watch.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn it_wakes_the_waker_of_its_latest_poll() {
        let token = CancellationToken::new();
        let mut watch = pin!(Watched::new(token.clone().cancelled_owned()));
        let (first, second) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let w1 = Waker::from(first.clone());
        let w2 = Waker::from(second.clone());
        assert!(
            watch
                .as_mut()
                .poll(&mut Context::from_waker(&w1))
                .is_pending()
        );
        assert!(
            watch
                .as_mut()
                .poll(&mut Context::from_waker(&w2))
                .is_pending()
        );
        token.cancel();
        assert_eq!(first.get(), 0);
        assert_eq!(second.get(), 1);
        assert_eq!(
            watch.as_mut().poll(&mut Context::from_waker(&w2)),
            Poll::Ready(())
        );
    }

    #[test]
    fn an_event_before_the_first_poll_is_seen_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        let mut watch = pin!(Watched::new(token.cancelled()));
        let waker = Waker::from(Arc::new(Count::default()));
        assert_eq!(
            watch.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Ready(())
        );
    }

    #[tokio::test]
    async fn a_task_waiting_on_it_among_other_futures_ends_when_it_fires() {
        let token = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(8);
        let waiting = tokio::spawn({
            let token = token.clone();
            async move {
                let mut shutdown = pin!(Watched::new(token.cancelled_owned()));
                let mut seen = 0;
                loop {
                    tokio::select! {
                        () = shutdown.as_mut() => return seen,
                        Some(_) = rx.recv() => seen += 1,
                    }
                }
            }
        });
        for i in 0..5 {
            tx.send(i).await.unwrap();
            tokio::task::yield_now().await;
        }
        token.cancel();
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the task ends once its shutdown fires")
            .unwrap();
        assert_eq!(seen, 5);
    }
}
