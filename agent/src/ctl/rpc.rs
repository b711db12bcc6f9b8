//! Calling the agent: a deadline on every unary call, and a gRPC status turned into one
//! line that names the call, the code in words and the agent's message.
use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use tonic::{Code, Status};

/// Awaits a unary call for at most `timeout`; the error names the call (`what`, the RPC).
pub(crate) async fn unary<T>(
    what: &str,
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status_error(what, &status)),
        Err(_) => Err(anyhow::anyhow!(
            "{what}: timed out after {} (see --timeout)",
            super::human::span(timeout)
        )),
    }
}

/// `<call>: <code in words>: <message>`; for PERMISSION_DENIED it says that the agent
/// refused this caller, for UNIMPLEMENTED that the agent lacks the call.
pub(crate) fn status_error(what: &str, status: &Status) -> anyhow::Error {
    let mut text = format!("{what}: {}", code_words(status.code()));
    match status.code() {
        Code::PermissionDenied => text.push_str(": the agent refused this caller"),
        Code::Unimplemented => text.push_str(": the agent does not serve this call (older agent?)"),
        _ => {}
    }
    let message = status.message().trim();
    if !message.is_empty() {
        text.push_str(": ");
        text.push_str(message);
    }
    anyhow::Error::msg(text)
}

/// The gRPC code in lower-case words (`not found`, `invalid argument`).
pub(crate) fn code_words(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_one_line() {
        let err = status_error(
            "DeletePolicy",
            &Status::not_found("no policy default/deny-all"),
        );
        assert_eq!(
            err.to_string(),
            "DeletePolicy: not found: no policy default/deny-all"
        );
        let err = status_error(
            "ListWorkloads",
            &Status::permission_denied("uid 1000 is not allowed"),
        );
        assert_eq!(
            err.to_string(),
            "ListWorkloads: permission denied: the agent refused this caller: uid 1000 is not allowed"
        );
        let err = status_error("GetConfig", &Status::new(Code::Unavailable, "  "));
        assert_eq!(err.to_string(), "GetConfig: unavailable");
    }

    #[tokio::test]
    async fn unary_calls_time_out() {
        let never = std::future::pending::<Result<tonic::Response<()>, Status>>();
        let err = unary("GetVersion", Duration::from_millis(20), never)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "GetVersion: timed out after 0.02s (see --timeout)"
        );
        let ok = async { Ok(tonic::Response::new(7)) };
        assert_eq!(
            unary("GetVersion", Duration::from_secs(1), ok)
                .await
                .unwrap(),
            7
        );
    }
}
