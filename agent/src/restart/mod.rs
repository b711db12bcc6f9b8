//! Restarts and upgrades without losing a connection. The kernel side outlives the
//! agent by itself (everything is pinned: see `dataplane::pins`); what dies with an agent
//! is its sockets. So a starting agent first asks the running one, over
//! `restart.socket`, for its listening sockets — every enrolled pod's listeners and the
//! metrics endpoint's — and receives them as descriptors (SCM_RIGHTS): the same sockets,
//! with whatever waits in their queues. The running agent then stops accepting, leaves
//! the kernel to the new one, lets its established connections finish (up to
//! `restart.drainSeconds`), and exits on SIGTERM.
//!
//! The exchange (see [`wire`]): `Take` →, ← `Pod`… `Metrics` `End`, `Ack` →,
//! ← `Released` (the old agent's unix sockets are closed; the new one may bind them).
//! Before `Ack` either side can call it off and nothing has changed.
mod server;
pub mod wire;

use std::{
    collections::HashMap,
    io,
    os::{fd::OwnedFd, unix::net::UnixStream},
    path::Path,
    time::Duration,
};

use anyhow::Context;
use tokio::sync::oneshot;

pub use server::{HandedOver, serve};
use wire::Message;

/// How long either side waits for the other's next message.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// One pod's listening sockets, each with its name (see `proxy::listeners`).
pub struct PodSockets {
    pub key: String,
    pub netns_cookie: u64,
    pub listeners: Vec<(String, OwnedFd)>,
}

/// What a starting agent took over.
#[derive(Default)]
pub struct Inherited {
    /// By network namespace cookie.
    pub pods: HashMap<u64, PodSockets>,
    pub metrics: Option<OwnedFd>,
}

/// Asked of the enrollment loop: its pods' listeners (duplicates), then whether to let
/// them go (`true`: the new agent has them; stop accepting and leave the kernel alone).
pub struct HandoverRequest {
    pub reply: oneshot::Sender<Vec<PodSockets>>,
    pub commit: oneshot::Receiver<bool>,
}

/// Takes the sockets of the agent serving `path`, if one does. `None` when no agent
/// runs there; an error when one runs but the hand-over failed before it let go (so
/// this agent must not start beside it).
pub async fn take_over(path: &Path) -> anyhow::Result<Option<Inherited>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || take_over_blocking(&path))
        .await
        .context("hand-over task")?
}

fn take_over_blocking(path: &Path) -> anyhow::Result<Option<Inherited>> {
    let stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            tracing::info!(socket = %path.display(), "no running agent to take over from");
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("restart.socket: {}", path.display()));
        }
    };
    let failed = |what: &str| format!("taking over from the agent on {}: {what}", path.display());
    // Calls the hand-over off, telling the running agent why.
    let refuse = |stream: &UnixStream, reason: String| {
        let _ = wire::send(
            stream,
            &Message::Refused {
                reason: reason.clone(),
            },
            &[],
        );
        anyhow::anyhow!(failed(&reason))
    };
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.set_write_timeout(Some(STEP_TIMEOUT))?;
    let take = Message::Take {
        version: crate::VERSION.to_string(),
        pid: std::process::id(),
    };
    wire::send(&stream, &take, &[]).with_context(|| failed("asking"))?;
    let mut inherited = Inherited::default();
    loop {
        let (message, fds) = wire::recv(&stream).with_context(|| failed("receiving"))?;
        match message {
            Message::Pod {
                key,
                netns_cookie,
                listeners,
            } => {
                let listeners = match wire::name_listeners(listeners, fds) {
                    Ok(listeners) => listeners,
                    Err(reason) => return Err(refuse(&stream, format!("pod {key}: {reason}"))),
                };
                inherited.pods.insert(
                    netns_cookie,
                    PodSockets {
                        key,
                        netns_cookie,
                        listeners,
                    },
                );
            }
            Message::Metrics => inherited.metrics = fds.into_iter().next(),
            Message::End => break,
            Message::Refused { reason } => anyhow::bail!(failed(&format!("refused: {reason}"))),
            other => return Err(refuse(&stream, format!("unexpected {other:?}"))),
        }
    }
    wire::send(&stream, &Message::Ack, &[]).with_context(|| failed("acknowledging"))?;
    // From here the old agent has let go: go on whatever it answers.
    match wire::recv(&stream) {
        Ok((Message::Released, _)) => {}
        Ok((other, _)) => tracing::warn!(?other, "hand-over: expected Released"),
        Err(error) => tracing::warn!(%error, "hand-over: no Released from the old agent"),
    }
    tracing::info!(
        pods = inherited.pods.len(),
        metrics = inherited.metrics.is_some(),
        "took the running agent's sockets over"
    );
    Ok(Some(inherited))
}
