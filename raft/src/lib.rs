//! txlog's Raft layer: everything that knows about openraft.
//!
//! # What it owns
//!
//! * [`TypeConfig`] (`type_config.rs`) — one Raft entry carries one
//!   [`BatchFrame`] (`batch_frame.rs`): the leader groups concurrent appends
//!   into a batch, so one fsync covers many records. The frame is versioned
//!   and CRC'd; a sealed one (`seal.rs`) is LZ4-compressed, AES-256-GCM
//!   encrypted and ed25519-signed, naming its keys in `key_ids`.
//! * [`Keys`] (`keys.rs`) — the keyring, announced through the log as
//!   records on the reserved `_keys` channel; followers check every entry
//!   against it before it reaches the WAL. [`Sealer`] (`sealer.rs`) — the
//!   leader's signing seeds and durable nonce counters.
//! * [`StateMachine`] (`state_machine.rs`) — applies batches to the
//!   [`txlog_storage::RecordStore`] (record file plus sled indexes), assigning dense sequence numbers and
//!   deduplicating by txid; builds and installs snapshots, whose files live
//!   in a [`txlog_storage::SnapshotDir`]. Its metadata keys (`meta.rs`) have
//!   one type each.
//! * [`Network`] (`network.rs`) / [`RaftServer`] (`raft_service.rs`) — the
//!   peer transport over tonic: one cached channel per peer, CRC32 on every
//!   message (`codec.rs`), a deadline on every RPC, unary appends.
//!   [`PeerLatency`] (`peer_latency.rs`) — member round trips from the
//!   nodes' pings, and each member's quorum RTT, which the pings carry.
//! * Resync (`resync/`) — catching up a follower past the purge point:
//!   probe, plan delta or full, send, receive, merge. Its module doc is the
//!   design of that protocol.
//! * [`timing`] — the regional, LAN and WAN timing profiles.
//! * [`Error`] (`error.rs`) — this crate's errors; `From<Error> for
//!   tonic::Status` is the one place they become a peer's gRPC status.
//!
//! # How data flows
//!
//! A client append becomes a [`BatchFrame`] on the leader, an openraft entry
//! in the WAL (`txlog-storage`), an `AppendEntries` RPC to each follower
//! (`network.rs` → the peer's `raft_service.rs`), and, once committed, one
//! record-store batch in each node's [`StateMachine`]. A follower that needs
//! entries the leader has purged gets a snapshot through resync instead.
//!
//! # Invariants
//!
//! * Apply is idempotent by log index, so openraft may re-apply from the WAL
//!   after the record store lost its last writes.
//! * A snapshot is a fsynced file before openraft learns of it, so the WAL
//!   is never purged behind something that is not durable.
//! * Nothing from a peer reaches openraft or the disk before its CRC and
//!   size limits are checked, and, in a sealed cluster, its signature and
//!   tag (or, for a key announcement, its proof).
//! * No file work runs on an async task: snapshot and delta files are read
//!   and written on blocking threads.
//!
//! openraft's types stay behind this crate: the rest of txlog sees our
//! aliases ([`Raft`], [`LogId`], …) and [`Error`], never a raw openraft error
//! in a client response. openraft is pinned (`=0.10.0-alpha.37`) because its
//! alpha API changes between releases; its storage `Suite` runs against our
//! WAL and state machine in this crate's tests.

mod batch_frame;
mod codec;
mod error;
mod keys;
mod meta;
mod network;
mod peer_latency;
mod raft_service;
mod resync;
mod seal;
mod sealer;
mod signature;
mod snapshot;
mod state_machine;
pub mod timing;
mod type_config;

pub use batch_frame::BatchBody;
pub use batch_frame::BatchBodyRef;
pub use batch_frame::BatchFrame;
pub use batch_frame::DecodedBatch;
pub use batch_frame::OpenedBatch;
pub use batch_frame::SealNonce;
pub use batch_frame::SealWith;
pub use batch_frame::BATCH_BYTES_MAX;
pub use error::codec_status;
pub use error::Error;
pub use error::Result;
pub use keys::DataKeyInfo;
pub use keys::KeyEvent;
pub use keys::Keys;
pub use keys::SealCounts;
pub use keys::SealStats;
pub use keys::SigningAnnounce;
pub use keys::SigningKeyInfo;
pub use keys::SigningProof;
pub use keys::KEYS_CHANNEL;
pub use network::Network;
pub use peer_latency::PeerLatency;
pub use peer_latency::PingReport;
pub use raft_service::LeaderContact;
pub use raft_service::RaftServer;
pub use resync::Plan as ResyncPlan;
pub use resync::ProbeRequest;
pub use resync::ProbeResponse;
pub use resync::ResyncCounts;
pub use resync::ResyncFollower;
pub use resync::ResyncStats;
pub use resync::SNAPSHOT_CHUNK_BYTES;
pub use seal::lz4_bytes;
pub use seal::random_key;
pub use seal::DataKey;
pub use seal::Keyring;
pub use seal::Signer;
pub use seal::SpeculativeKey;
pub use seal::NONCE_BYTES;
pub use seal::TAG_BYTES;
pub use sealer::Sealer;
pub use sealer::NONCE_RESERVE_BLOCK;
pub use snapshot::Snapshot;
pub use snapshot::SnapshotFile;
pub use state_machine::wall_clock_ns;
pub use state_machine::Raft;
pub use state_machine::StateMachine;
pub use state_machine::StateMachineReader;
pub use type_config::BatchResponse;
pub use type_config::Entry;
pub use type_config::LogId;
pub use type_config::LogStore;
pub use type_config::NodeInfo;
pub use type_config::SnapshotMeta;
pub use type_config::StoredMembership;
pub use type_config::TypeConfig;
pub use type_config::Vote;

/// Re-exported so callers can name openraft's metrics and policies without
/// depending on openraft directly.
pub use openraft;
