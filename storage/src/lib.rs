//! txlog's durable primitives.
//!
//! This crate owns every byte txlog keeps on disk:
//!
//! * [`LogStore`] — the **segmented Raft write-ahead log** behind openraft's
//!   `RaftLogStorage`. Records are `len | crc32 | body` frames in segment files
//!   that each open with a versioned header. Appends are written at once and
//!   made durable by one `fdatasync` per group of appends (group commit) on a
//!   dedicated flusher thread; openraft's IO callback fires only after that
//!   sync. The vote is written to its own file and fsynced (file and
//!   directory) before `save_vote` returns. `purge` records the purge point
//!   durably before it deletes any segment; `truncate_after` uses `ftruncate`
//!   and fsyncs. Opening a log cuts a torn tail off the last segment and logs
//!   it; damage anywhere else is reported as [`Error::Corruption`] and the log
//!   refuses to open — it never guesses.
//! * [`RecordStore`] — the state machine's store: committed records in an
//!   append-only, segmented, CRC-framed **record file** (`record_file.rs`,
//!   with the hash chain in each frame), and **sled** for the small indexes
//!   (txid → seq, per-channel) and metadata. The store is a rebuildable cache
//!   of the WAL: each apply writes its records' frames, then one atomic sled
//!   batch that includes the applied log id, then publishes the records; after
//!   a crash the file is cut back to what sled indexed and openraft re-applies
//!   the rest from the WAL. sled's `flush` is not an fsync (sled#1452), which
//!   is why nothing here relies on it for durability.
//! * [`snapshot_file`] — snapshot files: written to a temporary name, fsynced,
//!   renamed, directory fsynced; checked end to end by CRC32 when read.
//! * [`SnapshotDir`] — the directory those files live in: snapshot naming,
//!   staging of received snapshots and deltas (`.partial` files), durable
//!   install (hard link or copy, fsync, rename, directory fsync), pruning of older
//!   snapshots, and removal of leftovers on open. The Raft layer never
//!   touches a file there itself.
//! * Key files (`key_files.rs`) — the cluster's key-encryption keys
//!   ([`KekFile`], `--key-file`), a node's signing seeds ([`SigningSeeds`])
//!   and its durable nonce-counter reservations ([`NonceReservations`]);
//!   secrets are written 0600 and refused when others may read them.
//! * [`delta_file`] — the records a lagging follower is receiving in a delta
//!   resync, staged so a broken stream resumes after the last whole record.
//!
//! Data flows in one direction: openraft hands entries to the WAL; applied
//! batches go to the record store; snapshots are built from the record store
//! into the snapshot directory and restored from it; a delta is merged from
//! the record store plus a delta file into a new snapshot file. Every file
//! format has a version and a checksum, and one type that writes and reads
//! it.
//!
//! Everything here is blocking IO: async callers run it on blocking threads.
//!
//! Deliberately left out: compression, encryption and signatures (they live in
//! the batch frame, in `txlog-raft`; this crate only keeps their key files), and any notion of Raft terms beyond what
//! openraft hands us.
//!
//! A failed `fsync` is fatal: the process aborts, because the page cache may
//! already have dropped the data and retrying would report a lie. Every
//! fsync in this crate goes through [`fatal_fsync_failure`].

pub mod byte_string;
pub mod delta_file;
mod durable_file;
mod error;
mod frame;
mod key_files;
mod linked_snapshot;
mod log_store;
mod meta_key;
mod record_file;
mod record_store;
mod segment;
mod snapshot_dir;
pub mod snapshot_file;
pub mod verify;

pub use durable_file::fsync_dir;
pub use error::Error;
pub use error::Result;
pub use key_files::Kek;
pub use key_files::KekFile;
pub use key_files::NonceReservations;
pub use key_files::SigningSeed;
pub use key_files::SigningSeeds;
pub use log_store::FsyncObserver;
pub use log_store::LogObserver;
pub use log_store::LogStore;
pub use log_store::LogStoreReader;
pub use log_store::WalOptions;
pub use log_store::REPLICATION_BYTES_MAX;
pub use meta_key::decode_whole;
pub use meta_key::MetaKey;
pub use record_store::chain_next;
pub use record_store::AppendOutcome;
pub use record_store::ApplyBatch;
pub use record_store::ChainHash;
pub use record_store::ChannelName;
pub use record_store::NewRecord;
pub use record_store::NewRecordRef;
pub use record_store::RecordStore;
pub use record_store::SealAtRest;
pub use record_store::StoredRecord;
pub use record_store::CHANNEL_RUN_SEQS_MAX;
pub use record_store::LAST_SEQ;
pub use record_store::RECORD_SEGMENT_BYTES_MAX_DEFAULT;
pub use record_store::STORE_FORMAT;
pub use snapshot_dir::IncomingSnapshot;
pub use snapshot_dir::SnapshotDir;

/// Default size at which the active WAL segment is closed and a new one opened.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

/// Largest single WAL record body accepted on read or write. A length field
/// above this is treated as damage, never used to size an allocation.
pub const WAL_RECORD_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// Abort the process after a failed fsync. Retrying an fsync after failure is
/// unsound on Linux (the dirty pages may already be dropped), so the only
/// honest reaction is to stop and let recovery run from what is really on disk.
pub fn fatal_fsync_failure(what: &str, err: &std::io::Error) -> ! {
    tracing::error!(%err, what, "fsync failed; aborting so recovery can run from what is durable");
    eprintln!("txlog: fatal: fsync of {what} failed: {err}");
    std::process::abort()
}
