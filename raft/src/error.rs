//! Errors of the Raft layer, and the two places they leave it:
//! [`From<Error> for Status`](#impl-From<Error>-for-Status) is the one
//! function that turns them into a gRPC status for a peer, and
//! [`Error::to_rpc`] the one that turns a failed peer call into openraft's
//! `RPCError`.

use std::io;

use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use tonic::Code;
use tonic::Status;

use crate::type_config::TypeConfig;

/// Errors of `txlog-raft`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes on the wire or a received file failed a checksum or check.
    #[error("{0}")]
    Corruption(String),

    /// The operating system refused an IO operation.
    #[error("io: {0}")]
    Io(#[from] io::Error),

    /// The storage layer failed.
    #[error("storage: {0}")]
    Storage(#[from] txlog_storage::Error),

    /// A peer message, header or frame did not decode.
    #[error("{what}: {detail}")]
    Decode { what: &'static str, detail: String },

    /// The request is malformed, inconsistent or out of order; nothing changed.
    #[error("{0}")]
    InvalidInput(String),

    /// The request is over a size limit.
    #[error("{0}")]
    TooLarge(String),

    /// This node's state does not match what the request assumes (a resumed
    /// delta whose staged part is gone); the sender starts over.
    #[error("{0}")]
    FailedPrecondition(String),

    /// A stream ended before its last chunk; what was staged is kept and the
    /// next attempt resumes.
    #[error("{0}")]
    Aborted(String),

    /// This follower's records disagree with its own hash chain: a delta
    /// cannot be built on them, a full snapshot is needed.
    #[error("{0}")]
    Diverged(String),

    /// An entry's signature, tag or key announcement does not verify
    /// against the keyring: forged, or sealed under keys this node lacks.
    #[error("unauthorized: {0}")]
    Unauthorized(String),

    /// Raft cannot serve the request now (shutting down, stopped).
    #[error("raft: {0}")]
    Unavailable(String),

    /// A peer answered with this status.
    #[error("{}: {}", .0.code(), .0.message())]
    Peer(Status),

    /// A bug or an unexpected failure (a task that panicked).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn decode(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Error::Decode {
            what,
            detail: detail.to_string(),
        }
    }

    /// Whether the same request may succeed later without anyone fixing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable(_) | Error::Aborted(_) => true,
            Error::Io(err) => matches!(
                err.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            Error::Storage(err) => err.is_retryable(),
            Error::Peer(status) => matches!(
                status.code(),
                Code::Unavailable | Code::Cancelled | Code::Unknown | Code::DeadlineExceeded | Code::Aborted
            ),
            Error::Corruption(_)
            | Error::Decode { .. }
            | Error::InvalidInput(_)
            | Error::TooLarge(_)
            | Error::FailedPrecondition(_)
            | Error::Diverged(_)
            | Error::Unauthorized(_)
            | Error::Internal(_) => false,
        }
    }

    /// The status code a peer sees for this error.
    fn code(&self) -> Code {
        match self {
            Error::Decode { .. } | Error::InvalidInput(_) => Code::InvalidArgument,
            Error::Corruption(_) | Error::Diverged(_) => Code::DataLoss,
            Error::TooLarge(_) => Code::ResourceExhausted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unauthorized(_) => Code::PermissionDenied,
            Error::Aborted(_) => Code::Aborted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Peer(status) => status.code(),
            Error::Io(_) | Error::Storage(_) | Error::Internal(_) => Code::Internal,
        }
    }

    /// A failed call to a peer as openraft sees it: unreachable (openraft
    /// backs off) when the peer did not answer, a network error otherwise.
    pub(crate) fn to_rpc(&self) -> RPCError<TypeConfig> {
        match self {
            Error::Peer(status) if matches!(status.code(), Code::Unavailable | Code::Cancelled | Code::Unknown) => {
                RPCError::Unreachable(Unreachable::new(self))
            }
            Error::Unavailable(_) => RPCError::Unreachable(Unreachable::new(self)),
            _ => RPCError::Network(NetworkError::new(self)),
        }
    }

    /// The same for a snapshot stream.
    pub(crate) fn to_streaming(&self) -> StreamingError<TypeConfig> {
        match self.to_rpc() {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            _ => StreamingError::Network(NetworkError::new(self)),
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::Peer(status)
    }
}

/// The one place a Raft-layer error becomes a gRPC status.
impl From<Error> for Status {
    fn from(err: Error) -> Status {
        match err {
            Error::Peer(status) => status,
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

/// openraft's storage traits speak `io::Error`.
impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        match err {
            Error::Io(err) => err,
            Error::Storage(err) => err.into(),
            Error::Corruption(_) | Error::Decode { .. } => io::Error::new(io::ErrorKind::InvalidData, err.to_string()),
            Error::InvalidInput(_) => io::Error::new(io::ErrorKind::InvalidInput, err.to_string()),
            other => io::Error::other(other.to_string()),
        }
    }
}

/// How prost's `DecodeError` starts its message (tonic-prost turns it into `INTERNAL`).
const DECODE_ERROR_PREFIX: &str = "failed to decode Protobuf message";
/// How tonic's decoder starts its message for a length prefix over the limit (`OUT_OF_RANGE`).
const LENGTH_ERROR_PREFIX: &str = "Error, decoded message length too large";

/// The status a codec error should have had, or `None` if `status` is not one.
///
/// tonic 0.14 answers a request whose protobuf does not decode with
/// `INTERNAL` (tonic-prost's `from_decode_error`) and one whose length prefix
/// is over the service's `max_decoding_message_size` with `OUT_OF_RANGE`
/// (`codec/decode.rs`). Both are the caller's fault and permanent, so a
/// client that trusts the codes would report a server bug or, worse, treat
/// the first as a transient failure. The statuses carry no other marker
/// than their text, so the text is matched here; `tests/wire_errors.rs`
/// pins it against the tonic and prost in `Cargo.lock`. Used for every
/// service on a node's port: client, admin and peer. Our handlers never
/// answer `OUT_OF_RANGE` nor start an `INTERNAL` message this way; only an
/// admin call forwarded to a leader whose answer does not decode (a version
/// mix) would be relabelled too.
pub fn codec_status(status: &Status) -> Option<Status> {
    let message = status.message();
    match status.code() {
        Code::Internal if message.starts_with(DECODE_ERROR_PREFIX) => Some(Status::invalid_argument(format!(
            "request is not a valid message: {message}"
        ))),
        Code::OutOfRange => message
            .strip_prefix(LENGTH_ERROR_PREFIX)
            .map(|rest| Status::resource_exhausted(format!("request message too large{rest}"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each variant keeps the status code the peer used to get, and a peer's
    /// status passes through unchanged.
    #[test]
    fn status_codes() {
        let cases = [
            (Error::decode("raft message", "bad"), Code::InvalidArgument),
            (Error::Corruption("crc".into()), Code::DataLoss),
            (Error::Diverged("chain".into()), Code::DataLoss),
            (Error::TooLarge("big".into()), Code::ResourceExhausted),
            (Error::FailedPrecondition("gone".into()), Code::FailedPrecondition),
            (Error::Aborted("cut".into()), Code::Aborted),
            (Error::Unauthorized("forged".into()), Code::PermissionDenied),
            (Error::Unavailable("stopped".into()), Code::Unavailable),
            (Error::Internal("bug".into()), Code::Internal),
            (Error::Peer(Status::not_found("x")), Code::NotFound),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
        assert!(Error::Unavailable("x".into()).is_retryable());
        assert!(!Error::Diverged("x".into()).is_retryable());
    }
}
