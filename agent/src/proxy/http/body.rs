//! Bodies streamed through the proxy frame by frame, never gathered whole: hyper pulls
//! a frame from one side only when the other side can take it, so back-pressure (TCP
//! windows, HTTP/2 flow control) passes through. [`RequestBody`] counts what the client
//! sends; [`ResponseBody`] counts what the client gets and finishes the exchange when
//! the response ends — fully sent, failed by the app, or dropped because the client went
//! away. Both end in a [`Revoked`] error when the hook revokes the request's lease:
//! hyper then resets the stream (HTTP/2) or closes the connection (HTTP/1) on both sides.
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::proxy::watched::Watched;

use super::{
    Failure, Hook,
    exchange::{BodyProgress, Exchange},
};

/// A body's error: the app's or the client's, or the hook's revocation.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The request was revoked by the hook while it ran (a policy change now denies it).
#[derive(Debug, thiserror::Error)]
#[error("request revoked: a policy now denies it")]
pub struct Revoked;

/// Watches a lease's revocation from a body's `poll_frame`.
struct Revocation(Pin<Box<Watched<WaitForCancellationFutureOwned>>>);

impl Revocation {
    fn new(token: Option<CancellationToken>) -> Option<Self> {
        token.map(|t| Self(Box::pin(Watched::new(t.cancelled_owned()))))
    }

    fn poll(this: &mut Option<Self>, cx: &mut Context<'_>) -> bool {
        this.as_mut()
            .is_some_and(|r| r.0.as_mut().poll(cx).is_ready())
    }
}

/// A client's request body on its way to the app.
pub struct RequestBody {
    inner: Incoming,
    progress: Arc<BodyProgress>,
    revoked: Option<Revocation>,
}

impl RequestBody {
    pub(super) fn new(
        inner: Incoming,
        progress: Arc<BodyProgress>,
        revoked: Option<CancellationToken>,
    ) -> Self {
        Self {
            inner,
            progress,
            revoked: Revocation::new(revoked),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if Revocation::poll(&mut this.revoked, cx) {
            return Poll::Ready(Some(Err(Box::new(Revoked))));
        }
        let polled = Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BodyError);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.progress.add(data.len());
                }
            }
            Poll::Ready(Some(Err(_))) => this.progress.fail(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum Content {
    /// The app's response body.
    Stream(Incoming),
    /// A body of our own (a deny, an error), sent once.
    Full(Option<Bytes>),
}

impl Content {
    fn is_end_stream(&self) -> bool {
        match self {
            Self::Stream(body) => body.is_end_stream(),
            Self::Full(bytes) => bytes.is_none(),
        }
    }
}

/// A response body on its way to the client; reports the exchange when it ends.
pub struct ResponseBody<H: Hook + ?Sized> {
    content: Content,
    sent: u64,
    exchange: Option<Exchange<H>>,
    revoked: Option<Revocation>,
}

impl<H: Hook + ?Sized> ResponseBody<H> {
    pub(super) fn stream(body: Incoming, exchange: Exchange<H>) -> Self {
        Self {
            content: Content::Stream(body),
            sent: 0,
            revoked: Revocation::new(exchange.revoked()),
            exchange: Some(exchange),
        }
    }

    pub(super) fn full(bytes: Bytes, exchange: Option<Exchange<H>>) -> Self {
        Self {
            content: Content::Full((!bytes.is_empty()).then_some(bytes)),
            sent: 0,
            exchange,
            revoked: None,
        }
    }

    fn finish(&mut self, failure: Option<Failure>) {
        if let Some(exchange) = self.exchange.take() {
            exchange.finish(self.sent, failure);
        }
    }
}

impl<H: Hook + ?Sized> Body for ResponseBody<H> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if Revocation::poll(&mut this.revoked, cx) {
            this.finish(Some(Failure::Revoked));
            return Poll::Ready(Some(Err(Box::new(Revoked))));
        }
        let polled = match &mut this.content {
            Content::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Content::Stream(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BodyError),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                if this.content.is_end_stream() {
                    this.finish(None);
                }
            }
            Poll::Ready(Some(Err(err))) => {
                tracing::debug!(error = %err, "the app's response body failed");
                this.finish(Some(Failure::UpstreamReset));
            }
            Poll::Ready(None) => this.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.content.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Stream(body) => body.size_hint(),
            Content::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl<H: Hook + ?Sized> Drop for ResponseBody<H> {
    fn drop(&mut self) {
        // hyper stops polling once `is_end_stream` says so: that is a clean end. Dropped
        // before that, the client is gone.
        let failure = (!self.content.is_end_stream()).then(|| {
            self.exchange
                .as_ref()
                .map_or(Failure::DownstreamReset, |e| e.dropped_failure())
        });
        self.finish(failure);
    }
}
