//! What leader and follower send each other during a resync (postcard inside
//! the CRC'd peer message or the first chunk of a stream).

use serde::Deserialize;
use serde::Serialize;
use txlog_storage::ChainHash;

use super::follower::Staged;
use crate::type_config::SnapshotMeta;
use crate::type_config::Vote;

/// Bytes of record frames per delta chunk (a chunk always holds whole frames).
pub const DELTA_CHUNK_BYTES: usize = 1024 * 1024;

/// Bytes of snapshot file per full-snapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Largest snapshot a peer may send us.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;

/// The leader asks where the follower's records end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeRequest {
    /// The leader's snapshot that would be sent.
    pub snapshot: String,
}

/// The follower's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeResponse {
    pub last_seq: u64,
    pub chain: ChainHash,
    pub delta_ok: bool,
    pub staged: Option<Staged>,
}

/// First chunk of an `InstallDelta` stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeltaHeader {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    /// The follower's records `1..=base_seq` are kept.
    pub base_seq: u64,
    pub base_chain: ChainHash,
    /// First sequence in this stream (`base_seq + 1` unless resuming).
    pub first_seq: u64,
    /// Last sequence of the snapshot.
    pub last_seq: u64,
}

/// First chunk of an `InstallSnapshot` stream: the vote and the snapshot's meta.
pub type FullHeader = (Vote, SnapshotMeta);
