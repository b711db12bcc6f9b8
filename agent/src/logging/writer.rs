//! The log writer behind tracing: a formatted line is appended to a shared buffer and one
//! thread of its own writes what gathered to stderr, so that a proxy thread logging an
//! access line never waits on a `write` — nor stalls when stderr's reader (the container
//! runtime) does (ztunnel does the same). Woken by a line, the thread lets [`GATHER`]
//! pass before writing, so that under load many lines go out in one `write` and one
//! wake-up; a line is out within about that time. Each wake-up costs the thread a
//! `futex` wait and a timed sleep, and the logging thread a `futex` wake: with 1 ms,
//! at 1,800 connections a second, that was two thirds of the writer's CPU and about
//! 2 % of the agent's (`docs/bench/profile.md`, "What each connection writes"); 10 ms
//! keeps a line's delay far below what a person or a log shipper notices.
//!
//! Nothing is dropped: when the buffer holds [`MAX_PENDING`] bytes (stderr slower than
//! the lines come), a logging thread waits until the writer took them. [`Flush`], dropped
//! as the process ends, writes what is left.
use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// The most bytes waiting to be written before logging threads wait.
pub const MAX_PENDING: usize = 4 * 1024 * 1024;

/// How long the writer gathers lines after the first wakes it.
pub const GATHER: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closing: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// The writer thread waits on it for lines (or closing).
    has_lines: Condvar,
    /// Logging threads wait on it for room.
    has_room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A thread that panicked while holding the lock left whole lines behind.
        crate::sync::lock(&self.pending)
    }
}

/// Where tracing's formatter writes (see [`MakeWriter`]): clone it freely.
#[derive(Clone)]
pub struct Lines {
    shared: Arc<Shared>,
    max_pending: usize,
}

/// Writes what is left and stops the writer thread when dropped.
pub struct Flush {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread writing to `out`.
pub fn start(out: impl Write + Send + 'static) -> io::Result<(Lines, Flush)> {
    start_with(out, MAX_PENDING)
}

fn start_with(
    mut out: impl Write + Send + 'static,
    max_pending: usize,
) -> io::Result<(Lines, Flush)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        has_lines: Condvar::new(),
        has_room: Condvar::new(),
    });
    let writer = shared.clone();
    let thread = std::thread::Builder::new()
        .name("outrider-log".into())
        .spawn(move || {
            let mut batch = Vec::new();
            loop {
                let closing = {
                    let mut pending = writer.lock();
                    while pending.bytes.is_empty() && !pending.closing {
                        pending = writer
                            .has_lines
                            .wait(pending)
                            .unwrap_or_else(|p| p.into_inner());
                    }
                    pending.closing
                };
                if !closing {
                    // Loggers append meanwhile without waking anyone.
                    std::thread::sleep(GATHER);
                }
                let closing = {
                    let mut pending = writer.lock();
                    std::mem::swap(&mut batch, &mut pending.bytes);
                    pending.closing
                };
                writer.has_room.notify_all();
                // Nowhere to report a failed write to but the stream that failed.
                let _ = out.write_all(&batch).and_then(|()| out.flush());
                batch.clear();
                if closing && writer.lock().bytes.is_empty() {
                    return;
                }
            }
        })?;
    Ok((
        Lines {
            shared: shared.clone(),
            max_pending,
        },
        Flush {
            shared,
            thread: Some(thread),
        },
    ))
}

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut pending = self.shared.lock();
        while pending.bytes.len() >= self.max_pending && !pending.closing {
            pending = self
                .shared
                .has_room
                .wait(pending)
                .unwrap_or_else(|p| p.into_inner());
        }
        let was_empty = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(buf);
        drop(pending);
        // The writer sleeps only on an empty buffer: one wake-up per batch, not per line.
        if was_empty {
            self.shared.has_lines.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.has_lines.notify_one();
        self.shared.has_room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test reads back, optionally slow.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        delay: Option<std::time::Duration>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(delay) = self.delay {
                std::thread::sleep(delay);
            }
            *self.writes.lock().unwrap() += 1;
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lines(sink: &Sink) -> Vec<String> {
        String::from_utf8(sink.bytes.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn every_line_of_every_thread_is_written_whole_and_in_each_threads_order() {
        let sink = Sink::default();
        let (writer, flush) = start(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        w.write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(flush);
        let got = lines(&sink);
        assert_eq!(got.len(), 8000);
        for t in 0..4 {
            let mine: Vec<&String> = got
                .iter()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let want: Vec<String> = (0..2000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>(), "thread {t}");
        }
        // Batched: fewer writes than lines.
        assert!(*sink.writes.lock().unwrap() < 8000);
    }

    #[test]
    fn a_slow_stream_holds_loggers_back_instead_of_losing_lines() {
        let sink = Sink {
            delay: Some(std::time::Duration::from_millis(5)),
            ..Sink::default()
        };
        // Room for about two lines: writers must wait for the slow stream.
        let (mut writer, flush) = start_with(sink.clone(), 32).unwrap();
        for i in 0..50 {
            writer
                .write_all(format!("line {i:04}\n").as_bytes())
                .unwrap();
        }
        drop(flush);
        let want: Vec<String> = (0..50).map(|i| format!("line {i:04}")).collect();
        assert_eq!(lines(&sink), want);
    }

    #[test]
    fn dropping_the_flush_writes_what_is_left() {
        let sink = Sink {
            delay: Some(std::time::Duration::from_millis(20)),
            ..Sink::default()
        };
        let (mut writer, flush) = start(sink.clone()).unwrap();
        writer.write_all(b"first\n").unwrap();
        writer.write_all(b"second\n").unwrap();
        drop(flush);
        assert_eq!(lines(&sink), ["first", "second"]);
        // A line logged after the end still does not block.
        writer.write_all(b"late\n").unwrap();
    }
}
