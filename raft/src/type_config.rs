//! openraft's type configuration for txlog.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;
use txlog_storage::AppendOutcome;

use crate::batch_frame::BatchFrame;

/// A cluster member's address book entry, stored in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `host:port` serving the txlog gRPC services (clients, admin and peers).
    pub address: String,
    /// Region name, e.g. `paris`.
    pub region: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.region, self.address)
    }
}

/// What applying one batch entry produced: one outcome per record, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub outcomes: Vec<AppendOutcome>,
    /// Set when the batch could not be applied (a frame that fails to decode);
    /// every node rejects the same batch the same way, so order is kept.
    pub error: Option<String>,
}

openraft::declare_raft_types!(
    /// txlog's Raft types: a log entry carries one [`BatchFrame`].
    pub TypeConfig:
        D = BatchFrame,
        R = BatchResponse,
        NodeId = u64,
        Node = NodeInfo,
);

pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type LogStore = txlog_storage::LogStore<TypeConfig>;
