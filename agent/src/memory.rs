//! Memory the process gives back to the kernel once it serves (`memory` in the config).
//!
//! Two kinds of resident memory outlive start-up without being used again:
//! - **Freed heap.** Start-up peaks at about twice what serving needs (VmHWM near
//!   30 MiB in a `release` build). glibc returns the top of
//!   its heaps to the kernel but keeps freed pages below live blocks resident until
//!   `malloc_trim`, which gives back every whole free page of every arena. It runs once
//!   start-up is over and then every `memory.trimIntervalMs`, as jemalloc's decay does.
//! - **Code only start-up ran.** The pages of the binary's code and read-only data that
//!   start-up touched (argument and YAML parsing, the eBPF loader, the Kubernetes client,
//!   gRPC) stay mapped: each page fault maps its neighbours too, so
//!   most of the binary ends up resident. Once ready, the process unmaps its read-only
//!   mappings of its own executable (`madvise(MADV_DONTNEED)`); what serving runs is
//!   mapped again on first use, a minor fault from the page cache. A mapping holding
//!   anything not in the file (a page written by relocation or by a debugger's
//!   breakpoint) is left alone: dropping it would lose that write.
//!
//! What serving needs then stays resident; what was released is clean page cache, the
//! first memory the kernel reclaims, where a mapped page of code would have been among
//! the last (docs/bench/profile.md has the figures).
use std::{io, ops::Range, time::Duration};

use crate::config::MemoryConfig;

/// What [`release_startup_code`] unmapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Released {
    /// Mappings of the executable unmapped.
    mappings: usize,
    /// Their resident bytes before.
    bytes: u64,
}

/// Once the process serves (called from within its runtime): gives start-up's heap back,
/// and its code if `config` says so, logs what was given, then trims the heap every
/// `memory.trimIntervalMs` (0: never again). One task; the work runs off the workers
/// (`malloc_trim` walks the free lists under the arenas' locks).
pub fn after_start(config: &MemoryConfig) {
    let release_code = config.release_startup_code;
    let every = Duration::from_millis(config.trim_interval_ms);
    tokio::spawn(async move {
        let done = tokio::task::spawn_blocking(move || {
            let code = release_code.then(release_startup_code).transpose();
            (trim_heap(), code)
        })
        .await;
        match done {
            Ok((heap_trimmed, Ok(code))) => tracing::info!(
                heap_trimmed,
                code_mappings = code.map(|c| c.mappings),
                code_bytes = code.map(|c| c.bytes),
                "start-up memory given back"
            ),
            Ok((_, Err(error))) => tracing::warn!(
                %error,
                "memory.releaseStartupCode: could not unmap start-up's code; it stays resident"
            ),
            Err(error) => tracing::warn!(%error, "giving start-up memory back"),
        }
        if every.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tokio::task::spawn_blocking(trim_heap).await.is_err() {
                return;
            }
        }
    });
}

/// Gives every whole free page of the heap back to the kernel; true if any was.
fn trim_heap() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim takes the allocator's own locks; it has no preconditions.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

/// Unmaps this process's read-only mappings of its own executable that hold only what
/// the file holds (see the module's notes).
fn release_startup_code() -> io::Result<Released> {
    let exe =
        std::fs::read_link("/proc/self/exe").map_err(|e| context(e, "reading /proc/self/exe"))?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")
        .map_err(|e| context(e, "reading /proc/self/smaps"))?;
    let mut released = Released::default();
    for mapping in releasable(&smaps, &exe.to_string_lossy()) {
        let len = (mapping.range.end - mapping.range.start) as usize;
        // SAFETY: the range is one whole mapping of this process, read from its smaps. It
        // is read-only and holds no page that differs from the file, so MADV_DONTNEED
        // changes no content: the next access maps the same bytes again from the file.
        let done = unsafe {
            libc::madvise(
                mapping.range.start as *mut libc::c_void,
                len,
                libc::MADV_DONTNEED,
            )
        };
        if done != 0 {
            let error = io::Error::last_os_error();
            let what = format!(
                "madvise(MADV_DONTNEED) on {:#x}-{:#x} of {}",
                mapping.range.start,
                mapping.range.end,
                exe.display()
            );
            return Err(context(error, what));
        }
        released.mappings += 1;
        released.bytes += mapping.resident;
    }
    Ok(released)
}

/// `error`, saying what was being done.
fn context(error: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

/// One mapping [`releasable`] picked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    range: Range<u64>,
    /// Resident bytes (`Rss`).
    resident: u64,
}

/// From `/proc/self/smaps`: the mappings of `exe` that are not writable, have pages
/// resident, and hold no anonymous or swapped page (a private page that was written:
/// relocated data, a breakpoint), so that dropping them loses nothing. A mapping whose
/// fields cannot be read is not picked.
fn releasable(smaps: &str, exe: &str) -> Vec<Mapping> {
    /// The mapping being read: its range, whether it is ours and read-only, its fields.
    struct Reading {
        range: Range<u64>,
        candidate: bool,
        rss_kb: Option<u64>,
        written_kb: Option<u64>,
    }
    impl Reading {
        fn pick(self) -> Option<Mapping> {
            let resident = self.rss_kb? * 1024;
            (self.candidate && self.written_kb == Some(0) && resident > 0).then_some(Mapping {
                range: self.range,
                resident,
            })
        }
    }
    let mut picked = Vec::new();
    let mut reading: Option<Reading> = None;
    for line in smaps.lines() {
        if let Some((range, perms, path)) = header(line) {
            picked.extend(reading.take().and_then(Reading::pick));
            let read_only = perms.starts_with('r') && perms.as_bytes().get(1) == Some(&b'-');
            reading = Some(Reading {
                range,
                candidate: path == exe && read_only,
                rss_kb: None,
                written_kb: None,
            });
        } else if let Some(r) = reading.as_mut() {
            if let Some(kb) = field(line, "Rss:") {
                r.rss_kb = Some(kb);
            } else if let Some(kb) = field(line, "Anonymous:").or_else(|| field(line, "Swap:")) {
                r.written_kb = Some(r.written_kb.unwrap_or(0) + kb);
            }
        }
    }
    picked.extend(reading.and_then(Reading::pick));
    picked
}

/// A mapping's first line: `start-end perms offset dev inode [path]`.
fn header(line: &str) -> Option<(Range<u64>, &str, &str)> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    let (_offset, _dev, _inode) = (fields.next()?, fields.next()?, fields.next()?);
    let path = fields.next().map(str::trim_start).unwrap_or("");
    (start < end).then_some((start..end, perms, path))
}

/// `Name:   123 kB` → 123.
fn field(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(name)?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests;
