//! The client end of one tunnel connection: the HTTP/2 handshake over an established
//! transport, the task that drives the connection, and CONNECT streams opened on it,
//! each holding a slot of the connection's stream count until dropped.
use std::{
    future::poll_fn,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use h2::client::SendRequest;
use http::StatusCode;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Notify,
};
use tracing::Instrument;

use super::{ConnectRequest, H2Stream, HboneError, Settings, headers::format_authority};

/// What a connection's streams, its driver task and the pool share.
#[derive(Default)]
pub(super) struct ConnState {
    /// Streams open or being opened.
    active: AtomicUsize,
    /// The connection is gone (its driver task ended).
    closed: AtomicBool,
    /// Woken whenever `active` or `closed` changes.
    pub(super) changed: Notify,
}

impl ConnState {
    pub(super) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// One stream's place on its connection; dropping it frees the place.
pub(super) struct Slot {
    state: Arc<ConnState>,
}

impl Slot {
    fn taken(state: &Arc<ConnState>, before: usize) -> Self {
        if before == 0 {
            state.changed.notify_waiters();
        }
        Self {
            state: state.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Only the edges between idle and busy interest the pool's idle watch.
        if self.state.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.changed.notify_waiters();
        }
    }
}

/// A client connection. Clones share it; it closes (GOAWAY) once every clone and every
/// stream opened on it are gone.
#[derive(Clone)]
pub struct Client {
    sender: SendRequest<Bytes>,
    state: Arc<ConnState>,
    max_chunk: usize,
}

/// HTTP/2 client handshake over `io` (a TLS stream with ALPN `h2`), then a task drives
/// the connection until it closes.
pub async fn handshake<T>(io: T, settings: &Settings) -> Result<Client, HboneError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame_size)
        .max_header_list_size(settings.max_header_list_size)
        .max_send_buffer_size(settings.max_send_buffer)
        // Until the server's SETTINGS say otherwise, assume no more than we would allow.
        .initial_max_send_streams(settings.max_concurrent_streams as usize)
        .enable_push(false)
        .max_concurrent_reset_streams(super::settings::RESET_STREAMS_REMEMBERED)
        .copy_data_frames_below(super::settings::COPIED_DATA_BELOW);
    let (sender, mut connection) = tokio::time::timeout(
        settings.handshake_timeout,
        builder.handshake::<_, Bytes>(io),
    )
    .await
    .map_err(|_| HboneError::HandshakeTimeout(settings.handshake_timeout))?
    .map_err(|e| HboneError::Handshake(Arc::new(e)))?;
    let state = Arc::new(ConnState::default());
    let driver_state = state.clone();
    let keepalive = connection.ping_pong().map(|ping| {
        super::keepalive::watch(
            ping,
            settings.keepalive_interval,
            settings.keepalive_timeout,
        )
    });
    tokio::spawn(
        async move {
            let silent = async {
                match keepalive {
                    Some(watch) => watch.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut connection => match result {
                    Ok(()) => tracing::debug!("HBONE client connection closed"),
                    Err(e) if e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR) => {
                        tracing::debug!("HBONE client connection closed by the server");
                    }
                    Err(e) => tracing::info!(error = %e, "HBONE client connection failed"),
                },
                why = silent => {
                    // Dropping the connection fails every stream on it.
                    tracing::warn!(%why, "HBONE client connection ended: its streams are reset");
                }
            }
            driver_state.closed.store(true, Ordering::Release);
            driver_state.changed.notify_waiters();
        }
        .in_current_span(),
    );
    Ok(Client {
        sender,
        state,
        max_chunk: settings.max_write_chunk,
    })
}

impl Client {
    /// Opens a CONNECT stream; resolves once the server answered 200.
    pub async fn connect(&self, request: &ConnectRequest) -> Result<H2Stream, HboneError> {
        self.open(self.take_slot(), request)
            .await
            .map_err(|(e, _)| e)
    }

    /// Streams open (or being opened) on this connection.
    pub fn active_streams(&self) -> usize {
        self.state.active()
    }

    /// Whether new streams can go on this connection: it is up and has not had a GOAWAY.
    pub fn is_usable(&self) -> bool {
        if self.state.is_closed() {
            return false;
        }
        // A fresh handle has no stream pending, so it is ready unless the connection
        // has an error, GOAWAY included.
        let mut sender = self.sender.clone();
        let mut cx = Context::from_waker(Waker::noop());
        matches!(sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// Takes a stream slot if fewer than `max` (and fewer than the server allows) are
    /// taken.
    pub(super) fn try_slot(&self, max: usize) -> Option<Slot> {
        let max = max.min(self.sender.current_max_send_streams());
        self.state
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|before| Slot::taken(&self.state, before))
    }

    /// Takes a stream slot whatever the count.
    pub(super) fn take_slot(&self) -> Slot {
        let before = self.state.active.fetch_add(1, Ordering::AcqRel);
        Slot::taken(&self.state, before)
    }

    pub(super) fn state(&self) -> &Arc<ConnState> {
        &self.state
    }

    /// Opens a CONNECT stream in `slot`. A failure comes with whether the server surely
    /// did not see the request (so it may go on another connection).
    pub(super) async fn open(
        &self,
        slot: Slot,
        request: &ConnectRequest,
    ) -> Result<H2Stream, (HboneError, bool)> {
        let http = request.to_http().map_err(|e| (e, false))?;
        let failed = |e: h2::Error, unsent: bool| {
            let retryable =
                unsent || e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM);
            let e = HboneError::Request {
                authority: format_authority(request.authority),
                source: Arc::new(e),
            };
            (e, retryable)
        };
        let mut sender = self.sender.clone();
        poll_fn(|cx| sender.poll_ready(cx))
            .await
            .map_err(|e| failed(e, true))?;
        let (response, send) = sender
            .send_request(http, false)
            .map_err(|e| failed(e, true))?;
        let response = response.await.map_err(|e| failed(e, false))?;
        if response.status() != StatusCode::OK {
            // Dropping `send` and the response body resets the stream if need be.
            let e = HboneError::Status {
                authority: format_authority(request.authority),
                status: response.status(),
            };
            return Err((e, false));
        }
        Ok(H2Stream::new(
            send,
            response.into_body(),
            self.max_chunk,
            Some(slot),
        ))
    }
}
