//! txlog's error type and its single mapping to gRPC status
//! ([`Error::to_status`]), the single mapping of openraft's errors into it
//! ([`raft_error`]), plus the correction of the two statuses tonic's codec
//! gives a request that never reaches a handler (see [`codec_status`]).

use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::MetadataValue;
use tonic::Code;
use tonic::Status;
use txlog_raft::openraft::error::ChangeMembershipError;
use txlog_raft::openraft::error::ClientWriteError;
use txlog_raft::openraft::error::Fatal;
use txlog_raft::openraft::error::LinearizableReadError;
use txlog_raft::openraft::error::RaftError;
use txlog_raft::TypeConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or over a limit; nothing was changed.
    #[error("invalid argument: {0}")]
    InvalidInput(String),

    /// This node is not the leader; `leader` is its address when known.
    #[error("not the leader{}", leader.as_ref().map(|l| format!("; leader is {l}")).unwrap_or_default())]
    NotLeader { leader: Option<String> },

    /// The cluster cannot serve right now (election, shutdown, quorum lost).
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// The thing asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    /// The thing to create exists already (e.g. a node id at another address).
    #[error("already exists: {0}")]
    AlreadyExists(String),

    /// The cluster is not in a state where this can be done (last voter,
    /// another membership change in progress).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),

    /// The work did not finish in the time it is given (a leadership
    /// transfer, a snapshot, a join's catch-up); it may still finish.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),

    /// The request carries no valid token: none, malformed, expired,
    /// issued in the future, replayed, a bad MAC, or an unknown or revoked key.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),

    /// The caller's roles do not allow the operation on the channel.
    #[error("permission denied: {0}")]
    PermissionDenied(String),

    /// A bounded resource is full for this caller (its replay memory); it
    /// may retry later.
    #[error("resource exhausted: {0}")]
    Exhausted(String),

    /// Durable data failed a check.
    #[error("corruption: {0}")]
    Corruption(String),

    /// Another node (the leader a call was forwarded to) answered with this
    /// status; it is passed on unchanged.
    #[error("{}: {}", .0.code(), .0.message())]
    Remote(Status),

    #[error("storage: {0}")]
    Storage(#[from] txlog_storage::Error),

    #[error("io: {0}")]
    Io(#[from] std::io::Error),

    #[error("config: {0}")]
    Config(String),

    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Remote(status) => matches!(status.code(), Code::Unavailable),
            _ => matches!(self, Error::NotLeader { .. } | Error::Unavailable(_)),
        }
    }

    /// The one place txlog errors become gRPC statuses.
    pub fn to_status(&self) -> Status {
        match self {
            Error::InvalidInput(m) => Status::invalid_argument(m.clone()),
            Error::NotLeader { leader } => {
                let mut status = Status::unavailable(self.to_string());
                if let Some(leader) = leader {
                    if let Ok(value) = MetadataValue::try_from(leader.as_str()) {
                        status.metadata_mut().insert(crate::LEADER_METADATA_KEY, value);
                    }
                }
                status
            }
            Error::Unavailable(m) => Status::unavailable(m.clone()),
            Error::NotFound(m) => Status::not_found(m.clone()),
            Error::AlreadyExists(m) => Status::already_exists(m.clone()),
            Error::FailedPrecondition(m) => Status::failed_precondition(m.clone()),
            Error::DeadlineExceeded(m) => Status::deadline_exceeded(m.clone()),
            Error::Unauthenticated(m) => Status::unauthenticated(m.clone()),
            Error::PermissionDenied(m) => Status::permission_denied(m.clone()),
            Error::Exhausted(m) => Status::resource_exhausted(m.clone()),
            Error::Corruption(m) => Status::data_loss(m.clone()),
            Error::Remote(status) => status.clone(),
            Error::Storage(e) => match e {
                txlog_storage::Error::InvalidInput(m) => Status::invalid_argument(m.clone()),
                txlog_storage::Error::Corruption { .. } => Status::data_loss(e.to_string()),
                _ => Status::internal(e.to_string()),
            },
            Error::Io(e) => Status::internal(e.to_string()),
            Error::Config(m) | Error::Internal(m) => Status::internal(m.clone()),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        err.to_status()
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Error {
        Error::Remote(status)
    }
}

impl From<txlog_raft::Error> for Error {
    fn from(err: txlog_raft::Error) -> Error {
        match err {
            txlog_raft::Error::Storage(e) => Error::Storage(e),
            txlog_raft::Error::Io(e) => Error::Io(e),
            txlog_raft::Error::InvalidInput(m) => Error::InvalidInput(m),
            txlog_raft::Error::Unavailable(m) => Error::Unavailable(m),
            txlog_raft::Error::Corruption(m) => Error::Corruption(m),
            other => Error::Internal(other.to_string()),
        }
    }
}

/// The errors of the openraft calls txlog makes that mean more than
/// "unavailable": each becomes its txlog counterpart in [`raft_error`].
pub(crate) trait RaftApiError: std::fmt::Display {
    fn into_error(self, what: &str) -> Error;
}

impl RaftApiError for ClientWriteError<TypeConfig> {
    fn into_error(self, what: &str) -> Error {
        match self {
            ClientWriteError::ForwardToLeader(forward) => not_leader(&forward),
            ClientWriteError::LogEntryDiscarded(_) => Error::Unavailable(format!(
                "{what}: leader changed before the entry committed; its outcome is unknown, retry with the same txids"
            )),
            ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(p)) => {
                Error::FailedPrecondition(format!("{what}: another membership change is in progress ({p})"))
            }
            ClientWriteError::ChangeMembershipError(ChangeMembershipError::EmptyMembership(e)) => {
                Error::FailedPrecondition(format!("{what}: {e}"))
            }
            ClientWriteError::ChangeMembershipError(ChangeMembershipError::LearnerNotFound(e)) => {
                Error::NotFound(format!("{what}: {e}"))
            }
            other => Error::Unavailable(format!("{what}: {other}")),
        }
    }
}

impl RaftApiError for LinearizableReadError<TypeConfig> {
    fn into_error(self, what: &str) -> Error {
        match self {
            LinearizableReadError::ForwardToLeader(forward) => not_leader(&forward),
            other => Error::Unavailable(format!("{what}: {other}")),
        }
    }
}

/// The one place an openraft error becomes a txlog error; `what` names the
/// operation for the message.
pub(crate) fn raft_error<E: RaftApiError>(err: RaftError<TypeConfig, E>, what: &str) -> Error {
    match err {
        RaftError::APIError(api) => api.into_error(what),
        RaftError::Fatal(fatal) => raft_stopped(fatal, what),
    }
}

/// Raft has stopped (shutdown or a storage failure): nothing on this node
/// can be served any more.
pub(crate) fn raft_stopped(fatal: Fatal<TypeConfig>, what: &str) -> Error {
    Error::Unavailable(format!("{what}: raft stopped: {fatal}"))
}

pub(crate) use txlog_raft::codec_status;

/// Applies [`codec_status`] to every response of the gRPC server (a
/// `tower::util::MapResponseLayer` in `node.rs`), so all services on the port
/// answer codec errors alike.
///
/// tonic rejects such a request before any handler runs, with a
/// trailers-only response (the status in the headers), so only headers are
/// looked at; a status in trailers ends a stream a handler started.
pub(crate) fn rewrite_codec_status(mut response: http::Response<Body>) -> http::Response<Body> {
    let headers = response.headers();
    let code = match headers.get("grpc-status") {
        Some(value) => Code::from_bytes(value.as_bytes()),
        None => return response,
    };
    if !matches!(code, Code::Internal | Code::OutOfRange) {
        return response;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return response;
    };
    let Some(rewritten) = codec_status(&status) else {
        return response;
    };
    let mut headers = http::HeaderMap::new();
    if rewritten.add_header(&mut headers).is_err() {
        return response;
    }
    let target = response.headers_mut();
    target.remove("grpc-status");
    target.remove("grpc-message");
    target.remove("grpc-status-details-bin");
    target.extend(headers);
    response.extensions_mut().insert(rewritten);
    response
}

/// Route a "not leader" answer from openraft to the client with the leader's address.
fn not_leader(forward: &txlog_raft::openraft::error::ForwardToLeader<txlog_raft::TypeConfig>) -> Error {
    Error::NotLeader {
        leader: forward.leader_node.as_ref().map(|n| n.address.clone()),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// A prost decode error and tonic's over-limit error get their proper
    /// codes in the response headers; a handler's `INTERNAL` is left alone.
    #[test]
    fn codec_errors_are_rewritten() {
        let decode = txlog_proto::AppendRequest::decode(&[0xff, 0xff, 0xff][..]).unwrap_err();
        let response = rewrite_codec_status(Status::internal(decode.to_string()).into_http());
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

        let too_large =
            Status::out_of_range("Error, decoded message length too large: found 40 bytes, the limit is: 32 bytes");
        let response = rewrite_codec_status(too_large.into_http());
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("the limit is: 32 bytes"), "{status:?}");
        assert_eq!(
            response.extensions().get::<Status>().map(Status::code),
            Some(Code::ResourceExhausted)
        );

        let handler = Status::internal("sled: disk on fire");
        let response = rewrite_codec_status(handler.into_http());
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Internal, "sled: disk on fire")
        );
    }
}
