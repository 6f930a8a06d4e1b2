//! The segmented Raft log: openraft's `RaftLogStorage` on our own WAL.
//!
//! Durability contract, kept here:
//! * `append` writes the frames to the active segment (page cache) and makes
//!   them readable before it returns; the flusher thread then issues one
//!   `fdatasync` for every append queued behind it (group commit) and only
//!   then fires openraft's IO callback.
//! * `save_vote` returns after the vote file and its directory are fsynced.
//! * `purge` drops entries from memory and returns; a purger thread then
//!   writes the purge point durably and only after that deletes segments.
//! * `truncate_after` cuts with `ftruncate` and fsyncs before returning.
//! * `save_committed` is a hint (not fsynced): losing it only makes a restart
//!   re-learn the commit index from the leader.
//!
//! In memory we keep one small location record per entry (log id, segment,
//! offset, length); entry bodies are read back with `pread` and re-checked by
//! CRC on every read.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;
use std::time::Instant;

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::VoteOf;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::RaftTypeConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::durable_file;
use crate::error::Error;
use crate::error::Result;
use crate::frame;
use crate::segment;

/// Most bytes of entry frames one replication request carries (at least one
/// entry is always sent, whatever its size). openraft asks for up to 256
/// entries; with batches of up to `batch_bytes_max` each that could be
/// hundreds of MiB, over the peer message limit. Measured at 256 KiB, 1 MiB
/// and 4 MiB with 64 clients appending 1,000 records per call: only 256 KiB
/// ran without leader changes, at the same throughput.
pub const REPLICATION_BYTES_MAX: u64 = 256 * 1024;

const VOTE_MAGIC: &[u8; 8] = b"TXLVOTE1";
pub(crate) const PURGED_MAGIC: &[u8; 8] = b"TXLPURG1";
const COMMITTED_MAGIC: &[u8; 8] = b"TXLCOMM1";

/// Called with the duration of every WAL fdatasync (for metrics).
pub type FsyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// Told what the log does, as it does it (the feed's speculative stream
/// listens here). Called with the WAL's write lock held, in log order:
/// implementations must only queue, never block or wait.
pub trait LogObserver<C: RaftTypeConfig>: Send + Sync {
    /// `entries` were written (before their fsync).
    fn appended(&self, entries: &[C::Entry]);
    /// Every entry after `last` (after none: all) was removed.
    fn truncated_after(&self, last: Option<u64>);
}

/// Tunables of the WAL.
#[derive(Clone)]
pub struct WalOptions {
    /// Roll to a new segment once the active one reaches this size.
    pub segment_bytes_max: u64,
    /// Observes each group-commit fsync.
    pub fsync_observer: Option<FsyncObserver>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: crate::SEGMENT_BYTES_MAX_DEFAULT,
            fsync_observer: None,
        }
    }
}

impl Debug for WalOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalOptions")
            .field("segment_bytes_max", &self.segment_bytes_max)
            .finish()
    }
}

/// Where one entry lives.
#[derive(Clone)]
struct EntryLocation<L> {
    log_id: L,
    segment: u64,
    offset: u64,
    frame_bytes: u32,
}

struct Segment {
    file: Arc<File>,
    bytes: u64,
}

struct Inner<C: RaftTypeConfig> {
    dir: PathBuf,
    options: WalOptions,
    /// Segments by first index; the last one is the active (appended) one.
    segments: BTreeMap<u64, Segment>,
    /// Locations of present entries; `entries[i]` has index `first + i`.
    entries: VecDeque<EntryLocation<LogIdOf<C>>>,
    last_purged: Option<LogIdOf<C>>,
    vote: Option<VoteOf<C>>,
    committed: Option<LogIdOf<C>>,
    committed_file: File,
    observer: Option<Arc<dyn LogObserver<C>>>,
}

/// A flush request: fdatasync `file`, then tell openraft.
struct FlushRequest<C: RaftTypeConfig> {
    file: Arc<File>,
    callback: IOFlushed<C>,
}

/// File work of a purge, done in order by the purger thread.
enum PurgeJob {
    /// Write the purge point durably (unless it already is), then delete
    /// `segments`.
    Purge {
        dir: PathBuf,
        point: Option<Vec<u8>>,
        segments: Vec<PathBuf>,
    },
    /// Answer once every job before it is done.
    Barrier(mpsc::Sender<()>),
}

/// The WAL-backed Raft log store. Cloning shares the same log.
pub struct LogStore<C: RaftTypeConfig> {
    inner: Arc<RwLock<Inner<C>>>,
    flush_tx: mpsc::Sender<FlushRequest<C>>,
    purge_tx: mpsc::Sender<PurgeJob>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            inner: self.inner.clone(),
            flush_tx: self.flush_tx.clone(),
            purge_tx: self.purge_tx.clone(),
        }
    }
}

/// A reader of the same log, handed to openraft's replication tasks.
pub struct LogStoreReader<C: RaftTypeConfig> {
    inner: Arc<RwLock<Inner<C>>>,
}

impl<C: RaftTypeConfig> Clone for LogStoreReader<C> {
    fn clone(&self) -> Self {
        LogStoreReader {
            inner: self.inner.clone(),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encoding an in-memory value cannot fail")
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Decode {
        what,
        detail: e.to_string(),
    })
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    /// Open (or create) the WAL in `dir`, recovering from a crash if needed.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;

        let vote = durable_file::read(&dir.join("vote"), VOTE_MAGIC)?
            .map(|b| decode::<VoteOf<C>>("vote", &b))
            .transpose()?;
        let last_purged = durable_file::read(&dir.join("purged"), PURGED_MAGIC)?
            .map(|b| decode::<LogIdOf<C>>("purge point", &b))
            .transpose()?;
        let committed_path = dir.join("committed");
        // The committed hint is not fsynced: a torn or stale one is dropped, not trusted.
        let committed = match durable_file::read_prefix(&committed_path, COMMITTED_MAGIC) {
            Ok(Some(b)) => decode::<LogIdOf<C>>("committed", &b).ok(),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(%err, "ignoring damaged committed hint");
                None
            }
        };
        let committed_file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&committed_path)
            .map_err(|e| Error::io(&committed_path, e))?;

        let mut inner = Inner::<C> {
            dir: dir.clone(),
            options,
            segments: BTreeMap::new(),
            entries: VecDeque::new(),
            last_purged,
            vote,
            committed,
            committed_file,
            observer: None,
        };
        inner.recover()?;

        let (flush_tx, flush_rx) = mpsc::channel::<FlushRequest<C>>();
        let observer = inner.options.fsync_observer.clone();
        std::thread::Builder::new()
            .name("txlog-wal-flush".to_string())
            .spawn(move || flusher(flush_rx, observer))
            .map_err(|e| Error::io(&dir, e))?;
        let (purge_tx, purge_rx) = mpsc::channel::<PurgeJob>();
        std::thread::Builder::new()
            .name("txlog-wal-purge".to_string())
            .spawn(move || purger(purge_rx))
            .map_err(|e| Error::io(&dir, e))?;

        Ok(LogStore {
            inner: Arc::new(RwLock::new(inner)),
            flush_tx,
            purge_tx,
        })
    }

    /// Block until every purge asked for so far is durable and its segments
    /// are deleted: before a purge past the last entry, and in tests.
    pub fn wait_for_purges(&self) {
        let (tx, rx) = mpsc::channel();
        if self.purge_tx.send(PurgeJob::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Tell `observer` of every append and truncation from now on.
    pub fn set_observer(&self, observer: Arc<dyn LogObserver<C>>) {
        self.inner.write().expect("wal lock poisoned").observer = Some(observer);
    }

    /// The last log id present, or the purge point when the log is empty.
    pub fn last_log_id(&self) -> Option<LogIdOf<C>> {
        let inner = self.inner.read().expect("wal lock poisoned");
        inner.last_log_id()
    }

    /// Number of segment files currently on disk.
    pub fn segment_count(&self) -> usize {
        self.inner.read().expect("wal lock poisoned").segments.len()
    }

    /// Directory the WAL lives in.
    pub fn dir(&self) -> PathBuf {
        self.inner.read().expect("wal lock poisoned").dir.clone()
    }
}

/// The purger thread: for each purge in order, the purge point is made
/// durable before any segment behind it is deleted. If writing it fails,
/// its segments wait for the next point that is written; a segment that
/// cannot be deleted is tried again after the next purge. A crash before a
/// job ran leaves the older purge point and more entries than needed,
/// never fewer.
fn purger(rx: mpsc::Receiver<PurgeJob>) {
    let mut pending: Vec<PathBuf> = Vec::new();
    for job in rx {
        let (dir, point, segments) = match job {
            PurgeJob::Purge { dir, point, segments } => (dir, point, segments),
            PurgeJob::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
        };
        pending.extend(segments);
        if let Some(point) = point {
            if let Err(err) = write_purge_point(&dir, &point) {
                tracing::error!(%err, "could not record the wal purge point; its segments are kept for now");
                continue;
            }
        }
        let before = pending.len();
        pending.retain(|path| match std::fs::remove_file(path) {
            Ok(()) => false,
            Err(err) if err.kind() == io::ErrorKind::NotFound => false,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "could not delete a purged wal segment; trying again later");
                true
            }
        });
        let removed = before - pending.len();
        if removed > 0 {
            if let Err(err) = crate::fsync_dir(&dir) {
                tracing::warn!(%err, "could not fsync the wal directory after a purge");
            }
        }
        tracing::debug!(removed_segments = removed, "wal purged");
    }
}

/// Durably replace the WAL's purge point with `point` (an encoded log id).
fn write_purge_point(dir: &Path, point: &[u8]) -> Result<()> {
    durable_file::write_atomic(&dir.join("purged"), PURGED_MAGIC, point)
}

/// The flusher thread: one fdatasync per file for everything queued, then the callbacks.
fn flusher<C: RaftTypeConfig>(rx: mpsc::Receiver<FlushRequest<C>>, observer: Option<FsyncObserver>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut synced: Vec<*const File> = Vec::new();
        for request in &batch {
            let ptr = Arc::as_ptr(&request.file);
            if synced.contains(&ptr) {
                continue;
            }
            let started = Instant::now();
            if let Err(err) = request.file.sync_data() {
                crate::fatal_fsync_failure("wal segment", &err);
            }
            if let Some(observe) = &observer {
                observe(started.elapsed());
            }
            synced.push(ptr);
        }
        for request in batch {
            request.callback.io_completed(Ok(()));
        }
    }
}

impl<C> Inner<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    fn last_log_id(&self) -> Option<LogIdOf<C>> {
        match self.entries.back() {
            Some(loc) => Some(loc.log_id.clone()),
            None => self.last_purged.clone(),
        }
    }

    fn first_present_index(&self) -> Option<u64> {
        self.entries.front().map(|loc| loc.log_id.index())
    }

    fn next_index(&self) -> Option<u64> {
        self.last_log_id().map(|id| id.index() + 1)
    }

    fn purged_index(&self) -> Option<u64> {
        self.last_purged.as_ref().map(|id| id.index())
    }

    /// Rebuild the in-memory index from the segment files, cutting a torn tail.
    fn recover(&mut self) -> Result<()> {
        let first_indexes = self.segment_first_indexes()?;
        let purged = self.purged_index();
        let count = first_indexes.len();
        for (position, first_index) in first_indexes.into_iter().enumerate() {
            let is_last = position + 1 == count;
            self.recover_segment(first_index, is_last, purged)?;
        }
        if self.segments.is_empty() {
            let first = self.next_index().unwrap_or(0);
            self.create_segment(first)?;
        }
        tracing::info!(
            dir = %self.dir.display(),
            segments = self.segments.len(),
            entries = self.entries.len(),
            first_index = ?self.first_present_index(),
            purged = ?purged,
            "wal opened"
        );
        Ok(())
    }

    /// The first indexes of the segment files in the directory, in order.
    fn segment_first_indexes(&self) -> Result<Vec<u64>> {
        segment::WAL.list(&self.dir)
    }

    /// Stream one segment through [`segment::scan`], indexing every entry
    /// after the purge point; a torn tail (or a segment whose creation was
    /// cut off) is repaired only in the last segment, anywhere else it is
    /// corruption.
    fn recover_segment(&mut self, first_index: u64, is_last: bool, purged: Option<u64>) -> Result<()> {
        let path = segment::WAL.path(&self.dir, first_index);
        let entries = &mut self.entries;
        let recovered = segment::recover(&segment::WAL, &self.dir, first_index, is_last, |offset, body| {
            index_entry::<C>(entries, purged, &path, first_index, offset, body)
        })?;
        let segment::Recovered::Valid { valid_bytes } = recovered else {
            return Ok(());
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        self.segments.insert(
            first_index,
            Segment {
                file: Arc::new(file),
                bytes: valid_bytes,
            },
        );
        Ok(())
    }

    fn create_segment(&mut self, first_index: u64) -> Result<()> {
        let file = segment::create(&segment::WAL, &self.dir, first_index)?;
        self.segments.insert(
            first_index,
            Segment {
                file: Arc::new(file),
                bytes: segment::SEGMENT_HEADER_BYTES,
            },
        );
        Ok(())
    }

    fn active(&self) -> (u64, &Segment) {
        let (first, seg) = self
            .segments
            .iter()
            .next_back()
            .expect("wal always has an active segment");
        (*first, seg)
    }

    /// Write entries to the active segment; returns the file to fdatasync.
    fn write_entries(&mut self, entries: &[C::Entry]) -> Result<Option<Arc<File>>> {
        if entries.is_empty() {
            return Ok(None);
        }
        let mut expected = self.next_index();
        let first_index = entries[0].index();
        for entry in entries {
            if let Some(expected) = expected {
                assert_eq!(entry.index(), expected, "wal append must be contiguous");
            }
            expected = Some(entry.index() + 1);
        }

        let active_bytes = self.active().1.bytes;
        if active_bytes >= self.options.segment_bytes_max {
            let (_, seg) = self.active();
            if let Err(err) = seg.file.sync_data() {
                crate::fatal_fsync_failure("sealed wal segment", &err);
            }
            self.create_segment(first_index)?;
        }

        let (segment_first, seg) = self.active();
        let mut buf = Vec::new();
        let mut locations = Vec::with_capacity(entries.len());
        for entry in entries {
            let offset = seg.bytes + buf.len() as u64;
            let frame_bytes = frame::encode_value_into(&mut buf, entry);
            locations.push(EntryLocation {
                log_id: entry.log_id(),
                segment: segment_first,
                offset,
                frame_bytes: frame_bytes as u32,
            });
        }
        let path = segment::WAL.path(&self.dir, segment_first);
        seg.file
            .write_all_at(&buf, seg.bytes)
            .map_err(|e| Error::io(&path, e))?;
        let file = seg.file.clone();
        self.segments.get_mut(&segment_first).expect("active segment").bytes += buf.len() as u64;
        self.entries.extend(locations);
        Ok(Some(file))
    }

    fn truncate_after(&mut self, last: Option<u64>) -> Result<()> {
        let Some(first_present) = self.first_present_index() else {
            return Ok(());
        };
        let keep = match last {
            Some(last) if last + 1 < first_present => 0,
            Some(last) => (last + 1 - first_present) as usize,
            None => 0,
        };
        if keep >= self.entries.len() {
            return Ok(());
        }
        let cut = self.entries[keep].clone();
        // Remove whole segments after the cut, newest first, so no hole can appear.
        let later: Vec<u64> = self.segments.range(cut.segment + 1..).map(|(k, _)| *k).rev().collect();
        for first in later {
            let path = segment::WAL.path(&self.dir, first);
            self.segments.remove(&first);
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        let path = segment::WAL.path(&self.dir, cut.segment);
        let seg = self.segments.get_mut(&cut.segment).expect("segment of a present entry");
        seg.file.set_len(cut.offset).map_err(|e| Error::io(&path, e))?;
        if let Err(err) = seg.file.sync_all() {
            crate::fatal_fsync_failure(&path.display().to_string(), &err);
        }
        seg.bytes = cut.offset;
        crate::fsync_dir(&self.dir)?;
        self.entries.truncate(keep);
        tracing::debug!(after = ?last, "wal truncated");
        Ok(())
    }

    /// Drop the entries up to `log_id` and the segments wholly behind it
    /// from memory; returns the file work (durable purge point, then the
    /// deletions) for the purger thread, or `None` when nothing changed.
    ///
    /// With `point_now` the purge point is written durably here, before a
    /// segment after a gap is created (see `LogStore::purge`).
    fn purge(&mut self, log_id: LogIdOf<C>, point_now: bool) -> Result<Option<PurgeJob>> {
        if self.purged_index().is_some_and(|p| p >= log_id.index()) {
            return Ok(None);
        }
        let upto = log_id.index();
        let point = encode(&log_id);
        let point = if point_now {
            write_purge_point(&self.dir, &point)?;
            None
        } else {
            Some(point)
        };
        self.last_purged = Some(log_id);
        while self.entries.front().is_some_and(|loc| loc.log_id.index() <= upto) {
            self.entries.pop_front();
        }

        if self.entries.is_empty() {
            // Start a fresh active segment at the next index so every segment
            // stays contiguous, then every older segment can go.
            let next = upto + 1;
            if !self.segments.contains_key(&next) {
                let (_, active) = self.active();
                if let Err(err) = active.file.sync_data() {
                    crate::fatal_fsync_failure("wal segment", &err);
                }
                self.create_segment(next)?;
            }
        }
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut segments = Vec::new();
        for pair in firsts.windows(2) {
            let (this, next) = (pair[0], pair[1]);
            // Every entry in `this` has an index below `next`.
            if next <= upto + 1 {
                self.segments.remove(&this);
                segments.push(segment::WAL.path(&self.dir, this));
            }
        }
        Ok(Some(PurgeJob::Purge {
            dir: self.dir.clone(),
            point,
            segments,
        }))
    }

    /// Like [`Inner::locate`], but stops before the entry that would take
    /// the frames over `bytes_max` (the first entry always counts).
    fn locate_limited(&self, start: u64, end: u64, bytes_max: u64) -> Vec<(EntryLocation<LogIdOf<C>>, Arc<File>)> {
        let mut located = self.locate(start, end);
        let mut bytes = 0u64;
        let keep = located
            .iter()
            .take_while(|(loc, _)| {
                bytes += u64::from(loc.frame_bytes);
                bytes <= bytes_max
            })
            .count()
            .max(1);
        located.truncate(keep);
        located
    }

    /// Locations and files for the entries in `[start, end)`, clamped to what is present.
    fn locate(&self, start: u64, end: u64) -> Vec<(EntryLocation<LogIdOf<C>>, Arc<File>)> {
        let Some(first) = self.first_present_index() else {
            return Vec::new();
        };
        let start = start.max(first);
        let end = end.min(first + self.entries.len() as u64);
        if start >= end {
            return Vec::new();
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        for i in start..end {
            let loc = &self.entries[(i - first) as usize];
            let file = self
                .segments
                .get(&loc.segment)
                .expect("segment of a present entry")
                .file
                .clone();
            out.push((loc.clone(), file));
        }
        out
    }
}

/// Index one entry found while recovering segment `first_index`: entries at
/// or below the purge point are skipped; the rest must continue the index
/// sequence exactly.
fn index_entry<C: RaftTypeConfig>(
    entries: &mut VecDeque<EntryLocation<LogIdOf<C>>>,
    purged: Option<u64>,
    path: &Path,
    first_index: u64,
    offset: u64,
    body: &[u8],
) -> Result<()> {
    let entry: C::Entry =
        decode("wal entry", body).map_err(|e| Error::corruption(path, format!("entry at offset {offset}: {e}")))?;
    let log_id = entry.log_id();
    if purged.is_some_and(|p| log_id.index() <= p) {
        return Ok(());
    }
    let expected = match entries.back() {
        Some(prev) => Some(prev.log_id.index() + 1),
        None => purged.map(|p| p + 1),
    };
    if let Some(expected) = expected {
        if log_id.index() != expected {
            return Err(Error::corruption(
                path,
                format!("entry index {} where {expected} was expected", log_id.index()),
            ));
        }
    }
    entries.push_back(EntryLocation {
        log_id,
        segment: first_index,
        offset,
        frame_bytes: (body.len() + frame::FRAME_HEADER_BYTES) as u32,
    });
    Ok(())
}

/// Read entries at the given locations, coalescing adjacent frames into one pread.
fn read_located<C>(dir: &Path, located: Vec<(EntryLocation<LogIdOf<C>>, Arc<File>)>) -> io::Result<Vec<C::Entry>>
where
    C: RaftTypeConfig,
    C::Entry: DeserializeOwned,
{
    let mut out = Vec::with_capacity(located.len());
    let mut i = 0;
    while i < located.len() {
        let (start_loc, file) = &located[i];
        let mut j = i + 1;
        let mut span_end = start_loc.offset + u64::from(start_loc.frame_bytes);
        while j < located.len() && located[j].0.segment == start_loc.segment && located[j].0.offset == span_end {
            span_end += u64::from(located[j].0.frame_bytes);
            j += 1;
        }
        let mut buf = vec![0u8; (span_end - start_loc.offset) as usize];
        file.read_exact_at(&mut buf, start_loc.offset)?;
        let mut pos = 0usize;
        for (loc, _) in &located[i..j] {
            let path = segment::WAL.path(dir, loc.segment);
            match frame::decode(&buf[pos..]) {
                frame::Decoded::Frame { body, frame_bytes } => {
                    let entry: C::Entry = decode("wal entry", body).map_err(io::Error::from)?;
                    if entry.index() != loc.log_id.index() {
                        return Err(Error::corruption(&path, format!("expected index {}", loc.log_id.index())).into());
                    }
                    out.push(entry);
                    pos += frame_bytes;
                }
                frame::Decoded::Incomplete => {
                    return Err(Error::corruption(&path, format!("short read at offset {}", loc.offset)).into())
                }
                frame::Decoded::Invalid { detail, .. } => {
                    return Err(Error::corruption(&path, format!("{detail} at offset {}", loc.offset)).into())
                }
            }
        }
        i = j;
    }
    Ok(out)
}

fn range_to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// The entries in `[start, end)` that are present; with `bytes_max`, only
/// as many as fit in that many bytes of frames (at least one).
fn read_entries<C>(inner: &RwLock<Inner<C>>, start: u64, end: u64, bytes_max: Option<u64>) -> io::Result<Vec<C::Entry>>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    let (dir, located) = {
        let guard = inner.read().expect("wal lock poisoned");
        let located = match bytes_max {
            Some(bytes_max) => guard.locate_limited(start, end, bytes_max),
            None => guard.locate(start, end),
        };
        (guard.dir.clone(), located)
    };
    read_located::<C>(&dir, located)
}

impl<C> RaftLogReader<C> for LogStoreReader<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<C::Entry>> {
        let (start, end) = range_to_bounds(&range);
        read_entries(&self.inner, start, end, None)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<C::Entry>> {
        read_entries(&self.inner, start, end, Some(REPLICATION_BYTES_MAX))
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<C>>> {
        Ok(self.inner.read().expect("wal lock poisoned").vote.clone())
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<C::Entry>> {
        let (start, end) = range_to_bounds(&range);
        read_entries(&self.inner, start, end, None)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<C::Entry>> {
        read_entries(&self.inner, start, end, Some(REPLICATION_BYTES_MAX))
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<C>>> {
        Ok(self.inner.read().expect("wal lock poisoned").vote.clone())
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    type LogReader = LogStoreReader<C>;

    async fn get_log_state(&mut self) -> io::Result<LogState<C>> {
        let inner = self.inner.read().expect("wal lock poisoned");
        Ok(LogState {
            last_purged_log_id: inner.last_purged.clone(),
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogStoreReader {
            inner: self.inner.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> io::Result<()> {
        let mut inner = self.inner.write().expect("wal lock poisoned");
        // Durable (file + directory fsync) before we return: a node must never
        // vote twice in one term because it forgot its vote across a crash.
        durable_file::write_atomic(&inner.dir.join("vote"), VOTE_MAGIC, &encode(vote))?;
        inner.vote = Some(vote.clone());
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> io::Result<()> {
        let mut inner = self.inner.write().expect("wal lock poisoned");
        if let Some(id) = &committed {
            durable_file::write_unsynced(&inner.committed_file, COMMITTED_MAGIC, &encode(id))
                .map_err(io::Error::from)?;
        }
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogIdOf<C>>> {
        let inner = self.inner.read().expect("wal lock poisoned");
        // Never report a committed id beyond what the log holds.
        let committed = match (&inner.committed, inner.last_log_id()) {
            (Some(c), Some(last)) if c.index() <= last.index() => Some(c.clone()),
            _ => None,
        };
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> io::Result<()>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let file = {
            let mut inner = self.inner.write().expect("wal lock poisoned");
            let file = inner.write_entries(&entries)?;
            if let Some(observer) = &inner.observer {
                observer.appended(&entries);
            }
            file
        };
        match file {
            Some(file) => {
                if self.flush_tx.send(FlushRequest { file, callback }).is_err() {
                    return Err(io::Error::other("wal flusher thread is gone"));
                }
            }
            None => callback.io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> io::Result<()> {
        let mut inner = self.inner.write().expect("wal lock poisoned");
        let last = last_log_id.map(|id| id.index());
        inner.truncate_after(last)?;
        if let Some(observer) = &inner.observer {
            observer.truncated_after(last);
        }
        Ok(())
    }

    /// Returns once the purge is made in memory; the purger thread makes
    /// it durable and deletes the segments (openraft runs this inline in its
    /// core loop, and two fsyncs plus unlinking 64 MiB files there held up
    /// heartbeats for over 55 ms: followers timed the leader out).
    ///
    /// A purge past the last entry (a snapshot installed ahead of the log)
    /// is the exception: the next entry goes into a new segment after a gap,
    /// and recovery accepts that gap only behind a durable purge point. So
    /// the queue is drained and the point written before that segment exists.
    async fn purge(&mut self, log_id: LogIdOf<C>) -> io::Result<()> {
        let past_end = self.last_log_id().is_none_or(|last| log_id.index() > last.index());
        if past_end {
            self.wait_for_purges();
        }
        let mut inner = self.inner.write().expect("wal lock poisoned");
        if let Some(job) = inner.purge(log_id, past_end)? {
            // Sent under the lock, so jobs queue in purge order.
            self.purge_tx
                .send(job)
                .map_err(|_| io::Error::other("wal purger thread is gone"))?;
        }
        Ok(())
    }
}
