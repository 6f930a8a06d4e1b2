//! txlog's error type and its single mapping to gRPC status.

use tonic::metadata::MetadataValue;
use tonic::Status;

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

    /// Durable data failed a check.
    #[error("corruption: {0}")]
    Corruption(String),

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
        matches!(self, Error::NotLeader { .. } | Error::Unavailable(_))
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
            Error::Corruption(m) => Status::data_loss(m.clone()),
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

/// Route a "not leader" answer from openraft to the client with the leader's address.
pub(crate) fn not_leader(forward: &txlog_raft::openraft::error::ForwardToLeader<txlog_raft::TypeConfig>) -> Error {
    Error::NotLeader {
        leader: forward.leader_node.as_ref().map(|n| n.address.clone()),
    }
}
