//! Following a file or a directory of files on disk: polled (polling survives editors'
//! rename-and-replace and Kubernetes' ConfigMap symlink swaps, which inotify misses),
//! loaded when anything in it changes, and published only when valid — an invalid version
//! is logged with its error and the previous one stays in force.
use std::{
    fmt::Display,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::watch;

/// What identifies a version of a file without reading it.
type FileStamp = (PathBuf, SystemTime, u64, u64);

/// The stamps of `path` (a file) or of the files in it (a directory), sorted; `None` when
/// it does not exist.
fn stamp(path: &Path) -> Option<Vec<FileStamp>> {
    let one = |p: &Path| -> Option<FileStamp> {
        let meta = std::fs::metadata(p).ok()?;
        Some((
            p.to_path_buf(),
            meta.modified().ok()?,
            meta.len(),
            meta.ino(),
        ))
    };
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return one(path).map(|s| vec![s]);
    }
    let mut stamps: Vec<FileStamp> = std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter_map(|e| one(&e.path()))
        .collect();
    stamps.sort();
    stamps.push((path.to_path_buf(), meta.modified().ok()?, 0, meta.ino()));
    Some(stamps)
}

/// Follows `path`: `load` reads it whenever it changes, and every valid result is
/// published. The first value is `load`'s result at start, or `initial` if that fails or
/// `path` is missing (both logged). `what` names the thing in logs ("workload file").
pub fn follow<T, E, F>(
    path: PathBuf,
    interval: Duration,
    what: &'static str,
    initial: T,
    load: F,
) -> watch::Receiver<Arc<T>>
where
    T: Send + Sync + 'static,
    E: Display,
    F: Fn(&Path) -> Result<T, E> + Send + 'static,
{
    let (tx, rx) = watch::channel(Arc::new(initial));
    let mut last: Option<Vec<FileStamp>> = None;
    let mut reported_missing = false;
    let mut check = move |tx: &watch::Sender<Arc<T>>| {
        let now = stamp(&path);
        if now.is_none() {
            if !reported_missing {
                tracing::warn!(path = %path.display(), "{what} is missing; waiting for it");
                reported_missing = true;
            }
            return;
        }
        reported_missing = false;
        if now == last {
            return;
        }
        last = now;
        match load(&path) {
            Ok(value) => {
                tracing::info!(path = %path.display(), "{what} loaded");
                tx.send_replace(Arc::new(value));
            }
            Err(err) => {
                tracing::error!(error = %err, "{what} rejected; the previous version stays in force");
            }
        }
    };
    check(&tx);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            check(&tx);
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_directory_is_reloaded_when_a_file_in_it_changes_and_errors_keep_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let count = |p: &Path| -> Result<usize, String> {
            let mut n = 0;
            for e in std::fs::read_dir(p).map_err(|e| e.to_string())? {
                let text = std::fs::read_to_string(e.map_err(|e| e.to_string())?.path())
                    .map_err(|e| e.to_string())?;
                if text.contains("bad") {
                    return Err("bad file".into());
                }
                n += 1;
            }
            Ok(n)
        };
        let mut rx = follow(
            dir.path().to_path_buf(),
            Duration::from_millis(20),
            "test dir",
            0,
            count,
        );
        assert_eq!(**rx.borrow_and_update(), 0);
        std::fs::write(dir.path().join("a.yaml"), "good").unwrap();
        tokio::time::timeout(Duration::from_secs(2), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(**rx.borrow_and_update(), 1);
        std::fs::write(dir.path().join("b.yaml"), "bad").unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !rx.has_changed().unwrap(),
            "an invalid version must not be published"
        );
        std::fs::write(dir.path().join("b.yaml"), "good too").unwrap();
        tokio::time::timeout(Duration::from_secs(2), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(**rx.borrow_and_update(), 2);
    }
}
