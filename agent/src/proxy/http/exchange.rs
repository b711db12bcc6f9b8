//! One request's bookkeeping from its head to the end of its response: what the hook's
//! [`Report`] needs, handed over exactly once by whichever end finishes the exchange
//! (the response body, or the splice of an upgraded connection). It holds the hook's
//! [`Lease`] on the request, if any, until then.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use http::StatusCode;
use tokio_util::sync::CancellationToken;

use super::{Failure, Hook, Report, RequestInfo, hook::Lease};

/// A request body's progress, shared by the body (which counts) and the exchange (which
/// reports).
#[derive(Debug, Default)]
pub(super) struct BodyProgress {
    bytes: AtomicU64,
    failed: AtomicBool,
}

impl BodyProgress {
    pub(super) fn add(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(super) fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// The client's body failed (the client went away mid-request).
    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// An exchange in progress; [`finish`](Self::finish) reports it to the hook. Dropped
/// unfinished, it reports the client gone before an answer (499, `DC`).
pub(super) struct Exchange<H: Hook + ?Sized> {
    hook: Arc<H>,
    /// Taken when reported.
    request: Option<RequestInfo>,
    started: Instant,
    request_body: Arc<BodyProgress>,
    status: StatusCode,
    denied: bool,
    lease: Option<Lease>,
}

impl<H: Hook + ?Sized> Exchange<H> {
    pub(super) fn new(
        hook: Arc<H>,
        request: RequestInfo,
        started: Instant,
        request_body: Arc<BodyProgress>,
    ) -> Self {
        Self {
            hook,
            request: Some(request),
            started,
            request_body,
            status: super::hook::client_closed(),
            denied: false,
            lease: None,
        }
    }

    /// The hook may take the request back while the exchange runs.
    pub(super) fn leased(mut self, lease: Option<Lease>) -> Self {
        self.lease = lease;
        self
    }

    /// Cancelled when the hook revokes the request (never, without a lease).
    pub(super) fn revoked(&self) -> Option<CancellationToken> {
        self.lease.as_ref().map(Lease::revoked)
    }

    /// The client was (or is being) answered with `status`.
    pub(super) fn answered(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub(super) fn denied(mut self) -> Self {
        self.denied = true;
        self
    }

    /// Why an exchange dropped unfinished ended: revoked by the hook (its stream or
    /// connection was reset for it), or else the client went away.
    pub(super) fn dropped_failure(&self) -> Failure {
        if self.lease.as_ref().is_some_and(Lease::is_revoked) {
            Failure::Revoked
        } else {
            Failure::DownstreamReset
        }
    }

    /// The response (of `response_bytes` body bytes) has ended, well or not.
    pub(super) fn finish(mut self, response_bytes: u64, failure: Option<Failure>) {
        let request_bytes = self.request_body.bytes();
        self.report(request_bytes, response_bytes, failure, false);
    }

    /// The upgraded connection has ended, after these bytes each way.
    pub(super) fn finish_upgraded(mut self, sent: u64, received: u64, failure: Option<Failure>) {
        self.report(sent, received, failure, true);
    }

    fn report(
        &mut self,
        request_bytes: u64,
        response_bytes: u64,
        failure: Option<Failure>,
        upgraded: bool,
    ) {
        let Some(request) = self.request.take() else {
            return;
        };
        let report = Report {
            request,
            status: self.status,
            request_bytes,
            response_bytes,
            duration: self.started.elapsed(),
            denied: self.denied,
            upgraded,
            failure,
        };
        tracing::debug!(
            method = %report.request.method,
            path = report.request.path(),
            status = report.status.as_u16(),
            request_bytes,
            response_bytes,
            duration = ?report.duration,
            flags = report.response_flags(),
            "HTTP exchange"
        );
        self.hook.on_complete(report);
    }
}

impl<H: Hook + ?Sized> Drop for Exchange<H> {
    fn drop(&mut self) {
        let request_bytes = self.request_body.bytes();
        let failure = self.dropped_failure();
        self.report(request_bytes, 0, Some(failure), false);
    }
}
