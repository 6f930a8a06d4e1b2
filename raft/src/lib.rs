//! txlog's Raft layer: everything that knows about openraft.
//!
//! * [`TypeConfig`] — one Raft entry carries one [`BatchFrame`]: the leader
//!   groups concurrent appends into a batch, so one fsync covers many records.
//! * [`StateMachine`] — applies batches to the sled [`txlog_storage::RecordStore`],
//!   assigning dense sequence numbers and deduplicating by txid; idempotent by
//!   log index; snapshots are fsynced files.
//! * [`Network`] / [`RaftServer`] — the peer transport over tonic, one cached
//!   channel per peer, CRC32 on every message, a deadline on every RPC,
//!   unary appends; full snapshots and delta resync ([`resync`]) are chunked
//!   streams.
//! * [`timing`] — the LAN and WAN timing profiles.
//!
//! openraft's types stay behind this crate: the rest of txlog sees our
//! aliases ([`Raft`], [`LogId`], …) and [`Error`], never a raw openraft error
//! in a client response. openraft is pinned (`=0.10.0-alpha.37`) because its
//! alpha API changes between releases; its storage `Suite` runs against our
//! WAL and state machine in this crate's tests.

mod batch_frame;
mod codec;
mod meta;
mod network;
mod raft_service;
pub mod resync;
mod state_machine;
pub mod timing;
mod type_config;

pub use batch_frame::BatchBody;
pub use batch_frame::BatchFrame;
pub use batch_frame::DecodedBatch;
pub use batch_frame::BATCH_BYTES_MAX;
pub use network::Network;
pub use network::SNAPSHOT_CHUNK_BYTES;
pub use raft_service::LeaderContact;
pub use raft_service::RaftServer;
pub use resync::ResyncCounts;
pub use resync::ResyncStats;
pub use state_machine::wall_clock_ns;
pub use state_machine::Snapshot;
pub use state_machine::SnapshotFile;
pub use state_machine::StateMachine;
pub use state_machine::StateMachineReader;
pub use type_config::BatchResponse;
pub use type_config::Entry;
pub use type_config::LogId;
pub use type_config::LogStore;
pub use type_config::NodeInfo;
pub use type_config::Raft;
pub use type_config::SnapshotMeta;
pub use type_config::StoredMembership;
pub use type_config::TypeConfig;
pub use type_config::Vote;

/// Re-exported so callers can name openraft's metrics and policies without
/// depending on openraft directly.
pub use openraft;
