//! Open-loop pacing on a precise timer. tokio's timer ticks in milliseconds: at a few
//! thousand requests per second on a connection it would send them in bursts, one per
//! tick. A timerfd (one per worker, waited on through tokio's reactor) wakes within the
//! thread's timer slack instead (50 µs by default; the command line lowers it, see
//! [`precise_timers`]). Where a timerfd cannot be had, tokio's timer stands in.
use std::{
    io,
    os::fd::{AsFd, AsRawFd, RawFd},
};

use nix::sys::{
    time::TimeSpec,
    timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};

/// Timer slack the load generator's threads ask for.
const TIMER_SLACK_NS: u64 = 1_000;

struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct Pacer {
    timer: Option<AsyncFd<Timer>>,
}

impl Pacer {
    /// Must be called inside a tokio runtime.
    pub fn new() -> Self {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(io::Error::from)
        .and_then(|fd| {
            // SAFETY: `Timer` owns the timerfd (an `OwnedFd` inside `TimerFd`), nothing
            // else can close or replace it, and `as_raw_fd` always returns that fd: it
            // stays valid and the same for as long as the `AsyncFd` holds it.
            unsafe { AsyncFd::register_with_interest(Timer(fd), Interest::READABLE) }
                .map_err(io::Error::from)
        });
        match timer {
            Ok(timer) => Self { timer: Some(timer) },
            Err(err) => {
                tracing::debug!(error = %err, "no timerfd; pacing on tokio's millisecond timer");
                Self { timer: None }
            }
        }
    }

    /// Returns at `due` (at once if it has passed).
    pub async fn sleep_until(&mut self, due: Instant) {
        let now = Instant::now();
        if due <= now {
            return;
        }
        if let Some(timer) = &self.timer {
            match wait(timer, due - now).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::debug!(error = %err, "timerfd failed; pacing on tokio's timer");
                    self.timer = None;
                }
            }
        }
        tokio::time::sleep_until(due).await;
    }
}

async fn wait(timer: &AsyncFd<Timer>, after: std::time::Duration) -> io::Result<()> {
    // `after` is not zero (a zero one-shot would disarm the timer).
    timer.get_ref().0.set(
        Expiration::OneShot(TimeSpec::from_duration(after)),
        TimerSetTimeFlags::empty(),
    )?;
    loop {
        let mut ready = timer.readable().await?;
        match ready.try_io(|t| t.get_ref().0.wait().map_err(io::Error::from)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Lowers the calling thread's timer slack so that timers (the pacer's, epoll's) fire
/// within about a microsecond of their time. Best effort.
pub fn precise_timers() {
    if let Err(err) = nix::sys::prctl::set_timerslack(TIMER_SLACK_NS) {
        tracing::debug!(error = %err, "cannot lower the timer slack");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wakes_close_to_the_due_time_and_not_before() {
        precise_timers();
        let mut pacer = Pacer::new();
        let mut lates: Vec<Duration> = Vec::new();
        for _ in 0..100 {
            let due = Instant::now() + Duration::from_micros(300);
            pacer.sleep_until(due).await;
            let now = Instant::now();
            assert!(now >= due, "woke early");
            lates.push(now - due);
        }
        assert!(
            pacer.timer.is_some(),
            "the timerfd is there and kept working"
        );
        lates.sort();
        // tokio's millisecond timer would be ~500 µs late at the median.
        assert!(
            lates[50] < Duration::from_micros(200),
            "median wake-up {:?} late (worst {:?})",
            lates[50],
            lates[99]
        );
        // Past due: no wait at all.
        let before = Instant::now();
        pacer.sleep_until(before - Duration::from_millis(1)).await;
        assert!(before.elapsed() < Duration::from_millis(1));
    }
}
