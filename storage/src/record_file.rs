//! The record file: every committed record, append-only, in sequence order.
//!
//! Record bodies live here, not in sled: a record is written once, as one
//! frame appended to the active segment, and never rewritten (outside the
//! test-only [`RecordFile::set_chain_at`]). sled keeps only the small
//! indexes (txid, channel) and metadata.
//!
//! Layout: segment files `<first seq, 20 digits>.rec` (see [`crate::segment`]
//! for the header), each frame `len u32 | crc32 u32 | chain [32] | record`,
//! where `record` is [`StoredRecord`]'s versioned encoding and `chain` the
//! hash chain at that record's seq. The checksum covers chain and record, so
//! a read checks both. A segment is closed once it reaches its size limit;
//! a closed segment gets a sidecar `<first seq>.idx` with the offset of each
//! of its frames, so opening a store of any size reads those small files
//! and scans only the active segment.
//!
//! The file is a cache of the Raft log like the rest of the record store:
//! nothing here is fsynced per write. A record is *published* (visible to
//! readers) only after the sled batch that indexes it is applied, and on
//! open the caller cuts the file back to the store's last applied seq; if
//! the file holds fewer records than that (a power loss ate its tail) the
//! caller discards the store and rebuilds it from the snapshot and WAL.
//!
//! In memory: four bytes per record (its offset in its segment).

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
use crate::record_store::ChainHash;
use crate::record_store::StoredRecord;
use crate::segment;

/// Default size at which the active record segment is closed.
pub const RECORD_SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

/// Largest segment size accepted: offsets are u32, and a segment may run
/// one record past its limit.
pub const RECORD_SEGMENT_BYTES_MAX_LIMIT: u64 = u32::MAX as u64 - crate::WAL_RECORD_BYTES_MAX as u64 - 64;

const CHAIN_BYTES: usize = 32;
const INDEX_MAGIC: &[u8; 8] = b"TXLOGRIX";
const INDEX_VERSION: u32 = 1;
/// `magic | version u32 | count u32 | first_seq u64 | segment end u64`.
const INDEX_HEADER_BYTES: usize = 32;
/// Bytes read at a time by sequential readers (snapshot build, chain check).
pub(crate) const READ_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// Frames for a run of records, built by an apply batch before they are
/// written: the record is encoded once, straight into this buffer, and the
/// chain is computed over those bytes.
#[derive(Default)]
pub(crate) struct Frames {
    buf: Vec<u8>,
    /// End offset (in `buf`) of each frame.
    ends: Vec<usize>,
}

impl Frames {
    /// Append `record`'s frame; returns the chain at its seq.
    pub(crate) fn push(&mut self, previous: &ChainHash, record: &StoredRecord) -> ChainHash {
        let start = self.buf.len();
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

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Split a checked frame body into its chain value and record.
fn decode_body(path: &Path, body: &[u8]) -> Result<(ChainHash, StoredRecord)> {
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
    /// Read the span and visit each record in it, checking every frame.
    fn visit(&self, mut visit: impl FnMut(ChainHash, StoredRecord) -> Result<()>) -> Result<()> {
        let mut buf = vec![0u8; (self.end - self.start) as usize];
        self.file
            .read_exact_at(&mut buf, self.start)
            .map_err(|e| Error::io(&self.path, e))?;
        let mut at = 0usize;
        for i in 0..self.count {
            let seq = self.first_seq + i;
            match frame::decode(&buf[at..]) {
                frame::Decoded::Frame { body, frame_bytes } => {
                    let (chain, record) = decode_body(&self.path, body)?;
                    if record.seq != seq {
                        return Err(Error::corruption(
                            &self.path,
                            format!("frame for seq {seq} holds seq {}", record.seq),
                        ));
                    }
                    visit(chain, record)?;
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
            let (offsets, end) = match indexed {
                Some(found) => found,
                None => {
                    let (offsets, end) = scan_segment(dir, &path, first_seq, is_last)?;
                    if !is_last {
                        write_index(dir, first_seq, &offsets, end)?;
                    }
                    (offsets, end)
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
                end,
            });
        }
        if segments.is_empty() {
            segments.push(create_segment(dir, 1)?);
        }
        let mut state = State {
            segments,
            published: 0,
            last_chain: [0u8; CHAIN_BYTES],
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
            let mut state = self.write_state();
            let active = state.active();
            active.offsets.extend(offsets);
            active.end = segment_end + (end - start) as u64;
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
                active.offsets.clone(),
                active.end,
            );
            (closing, active.next_seq())
        };
        let (first_seq, path, file, offsets, end) = closing;
        if let Err(err) = file.sync_data() {
            crate::fatal_fsync_failure(&path.display().to_string(), &err);
        }
        write_index(&self.dir, first_seq, &offsets, end)?;
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
        while state.segments.len() > 1 && state.active().first_seq > seq {
            let removed = state.segments.pop().expect("more than one segment");
            remove_segment(&self.dir, &removed)?;
        }
        let active = state.active();
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
            active.end = end;
            segment::cut_tail(&active.path, end)?;
            remove_index(&self.dir, active.first_seq)?;
        }
        crate::fsync_dir(&self.dir)?;
        state.published = state.published.min(seq);
        state.last_chain = state.read_last_chain()?;
        Ok(())
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
        let mut next = from.max(1);
        while next <= upto {
            let Some(span) = self.span(next, upto, chunk_bytes) else {
                return Ok(());
            };
            let mut stop = false;
            span.visit(|chain, record| {
                if !stop && !visit(chain, record)? {
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
    /// valid (tests use it to simulate a node whose records diverged).
    pub(crate) fn set_chain_at(&self, seq: u64, value: ChainHash) -> Result<()> {
        let Some((_, record)) = self.get(seq)? else {
            return Err(Error::InvalidInput(format!("record {seq} is not stored")));
        };
        let mut state = self.write_state();
        let segment = state.segment_of(seq).expect("a stored record is in a segment");
        let start = segment.frame_start(seq);
        let mut body = value.to_vec();
        body = record.encode_into(body);
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

fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment> {
    let file = segment::create(&segment::RECORDS, dir, first_seq)?;
    Ok(Segment {
        first_seq,
        path: segment::RECORDS.path(dir, first_seq),
        file: Arc::new(file),
        offsets: Vec::new(),
        end: segment::SEGMENT_HEADER_BYTES,
    })
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

/// Write the offsets of a closed segment: header, offsets, crc32 of both.
fn write_index(dir: &Path, first_seq: u64, offsets: &[u32], end: u64) -> Result<()> {
    let path = index_path(dir, first_seq);
    let mut bytes = Vec::with_capacity(INDEX_HEADER_BYTES + offsets.len() * 4 + 4);
    bytes.extend_from_slice(INDEX_MAGIC);
    bytes.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&first_seq.to_le_bytes());
    bytes.extend_from_slice(&end.to_le_bytes());
    for offset in offsets {
        bytes.extend_from_slice(&offset.to_le_bytes());
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

/// The offsets and end of a closed segment from its index, or `None` when
/// the index is missing, damaged or does not match the segment file (then
/// the segment is scanned instead).
fn read_index(dir: &Path, first_seq: u64) -> Option<(Vec<u32>, u64)> {
    let path = index_path(dir, first_seq);
    let bytes = std::fs::read(&path).ok()?;
    let (body, crc) = bytes.split_last_chunk::<4>()?;
    let (header, offsets) = body.split_first_chunk::<INDEX_HEADER_BYTES>()?;
    let field = |range: std::ops::Range<usize>| &header[range];
    let ok = crc32fast::hash(body) == u32::from_le_bytes(*crc)
        && field(0..8) == INDEX_MAGIC
        && field(8..12) == INDEX_VERSION.to_le_bytes()
        && field(16..24) == first_seq.to_le_bytes();
    let count = u32::from_le_bytes(field(12..16).try_into().expect("4 bytes")) as usize;
    let end = u64::from_le_bytes(field(24..32).try_into().expect("8 bytes"));
    let segment_bytes = std::fs::metadata(segment::RECORDS.path(dir, first_seq)).ok()?.len();
    if !ok || offsets.len() != count * 4 || count == 0 || end != segment_bytes {
        tracing::warn!(path = %path.display(), "record segment index is damaged or stale; scanning the segment");
        return None;
    }
    Some((
        offsets
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect(),
        end,
    ))
}

/// Scan a segment's frames, checking each (see [`segment::recover`] for
/// what is repaired); returns the frame offsets and the end of the last
/// whole frame. A segment whose creation was cut off is created again.
fn scan_segment(dir: &Path, path: &Path, first_seq: u64, is_last: bool) -> Result<(Vec<u32>, u64)> {
    let mut offsets = Vec::new();
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
        Ok(())
    })?;
    match recovered {
        segment::Recovered::Valid { valid_bytes } => Ok((offsets, valid_bytes)),
        segment::Recovered::Removed => {
            create_segment(dir, first_seq)?;
            Ok((Vec::new(), segment::SEGMENT_HEADER_BYTES))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small segments so a few dozen records span several of them.
    const SMALL_SEGMENT: u64 = 1024;

    /// Write records `from..=to` (80-byte payloads) and publish them; returns the chain at `to`.
    fn append(file: &RecordFile, from: u64, to: u64) -> ChainHash {
        let (last, mut chain) = file.tail();
        assert_eq!(last + 1, from);
        let mut frames = Frames::default();
        for seq in from..=to {
            chain = frames.push(&chain, &StoredRecord::for_test(seq, 80));
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

    /// Written but unpublished records are invisible to readers.
    #[test]
    fn unpublished_records_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::open(dir.path(), SMALL_SEGMENT).unwrap();
        append(&file, 1, 3);
        let mut frames = Frames::default();
        let chain = frames.push(&file.tail().1, &StoredRecord::for_test(4, 80));
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
