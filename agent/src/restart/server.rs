//! The running agent's side of the hand-over: serves `restart.socket` (mode 0600, and
//! only root or the agent's own user are answered), one new agent at a time, until one
//! has taken the sockets.
use std::{
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::Path,
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use super::{HandoverRequest, STEP_TIMEOUT, wire, wire::Message};

/// A hand-over that happened: the new agent has the sockets. Tell it once this agent's
/// unix sockets are closed.
pub struct HandedOver {
    stream: UnixStream,
}

impl HandedOver {
    pub fn released(self) {
        if let Err(error) = wire::send(&self.stream, &Message::Released, &[]) {
            tracing::warn!(%error, "hand-over: cannot tell the new agent we let go");
        }
    }
}

/// Serves hand-overs on `path`; the receiver fires once one has happened (the server
/// then stops). `metrics` is the metrics endpoint's listener, handed over too.
pub fn serve(
    path: &Path,
    metrics: Option<OwnedFd>,
    requests: mpsc::Sender<HandoverRequest>,
) -> anyhow::Result<oneshot::Receiver<HandedOver>> {
    let listener = crate::unix_socket::bind(path, 0o600, "restart.socket")?;
    let (done, handed) = oneshot::channel();
    let me = nix::unistd::geteuid().as_raw();
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "hand-over socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == 0 || cred.uid() == me => {}
                other => {
                    tracing::warn!(peer = ?other, "hand-over refused: not root or the agent's user");
                    continue;
                }
            }
            let metrics = match metrics.as_ref().map(|m| m.try_clone()).transpose() {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(%error, "hand-over: cannot duplicate the metrics listener");
                    None
                }
            };
            let requests = requests.clone();
            let session = stream
                .into_std()
                .and_then(|s| s.set_nonblocking(false).map(|()| s));
            let outcome = match session {
                Ok(stream) => {
                    tokio::task::spawn_blocking(move || session_blocking(stream, metrics, requests))
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(e)))
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(stream) => {
                    let _ = done.send(HandedOver { stream });
                    return;
                }
                Err(error) => tracing::warn!(%error, "hand-over failed; still serving"),
            }
        }
    });
    Ok(handed)
}

fn session_blocking(
    stream: UnixStream,
    metrics: Option<OwnedFd>,
    requests: mpsc::Sender<HandoverRequest>,
) -> io::Result<UnixStream> {
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.set_write_timeout(Some(STEP_TIMEOUT))?;
    let refuse = |reason: String| {
        let _ = wire::send(
            &stream,
            &Message::Refused {
                reason: reason.clone(),
            },
            &[],
        );
        io::Error::other(reason)
    };
    match wire::recv(&stream)? {
        (Message::Take { version, pid }, _) => {
            tracing::info!(%version, pid, "a new agent takes over")
        }
        (other, _) => return Err(refuse(format!("expected Take, got {other:?}"))),
    }
    let (reply, pods) = oneshot::channel();
    let (commit, committed) = oneshot::channel();
    requests
        .blocking_send(HandoverRequest {
            reply,
            commit: committed,
        })
        .map_err(|_| refuse("this agent's enrollment has stopped".into()))?;
    let pods = pods
        .blocking_recv()
        .map_err(|_| refuse("this agent's enrollment has stopped".into()))?;
    let sent = (|| {
        for pod in &pods {
            let fds: Vec<_> = pod.listeners.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
            let message = Message::Pod {
                key: pod.key.clone(),
                netns_cookie: pod.netns_cookie,
                listeners: Some(pod.listeners.iter().map(|(name, _)| name.clone()).collect()),
            };
            wire::send(&stream, &message, &fds)?;
        }
        if let Some(metrics) = &metrics {
            wire::send(&stream, &Message::Metrics, &[metrics.as_raw_fd()])?;
        }
        wire::send(&stream, &Message::End, &[])?;
        wire::recv(&stream)
    })();
    match sent {
        Ok((Message::Ack, _)) => {
            let _ = commit.send(true);
            tracing::info!(pods = pods.len(), "handed the listening sockets over");
            Ok(stream)
        }
        Ok((other, _)) => {
            let _ = commit.send(false);
            Err(io::Error::other(format!("expected Ack, got {other:?}")))
        }
        Err(e) => {
            let _ = commit.send(false);
            Err(e)
        }
    }
}
