//! The record store: the state machine's data.
//!
//! Two parts, updated together by one [`ApplyBatch`]:
//!
//! * the **record file** (`segments/`, see [`crate::record_file`]): every
//!   committed record, appended once, with the hash chain at its seq;
//!   its in-memory txid index finds a record by txid;
//! * one **sled** tree, `records`, with small values only:
//!
//! | key | value |
//! | --- | --- |
//! | `c` + channel + `0x00` + first seq (u64 BE) | the seqs of one batch's records on that channel (at most [`CHANNEL_RUN_SEQS_MAX`]), as runs of consecutive seqs: postcard `Vec<(first u64, last - first u64)>` |
//! | `h` + channel | last channel_seq (u64 BE) |
//! | `m` + name | metadata value: `version u8 \| postcard(T)`, typed by a [`MetaKey`] |
//!
//! A batch writes its records' frames to the record file, then applies one
//! atomic sled batch that includes [`LAST_SEQ`], then *publishes* the
//! records to readers. After a crash sled is at some applied prefix; on open
//! the record file is cut back to sled's [`LAST_SEQ`], or, if it holds fewer
//! records than that (its tail was lost), the whole store is discarded and
//! rebuilt from the snapshot and WAL, which it caches.
//!
//! The hash chain lets two nodes agree that their first `seq` records are
//! identical by comparing 32 bytes (delta resync). `chain(0)` is all zeros.
//! Every node computes it itself, whether it applied the records or restored
//! them from a snapshot, so a record that differs anywhere below `seq`
//! changes `chain(seq)`.
//!
//! Metadata keys are declared as [`MetaKey`] constants, each with one value
//! type used to write and to read it (the store's own: [`LAST_SEQ`],
//! [`STORE_FORMAT`]; the state machine's live in `txlog-raft`). A store
//! whose [`STORE_FORMAT`] is missing or differs from this build's is
//! discarded on open and rebuilt.
//!
//! Records are immutable once written and keyed by a dense sequence, so a
//! reader that stops at a known `last_seq` sees a consistent prefix even while
//! later applies run. Channel names cannot contain `0x00` (see
//! [`ChannelName`]), which keeps the channel index unambiguous.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;

use crate::error::Error;
use crate::error::Result;
use crate::meta_key::MetaKey;
use crate::record_file::txid_hash;
use crate::record_file::Frames;
use crate::record_file::RecordFile;
use crate::record_file::READ_CHUNK_BYTES;
pub use crate::record_file::RECORD_SEGMENT_BYTES_MAX_DEFAULT;

const RECORD_FORMAT_VERSION: u8 = 1;
/// A record whose payload is sealed at rest (see [`SealAtRest`]): the same
/// encoding as version 1, the payload being the sealed bytes.
const RECORD_FORMAT_SEALED: u8 = 2;

/// Seals a record's payload for the record file, so that no payload is on
/// disk in clear (a sealed cluster). It must be deterministic in the seq,
/// key and payload: every node seals each record itself, and the hash chain
/// (over the sealed bytes) must come out the same on all of them.
pub trait SealAtRest {
    /// Append `payload`, sealed for the record at `seq`, to `out`.
    fn seal(&self, seq: u64, payload: &[u8], out: &mut Vec<u8>);
}

/// Highest sequence applied; maintained by [`ApplyBatch::commit`].
pub const LAST_SEQ: MetaKey<u64> = MetaKey::new("last_seq", 1);

/// Layout version of the whole store. Version 1 (never written as a key)
/// stored metadata without version bytes; 2 is typed [`MetaKey`] values;
/// 3 moves record bodies and the chain out of sled into the record file;
/// 4 keys the channel index by runs of seqs instead of one key per record;
/// 5 moves the txid index out of sled into the record file; 6 writes
/// channel-index values as runs of consecutive seqs.
pub const STORE_FORMAT: MetaKey<u32> = MetaKey::new("store_format", 1);
const STORE_FORMAT_VERSION: u32 = 6;

/// Most seqs under one channel-index key. A batch's records on one channel
/// share keys (one sled insert per run, not per record: sled inserts were
/// most of the apply cost), and a run this long keeps values under 8 KiB.
pub const CHANNEL_RUN_SEQS_MAX: usize = 1024;

/// Value of the hash chain at one sequence.
pub type ChainHash = [u8; 32];

/// `chain(seq) = SHA-256(chain(seq - 1) ‖ encoded record)`.
pub fn chain_next(previous: &ChainHash, record: &StoredRecord) -> ChainHash {
    chain_of(previous, &record.encode())
}

/// [`chain_next`] over a record already encoded.
pub(crate) fn chain_of(previous: &ChainHash, encoded: &[u8]) -> ChainHash {
    let mut hasher = sha2::Sha256::new();
    hasher.update(previous);
    hasher.update(encoded);
    hasher.finalize().into()
}

/// A validated channel name: `[a-z0-9][a-z0-9._-]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelName(String);

impl ChannelName {
    /// Longest channel name accepted.
    pub const BYTES_MAX: usize = 64;

    pub fn parse(name: &str) -> Result<Self> {
        let bytes = name.as_bytes();
        let valid_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-');
        if bytes.is_empty() || bytes.len() > Self::BYTES_MAX {
            return Err(Error::InvalidInput(format!(
                "channel name must be 1..={} bytes, got {}",
                Self::BYTES_MAX,
                bytes.len()
            )));
        }
        if !(bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit()) || !bytes.iter().all(|&b| valid_char(b)) {
            return Err(Error::InvalidInput(format!(
                "channel name {name:?} must match [a-z0-9][a-z0-9._-]*"
            )));
        }
        Ok(ChannelName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A record as a client submitted it. Its bytes are shared with the
/// request they arrived in (no copy until the batch frame); it is decoded
/// back as a [`NewRecordRef`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewRecord {
    #[serde(serialize_with = "crate::byte_string::serialize")]
    pub txid: bytes::Bytes,
    pub channel: String,
    #[serde(serialize_with = "crate::byte_string::serialize")]
    pub payload: bytes::Bytes,
    pub client_time_ns: u64,
}

impl NewRecord {
    /// This record as [`ApplyBatch::append`] takes it.
    pub fn borrowed(&self) -> NewRecordRef<'_> {
        NewRecordRef {
            txid: &self.txid,
            channel: &self.channel,
            payload: &self.payload,
            client_time_ns: self.client_time_ns,
        }
    }
}

/// A [`NewRecord`] borrowed from the batch frame it is decoded from (same
/// encoding), so applying a batch copies each record once: into its frame in
/// the record file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct NewRecordRef<'a> {
    pub txid: &'a [u8],
    pub channel: &'a str,
    pub payload: &'a [u8],
    pub client_time_ns: u64,
}

/// A committed record as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub seq: u64,
    pub channel_seq: u64,
    #[serde(with = "crate::byte_string")]
    pub txid: Vec<u8>,
    pub channel: String,
    #[serde(with = "crate::byte_string")]
    pub payload: Vec<u8>,
    pub client_time_ns: u64,
    pub commit_time_ns: u64,
    pub log_index: u64,
    pub log_term: u64,
    pub origin_node: u64,
    /// `payload` is sealed at rest ([`SealAtRest`]); its reader opens it.
    #[serde(skip)]
    pub sealed_at_rest: bool,
}

impl StoredRecord {
    /// A record for tests: seq and channel seq `seq`, txid `tx<seq>` on
    /// channel `orders`, `payload_bytes` bytes of payload.
    #[cfg(test)]
    pub(crate) fn for_test(seq: u64, payload_bytes: usize) -> StoredRecord {
        StoredRecord {
            seq,
            channel_seq: seq,
            txid: format!("tx{seq}").into_bytes(),
            channel: "orders".into(),
            payload: vec![seq as u8; payload_bytes],
            client_time_ns: 0,
            commit_time_ns: 1,
            log_index: seq,
            log_term: 1,
            origin_node: 1,
            sealed_at_rest: false,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.borrowed().encode_into(Vec::new())
    }

    pub(crate) fn borrowed(&self) -> StoredRecordRef<'_> {
        StoredRecordRef {
            seq: self.seq,
            channel_seq: self.channel_seq,
            txid: &self.txid,
            channel: &self.channel,
            payload: &self.payload,
            client_time_ns: self.client_time_ns,
            commit_time_ns: self.commit_time_ns,
            log_index: self.log_index,
            log_term: self.log_term,
            origin_node: self.origin_node,
            sealed_at_rest: self.sealed_at_rest,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let body = |body: &[u8], sealed_at_rest: bool| {
            postcard::from_bytes(body)
                .map(|record| StoredRecord {
                    sealed_at_rest,
                    ..record
                })
                .map_err(|e| Error::Decode {
                    what: "record",
                    detail: e.to_string(),
                })
        };
        match bytes.split_first() {
            Some((&RECORD_FORMAT_VERSION, rest)) => body(rest, false),
            Some((&RECORD_FORMAT_SEALED, rest)) => body(rest, true),
            Some((v, _)) => Err(Error::Decode {
                what: "record",
                detail: format!("unknown record version {v}"),
            }),
            None => Err(Error::Decode {
                what: "record",
                detail: "empty".to_string(),
            }),
        }
    }

    /// Approximate bytes this record occupies on the wire.
    pub fn size_bytes(&self) -> usize {
        self.payload.len() + self.txid.len() + self.channel.len() + 64
    }
}

/// A [`StoredRecord`] whose byte fields are borrowed: what an apply batch
/// encodes into the record file without copying the record first. Same
/// fields in the same order, so the same encoding.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct StoredRecordRef<'a> {
    pub(crate) seq: u64,
    pub(crate) channel_seq: u64,
    #[serde(serialize_with = "crate::byte_string::serialize")]
    pub(crate) txid: &'a [u8],
    pub(crate) channel: &'a str,
    #[serde(serialize_with = "crate::byte_string::serialize")]
    pub(crate) payload: &'a [u8],
    pub(crate) client_time_ns: u64,
    pub(crate) commit_time_ns: u64,
    pub(crate) log_index: u64,
    pub(crate) log_term: u64,
    pub(crate) origin_node: u64,
    #[serde(skip)]
    pub(crate) sealed_at_rest: bool,
}

impl StoredRecordRef<'_> {
    /// Append the encoding to `out` (no allocation when it has room).
    pub(crate) fn encode_into(&self, mut out: Vec<u8>) -> Vec<u8> {
        out.push(if self.sealed_at_rest {
            RECORD_FORMAT_SEALED
        } else {
            RECORD_FORMAT_VERSION
        });
        postcard::to_extend(self, out).expect("encoding a record cannot fail")
    }
}

/// Result of appending one record inside an [`ApplyBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOutcome {
    pub seq: u64,
    pub channel_seq: u64,
    /// The txid was already committed; `seq` is the original.
    pub duplicate: bool,
}

fn channel_key(channel: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + channel.len());
    key.push(b'c');
    key.extend_from_slice(channel.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn head_key(channel: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + channel.len());
    key.push(b'h');
    key.extend_from_slice(channel.as_bytes());
    key
}

/// A channel-index value: the seqs as runs of consecutive seqs, each
/// `(first, last - first)`, postcard-encoded (varints). A batch's records on
/// one channel are usually consecutive, so a run of 1,024 seqs takes a few
/// bytes instead of 8 KiB.
fn encode_channel_run(seqs: &[u64]) -> Vec<u8> {
    assert!(
        !seqs.is_empty() && seqs.len() <= CHANNEL_RUN_SEQS_MAX,
        "a channel run holds 1..={CHANNEL_RUN_SEQS_MAX} seqs"
    );
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &seq in seqs {
        match runs.last_mut() {
            Some((first, span)) if (*first + *span).checked_add(1) == Some(seq) => *span += 1,
            last => {
                assert!(
                    last.is_none_or(|(first, span)| seq > *first + *span),
                    "channel seqs must increase"
                );
                runs.push((seq, 0));
            }
        }
    }
    postcard::to_allocvec(&runs).expect("encoding runs cannot fail")
}

/// Read an [`encode_channel_run`] value back, refusing anything that is not
/// 1..=[`CHANNEL_RUN_SEQS_MAX`] strictly increasing seqs.
fn decode_channel_run(value: &[u8]) -> Result<impl Iterator<Item = u64>> {
    let bad = |detail: String| Error::Decode {
        what: "channel index",
        detail,
    };
    let (runs, rest): (Vec<(u64, u64)>, &[u8]) =
        postcard::take_from_bytes(value).map_err(|e| bad(format!("undecodable run list: {e}")))?;
    if !rest.is_empty() || runs.is_empty() {
        return Err(bad(format!(
            "a run list of {} bytes with {} runs",
            value.len(),
            runs.len()
        )));
    }
    let mut total = 0u64;
    let mut previous_last: Option<u64> = None;
    for &(first, span) in &runs {
        let last = first
            .checked_add(span)
            .ok_or_else(|| bad(format!("run {first}+{span} overflows")))?;
        if previous_last.is_some_and(|p| first <= p) {
            return Err(bad(format!("run at {first} does not follow the previous one")));
        }
        previous_last = Some(last);
        total = total.saturating_add(span).saturating_add(1);
    }
    if total > CHANNEL_RUN_SEQS_MAX as u64 {
        return Err(bad(format!(
            "{total} seqs in one value, at most {CHANNEL_RUN_SEQS_MAX}"
        )));
    }
    Ok(runs.into_iter().flat_map(|(first, span)| first..=first + span))
}

fn be_u64(what: &'static str, bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| Error::Decode {
        what,
        detail: format!("expected 8 bytes, got {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

/// Tries at opening a sled database whose lock is still held, 20 ms apart.
const OPEN_LOCK_ATTEMPTS_MAX: u32 = 100;

/// Open sled, waiting briefly for its file lock. sled's background flusher
/// keeps the database locked for a moment after the last handle in this
/// process is dropped, so reopening in the same process (tests, a store
/// reopened after a failure) can find it taken; another live process holding
/// it is still an error after about 2 s.
fn open_waiting_for_lock(config: &sled::Config) -> Result<sled::Db> {
    let mut attempt = 1;
    loop {
        match config.open() {
            Err(sled::Error::Io(err))
                if attempt < OPEN_LOCK_ATTEMPTS_MAX && err.to_string().contains("could not acquire lock") =>
            {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return Ok(result?),
        }
    }
}

/// The state machine's store: record file plus sled indexes.
#[derive(Clone)]
pub struct RecordStore {
    db: sled::Db,
    tree: sled::Tree,
    file: Arc<RecordFile>,
}

impl RecordStore {
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, RECORD_SEGMENT_BYTES_MAX_DEFAULT)
    }

    /// [`RecordStore::open`] with record-file segments closed at `segment_bytes_max`.
    pub fn open_with(dir: impl AsRef<Path>, segment_bytes_max: u64) -> Result<Self> {
        let dir = dir.as_ref();
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(500));
        let db = open_waiting_for_lock(&config)?;
        let tree = db.open_tree("records")?;
        let segments = dir.join("segments");
        let file = match RecordFile::open(&segments, segment_bytes_max) {
            Ok(file) => file,
            Err(err @ (Error::Corruption { .. } | Error::Decode { .. })) => {
                tracing::error!(%err, "record file is damaged; discarding the store to rebuild it from the snapshot and wal");
                std::fs::remove_dir_all(&segments).map_err(|e| Error::io(&segments, e))?;
                tree.clear()?;
                RecordFile::open(&segments, segment_bytes_max)?
            }
            Err(err) => return Err(err),
        };
        let store = RecordStore {
            db,
            tree,
            file: Arc::new(file),
        };
        store.check_format()?;
        store.reconcile()?;
        Ok(store)
    }

    /// Discard a store written in another layout: it is a cache of the
    /// snapshot and WAL, and reading it with this build's types could
    /// misread it. An empty store just gets the current format.
    fn check_format(&self) -> Result<()> {
        let found = match self.tree.get(STORE_FORMAT.key())? {
            Some(bytes) => STORE_FORMAT.decode(&bytes).ok(),
            None => None,
        };
        if found == Some(STORE_FORMAT_VERSION) {
            return Ok(());
        }
        if !self.tree.is_empty() {
            tracing::warn!(
                found = ?found,
                expected = STORE_FORMAT_VERSION,
                "record store has another format; discarding it to rebuild from the snapshot and wal"
            );
        }
        self.clear()?;
        self.db.flush()?;
        Ok(())
    }

    /// Bring the record file and sled to the same seq after a crash: records
    /// sled never indexed are cut (openraft re-applies them from the WAL);
    /// if the file lost records sled indexed, nothing is trusted.
    fn reconcile(&self) -> Result<()> {
        let indexed = self.get_meta(&LAST_SEQ)?.unwrap_or(0);
        let (written, _) = self.file.tail();
        if written < indexed {
            tracing::warn!(
                indexed,
                in_file = written,
                "record file holds fewer records than the index (lost in a crash); discarding the store to rebuild it from the snapshot and wal"
            );
            return self.clear();
        }
        if written > indexed {
            tracing::info!(
                indexed,
                in_file = written,
                "cutting records the index never committed; they are re-applied from the wal"
            );
            self.file.truncate_after(indexed)?;
        }
        Ok(())
    }

    /// Highest sequence applied and visible to readers (0 when empty).
    pub fn last_seq(&self) -> Result<u64> {
        Ok(self.file.published())
    }

    /// The value stored under `key`, read as the type it was written as.
    pub fn get_meta<T: Serialize + DeserializeOwned>(&self, key: &MetaKey<T>) -> Result<Option<T>> {
        self.tree.get(key.key())?.map(|bytes| key.decode(&bytes)).transpose()
    }

    pub fn get(&self, seq: u64) -> Result<Option<StoredRecord>> {
        Ok(self.file.get(seq)?.map(|(_, record)| record))
    }

    /// The hash chain at `seq` (zeros at 0); `None` if `seq` is not applied.
    pub fn chain_at(&self, seq: u64) -> Result<Option<ChainHash>> {
        if seq == 0 {
            return Ok(Some([0u8; 32]));
        }
        Ok(self.file.get(seq)?.map(|(chain, _)| chain))
    }

    /// Recompute the chain over records `1..=upto` from their contents,
    /// calling `visit` with each record, and check it against the stored
    /// chain at every step. Returns the chain at `upto`, or a description
    /// of the first sequence where stored and recomputed values differ.
    pub fn verify_chain(
        &self,
        upto: u64,
        mut visit: impl FnMut(&StoredRecord) -> Result<()>,
    ) -> Result<std::result::Result<ChainHash, String>> {
        self.recompute_chain(upto, |path, seq, encoded| {
            visit(&crate::record_file::decode_record(path, seq, encoded)?)
        })
    }

    /// [`Self::verify_chain`] without visiting the records: nothing is
    /// decoded (about three times faster; the whole store at start-up).
    pub fn check_chain(&self, upto: u64) -> Result<std::result::Result<ChainHash, String>> {
        self.recompute_chain(upto, |_, _, _| Ok(()))
    }

    /// The chain recomputed over each frame's encoded record as stored
    /// (what [`chain_next`] hashes), checked against the stored value at
    /// every step; `visit` sees each record that checked, in order.
    fn recompute_chain(
        &self,
        upto: u64,
        mut visit: impl FnMut(&Path, u64, &[u8]) -> Result<()>,
    ) -> Result<std::result::Result<ChainHash, String>> {
        let mut chain = [0u8; 32];
        let mut next = 1u64;
        let mut differs = None;
        self.file
            .for_each_encoded(1, upto, READ_CHUNK_BYTES, |path, seq, stored, encoded| {
                chain = chain_of(&chain, encoded);
                if stored != chain {
                    differs = Some(format!("hash chain differs from the records at seq {next}"));
                    return Ok(false);
                }
                visit(path, seq, encoded)?;
                next += 1;
                Ok(true)
            })?;
        if let Some(differs) = differs {
            return Ok(Err(differs));
        }
        if next != upto + 1 {
            return Ok(Err(format!("record {next} is missing")));
        }
        Ok(Ok(chain))
    }

    /// Visit records `from..=upto` in order, reading the record file in
    /// large sequential chunks (merging a delta, writing a snapshot file).
    pub fn for_each_record(
        &self,
        from: u64,
        upto: u64,
        mut visit: impl FnMut(&StoredRecord) -> Result<()>,
    ) -> Result<()> {
        self.file.for_each(from, upto, READ_CHUNK_BYTES, |_, record| {
            visit(&record)?;
            Ok(true)
        })
    }

    /// Durably create a linked snapshot of records `1..=last_seq` at `path`
    /// (see [`crate::snapshot_file`] for reading it): it shares this store's
    /// record segments, so its cost does not grow with the records held.
    pub fn link_snapshot(&self, path: &Path, meta: &[u8], last_seq: u64) -> Result<std::path::PathBuf> {
        let (sources, chain) = self.file.snapshot_sources(last_seq)?;
        crate::linked_snapshot::write(path, meta, last_seq, chain, &sources)
    }

    /// Overwrite the stored chain value at `seq` (tests use it to simulate a
    /// diverged node).
    pub fn set_chain_at(&self, seq: u64, value: ChainHash) -> Result<()> {
        self.file.set_chain_at(seq, value)
    }

    /// The committed record with `txid`, if there is one.
    pub fn lookup_txid(&self, txid: &[u8]) -> Result<Option<StoredRecord>> {
        self.file.find_txid(txid_hash(txid), txid)
    }

    /// Records with `seq >= from_seq` (optionally only `channel`), at most
    /// `limit` of them and about `bytes_max` bytes (always at least one).
    pub fn read(
        &self,
        from_seq: u64,
        limit: usize,
        bytes_max: usize,
        channel: Option<&str>,
    ) -> Result<Vec<StoredRecord>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut push = |record: StoredRecord, out: &mut Vec<StoredRecord>| -> bool {
            bytes += record.size_bytes();
            out.push(record);
            out.len() < limit && bytes < bytes_max
        };
        if limit == 0 {
            return Ok(out);
        }
        let published = self.file.published();
        match channel {
            None => {
                let upto = from_seq.max(1).saturating_add(limit as u64 - 1).min(published);
                let chunk = (bytes_max as u64).min(READ_CHUNK_BYTES);
                self.file
                    .for_each(from_seq, upto, chunk, |_, record| Ok(push(record, &mut out)))?;
            }
            Some(channel) => self.for_each_channel_seq(channel, from_seq, published, |seq| {
                match self.get(seq)? {
                    Some(record) => Ok(push(record, &mut out)),
                    // The store was cleared under this read (a snapshot
                    // install): it ends here.
                    None if seq > self.file.published() => Ok(false),
                    None => Err(Error::Decode {
                        what: "channel index",
                        detail: format!("seq {seq} indexed but missing"),
                    }),
                }
            })?,
        }
        Ok(out)
    }

    /// The seq of `channel`'s last record, if it has one: the end of its
    /// last index run (one index lookup, however long the channel).
    pub fn last_seq_of_channel(&self, channel: &str) -> Result<Option<u64>> {
        let last_run = self
            .tree
            .range(channel_key(channel, 0)..=channel_key(channel, u64::MAX))
            .next_back()
            .transpose()?;
        match last_run {
            Some((_, run)) => Ok(decode_channel_run(&run)?.last()),
            None => Ok(None),
        }
    }

    /// Visit the seqs of `channel`'s records in `from_seq..=upto`, in order,
    /// until `visit` returns `false`. The run holding `from_seq` starts at or
    /// before it; every later run starts after it.
    fn for_each_channel_seq(
        &self,
        channel: &str,
        from_seq: u64,
        upto: u64,
        mut visit: impl FnMut(u64) -> Result<bool>,
    ) -> Result<()> {
        let from_seq = from_seq.max(1);
        let first_run = self
            .tree
            .range(channel_key(channel, 0)..=channel_key(channel, from_seq))
            .next_back()
            .transpose()?
            .map(|(key, _)| key.to_vec());
        let start = first_run.unwrap_or_else(|| channel_key(channel, from_seq));
        for item in self.tree.range(start..=channel_key(channel, upto)) {
            let (_, run) = item?;
            for seq in decode_channel_run(&run)? {
                if seq < from_seq {
                    continue;
                }
                if seq > upto || !visit(seq)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Start an atomic group of changes.
    pub fn batch(&self) -> Result<ApplyBatch<'_>> {
        let (last_seq, chain) = self.file.tail();
        Ok(ApplyBatch {
            store: self,
            batch: sled::Batch::default(),
            frames: Frames::default(),
            last_seq,
            chain,
            channels: HashMap::new(),
            sealed: Vec::new(),
        })
    }

    /// Remove every record and metadata value (before installing a
    /// snapshot); the store keeps its format.
    pub fn clear(&self) -> Result<()> {
        self.tree.clear()?;
        self.tree
            .insert(STORE_FORMAT.key(), STORE_FORMAT.encode(&STORE_FORMAT_VERSION))?;
        self.file.truncate_after(0)
    }

    /// Ask sled to write its buffers out and fdatasync the record file's
    /// active segment (at shutdown). sled's flush is not an fsync
    /// (sled#1452); this shortens, and does not close, the window a crash
    /// can lose.
    pub fn flush(&self) -> Result<()> {
        self.file.sync();
        self.db.flush()?;
        Ok(())
    }

    fn channel_head(&self, channel: &str) -> Result<u64> {
        match self.tree.get(head_key(channel))? {
            Some(v) => be_u64("channel head", &v),
            None => Ok(0),
        }
    }
}

/// Changes applied atomically by [`ApplyBatch::commit`].
pub struct ApplyBatch<'a> {
    store: &'a RecordStore,
    batch: sled::Batch,
    /// Records of this batch, encoded; they also answer duplicate txids
    /// within the batch.
    frames: Frames,
    last_seq: u64,
    chain: ChainHash,
    /// What this batch appended to each channel, written at commit.
    channels: HashMap<String, ChannelAppends>,
    /// The sealed payload of the record being appended (reused).
    sealed: Vec<u8>,
}

/// One channel's records in an [`ApplyBatch`].
struct ChannelAppends {
    /// Channel seq of the last of them (the channel's new head).
    head: u64,
    /// Their seqs, written as channel-index runs.
    seqs: Vec<u64>,
}

impl ApplyBatch<'_> {
    /// Assign the next sequence to `record`, unless its txid is already
    /// committed (or earlier in this batch): then return the original seq.
    /// The record is encoded once, into its frame; nothing else is
    /// allocated per record.
    pub fn append(
        &mut self,
        record: NewRecordRef<'_>,
        log_index: u64,
        log_term: u64,
        origin_node: u64,
        commit_time_ns: u64,
    ) -> Result<AppendOutcome> {
        self.append_sealed(record, log_index, log_term, origin_node, commit_time_ns, None)
    }

    /// [`ApplyBatch::append`], the payload sealed by `at_rest` when given.
    pub fn append_sealed(
        &mut self,
        record: NewRecordRef<'_>,
        log_index: u64,
        log_term: u64,
        origin_node: u64,
        commit_time_ns: u64,
        at_rest: Option<&dyn SealAtRest>,
    ) -> Result<AppendOutcome> {
        let hash = txid_hash(record.txid);
        let earlier = match self.frames.find_txid(hash, record.txid)? {
            Some(earlier) => Some(earlier),
            None => self.store.file.find_txid(hash, record.txid)?,
        };
        if let Some(original) = earlier {
            return Ok(AppendOutcome {
                seq: original.seq,
                channel_seq: original.channel_seq,
                duplicate: true,
            });
        }
        let head = match self.channels.get(record.channel) {
            Some(appends) => appends.head,
            None => self.store.channel_head(record.channel)?,
        };
        let seq = self.last_seq + 1;
        let channel_seq = head + 1;
        let mut sealed = std::mem::take(&mut self.sealed);
        sealed.clear();
        if let Some(at_rest) = at_rest {
            at_rest.seal(seq, record.payload, &mut sealed);
        }
        self.insert(
            &StoredRecordRef {
                seq,
                channel_seq,
                txid: record.txid,
                channel: record.channel,
                payload: if at_rest.is_some() { &sealed } else { record.payload },
                client_time_ns: record.client_time_ns,
                commit_time_ns,
                log_index,
                log_term,
                origin_node,
                sealed_at_rest: at_rest.is_some(),
            },
            hash,
        );
        self.sealed = sealed;
        Ok(AppendOutcome {
            seq,
            channel_seq,
            duplicate: false,
        })
    }

    /// Insert an already-sequenced record (snapshot install). Sequences must be dense.
    pub fn restore(&mut self, record: &StoredRecord) {
        assert_eq!(record.seq, self.last_seq + 1, "snapshot records must be dense");
        self.insert(&record.borrowed(), txid_hash(&record.txid));
    }

    fn insert(&mut self, record: &StoredRecordRef<'_>, txid_hash: u64) {
        self.chain = self.frames.push(&self.chain, record, txid_hash);
        if let Some(appends) = self.channels.get_mut(record.channel) {
            appends.head = record.channel_seq;
            appends.seqs.push(record.seq);
        } else {
            let appends = ChannelAppends {
                head: record.channel_seq,
                seqs: vec![record.seq],
            };
            self.channels.insert(record.channel.to_string(), appends);
        }
        self.last_seq = record.seq;
    }

    /// Write `value` under `key` as part of this batch.
    pub fn set_meta<T: Serialize + DeserializeOwned>(&mut self, key: &MetaKey<T>, value: &T) {
        assert!(
            key.name() != LAST_SEQ.name() && key.name() != STORE_FORMAT.name(),
            "{key:?} is maintained by the store"
        );
        self.batch.insert(key.key(), key.encode(value));
    }

    /// The last sequence assigned so far (in the store or this batch).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Apply every change at once: after a crash, the next open (which cuts
    /// the record file back to sled's `last_seq`) finds all of them or none.
    /// Records are written to the record file first, indexed by one sled
    /// batch, then published to readers.
    pub fn commit(mut self) -> Result<u64> {
        for (channel, appends) in &self.channels {
            self.batch.insert(head_key(channel), &appends.head.to_be_bytes());
            for run in appends.seqs.chunks(CHANNEL_RUN_SEQS_MAX) {
                self.batch.insert(channel_key(channel, run[0]), encode_channel_run(run));
            }
        }
        let file = &self.store.file;
        file.write(&self.frames, self.chain)?;
        self.batch.insert(LAST_SEQ.key(), LAST_SEQ.encode(&self.last_seq));
        if let Err(err) = self.store.tree.apply_batch(self.batch) {
            file.truncate_after(file.published())?;
            return Err(err.into());
        }
        file.publish(self.last_seq);
        Ok(self.last_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(txid: &str, channel: &str) -> NewRecord {
        NewRecord {
            txid: txid.as_bytes().to_vec().into(),
            channel: channel.to_string(),
            payload: format!("payload-{txid}").into_bytes().into(),
            client_time_ns: 0,
        }
    }

    /// A record encoded through its borrowed form decodes to itself and is
    /// the bytes serde's derive writes for it.
    #[test]
    fn borrowed_encoding_matches_the_record() {
        for payload_bytes in [0, 1, 200, 70_000] {
            for sealed_at_rest in [false, true] {
                let record = StoredRecord {
                    sealed_at_rest,
                    ..StoredRecord::for_test(300, payload_bytes)
                };
                let encoded = record.encode();
                assert_eq!(StoredRecord::decode(&encoded).unwrap(), record);
                let version = if sealed_at_rest {
                    RECORD_FORMAT_SEALED
                } else {
                    RECORD_FORMAT_VERSION
                };
                let mut derived = vec![version];
                derived.extend(postcard::to_allocvec(&record).unwrap());
                assert_eq!(encoded, derived);
            }
        }
    }

    /// Seals a payload by reversing it and appending the seq: enough to
    /// tell sealed bytes from the payload, deterministic like the real one.
    struct Reverse;

    impl SealAtRest for Reverse {
        fn seal(&self, seq: u64, payload: &[u8], out: &mut Vec<u8>) {
            out.extend(payload.iter().rev());
            out.extend_from_slice(&seq.to_le_bytes());
        }
    }

    /// A record appended with a [`SealAtRest`] holds the sealed bytes in
    /// the record file, says so after a reopen, and sealing (being
    /// deterministic) gives two stores the same chain; a duplicate txid is
    /// still found.
    #[test]
    fn payloads_sealed_at_rest_are_stored_sealed() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let mut chains = Vec::new();
        for dir in &dirs {
            let store = RecordStore::open(dir.path()).unwrap();
            let mut batch = store.batch().unwrap();
            batch.append(rec("plain", "orders").borrowed(), 1, 1, 1, 0).unwrap();
            let sealed = batch
                .append_sealed(rec("sealed", "orders").borrowed(), 1, 1, 1, 0, Some(&Reverse))
                .unwrap();
            let again = batch
                .append_sealed(rec("sealed", "orders").borrowed(), 1, 1, 1, 0, Some(&Reverse))
                .unwrap();
            assert_eq!(batch.commit().unwrap(), 2);
            assert_eq!((sealed.seq, again.seq, again.duplicate), (2, 2, true));
            drop(store);

            let store = RecordStore::open(dir.path()).unwrap();
            let plain = store.get(1).unwrap().unwrap();
            assert_eq!(
                (plain.payload.as_slice(), plain.sealed_at_rest),
                (&b"payload-plain"[..], false)
            );
            let record = store.get(2).unwrap().unwrap();
            let mut expected: Vec<u8> = b"payload-sealed".iter().rev().copied().collect();
            expected.extend_from_slice(&2u64.to_le_bytes());
            assert_eq!((record.payload, record.sealed_at_rest), (expected, true));
            chains.push(store.chain_at(2).unwrap().unwrap());
        }
        assert_eq!(chains[0], chains[1]);
    }

    /// Sequences are dense across batches, channel sequences count per channel, and a repeated txid returns the original seq.
    #[test]
    fn dense_sequences_and_txid_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        let mut batch = store.batch().unwrap();
        let a = batch.append(rec("a", "orders").borrowed(), 1, 1, 1, 0).unwrap();
        let b = batch.append(rec("b", "fills").borrowed(), 1, 1, 1, 0).unwrap();
        let a_again = batch.append(rec("a", "orders").borrowed(), 1, 1, 1, 0).unwrap();
        assert_eq!(batch.commit().unwrap(), 2);
        assert_eq!((a.seq, a.channel_seq, a.duplicate), (1, 1, false));
        assert_eq!((b.seq, b.channel_seq), (2, 1));
        assert_eq!((a_again.seq, a_again.duplicate), (1, true));

        let mut batch = store.batch().unwrap();
        let c = batch.append(rec("c", "orders").borrowed(), 2, 1, 1, 0).unwrap();
        let b_again = batch.append(rec("b", "fills").borrowed(), 2, 1, 1, 0).unwrap();
        batch.commit().unwrap();
        assert_eq!((c.seq, c.channel_seq), (3, 2));
        assert_eq!((b_again.seq, b_again.duplicate), (2, true));

        let all: Vec<u64> = store
            .read(1, 100, usize::MAX, None)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(all, vec![1, 2, 3]);
        let orders: Vec<u64> = store
            .read(1, 100, usize::MAX, Some("orders"))
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(orders, vec![1, 3]);
        let from2: Vec<u64> = store
            .read(2, 100, usize::MAX, Some("orders"))
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(from2, vec![3]);
        assert_eq!(store.lookup_txid(b"c").unwrap().unwrap().seq, 3);
        assert!(store.lookup_txid(b"zz").unwrap().is_none());
        assert_eq!(
            store.read(1, 2, usize::MAX, None).unwrap().len(),
            2,
            "limit is respected"
        );
        assert_eq!(
            store.read(1, 100, 1, None).unwrap().len(),
            1,
            "byte cap returns at least one record"
        );
    }

    /// Two stores given the same records agree on the chain at every seq; a store whose
    /// chain value was altered fails verification at that seq.
    #[test]
    fn hash_chain_matches_and_detects_divergence() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (
            RecordStore::open(d1.path()).unwrap(),
            RecordStore::open(d2.path()).unwrap(),
        );
        let mut batch = a.batch().unwrap();
        for i in 0..10 {
            batch
                .append(rec(&format!("t{i}"), "orders").borrowed(), 1, 1, 1, 7)
                .unwrap();
        }
        batch.commit().unwrap();
        // b gets the same records restored in two batches, as a snapshot install does.
        let records = a.read(1, 100, usize::MAX, None).unwrap();
        for part in records.chunks(4) {
            let mut batch = b.batch().unwrap();
            for r in part {
                batch.restore(r);
            }
            batch.commit().unwrap();
        }
        for seq in 0..=10 {
            assert_eq!(a.chain_at(seq).unwrap(), b.chain_at(seq).unwrap(), "seq {seq}");
        }
        assert_ne!(a.chain_at(9).unwrap(), a.chain_at(10).unwrap());
        assert_eq!(a.chain_at(11).unwrap(), None);
        let mut visited = 0;
        assert_eq!(
            a.verify_chain(10, |_| {
                visited += 1;
                Ok(())
            })
            .unwrap(),
            Ok(a.chain_at(10).unwrap().unwrap())
        );
        assert_eq!(visited, 10);
        assert_eq!(a.check_chain(10).unwrap(), a.verify_chain(10, |_| Ok(())).unwrap());
        b.set_chain_at(6, [9u8; 32]).unwrap();
        assert_eq!(
            b.check_chain(10).unwrap(),
            Err("hash chain differs from the records at seq 6".to_string())
        );
        assert_eq!(
            b.check_chain(12).unwrap().map(|_| ()),
            Err("hash chain differs from the records at seq 6".to_string())
        );
        let verdict = b.verify_chain(10, |_| Ok(())).unwrap();
        assert!(verdict.unwrap_err().contains("seq 6"));
    }

    /// The store's own metadata keys round-trip, and a typed key written in a batch reads back as its type.
    #[test]
    fn meta_keys_round_trip() {
        for value in [0u64, 1, 56, 1 << 40, u64::MAX] {
            assert_eq!(LAST_SEQ.decode(&LAST_SEQ.encode(&value)).unwrap(), value);
        }
        assert_eq!(
            STORE_FORMAT
                .decode(&STORE_FORMAT.encode(&STORE_FORMAT_VERSION))
                .unwrap(),
            STORE_FORMAT_VERSION
        );
        const APPLIED: MetaKey<Option<(u64, u64, u64)>> = MetaKey::new("applied", 1);
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        assert_eq!(store.get_meta(&APPLIED).unwrap(), None);
        let mut batch = store.batch().unwrap();
        batch.append(rec("a", "orders").borrowed(), 121, 1, 2000, 0).unwrap();
        batch.set_meta(&APPLIED, &Some((1, 2000, 121)));
        batch.commit().unwrap();
        drop(store);
        let store = RecordStore::open(dir.path()).unwrap();
        assert_eq!(store.get_meta(&APPLIED).unwrap(), Some(Some((1, 2000, 121))));
        assert_eq!(store.last_seq().unwrap(), 1);
    }

    /// A store written before metadata was versioned (no format key, bare values) is
    /// discarded on open instead of being misread; an empty store just gets the format.
    #[test]
    fn store_of_another_format_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("records").unwrap();
            tree.insert(b"mlast_seq", &56u64.to_be_bytes()).unwrap();
            tree.insert(b"mapplied", &[1u8, 1, 2, 0x88, 0x0f][..]).unwrap();
            db.flush().unwrap();
        }
        let store = RecordStore::open(dir.path()).unwrap();
        assert_eq!(store.last_seq().unwrap(), 0);
        assert_eq!(store.get_meta(&STORE_FORMAT).unwrap(), Some(STORE_FORMAT_VERSION));
        let mut batch = store.batch().unwrap();
        batch.append(rec("a", "orders").borrowed(), 1, 1, 1, 0).unwrap();
        batch.commit().unwrap();
        drop(store);
        let store = RecordStore::open(dir.path()).unwrap();
        assert_eq!(store.last_seq().unwrap(), 1, "a current store is kept as it is");
    }

    /// A crash after the record file was written but before sled indexed the
    /// batch: reopening cuts those records, and the re-applied batch gets
    /// the same seqs and chain.
    #[test]
    fn records_the_index_never_committed_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        let mut batch = store.batch().unwrap();
        for i in 0..5 {
            batch
                .append(rec(&format!("t{i}"), "orders").borrowed(), 1, 1, 1, 0)
                .unwrap();
        }
        batch.commit().unwrap();
        let (_, chain5) = store.file.tail();
        let mut frames = Frames::default();
        let mut chain = chain5;
        for seq in 6..=8 {
            chain = frames.push_stored(&chain, &StoredRecord::for_test(seq, 10));
        }
        store.file.write(&frames, chain).unwrap();
        drop(store);

        let store = RecordStore::open(dir.path()).unwrap();
        assert_eq!(store.last_seq().unwrap(), 5);
        assert_eq!(store.chain_at(5).unwrap(), Some(chain5));
        let mut batch = store.batch().unwrap();
        let again = batch.append(rec("t5", "orders").borrowed(), 2, 1, 1, 0).unwrap();
        batch.commit().unwrap();
        assert_eq!((again.seq, again.channel_seq, again.duplicate), (6, 6, false));
        assert_eq!(store.get(6).unwrap().unwrap().txid, b"t5");
        assert_eq!(store.verify_chain(6, |_| Ok(())).unwrap().map(|_| ()), Ok(()));
    }

    /// A record file that lost records its index holds (power loss) is not
    /// trusted: the store opens empty, to be rebuilt from snapshot and WAL.
    #[test]
    fn record_file_behind_the_index_discards_the_store() {
        const APPLIED: MetaKey<u64> = MetaKey::new("applied", 1);
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        let mut batch = store.batch().unwrap();
        for i in 0..4 {
            batch
                .append(rec(&format!("t{i}"), "orders").borrowed(), 1, 1, 1, 0)
                .unwrap();
        }
        batch.set_meta(&APPLIED, &9);
        batch.commit().unwrap();
        drop(store);
        let segment = dir.path().join("segments").join(format!("{:020}.rec", 1));
        let bytes = std::fs::read(&segment).unwrap();
        std::fs::write(&segment, &bytes[..bytes.len() - 1]).unwrap();

        let store = RecordStore::open(dir.path()).unwrap();
        assert_eq!(store.last_seq().unwrap(), 0);
        assert_eq!(
            store.get_meta(&APPLIED).unwrap(),
            None,
            "applied id goes with the records"
        );
        assert!(store.lookup_txid(b"t0").unwrap().is_none());
    }

    /// The channel index holds runs of seqs: reads by channel starting anywhere —
    /// inside a run, between runs, across batches and across runs longer than
    /// [`CHANNEL_RUN_SEQS_MAX`] — return exactly that channel's records in order.
    #[test]
    fn channel_reads_across_runs_and_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(dir.path()).unwrap();
        let channel_of = |i: usize| if i.is_multiple_of(3) { "fills" } else { "orders" };
        let mut n = 0usize;
        for batch_len in [5usize, 3 * CHANNEL_RUN_SEQS_MAX + 7, 1, 40] {
            let mut batch = store.batch().unwrap();
            for _ in 0..batch_len {
                batch
                    .append(rec(&format!("t{n}"), channel_of(n)).borrowed(), 1, 1, 1, 0)
                    .unwrap();
                n += 1;
            }
            batch.commit().unwrap();
        }
        let expected = |channel: &str, from: u64| -> Vec<(u64, u64)> {
            let seqs: Vec<u64> = (0..n)
                .filter(|&i| channel_of(i) == channel)
                .map(|i| i as u64 + 1)
                .collect();
            seqs.iter()
                .enumerate()
                .map(|(i, &seq)| (seq, i as u64 + 1))
                .filter(|&(seq, _)| seq >= from)
                .collect()
        };
        for channel in ["fills", "orders"] {
            for from in [
                0u64,
                1,
                2,
                5,
                6,
                7,
                500,
                1031,
                1032,
                2000,
                3079,
                3080,
                n as u64,
                n as u64 + 1,
            ] {
                let got: Vec<(u64, u64)> = store
                    .read(from, usize::MAX, usize::MAX, Some(channel))
                    .unwrap()
                    .iter()
                    .map(|r| (r.seq, r.channel_seq))
                    .collect();
                assert_eq!(got, expected(channel, from), "{channel} from {from}");
            }
            let limited = store.read(700, 10, usize::MAX, Some(channel)).unwrap();
            assert_eq!(limited.len(), 10);
            assert!(limited.iter().all(|r| r.channel == channel && r.seq >= 700));
        }
        assert!(store.read(1, 10, usize::MAX, Some("none")).unwrap().is_empty());
        for channel in ["fills", "orders"] {
            let last = expected(channel, 0).last().map(|&(seq, _)| seq);
            assert_eq!(store.last_seq_of_channel(channel).unwrap(), last, "{channel}");
        }
        assert_eq!(store.last_seq_of_channel("none").unwrap(), None);
        assert_eq!(
            store.last_seq_of_channel("fill").unwrap(),
            None,
            "a prefix of a channel is not it"
        );
    }

    /// The channel-run index values round-trip, and malformed ones are refused.
    #[test]
    fn index_values_round_trip() {
        for run in [
            vec![1u64],
            vec![5, 9, 10, u64::MAX],
            (1..=CHANNEL_RUN_SEQS_MAX as u64).collect(),
        ] {
            let decoded: Vec<u64> = decode_channel_run(&encode_channel_run(&run)).unwrap().collect();
            assert_eq!(decoded, run);
        }
        let runs = |runs: &[(u64, u64)]| postcard::to_allocvec(runs).unwrap();
        let mut trailing = encode_channel_run(&[3]);
        trailing.push(0);
        for bad in [
            vec![],
            vec![0x80],
            trailing,
            runs(&[]),
            runs(&[(u64::MAX, 1)]),
            runs(&[(5, 0), (5, 0)]),
            runs(&[(9, 0), (5, 0)]),
            runs(&[(1, CHANNEL_RUN_SEQS_MAX as u64)]),
        ] {
            assert!(decode_channel_run(&bad).is_err(), "{bad:?}");
        }
        // A batch's consecutive seqs on one channel take a few bytes.
        let consecutive: Vec<u64> = (1_000_000..1_001_024).collect();
        assert!(encode_channel_run(&consecutive).len() <= 8);
    }

    /// Channel names outside [a-z0-9][a-z0-9._-]{0,63} are rejected.
    #[test]
    fn channel_name_validation() {
        for ok in ["market-data", "order-book", "execution", "a", "x.y_z-1"] {
            assert!(ChannelName::parse(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in ["", "-x", "Upper", "with space", "nul\0", "é", long.as_str()] {
            assert!(ChannelName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
