//! The record file: every committed record, append-only, in sequence order.
//!
//! Record bodies live here, not in sled: a record is written once, as one
//! frame appended to the active segment, and never rewritten (outside the
//! test-only [`RecordFile::set_chain_at`]). sled keeps only the channel
//! index and metadata; the txid index is here, in memory (below).
//!
//! Layout: segment files `<first seq, 20 digits>.rec` (see [`crate::segment`]
//! for the header), each frame `len u32 | crc32 u32 | chain [32] | record`,
//! where `record` is [`StoredRecord`]'s versioned encoding and `chain` the
//! hash chain at that record's seq. The checksum covers chain and record, so
//! a read checks both. A segment is closed once it reaches its size limit;
//! a closed segment gets a sidecar `<first seq>.idx` with the offset of each
//! of its frames and the [`txid_hash`] of each of its records, so opening a
//! store of any size reads those small files and scans only the active
//! segment.
//!
//! **Txid index.** Every written record's txid hash maps to its seq in a
//! hash map (a hash shared by several txids keeps all their seqs); a lookup
//! reads the candidate records and compares their txids, so a collision
//! costs a read, never a wrong answer. It replaced sled's `t` + txid keys,
//! whose insert and lookup were the largest CPU cost of applying a record.
//!
//! The file is a cache of the Raft log like the rest of the record store:
//! nothing here is fsynced per write. A record is *published* (visible to
//! readers) only after the sled batch that indexes it is applied, and on
//! open the caller cuts the file back to the store's last applied seq; if
//! the file holds fewer records than that (a power loss ate its tail) the
//! caller discards the store and rebuilds it from the snapshot and WAL.
//!
//! In memory: twelve bytes per record (its offset in its segment and its
//! txid hash) plus about twenty in the txid map.

use std::collections::HashMap;
use std::fs::File;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;

use crate::error::Error;
use crate::error::Result;
use crate::frame;
use crate::linked_snapshot;
use crate::record_store::ChainHash;
use crate::record_store::StoredRecord;
use crate::record_store::StoredRecordRef;
use crate::segment;

/// Default size at which the active record segment is closed.
pub const RECORD_SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

/// Largest segment size accepted: offsets are u32, and a segment may run
/// one record past its limit.
pub const RECORD_SEGMENT_BYTES_MAX_LIMIT: u64 = u32::MAX as u64 - crate::WAL_RECORD_BYTES_MAX as u64 - 64;

const CHAIN_BYTES: usize = 32;
/// Extension of a segment prefix being copied to a new inode (see
/// [`copy_prefix`]); a leftover is removed on open.
const CUT_EXTENSION: &str = "cut";
const INDEX_MAGIC: &[u8; 8] = b"TXLOGRIX";
/// Version 2 added the txid hashes; a version-1 index is stale (the segment
/// is scanned and its index written again).
const INDEX_VERSION: u32 = 2;
/// `magic | version u32 | count u32 | first_seq u64 | segment end u64`,
/// then `count` offsets (u32), `count` txid hashes (u64), and a crc32.
const INDEX_HEADER_BYTES: usize = 32;
/// Bytes read at a time by sequential readers (chain checks, restores).
pub(crate) const READ_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// Frames for a run of records, built by an apply batch before they are
/// written: the record is encoded once, straight into this buffer, and the
/// chain is computed over those bytes.
#[derive(Default)]
pub(crate) struct Frames {
    buf: Vec<u8>,
    /// End offset (in `buf`) of each frame.
    ends: Vec<usize>,
    /// [`txid_hash`] of each frame's record.
    hashes: Vec<u64>,
    /// Txid hash → the first frame with it.
    by_hash: PassThroughMap<usize>,
}

impl Frames {
    /// Append `record`'s frame; `txid_hash` is [`txid_hash`] of its txid.
    /// Returns the chain at its seq.
    pub(crate) fn push(&mut self, previous: &ChainHash, record: &StoredRecordRef<'_>, txid_hash: u64) -> ChainHash {
        let start = self.buf.len();
        self.by_hash.entry(txid_hash).or_insert(self.hashes.len());
        self.hashes.push(txid_hash);
        self.buf.resize(start + frame::FRAME_HEADER_BYTES + CHAIN_BYTES, 0);
        let body_start = self.buf.len();
        self.buf = record.encode_into(std::mem::take(&mut self.buf));
        let chain = crate::record_store::chain_of(previous, &self.buf[body_start..]);
        let chain_at = start + frame::FRAME_HEADER_BYTES;
        self.buf[chain_at..body_start].copy_from_slice(&chain);
        let len = (self.buf.len() - chain_at) as u32;
        assert!(len <= crate::WAL_RECORD_BYTES_MAX, "record of {len} bytes is too large");
        let crc = crc32fast::hash(&self.buf[chain_at..]);
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 4..chain_at].copy_from_slice(&crc.to_le_bytes());
        self.ends.push(self.buf.len());
        chain
    }

    /// [`Frames::push`] of an owned record (tests).
    #[cfg(test)]
    pub(crate) fn push_stored(&mut self, previous: &ChainHash, record: &StoredRecord) -> ChainHash {
        self.push(previous, &record.borrowed(), txid_hash(&record.txid))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The record among these frames with `txid` (whose hash is `hash`).
    /// Only a hash match decodes a frame.
    pub(crate) fn find_txid(&self, hash: u64, txid: &[u8]) -> Result<Option<StoredRecord>> {
        let Some(&first) = self.by_hash.get(&hash) else {
            return Ok(None);
        };
        for i in first..self.hashes.len() {
            if self.hashes[i] != hash {
                continue;
            }
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            let body = &self.buf[start + frame::FRAME_HEADER_BYTES + CHAIN_BYTES..self.ends[i]];
            let record = StoredRecord::decode(body)?;
            if record.txid == txid {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }
}

/// The txid index's hash of `txid`: the first 8 bytes of its SHA-256. It is
/// stored in segment indexes, so it must never change between builds (a
/// std hasher may); a cryptographic hash also keeps clients from choosing
/// txids that collide.
pub(crate) fn txid_hash(txid: &[u8]) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(txid);
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Keys of the txid map are already uniform hashes: hashing them again
/// would only cost time.
#[derive(Default, Clone, Copy)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type PassThroughMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<PassThrough>>;

/// Txid hash → seqs of the written records with that hash.
#[derive(Default)]
struct TxidIndex {
    /// The first seq per hash.
    first: PassThroughMap<u64>,
    /// Further seqs of a hash several txids share (rare).
    more: PassThroughMap<Vec<u64>>,
}

impl TxidIndex {
    fn insert(&mut self, hash: u64, seq: u64) {
        match self.first.entry(hash) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(seq);
            }
            std::collections::hash_map::Entry::Occupied(_) => self.more.entry(hash).or_default().push(seq),
        }
    }

    fn remove(&mut self, hash: u64, seq: u64) {
        if self.first.get(&hash) == Some(&seq) {
            match self.more.get_mut(&hash).and_then(Vec::pop) {
                Some(next) => {
                    self.first.insert(hash, next);
                }
                None => {
                    self.first.remove(&hash);
                }
            }
        } else if let Some(seqs) = self.more.get_mut(&hash) {
            seqs.retain(|&s| s != seq);
        }
        if self.more.get(&hash).is_some_and(Vec::is_empty) {
            self.more.remove(&hash);
        }
    }

    fn candidates(&self, hash: u64) -> impl Iterator<Item = u64> + '_ {
        let more = self.more.get(&hash).map(Vec::as_slice).unwrap_or_default();
        self.first.get(&hash).copied().into_iter().chain(more.iter().copied())
    }

    fn add_segment(&mut self, segment: &Segment) {
        for (i, &hash) in segment.hashes.iter().enumerate() {
            self.insert(hash, segment.first_seq + i as u64);
        }
    }

    /// Forget records `from..` of `segment`.
    fn remove_from(&mut self, segment: &Segment, from: u64) {
        let skip = from.saturating_sub(segment.first_seq) as usize;
        for (i, &hash) in segment.hashes.iter().enumerate().skip(skip) {
            self.remove(hash, segment.first_seq + i as u64);
        }
    }
}

/// Split a checked frame body into its chain value and record.
pub(crate) fn decode_body(path: &Path, body: &[u8]) -> Result<(ChainHash, StoredRecord)> {
    let Some((chain, record)) = body.split_first_chunk::<CHAIN_BYTES>() else {
        return Err(Error::corruption(path, "record frame shorter than its chain value"));
    };
    Ok((*chain, StoredRecord::decode(record)?))
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Offset of the frame of record `first_seq + i`.
    offsets: Vec<u32>,
    /// [`txid_hash`] of record `first_seq + i`.
    hashes: Vec<u64>,
    /// End of the last whole frame.
    end: u64,
}

impl Segment {
    /// One past the last seq this segment holds.
    fn next_seq(&self) -> u64 {
        self.first_seq + self.offsets.len() as u64
    }

    fn frame_start(&self, seq: u64) -> u64 {
        u64::from(self.offsets[(seq - self.first_seq) as usize])
    }

    fn frame_end(&self, seq: u64) -> u64 {
        match self.offsets.get((seq - self.first_seq + 1) as usize) {
            Some(&next) => u64::from(next),
            None => self.end,
        }
    }
}

struct State {
    /// Never empty; the last one is the active segment.
    segments: Vec<Segment>,
    /// Highest seq readers may see.
    published: u64,
    /// Chain at the last written seq (published or not).
    last_chain: ChainHash,
    /// Every written record's txid.
    txids: TxidIndex,
}

impl State {
    fn active(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a record file always has an active segment")
    }

    fn last_written(&self) -> u64 {
        self.segments.last().expect("an active segment").next_seq() - 1
    }

    fn segment_of(&self, seq: u64) -> Option<&Segment> {
        let at = self.segments.partition_point(|s| s.first_seq <= seq);
        let segment = self.segments.get(at.checked_sub(1)?)?;
        (seq < segment.next_seq()).then_some(segment)
    }

    /// The chain stored with the last written record, read from its frame
    /// (zeros when the file is empty).
    fn read_last_chain(&self) -> Result<ChainHash> {
        let seq = self.last_written();
        let mut chain = [0u8; CHAIN_BYTES];
        if seq > 0 {
            let segment = self.segment_of(seq).expect("the last written seq is in a segment");
            span(segment, seq, seq).visit(|value, _| {
                chain = value;
                Ok(())
            })?;
        }
        Ok(chain)
    }
}

/// A contiguous run of frames in one segment, located under the lock and
/// read after it is released.
struct Span {
    path: PathBuf,
    file: Arc<File>,
    first_seq: u64,
    count: u64,
    start: u64,
    end: u64,
}

impl Span {
    /// Read the span and visit each record's seq, stored chain value and
    /// encoded bytes (what the hash chain is computed over), checking
    /// every frame; nothing is decoded.
    fn visit_encoded(&self, mut visit: impl FnMut(u64, ChainHash, &[u8]) -> Result<()>) -> Result<()> {
        let mut buf = vec![0u8; (self.end - self.start) as usize];
        self.file
            .read_exact_at(&mut buf, self.start)
            .map_err(|e| Error::io(&self.path, e))?;
        let mut at = 0usize;
        for i in 0..self.count {
            let seq = self.first_seq + i;
            match frame::decode(&buf[at..]) {
                frame::Decoded::Frame { body, frame_bytes } => {
                    let Some((chain, encoded)) = body.split_first_chunk::<CHAIN_BYTES>() else {
                        return Err(Error::corruption(
                            &self.path,
                            "record frame shorter than its chain value",
                        ));
                    };
                    visit(seq, *chain, encoded)?;
                    at += frame_bytes;
                }
                frame::Decoded::Incomplete => {
                    return Err(Error::corruption(&self.path, format!("record {seq} is cut short")));
                }
                frame::Decoded::Invalid { detail, .. } => {
                    return Err(Error::corruption(&self.path, format!("record {seq}: {detail}")));
                }
            }
        }
        Ok(())
    }

    /// [`Self::visit_encoded`] with each record decoded.
    fn visit(&self, mut visit: impl FnMut(ChainHash, StoredRecord) -> Result<()>) -> Result<()> {
        self.visit_encoded(|seq, chain, encoded| visit(chain, decode_record(&self.path, seq, encoded)?))
    }
}

/// Decode the record stored for `seq` (in the segment at `path`), checking
/// it is that seq's.
pub(crate) fn decode_record(path: &Path, seq: u64, encoded: &[u8]) -> Result<StoredRecord> {
    let record = StoredRecord::decode(encoded)?;
    if record.seq != seq {
        return Err(Error::corruption(
            path,
            format!("frame for seq {seq} holds seq {}", record.seq),
        ));
    }
    Ok(record)
}

/// The record file of one store.
pub(crate) struct RecordFile {
    dir: PathBuf,
    segment_bytes_max: u64,
    state: RwLock<State>,
}

impl RecordFile {
    /// Open (or create) the record file in `dir`. Closed segments are taken
    /// from their index when it is whole; the active segment is scanned and
    /// a torn tail cut off. Damage anywhere else is [`Error::Corruption`].
    /// Every record found is published: the caller cuts back to what its
    /// index holds with [`RecordFile::truncate_after`].
    pub(crate) fn open(dir: &Path, segment_bytes_max: u64) -> Result<Self> {
        if segment_bytes_max == 0 || segment_bytes_max > RECORD_SEGMENT_BYTES_MAX_LIMIT {
            return Err(Error::InvalidInput(format!(
                "record segment size must be 1..={RECORD_SEGMENT_BYTES_MAX_LIMIT} bytes, got {segment_bytes_max}"
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        remove_cut_leftovers(dir)?;
        let firsts = segment::RECORDS.list(dir)?;
        let mut segments: Vec<Segment> = Vec::with_capacity(firsts.len().max(1));
        for (position, &first_seq) in firsts.iter().enumerate() {
            let expected = segments.last().map(Segment::next_seq).unwrap_or(1);
            let path = segment::RECORDS.path(dir, first_seq);
            if first_seq != expected {
                return Err(Error::corruption(
                    &path,
                    format!("segment starts at seq {first_seq}, expected {expected}"),
                ));
            }
            let is_last = position + 1 == firsts.len();
            let indexed = if is_last { None } else { read_index(dir, first_seq) };
            let Indexed { offsets, hashes, end } = match indexed {
                Some(found) => found,
                None => {
                    let scanned = scan_segment(dir, &path, first_seq, is_last)?;
                    if !is_last {
                        write_index(dir, first_seq, &scanned)?;
                    }
                    scanned
                }
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            segments.push(Segment {
                first_seq,
                path,
                file: Arc::new(file),
                offsets,
                hashes,
                end,
            });
        }
        if segments.is_empty() {
            segments.push(create_segment(dir, 1)?);
        }
        let mut txids = TxidIndex::default();
        segments.iter().for_each(|segment| txids.add_segment(segment));
        let mut state = State {
            segments,
            published: 0,
            last_chain: [0u8; CHAIN_BYTES],
            txids,
        };
        state.published = state.last_written();
        state.last_chain = state.read_last_chain()?;
        let file = RecordFile {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            state: RwLock::new(state),
        };
        Ok(file)
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().expect("record file lock poisoned")
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().expect("record file lock poisoned")
    }

    /// Highest published seq (0 when empty).
    pub(crate) fn published(&self) -> u64 {
        self.read_state().published
    }

    /// Highest written seq and the chain there: where the next batch starts.
    pub(crate) fn tail(&self) -> (u64, ChainHash) {
        let state = self.read_state();
        (state.last_written(), state.last_chain)
    }

    /// Append `frames` (records `last written + 1 ..`) without publishing
    /// them; `last_chain` is the chain at the last of them.
    /// A failed write leaves nothing behind: the unpublished tail is cut.
    /// There is one writer (the apply path); the file IO runs outside the
    /// state lock, which readers on async workers take, so a segment close
    /// (a 64 MiB fdatasync) never holds them up.
    pub(crate) fn write(&self, frames: &Frames, last_chain: ChainHash) -> Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        if let Err(err) = self.write_frames(frames) {
            let published = self.published();
            if let Err(cut) = self.truncate_after(published) {
                tracing::error!(%cut, "could not cut a failed record-file write");
            }
            return Err(err);
        }
        self.write_state().last_chain = last_chain;
        Ok(())
    }

    fn write_frames(&self, frames: &Frames) -> Result<()> {
        let mut next_frame = 0usize;
        while next_frame < frames.ends.len() {
            let (file, path, segment_end, full) = {
                let state = self.read_state();
                let active = state.segments.last().expect("an active segment");
                let full = active.end >= self.segment_bytes_max && !active.offsets.is_empty();
                (active.file.clone(), active.path.clone(), active.end, full)
            };
            if full {
                self.roll()?;
                continue;
            }
            // Frames up to the one that reaches the segment limit go here.
            let start = if next_frame == 0 {
                0
            } else {
                frames.ends[next_frame - 1]
            };
            let mut offsets = Vec::new();
            let first_frame = next_frame;
            let mut end = start;
            while next_frame < frames.ends.len() {
                offsets.push((segment_end + (end - start) as u64) as u32);
                end = frames.ends[next_frame];
                next_frame += 1;
                if segment_end + (end - start) as u64 >= self.segment_bytes_max {
                    break;
                }
            }
            file.write_all_at(&frames.buf[start..end], segment_end)
                .map_err(|e| Error::io(&path, e))?;
            let hashes = &frames.hashes[first_frame..next_frame];
            let mut state = self.write_state();
            let active = state.active();
            let first_seq = active.next_seq();
            active.offsets.extend(offsets);
            active.hashes.extend_from_slice(hashes);
            active.end = segment_end + (end - start) as u64;
            for (i, &hash) in hashes.iter().enumerate() {
                state.txids.insert(hash, first_seq + i as u64);
            }
        }
        Ok(())
    }

    /// Close the full active segment (fdatasync, then its index; both
    /// outside the state lock) and start the next one.
    fn roll(&self) -> Result<()> {
        let (closing, next) = {
            let state = self.read_state();
            let active = state.segments.last().expect("an active segment");
            let closing = (
                active.first_seq,
                active.path.clone(),
                active.file.clone(),
                Indexed {
                    offsets: active.offsets.clone(),
                    hashes: active.hashes.clone(),
                    end: active.end,
                },
            );
            (closing, active.next_seq())
        };
        let (first_seq, path, file, indexed) = closing;
        if let Err(err) = file.sync_data() {
            crate::fatal_fsync_failure(&path.display().to_string(), &err);
        }
        write_index(&self.dir, first_seq, &indexed)?;
        let created = create_segment(&self.dir, next)?;
        self.write_state().segments.push(created);
        Ok(())
    }

    /// fdatasync the active segment (closed ones were synced when closed).
    pub(crate) fn sync(&self) {
        let state = self.read_state();
        let active = state.segments.last().expect("an active segment");
        if let Err(err) = active.file.sync_data() {
            crate::fatal_fsync_failure(&active.path.display().to_string(), &err);
        }
    }

    /// Make records up to `seq` visible to readers.
    pub(crate) fn publish(&self, seq: u64) {
        let mut state = self.write_state();
        assert!(seq <= state.last_written(), "publishing records not written");
        state.published = seq;
    }

    /// Remove every record after `seq` (unpublished ones included).
    pub(crate) fn truncate_after(&self, seq: u64) -> Result<()> {
        let mut state = self.write_state();
        if seq >= state.last_written() {
            return Ok(());
        }
        let state = &mut *state;
        while state.segments.len() > 1 && state.active().first_seq > seq {
            let removed = state.segments.pop().expect("more than one segment");
            state.txids.remove_from(&removed, removed.first_seq);
            remove_segment(&self.dir, &removed)?;
        }
        let active = state.segments.last_mut().expect("an active segment");
        state.txids.remove_from(active, seq + 1);
        if active.first_seq > seq {
            // Only the first segment is left and all of it goes.
            let first = active.first_seq;
            let removed = state.segments.pop().expect("one segment");
            remove_segment(&self.dir, &removed)?;
            state.segments.push(create_segment(&self.dir, first)?);
        } else {
            let keep = (seq + 1 - active.first_seq) as usize;
            let end = active.frame_end(seq);
            active.offsets.truncate(keep);
            active.hashes.truncate(keep);
            active.end = end;
            // A linked snapshot covers published records only: a cut at or
            // above the published seq (a failed write) is past its end.
            if seq < state.published && shares_inode(&active.path)? {
                // A linked snapshot holds this segment under another name
                // and may cover bytes being cut: the store keeps its prefix
                // in a new inode and leaves the shared one whole.
                active.file = Arc::new(copy_prefix(&active.path, end)?);
            } else {
                segment::cut_tail(&active.path, end)?;
            }
            remove_index(&self.dir, active.first_seq)?;
        }
        crate::fsync_dir(&self.dir)?;
        state.published = state.published.min(seq);
        state.last_chain = state.read_last_chain()?;
        Ok(())
    }

    /// What a linked snapshot of records `1..=upto` shares: every segment
    /// holding one of them with the end of its last frame at or below
    /// `upto`, and the chain at `upto`. All of them must be published.
    pub(crate) fn snapshot_sources(&self, upto: u64) -> Result<(Vec<linked_snapshot::Source>, ChainHash)> {
        let sources: Vec<linked_snapshot::Source> = {
            let state = self.read_state();
            if upto > state.published {
                return Err(Error::InvalidInput(format!(
                    "snapshot up to seq {upto} asked for; only {} are published",
                    state.published
                )));
            }
            state
                .segments
                .iter()
                .take_while(|segment| segment.first_seq <= upto && !segment.offsets.is_empty())
                .map(|segment| linked_snapshot::Source {
                    first_seq: segment.first_seq,
                    path: segment.path.clone(),
                    file: segment.file.clone(),
                    end: segment.frame_end(upto.min(segment.next_seq() - 1)),
                })
                .collect()
        };
        let chain = match upto {
            0 => [0u8; CHAIN_BYTES],
            _ => match self.get(upto)? {
                Some((chain, _)) => chain,
                None => return Err(Error::InvalidInput(format!("record {upto} is not stored"))),
            },
        };
        Ok((sources, chain))
    }

    /// The record at `seq` and the chain there, if published.
    pub(crate) fn get(&self, seq: u64) -> Result<Option<(ChainHash, StoredRecord)>> {
        let Some(span) = self.span(seq, seq, u64::MAX) else {
            return Ok(None);
        };
        let mut found = None;
        span.visit(|chain, record| {
            found = Some((chain, record));
            Ok(())
        })?;
        Ok(found)
    }

    /// The published record with `txid`, whose [`txid_hash`] is `hash`.
    pub(crate) fn find_txid(&self, hash: u64, txid: &[u8]) -> Result<Option<StoredRecord>> {
        let candidates: Vec<u64> = {
            let state = self.read_state();
            state
                .txids
                .candidates(hash)
                .filter(|&seq| seq <= state.published)
                .collect()
        };
        for seq in candidates {
            if let Some((_, record)) = self.get(seq)? {
                if record.txid == txid {
                    return Ok(Some(record));
                }
            }
        }
        Ok(None)
    }

    /// Visit published records `from..=upto` in order, reading about
    /// `chunk_bytes` at a time (at least one record per read). Stops early
    /// when `visit` returns `false`.
    pub(crate) fn for_each(
        &self,
        from: u64,
        upto: u64,
        chunk_bytes: u64,
        mut visit: impl FnMut(ChainHash, StoredRecord) -> Result<bool>,
    ) -> Result<()> {
        self.for_each_encoded(from, upto, chunk_bytes, |path, seq, chain, encoded| {
            visit(chain, decode_record(path, seq, encoded)?)
        })
    }

    /// [`Self::for_each`] with each record's seq and encoded bytes, not
    /// decoded (see `Span::visit_encoded`), and the path of its segment.
    pub(crate) fn for_each_encoded(
        &self,
        from: u64,
        upto: u64,
        chunk_bytes: u64,
        mut visit: impl FnMut(&Path, u64, ChainHash, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mut next = from.max(1);
        while next <= upto {
            let Some(span) = self.span(next, upto, chunk_bytes) else {
                return Ok(());
            };
            let mut stop = false;
            span.visit_encoded(|seq, chain, encoded| {
                if !stop && !visit(&span.path, seq, chain, encoded)? {
                    stop = true;
                }
                Ok(())
            })?;
            if stop {
                return Ok(());
            }
            next += span.count;
        }
        Ok(())
    }

    /// Overwrite the chain value stored with record `seq`, keeping its frame
    /// valid (tests use it to simulate a node whose records diverged). It
    /// writes in place, so a linked snapshot sharing the segment sees the
    /// same change.
    pub(crate) fn set_chain_at(&self, seq: u64, value: ChainHash) -> Result<()> {
        let Some((_, record)) = self.get(seq)? else {
            return Err(Error::InvalidInput(format!("record {seq} is not stored")));
        };
        let mut state = self.write_state();
        let segment = state.segment_of(seq).expect("a stored record is in a segment");
        let start = segment.frame_start(seq);
        let mut body = value.to_vec();
        body = record.borrowed().encode_into(body);
        let mut frame_bytes = Vec::with_capacity(body.len() + frame::FRAME_HEADER_BYTES);
        frame::encode_into(&mut frame_bytes, &body);
        segment
            .file
            .write_all_at(&frame_bytes, start)
            .map_err(|e| Error::io(&segment.path, e))?;
        if seq == state.last_written() {
            state.last_chain = value;
        }
        Ok(())
    }

    /// Locate published records `from..=upto` from the first one's segment:
    /// as many as fit in about `bytes_max` bytes, at least one.
    fn span(&self, from: u64, upto: u64, bytes_max: u64) -> Option<Span> {
        let state = self.read_state();
        let upto = upto.min(state.published);
        if from == 0 || from > upto {
            return None;
        }
        let segment = state.segment_of(from)?;
        let mut last = upto.min(segment.next_seq() - 1);
        let start = segment.frame_start(from);
        let limit = start.saturating_add(bytes_max);
        if segment.frame_end(last) > limit {
            // The largest `last` whose frame ends within `bytes_max` of
            // `start`; frame `k` ends where frame `k + 1` starts.
            let from_i = (from - segment.first_seq) as usize;
            let last_i = (last - segment.first_seq) as usize;
            let ends = &segment.offsets[from_i + 1..=last_i];
            let fits = ends.partition_point(|&o| u64::from(o) <= limit);
            last = from + fits.saturating_sub(1) as u64;
        }
        Some(span(segment, from, last))
    }
}

fn span(segment: &Segment, from: u64, last: u64) -> Span {
    Span {
        path: segment.path.clone(),
        file: segment.file.clone(),
        first_seq: from,
        count: last - from + 1,
        start: segment.frame_start(from),
        end: segment.frame_end(last),
    }
}

/// Remove segment prefixes whose copy a crash interrupted: the segment
/// they were cut from is still whole under its own name.
fn remove_cut_leftovers(dir: &Path) -> Result<()> {
    for dirent in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = dirent.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|x| x == CUT_EXTENSION) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Whether another name (a linked snapshot) shares the file's inode.
fn shares_inode(path: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path).map_err(|e| Error::io(path, e))?.nlink() > 1)
}

/// Replace the file at `path` with a new inode holding its first `bytes`
/// bytes (written to `<path>.cut`, fsynced, renamed over `path`, directory
/// fsynced); the old inode stays whole for its other names. Returns the
/// new file, open for reading and writing.
fn copy_prefix(path: &Path, bytes: u64) -> Result<File> {
    let tmp = path.with_extension(CUT_EXTENSION);
    let source = File::open(path).map_err(|e| Error::io(path, e))?;
    let target = segment::copy_head(&source, path, bytes, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    crate::fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(target)
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment> {
    let file = segment::create(&segment::RECORDS, dir, first_seq)?;
    Ok(Segment {
        first_seq,
        path: segment::RECORDS.path(dir, first_seq),
        file: Arc::new(file),
        offsets: Vec::new(),
        hashes: Vec::new(),
        end: segment::SEGMENT_HEADER_BYTES,
    })
}

/// What a segment's index holds: each record's frame offset and txid
/// hash, and the end of the last frame.
struct Indexed {
    offsets: Vec<u32>,
    hashes: Vec<u64>,
    end: u64,
}

fn remove_segment(dir: &Path, segment: &Segment) -> Result<()> {
    remove_index(dir, segment.first_seq)?;
    std::fs::remove_file(&segment.path).map_err(|e| Error::io(&segment.path, e))
}

fn index_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.idx"))
}

fn remove_index(dir: &Path, first_seq: u64) -> Result<()> {
    let path = index_path(dir, first_seq);
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, err)),
        _ => Ok(()),
    }
}

/// Write the index of a closed segment: header, offsets, txid hashes, crc32 of all.
fn write_index(dir: &Path, first_seq: u64, indexed: &Indexed) -> Result<()> {
    let path = index_path(dir, first_seq);
    let count = indexed.offsets.len();
    let mut bytes = Vec::with_capacity(INDEX_HEADER_BYTES + count * 12 + 4);
    bytes.extend_from_slice(INDEX_MAGIC);
    bytes.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(count as u32).to_le_bytes());
    bytes.extend_from_slice(&first_seq.to_le_bytes());
    bytes.extend_from_slice(&indexed.end.to_le_bytes());
    for offset in &indexed.offsets {
        bytes.extend_from_slice(&offset.to_le_bytes());
    }
    for hash in &indexed.hashes {
        bytes.extend_from_slice(&hash.to_le_bytes());
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    if let Err(err) = file.sync_all() {
        crate::fatal_fsync_failure(&path.display().to_string(), &err);
    }
    Ok(())
}

/// A closed segment's index, or `None` when it is missing, damaged, of an
/// older version or does not match the segment file (then the segment is
/// scanned instead).
fn read_index(dir: &Path, first_seq: u64) -> Option<Indexed> {
    let path = index_path(dir, first_seq);
    let bytes = std::fs::read(&path).ok()?;
    let (body, crc) = bytes.split_last_chunk::<4>()?;
    let (header, entries) = body.split_first_chunk::<INDEX_HEADER_BYTES>()?;
    let field = |range: std::ops::Range<usize>| &header[range];
    let ok = crc32fast::hash(body) == u32::from_le_bytes(*crc)
        && field(0..8) == INDEX_MAGIC
        && field(8..12) == INDEX_VERSION.to_le_bytes()
        && field(16..24) == first_seq.to_le_bytes();
    let count = u32::from_le_bytes(field(12..16).try_into().expect("4 bytes")) as usize;
    let end = u64::from_le_bytes(field(24..32).try_into().expect("8 bytes"));
    let segment_bytes = std::fs::metadata(segment::RECORDS.path(dir, first_seq)).ok()?.len();
    if !ok || entries.len() != count * 12 || count == 0 || end != segment_bytes {
        tracing::warn!(path = %path.display(), "record segment index is damaged, stale or of an older version; scanning the segment");
        return None;
    }
    let (offsets, hashes) = entries.split_at(count * 4);
    Some(Indexed {
        offsets: offsets
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect(),
        hashes: hashes
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        end,
    })
}

/// Scan a segment's frames, checking each (see [`segment::recover`] for
/// what is repaired); returns what its index would hold. A segment whose
/// creation was cut off is created again.
fn scan_segment(dir: &Path, path: &Path, first_seq: u64, is_last: bool) -> Result<Indexed> {
    let mut offsets = Vec::new();
    let mut hashes = Vec::new();
    let recovered = segment::recover(&segment::RECORDS, dir, first_seq, is_last, |offset, body| {
        let (_, record) = decode_body(path, body)?;
        let expected = first_seq + offsets.len() as u64;
        if record.seq != expected {
            return Err(Error::corruption(
                path,
                format!("record at offset {offset} has seq {}, expected {expected}", record.seq),
            ));
        }
        offsets.push(offset as u32);
        hashes.push(txid_hash(&record.txid));
        Ok(())
    })?;
    match recovered {
        segment::Recovered::Valid { valid_bytes } => Ok(Indexed {
            offsets,
            hashes,
            end: valid_bytes,
        }),
        segment::Recovered::Removed => {
            create_segment(dir, first_seq)?;
            Ok(Indexed {
                offsets: Vec::new(),
                hashes: Vec::new(),
                end: segment::SEGMENT_HEADER_BYTES,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small segments so a few dozen records span several of them.
    const SMALL_SEGMENT: u64 = 1024;

    /// A batch's own records answer a txid lookup by hash and txid, and two
    /// txids sharing a hash are told apart.
    #[test]
    fn frames_find_txids_sharing_a_hash() {
        let mut frames = Frames::default();
        let mut chain = [0u8; CHAIN_BYTES];
        let records: Vec<StoredRecord> = (1..=3).map(|seq| StoredRecord::for_test(seq, 20)).collect();
        chain = frames.push(&chain, &records[0].borrowed(), 7);
        chain = frames.push(&chain, &records[1].borrowed(), 9);
        frames.push(&chain, &records[2].borrowed(), 7);
        assert_eq!(frames.find_txid(7, b"tx1").unwrap(), Some(records[0].clone()));
        assert_eq!(frames.find_txid(7, b"tx3").unwrap(), Some(records[2].clone()));
        assert_eq!(frames.find_txid(9, b"tx2").unwrap(), Some(records[1].clone()));
        assert_eq!(
            frames.find_txid(7, b"tx2").unwrap(),
            None,
            "hash matches, txid does not"
        );
        assert_eq!(frames.find_txid(8, b"tx1").unwrap(), None);
    }

    /// Write records `from..=to` (80-byte payloads) and publish them; returns the chain at `to`.
    fn append(file: &RecordFile, from: u64, to: u64) -> ChainHash {
        let (last, mut chain) = file.tail();
        assert_eq!(last + 1, from);
        let mut frames = Frames::default();
        for seq in from..=to {
            chain = frames.push_stored(&chain, &StoredRecord::for_test(seq, 80));
        }
        file.write(&frames, chain).unwrap();
        file.publish(to);
        chain
    }

    fn seqs(file: &RecordFile, from: u64, upto: u64, chunk: u64) -> Vec<u64> {
        let mut out = Vec::new();
        file.for_each(from, upto, chunk, |_, r| {
            out.push(r.seq);
            Ok(true)
        })
        .unwrap();
        out
    }

    fn segment_files(dir: &Path) -> usize {
        segment::RECORDS.list(dir).unwrap().len()
    }

    /// Records span several segments, read back whole and in any chunking,
    /// and a reopen (closed segments from their index) sees the same records and chain.
    #[test]
    fn records_span_segments_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::open(dir.path(), SMALL_SEGMENT).unwrap();
        append(&file, 1, 10);
        let chain = append(&file, 11, 40);
        assert!(segment_files(dir.path()) >= 3, "small segments roll");
        let all: Vec<u64> = (1..=40).collect();
        for chunk in [1, 100, 1000, u64::MAX] {
            assert_eq!(seqs(&file, 1, 40, chunk), all, "chunk {chunk}");
        }
        assert_eq!(seqs(&file, 17, 23, 1), (17..=23).collect::<Vec<_>>());
        assert_eq!(file.get(40).unwrap().unwrap().0, chain);
        assert!(file.get(41).unwrap().is_none());
        drop(file);

        let file = RecordFile::open(dir.path(), SMALL_SEGMENT).unwrap();
        assert_eq!(file.tail(), (40, chain));
        assert_eq!(seqs(&file, 1, 40, 300), all);
        append(&file, 41, 45);
        assert_eq!(file.get(45).unwrap().unwrap().1, StoredRecord::for_test(45, 80));
    }

    /// Every record is found by its txid: in closed and active segments,
    /// after a reopen from the indexes and after one that scans (indexes
    /// removed); only once published; never after it is cut off, and the
    /// txid can then be written again.
    #[test]
    fn records_are_found_by_txid() {
        let txid = |seq: u64| StoredRecord::for_test(seq, 80).txid;
        let found = |file: &RecordFile, seq: u64| {
            let txid = txid(seq);
            file.find_txid(txid_hash(&txid), &txid).unwrap().map(|r| r.seq)
        };
        let dir = tempfile::tempdir().unwrap();
        let mut file = RecordFile::open(dir.path(), SMALL_SEGMENT).unwrap();
        append(&file, 1, 40);
        let mut frames = Frames::default();
        let chain = frames.push_stored(&file.tail().1, &StoredRecord::for_test(41, 80));
        file.write(&frames, chain).unwrap();
        assert_eq!(found(&file, 41), None, "not published yet");
        file.publish(41);
        for reopen in ["as written", "from the indexes", "by scanning"] {
            if reopen == "by scanning" {
                for first in segment::RECORDS.list(dir.path()).unwrap() {
                    remove_index(dir.path(), first).unwrap();
                }
            }
            for seq in 1..=41 {
                assert_eq!(found(&file, seq), Some(seq), "seq {seq} {reopen}");
            }
            assert_eq!(found(&file, 42), None);
            assert_eq!(
                file.find_txid(txid_hash(b"never written"), b"never written").unwrap(),
                None
            );
            drop(file);
            file = RecordFile::open(dir.path(), SMALL_SEGMENT).unwrap();
        }
        file.truncate_after(12).unwrap();
        assert_eq!(found(&file, 12), Some(12));
        assert_eq!(found(&file, 13), None);
        assert_eq!(found(&file, 41), None);
        append(&file, 13, 20);
        assert_eq!(found(&file, 20), Some(20));
        file.truncate_after(0).unwrap();
        assert_eq!(found(&file, 1), None);
    }

    /// Seqs that share a hash are all kept, and each is forgotten alone.
    #[test]
    fn txid_index_keeps_every_seq_of_a_shared_hash() {
        let mut index = TxidIndex::default();
        index.insert(7, 1);
        index.insert(7, 5);
        index.insert(7, 9);
        index.insert(8, 2);
        let seqs = |index: &TxidIndex, hash| {
            let mut seqs: Vec<u64> = index.candidates(hash).collect();
            seqs.sort_unstable();
            seqs
        };
        assert_eq!(seqs(&index, 7), vec![1, 5, 9]);
        index.remove(7, 1);
        assert_eq!(seqs(&index, 7), vec![5, 9]);
        index.remove(7, 5);
        index.remove(7, 42);
        assert_eq!(seqs(&index, 7), vec![9]);
        index.remove(7, 9);
        assert!(seqs(&index, 7).is_empty());
        assert!(index.more.is_empty());
        assert_eq!(seqs(&index, 8), vec![2]);
    }

    /// Written but unpublished records are invisible to readers.
    #[test]
    fn unpublished_records_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::open(dir.path(), SMALL_SEGMENT).unwrap();
        append(&file, 1, 3);
        let mut frames = Frames::default();
        let chain = frames.push_stored(&file.tail().1, &StoredRecord::for_test(4, 80));
        file.write(&frames, chain).unwrap();
        assert_eq!(file.published(), 3);
        assert!(file.get(4).unwrap().is_none());
        assert_eq!(seqs(&file, 1, 10, u64::MAX), vec![1, 2, 3]);
        file.publish(4);
        assert_eq!(seqs(&file, 1, 10, u64::MAX), vec![1, 2, 3, 4]);
    }

    /// A crash cut at every byte of the last frame loses that record only;
    /// the file reopens with the records before it and takes new ones.
    #[test]
    fn torn_tail_at_every_byte_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::open(dir.path(), RECORD_SEGMENT_BYTES_MAX_LIMIT).unwrap();
        let chain3 = append(&file, 1, 3);
        append(&file, 4, 4);
        drop(file);
        let path = segment::RECORDS.path(dir.path(), 1);
        let whole = std::fs::read(&path).unwrap();
        let frame4 = whole.len() - StoredRecord::for_test(4, 80).encode().len() - 40;
        for cut in frame4..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let file = RecordFile::open(dir.path(), RECORD_SEGMENT_BYTES_MAX_LIMIT).unwrap();
            assert_eq!(file.tail(), (3, chain3), "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), frame4 as u64);
            drop(file);
        }
        std::fs::write(&path, &whole).unwrap();
        assert_eq!(
            RecordFile::open(dir.path(), RECORD_SEGMENT_BYTES_MAX_LIMIT)
                .unwrap()
                .tail()
                .0,
            4
        );
    }

    /// A flipped byte in a closed segment whose index is gone is corruption,
    /// not a silently shorter file; a damaged index alone is rebuilt by a scan.
    #[test]
    fn damage_in_a_closed_segment_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::open(dir.path(), SMALL_SEGMENT).unwrap();
        let chain = append(&file, 1, 30);
        drop(file);
        let index = index_path(dir.path(), 1);
        let mut bytes = std::fs::read(&index).unwrap();
        bytes[40] ^= 0xff;
        std::fs::write(&index, &bytes).unwrap();
        let file = RecordFile::open(dir.path(), SMALL_SEGMENT).unwrap();
        assert_eq!(file.tail(), (30, chain));
        assert_eq!(seqs(&file, 1, 30, u64::MAX), (1..=30).collect::<Vec<_>>());
        drop(file);

        std::fs::remove_file(&index).unwrap();
        let path = segment::RECORDS.path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[60] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = RecordFile::open(dir.path(), SMALL_SEGMENT)
            .err()
            .expect("damage is reported");
        assert!(matches!(err, Error::Corruption { .. }), "{err}");
    }

    /// Cutting a segment that another name links to (a linked snapshot)
    /// leaves the linked inode byte for byte as it was; the store goes on
    /// from its cut copy, in a new inode, also after a reopen.
    #[test]
    fn truncate_after_leaves_a_linked_segment_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::open(dir.path(), SMALL_SEGMENT).unwrap();
        let chain12 = append(&file, 1, 12);
        append(&file, 13, 40);
        let elsewhere = tempfile::tempdir().unwrap();
        let mut linked = Vec::new();
        for first in segment::RECORDS.list(dir.path()).unwrap() {
            let link = elsewhere.path().join(first.to_string());
            std::fs::hard_link(segment::RECORDS.path(dir.path(), first), &link).unwrap();
            linked.push((link.clone(), std::fs::read(&link).unwrap()));
        }
        let inode = |path: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(path).unwrap().ino()
        };
        let holding_12 = segment::RECORDS
            .list(dir.path())
            .unwrap()
            .into_iter()
            .filter(|&first| first <= 12)
            .max()
            .unwrap();
        let cut_path = segment::RECORDS.path(dir.path(), holding_12);
        let inode_before = inode(&cut_path);
        assert!(
            holding_12 < 12,
            "seq 12 is inside its segment, so the cut copies a prefix"
        );
        file.truncate_after(12).unwrap();
        assert_ne!(inode(&cut_path), inode_before, "the store's segment got a new inode");
        for (link, bytes) in &linked {
            assert_eq!(&std::fs::read(link).unwrap(), bytes, "{} changed", link.display());
        }
        assert_eq!(file.tail(), (12, chain12));
        append(&file, 13, 20);
        drop(file);
        // A copy cut off by a crash is a leftover that opening removes.
        let leftover = cut_path.with_extension(CUT_EXTENSION);
        std::fs::write(&leftover, b"cut off").unwrap();
        let file = RecordFile::open(dir.path(), SMALL_SEGMENT).unwrap();
        assert!(!leftover.exists());
        assert_eq!(seqs(&file, 1, 100, 500), (1..=20).collect::<Vec<_>>());
    }

    /// Truncation removes whole later segments and cuts the one holding the
    /// kept seq; the chain and the next append continue from there.
    #[test]
    fn truncate_after_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::open(dir.path(), SMALL_SEGMENT).unwrap();
        let chain12 = append(&file, 1, 12);
        append(&file, 13, 40);
        file.truncate_after(12).unwrap();
        assert_eq!(file.tail(), (12, chain12));
        assert_eq!(file.published(), 12);
        append(&file, 13, 14);
        drop(file);
        let file = RecordFile::open(dir.path(), SMALL_SEGMENT).unwrap();
        assert_eq!(seqs(&file, 1, 100, 500), (1..=14).collect::<Vec<_>>());
        file.truncate_after(0).unwrap();
        assert_eq!(file.tail(), (0, [0u8; 32]));
        assert_eq!(segment_files(dir.path()), 1);
        append(&file, 1, 2);
        assert_eq!(seqs(&file, 1, 100, 500), vec![1, 2]);
    }
}
