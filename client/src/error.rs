//! The client's error type.

use tonic::Code;
use tonic::Status;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An address in the cluster list (or given for one node) is not `HOST:PORT`.
    #[error("bad cluster address list: {0}")]
    BadCluster(String),
    /// The server answered with a status the call does not retry.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Status),
    /// Every attempt failed with a retryable error.
    #[error("gave up after {attempts} attempts; last error: {}: {}", last.code(), last.message())]
    Exhausted { attempts: u32, last: Status },
    /// The feed subscriber's socket failed, or the log could not fill a gap.
    #[error("feed: {0}")]
    Feed(String),
}

impl ClientError {
    /// The gRPC code this error stands for (`INVALID_ARGUMENT` for a bad address).
    pub fn code(&self) -> Code {
        match self {
            ClientError::BadCluster(_) => Code::InvalidArgument,
            ClientError::Status(s) => s.code(),
            ClientError::Exhausted { last, .. } => last.code(),
            ClientError::Feed(_) => Code::Unavailable,
        }
    }

    /// Whether the same call may succeed if made again later: the failure
    /// was transient (the cluster was electing, a node was down) rather than
    /// a refusal of the request itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::BadCluster(_) => false,
            ClientError::Status(s) => is_transient(s.code()),
            ClientError::Exhausted { .. } => true,
            ClientError::Feed(_) => false,
        }
    }
}

/// Codes that say "not now" rather than "not this request".
/// `RESOURCE_EXHAUSTED` is not one: txlog answers it only for a message over
/// the size limit, and sending it again cannot help.
pub(crate) fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Transient statuses and exhausted retries are retryable; refusals and
    /// bad addresses are not.
    #[test]
    fn retryable_errors() {
        assert!(ClientError::Status(Status::unavailable("election")).is_retryable());
        assert!(ClientError::Status(Status::deadline_exceeded("slow")).is_retryable());
        assert!(ClientError::Exhausted {
            attempts: 3,
            last: Status::unavailable("down"),
        }
        .is_retryable());
        assert!(!ClientError::Status(Status::invalid_argument("bad txid")).is_retryable());
        assert!(!ClientError::Status(Status::resource_exhausted("too big")).is_retryable());
        assert!(!ClientError::BadCluster("x".into()).is_retryable());
    }
}
