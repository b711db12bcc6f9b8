//! The agent's unix sockets (the admin API, the sidecars' service): bound safely, with
//! their mode from the first moment (here), and their connections bounded
//! (`admission`); the sidecars' callers are pinned by a pidfd (`peer`).
pub mod admission;
pub mod peer;

use std::{
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::Path,
};

use anyhow::Context;
use tokio::net::UnixListener;

/// Binds a unix socket with `mode` from the first moment: bound under a temporary name,
/// given its mode, then renamed into place. A stale socket (nobody listening) is
/// replaced; a live one means another agent, which is an error. `setting` names the
/// config key in errors.
pub fn bind(path: &Path, mode: u32, setting: &str) -> anyhow::Result<UnixListener> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .with_context(|| format!("{setting}: cannot create {}", parent.display()))?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            anyhow::bail!(
                "{setting}: {} exists and is not a socket; not touching it",
                path.display()
            );
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "{setting}: another process serves {} (is another agent running?)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("{setting}: cannot remove stale {}", path.display()))?;
        }
        Err(_) => {}
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "socket".into());
    let tmp = parent.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)
        .with_context(|| format!("{setting}: cannot bind {}", tmp.display()))?;
    let restrict = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = restrict {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{setting}: cannot set up {}", path.display()));
    }
    Ok(listener)
}
