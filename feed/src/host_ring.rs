//! The host ring: one feed receiver per host hands its records to any
//! number of local readers through a shared-memory broadcast ring (the
//! shape of Aeron's media driver and broadcast buffer).
//!
//! **Why.** A datagram costs each receiving socket one `recvfrom` (~1–1.5 µs
//! of kernel CPU here); 64 subscribers on one host pay it 64 times per
//! packet, which saturates a small host before any subscriber does work.
//! With the ring, the host receives each packet once, and a reader costs a
//! few loads per record.
//!
//! **What it guarantees.** One writer (the hub, which follows the feed with
//! full recovery) appends each delivered record once, in the order it was
//! delivered. A reader that keeps up gets every record from the point it
//! opened the ring, once and in that order. A reader that falls more than
//! the ring's capacity behind is *lapped*: it is told (an error naming how
//! far behind it was), counted, and resumes at the writer's tail; it never
//! hands out a record the writer was overwriting while it was read.
//!
//! **Format (version 1), a file (normally in `/dev/shm`) of header + data:**
//!
//! ```text
//! header, 256 bytes, little endian:
//!   0  magic "TXLGRING"         8  version u32, header bytes u32
//!  16  capacity u64 (data bytes, a power of two)
//!  24  writer id u64 (pid << 32 | start time, tells a restarted hub apart)
//!  64  tail intent u64 (atomic; the writer's next tail, stored first)
//! 128  tail u64 (atomic; stored once a record is written)
//! 192  heartbeat ns u64 (atomic; wall clock, every ~100 ms while the hub runs)
//! 200  closed u64 (atomic; 1 once the writer stopped)
//! data, `capacity` bytes; entries 8-aligned, never wrapping:
//!   word 0: bytes u32 (unpadded) | kind u8 (1 record, 2 padding, 3 omitted)
//!           | class u8 | flags u8 (bit 0 sealed) | via u8 (0 live, 1 retransmit, 2 log)
//!   word 1: seq   word 2: channel seq   word 3: send time ns
//!   word 4: channel bytes u16 | txid bytes u16 | payload bytes u32
//!   then channel, txid, payload, zero-padded to 8
//! ```
//!
//! Positions only grow; an entry at position `p` sits at `p % capacity`.
//! An entry that would cross the end is preceded by a padding entry to the
//! end. A record larger than half the ring is written as an *omitted*
//! entry (no body), which the reader reports with its seq.
//!
//! **Concurrency (a seqlock per entry).** The writer stores the tail intent,
//! issues a release fence, writes the entry's words, then stores the tail
//! (release). A reader loads the tail (acquire), copies the entry's words,
//! issues an acquire fence and loads the tail intent: if the intent is more
//! than `capacity` past the entry's position, the writer may have been
//! overwriting it and the copy is thrown away. Every word is an
//! `AtomicU64`, so no read races a write in the language's sense. The file
//! is memory, not durable storage: it carries a version and validated
//! lengths, not checksums (a length that makes no sense is an error, never
//! an out-of-bounds read).

use std::fs::File;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::fence;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use crate::packet::RecordRef;
use crate::receiver::Delivered;
use crate::receiver::Via;
use crate::record::FeedRecord;

const MAGIC: u64 = u64::from_le_bytes(*b"TXLGRING");
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 256;
/// Word indexes of the header's fields.
const WORD_MAGIC: usize = 0;
const WORD_VERSION: usize = 1;
const WORD_CAPACITY: usize = 2;
const WORD_WRITER_ID: usize = 3;
const WORD_TAIL_INTENT: usize = 8;
const WORD_TAIL: usize = 16;
const WORD_HEARTBEAT: usize = 24;
const WORD_CLOSED: usize = 25;

const ENTRY_HEADER_BYTES: usize = 40;
const KIND_RECORD: u8 = 1;
const KIND_PADDING: u8 = 2;
const KIND_OMITTED: u8 = 3;
const FLAG_SEALED: u8 = 1;

/// Smallest and largest ring.
pub const HOST_RING_BYTES_MIN: usize = 1 << 20;
pub const HOST_RING_BYTES_MAX: usize = 1 << 30;
/// Default ring: 64 MiB, ~190,000 records of 256 B.
pub const HOST_RING_BYTES_DEFAULT: usize = 64 << 20;

/// Where ring files go unless a path is given: shared memory (`/dev/shm`)
/// where the host has it, else the temporary directory.
pub fn ring_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostRingError {
    #[error("host ring {path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("host ring {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    /// The reader fell more than the ring behind; it resumes at the tail.
    #[error("host ring reader lapped: {behind_bytes} bytes behind a ring of {capacity}; records in between are lost to this reader (read them from the log)")]
    Lapped { behind_bytes: u64, capacity: u64 },
    /// A record larger than half the ring was not written; read it from the log.
    #[error("record seq {seq} ({bytes} bytes) is larger than half the host ring; read it from the log or give the hub a larger ring")]
    Omitted { seq: u64, bytes: u64 },
    /// An entry's fields make no sense though the writer was not near it.
    #[error("host ring entry at {position} is damaged: {detail}")]
    Damaged { position: u64, detail: String },
}

/// A mapped ring file: the header's and the data's words.
struct Mapping {
    ptr: *mut libc::c_void,
    bytes: usize,
}

// SAFETY: the mapping is only ever accessed through `AtomicU64`s.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn map(file: &File, bytes: usize, writable: bool, path: &Path) -> Result<Mapping, HostRingError> {
        let protection = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new shared mapping of an open file of at least `bytes`
        // bytes; it is unmapped on drop and only accessed as atomics.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                protection,
                // Populated at once: faulting each page in on first touch
                // cost every reader ~1 µs per 4 KiB of records.
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(HostRingError::Io {
                path: path.to_path_buf(),
                err: std::io::Error::last_os_error(),
            });
        }
        Ok(Mapping { ptr, bytes })
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned, `bytes` long and lives as
        // long as `self`; `AtomicU64` has the layout of `u64`. A reader's
        // mapping is read-only, and readers only ever do `Relaxed` loads
        // (ordering comes from fences), which are sound on read-only
        // memory for lock-free atomics of this size.
        unsafe { std::slice::from_raw_parts(self.ptr as *const AtomicU64, self.bytes / 8) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `map` with this length; nothing borrows it past `self`.
        unsafe {
            libc::munmap(self.ptr, self.bytes);
        }
    }
}

fn align8(bytes: usize) -> usize {
    (bytes + 7) & !7
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The hub's side: appends delivered records.
pub struct HostRingWriter {
    map: Mapping,
    path: PathBuf,
    capacity: u64,
    tail: u64,
    /// Entry words being assembled (reused).
    scratch: Vec<u64>,
}

impl HostRingWriter {
    /// Create a fresh ring of `capacity` data bytes (a power of two between
    /// [`HOST_RING_BYTES_MIN`] and [`HOST_RING_BYTES_MAX`]) at `path`,
    /// replacing any older ring there at once (readers of the old one see
    /// it closed and reopen).
    pub fn create(path: &Path, capacity: usize) -> Result<HostRingWriter, HostRingError> {
        let invalid = |detail: String| HostRingError::Invalid {
            path: path.to_path_buf(),
            detail,
        };
        if !capacity.is_power_of_two() || !(HOST_RING_BYTES_MIN..=HOST_RING_BYTES_MAX).contains(&capacity) {
            return Err(invalid(format!(
                "ring bytes {capacity} must be a power of two from {HOST_RING_BYTES_MIN} to {HOST_RING_BYTES_MAX}"
            )));
        }
        let io = |err| HostRingError::Io {
            path: path.to_path_buf(),
            err,
        };
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".tmp-{}", std::process::id()));
        let temporary = PathBuf::from(temporary);
        // Mode 0600: the ring holds payloads (sealed ones stay sealed).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io)?;
        let bytes = HEADER_BYTES + capacity;
        // Allocated now, not on first write: a sparse file on a full tmpfs
        // would end the hub with SIGBUS the first time the ring filled.
        // SAFETY: a plain call on an open fd.
        let allocated = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
        if allocated != 0 {
            let _ = std::fs::remove_file(&temporary);
            return Err(io(std::io::Error::from_raw_os_error(allocated)));
        }
        let map = Mapping::map(&file, bytes, true, path)?;
        let words = map.words();
        words[WORD_VERSION].store(u64::from(VERSION) | ((HEADER_BYTES as u64) << 32), Ordering::Relaxed);
        words[WORD_CAPACITY].store(capacity as u64, Ordering::Relaxed);
        words[WORD_WRITER_ID].store(
            (u64::from(std::process::id()) << 32) | (now_ns() & 0xffff_ffff),
            Ordering::Relaxed,
        );
        words[WORD_HEARTBEAT].store(now_ns(), Ordering::Relaxed);
        // The magic last: a reader that sees it sees a complete header.
        words[WORD_MAGIC].store(MAGIC, Ordering::Release);
        std::fs::rename(&temporary, path).map_err(io)?;
        Ok(HostRingWriter {
            map,
            path: path.to_path_buf(),
            capacity: capacity as u64,
            tail: 0,
            scratch: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far (the tail position).
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Tell readers the writer is alive (call every ~100 ms).
    pub fn heartbeat(&self) {
        self.map.words()[WORD_HEARTBEAT].store(now_ns(), Ordering::Relaxed);
    }

    /// Append one delivered record. A record larger than half the ring is
    /// appended as an omitted entry; the return value says whether the
    /// body was written.
    pub fn append(&mut self, delivered: &Delivered) -> bool {
        let r = &delivered.record;
        let (channel, txid) = (r.channel.as_bytes(), r.txid.as_slice());
        let body_bytes = channel.len() + txid.len() + r.payload.len();
        let whole = ENTRY_HEADER_BYTES + body_bytes;
        // A field too long for its length (channels and txids are far
        // shorter in any log) is omitted too, never cut.
        let fits = (align8(whole) as u64) <= self.capacity / 2
            && channel.len() <= u16::MAX as usize
            && txid.len() <= u16::MAX as usize;
        let (kind, bytes) = if fits {
            (KIND_RECORD, whole)
        } else {
            (KIND_OMITTED, ENTRY_HEADER_BYTES)
        };
        let via = match delivered.via {
            Via::Live => 0u64,
            Via::Retransmit => 1,
            Via::Log => 2,
        };
        let flags = if r.sealed { FLAG_SEALED } else { 0 };
        self.scratch.clear();
        self.scratch.push(
            bytes as u64
                | (u64::from(kind) << 32)
                | (u64::from(delivered.class) << 40)
                | (u64::from(flags) << 48)
                | (via << 56),
        );
        self.scratch.push(r.seq);
        self.scratch.push(r.channel_seq);
        self.scratch.push(delivered.send_time_ns);
        // An omitted entry's payload field holds the body's size, for the report.
        let (channel_field, txid_field, payload_field) = if fits {
            (channel.len(), txid.len(), r.payload.len())
        } else {
            (0, 0, body_bytes.min(u32::MAX as usize))
        };
        self.scratch
            .push(channel_field as u64 | ((txid_field as u64) << 16) | ((payload_field as u64) << 32));
        if fits {
            pack_bytes(&mut self.scratch, &[channel, txid, &r.payload]);
        }
        self.publish();
        fits
    }

    /// Write the assembled entry at the tail (after a padding entry if it
    /// would cross the end) under the seqlock protocol of the module docs.
    fn publish(&mut self) {
        let entry_bytes = self.scratch.len() as u64 * 8;
        assert!(entry_bytes <= self.capacity / 2, "entries fit half the ring");
        let words = self.map.words();
        let data = &words[HEADER_BYTES / 8..];
        let offset = self.tail & (self.capacity - 1);
        let to_end = self.capacity - offset;
        let start = if entry_bytes > to_end {
            self.tail + to_end
        } else {
            self.tail
        };
        let new_tail = start + entry_bytes;
        words[WORD_TAIL_INTENT].store(new_tail, Ordering::Relaxed);
        fence(Ordering::Release);
        if start != self.tail {
            data[(offset / 8) as usize].store(to_end | (u64::from(KIND_PADDING) << 32), Ordering::Relaxed);
        }
        let first = ((start & (self.capacity - 1)) / 8) as usize;
        for (slot, word) in data[first..first + self.scratch.len()].iter().zip(&self.scratch) {
            slot.store(*word, Ordering::Relaxed);
        }
        words[WORD_TAIL].store(new_tail, Ordering::Release);
        self.tail = new_tail;
    }
}

impl Drop for HostRingWriter {
    fn drop(&mut self) {
        self.map.words()[WORD_CLOSED].store(1, Ordering::Release);
    }
}

/// Append `parts` to `words` as consecutive bytes, zero-padded to a word.
fn pack_bytes(words: &mut Vec<u64>, parts: &[&[u8]]) {
    let mut word = [0u8; 8];
    let mut filled = 0;
    for part in parts {
        for &byte in *part {
            word[filled] = byte;
            filled += 1;
            if filled == 8 {
                words.push(u64::from_le_bytes(word));
                filled = 0;
            }
        }
    }
    if filled > 0 {
        word[filled..].fill(0);
        words.push(u64::from_le_bytes(word));
    }
}

/// What a reader knows of its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterState {
    /// Heard from within the given age.
    Alive { heartbeat_age_ms: u64 },
    /// Stopped cleanly; a new hub replaces the file.
    Closed,
}

/// Reader counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostRingCounters {
    pub records: u64,
    pub laps: u64,
    /// Bytes of entries lost to laps.
    pub lapped_bytes: u64,
    pub omitted: u64,
    /// Records read but not selected (another channel).
    pub filtered: u64,
}

/// A local subscriber's side: reads records from the tail it found at open.
pub struct HostRingReader {
    map: Mapping,
    path: PathBuf,
    capacity: u64,
    writer_id: u64,
    cursor: u64,
    channel: Option<String>,
    counters: HostRingCounters,
    /// The entry being read, as bytes (reused).
    entry: Vec<u8>,
}

/// A record read from the ring, borrowed from the reader until its next
/// read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingRecord<'a> {
    pub class: u8,
    pub via: Via,
    /// When the packet that completed it was first sent (0 for log reads).
    pub send_time_ns: u64,
    pub record: RecordRef<'a>,
}

impl RingRecord<'_> {
    pub fn to_delivered(&self) -> Delivered {
        Delivered {
            class: self.class,
            record: FeedRecord::from(self.record),
            via: self.via,
            send_time_ns: self.send_time_ns,
        }
    }
}

impl HostRingReader {
    /// Open the ring at `path` and start at its current tail: records
    /// appended from now on (older ones come from the log). `channel`
    /// narrows what is handed out.
    pub fn open(path: &Path, channel: Option<String>) -> Result<HostRingReader, HostRingError> {
        let invalid = |detail: String| HostRingError::Invalid {
            path: path.to_path_buf(),
            detail,
        };
        let file = File::open(path).map_err(|err| HostRingError::Io {
            path: path.to_path_buf(),
            err,
        })?;
        let len = file
            .metadata()
            .map_err(|err| HostRingError::Io {
                path: path.to_path_buf(),
                err,
            })?
            .len();
        if len < HEADER_BYTES as u64 {
            return Err(invalid(format!(
                "{len} bytes is shorter than a ring header; is a hub running?"
            )));
        }
        let map = Mapping::map(&file, len as usize, false, path)?;
        let words = map.words();
        let magic = words[WORD_MAGIC].load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if magic != MAGIC {
            return Err(invalid("not a txlog host ring (bad magic)".into()));
        }
        let version = words[WORD_VERSION].load(Ordering::Relaxed);
        if version as u32 != VERSION || (version >> 32) as usize != HEADER_BYTES {
            return Err(invalid(format!(
                "ring version {} with a {}-byte header; this reader knows version {VERSION}",
                version as u32,
                version >> 32
            )));
        }
        let capacity = words[WORD_CAPACITY].load(Ordering::Relaxed);
        if !capacity.is_power_of_two()
            || !(HOST_RING_BYTES_MIN as u64..=HOST_RING_BYTES_MAX as u64).contains(&capacity)
            || HEADER_BYTES as u64 + capacity != len
        {
            return Err(invalid(format!(
                "capacity {capacity} does not match the file's {len} bytes"
            )));
        }
        let cursor = words[WORD_TAIL].load(Ordering::Relaxed);
        let writer_id = words[WORD_WRITER_ID].load(Ordering::Relaxed);
        Ok(HostRingReader {
            map,
            path: path.to_path_buf(),
            capacity,
            writer_id,
            cursor,
            channel,
            counters: HostRingCounters::default(),
            entry: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn counters(&self) -> &HostRingCounters {
        &self.counters
    }

    /// The writer id in the header (another after a hub restart).
    pub fn writer_id(&self) -> u64 {
        self.writer_id
    }

    pub fn writer_state(&self) -> WriterState {
        let words = self.map.words();
        if words[WORD_CLOSED].load(Ordering::Relaxed) != 0 {
            return WriterState::Closed;
        }
        let heartbeat = words[WORD_HEARTBEAT].load(Ordering::Relaxed);
        WriterState::Alive {
            heartbeat_age_ms: now_ns().saturating_sub(heartbeat) / 1_000_000,
        }
    }

    /// Bytes the writer is ahead of this reader.
    pub fn behind_bytes(&self) -> u64 {
        self.map.words()[WORD_TAIL]
            .load(Ordering::Relaxed)
            .saturating_sub(self.cursor)
    }

    /// The next selected record if one is there, without waiting, as an
    /// owned record. `Err(Lapped)` and `Err(Omitted)` are reported once
    /// each, and reading goes on after them.
    pub fn poll(&mut self) -> Result<Option<Delivered>, HostRingError> {
        Ok(self.poll_ref()?.map(|r| r.to_delivered()))
    }

    /// As [`HostRingReader::poll`], borrowing the record from the reader:
    /// no allocation per record.
    pub fn poll_ref(&mut self) -> Result<Option<RingRecord<'_>>, HostRingError> {
        // Find the next selected entry first, then make the one view of it.
        let (kind, position) = loop {
            let Some((kind, position)) = self.copy_next()? else {
                return Ok(None);
            };
            if kind == KIND_PADDING {
                continue;
            }
            let word = |i: usize| u64::from_le_bytes(self.entry[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            if kind == KIND_OMITTED {
                self.counters.omitted += 1;
                return Err(HostRingError::Omitted {
                    seq: word(1),
                    bytes: word(4) >> 32,
                });
            }
            if let Some(channel) = &self.channel {
                // The entry's fields are checked by `decode`; here only a
                // channel that is in bounds and equal selects it.
                let channel_bytes = (word(4) & 0xffff) as usize;
                let found = self.entry.get(ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + channel_bytes);
                if found != Some(channel.as_bytes()) {
                    self.counters.filtered += 1;
                    continue;
                }
            }
            break (kind, position);
        };
        self.counters.records += 1;
        decode(&self.entry, kind, position).map(Some)
    }

    /// Copy the entry at the cursor into `self.entry` and step past it:
    /// its kind and position, or `None` at the tail. The copy is checked
    /// against the writer's intent after it is taken (module docs).
    fn copy_next(&mut self) -> Result<Option<(u8, u64)>, HostRingError> {
        let words = self.map.words();
        let tail = words[WORD_TAIL].load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if self.cursor >= tail {
            return Ok(None);
        }
        if tail - self.cursor > self.capacity {
            return Err(self.lapped(tail));
        }
        let data = &words[HEADER_BYTES / 8..];
        let offset = self.cursor & (self.capacity - 1);
        let to_end = self.capacity - offset;
        let first = (offset / 8) as usize;
        let word0 = data[first].load(Ordering::Relaxed);
        let bytes = word0 & 0xffff_ffff;
        let kind = (word0 >> 32) as u8;
        // Validate before reading on: a torn entry must not steer the copy.
        let sane = match kind {
            KIND_PADDING => bytes == to_end,
            KIND_RECORD | KIND_OMITTED => {
                bytes >= ENTRY_HEADER_BYTES as u64
                    && align8(bytes as usize) as u64 <= to_end
                    && align8(bytes as usize) as u64 <= self.capacity / 2
            }
            _ => false,
        };
        let words_to_copy = if sane && kind != KIND_PADDING {
            align8(bytes as usize) / 8
        } else {
            1
        };
        // Word 0 as checked above, not loaded again: `decode` must see the
        // lengths the copy was sized by.
        self.entry.resize(words_to_copy * 8, 0);
        self.entry[..8].copy_from_slice(&word0.to_le_bytes());
        for (bytes, word) in self.entry[8..]
            .chunks_exact_mut(8)
            .zip(&data[first + 1..first + words_to_copy])
        {
            bytes.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        fence(Ordering::Acquire);
        let intent = words[WORD_TAIL_INTENT].load(Ordering::Relaxed);
        if intent > self.cursor.saturating_add(self.capacity) {
            return Err(self.lapped(intent));
        }
        if !sane {
            return Err(HostRingError::Damaged {
                position: self.cursor,
                detail: format!("kind {kind}, {bytes} bytes, {to_end} bytes to the ring's end"),
            });
        }
        let position = self.cursor;
        let step = if kind == KIND_PADDING {
            bytes
        } else {
            align8(bytes as usize) as u64
        };
        self.cursor = self.cursor.checked_add(step).ok_or_else(|| HostRingError::Damaged {
            position,
            detail: "positions run past 2^64".into(),
        })?;
        Ok(Some((kind, position)))
    }

    /// Count a lap and move to the writer's tail.
    fn lapped(&mut self, ahead: u64) -> HostRingError {
        let tail = self.map.words()[WORD_TAIL].load(Ordering::Relaxed);
        let behind_bytes = ahead.max(tail) - self.cursor;
        self.counters.laps += 1;
        self.counters.lapped_bytes += tail.saturating_sub(self.cursor);
        self.cursor = tail;
        HostRingError::Lapped {
            behind_bytes,
            capacity: self.capacity,
        }
    }
}

/// An entry (copied and checked against the writer) as a record.
fn decode(entry: &[u8], kind: u8, position: u64) -> Result<RingRecord<'_>, HostRingError> {
    let damaged = |detail: &str| HostRingError::Damaged {
        position,
        detail: detail.to_string(),
    };
    let word = |i: usize| u64::from_le_bytes(entry[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let word0 = word(0);
    let class = (word0 >> 40) as u8;
    let flags = (word0 >> 48) as u8;
    let via = match (word0 >> 56) as u8 {
        0 => Via::Live,
        1 => Via::Retransmit,
        2 => Via::Log,
        _ => return Err(damaged("unknown via")),
    };
    let lengths = word(4);
    let channel_bytes = (lengths & 0xffff) as usize;
    let txid_bytes = ((lengths >> 16) & 0xffff) as usize;
    let payload_bytes = (lengths >> 32) as usize;
    let mut record = RecordRef {
        seq: word(1),
        channel_seq: word(2),
        channel: "",
        txid: &[],
        payload: &[],
        sealed: flags & FLAG_SEALED != 0,
    };
    if kind == KIND_RECORD {
        let whole = (word0 & 0xffff_ffff) as usize;
        if ENTRY_HEADER_BYTES + channel_bytes + txid_bytes + payload_bytes != whole {
            return Err(damaged("field lengths do not add up to the entry"));
        }
        let field = |from: usize, bytes: usize| {
            entry
                .get(from..from + bytes)
                .ok_or_else(|| damaged("a field runs past the entry"))
        };
        let channel = field(ENTRY_HEADER_BYTES, channel_bytes)?;
        record.txid = field(ENTRY_HEADER_BYTES + channel_bytes, txid_bytes)?;
        record.payload = field(ENTRY_HEADER_BYTES + channel_bytes + txid_bytes, payload_bytes)?;
        record.channel = std::str::from_utf8(channel).map_err(|_| damaged("channel is not UTF-8"))?;
    }
    Ok(RingRecord {
        class,
        via,
        send_time_ns: word(3),
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(seq: u64, channel: &str, payload_bytes: usize) -> Delivered {
        Delivered {
            class: (seq % 3) as u8,
            record: FeedRecord {
                seq,
                channel_seq: seq * 2,
                channel: channel.to_string(),
                txid: format!("tx-{seq}").into_bytes(),
                payload: (0..payload_bytes).map(|i| (i as u64 ^ seq) as u8).collect(),
                sealed: seq.is_multiple_of(2),
            },
            via: if seq.is_multiple_of(5) {
                Via::Retransmit
            } else {
                Via::Live
            },
            send_time_ns: 1_000 + seq,
        }
    }

    fn ring_path(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(name);
        (dir, path)
    }

    /// Records of every size round-trip in order through several wraps of a
    /// small ring, each field intact.
    #[test]
    fn records_round_trip_in_order_across_wraps() {
        let (_dir, path) = ring_path("ring");
        let mut writer = HostRingWriter::create(&path, HOST_RING_BYTES_MIN).expect("create");
        let mut reader = HostRingReader::open(&path, None).expect("open");
        for seq in 1..=20_000u64 {
            let d = delivered(
                seq,
                if seq % 2 == 0 { "orders" } else { "md" },
                (seq as usize * 37) % 700,
            );
            assert!(writer.append(&d));
            assert_eq!(reader.poll().expect("read"), Some(d));
        }
        assert_eq!(reader.poll().expect("read"), None);
        assert!(writer.tail() > 3 * HOST_RING_BYTES_MIN as u64, "the ring wrapped");
        assert_eq!(reader.counters().records, 20_000);
    }

    /// A reader left behind by more than the ring is told so once, then
    /// reads on from the tail.
    #[test]
    fn a_reader_left_behind_is_lapped_then_reads_on() {
        let (_dir, path) = ring_path("ring");
        let mut writer = HostRingWriter::create(&path, HOST_RING_BYTES_MIN).expect("create");
        let mut reader = HostRingReader::open(&path, None).expect("open");
        for seq in 1..=10_000u64 {
            writer.append(&delivered(seq, "md", 256));
        }
        assert!(matches!(reader.poll(), Err(HostRingError::Lapped { .. })));
        assert_eq!(reader.poll().expect("read"), None);
        writer.append(&delivered(10_001, "md", 256));
        assert_eq!(reader.poll().expect("read").map(|d| d.record.seq), Some(10_001));
        assert_eq!(reader.counters().laps, 1);
    }

    /// A channel filter hands out only its channel; a record over half the
    /// ring is reported as omitted with its seq, and reading goes on.
    #[test]
    fn filter_and_omitted_records() {
        let (_dir, path) = ring_path("ring");
        let mut writer = HostRingWriter::create(&path, HOST_RING_BYTES_MIN).expect("create");
        let mut reader = HostRingReader::open(&path, Some("orders".into())).expect("open");
        writer.append(&delivered(1, "md", 10));
        writer.append(&delivered(2, "orders", 10));
        assert!(!writer.append(&delivered(3, "orders", HOST_RING_BYTES_MIN)));
        writer.append(&delivered(4, "orders", 10));
        assert_eq!(reader.poll().expect("read").map(|d| d.record.seq), Some(2));
        match reader.poll() {
            Err(HostRingError::Omitted { seq: 3, .. }) => {}
            other => panic!("expected an omitted record, got {other:?}"),
        }
        assert_eq!(reader.poll().expect("read").map(|d| d.record.seq), Some(4));
        assert_eq!(reader.counters().filtered, 1);
        assert_eq!(reader.counters().omitted, 1);
    }

    /// Bad sizes, foreign files and short files are refused with the path
    /// in the message; a closed writer is seen as closed.
    #[test]
    fn bad_rings_are_refused_by_name() {
        let (_dir, path) = ring_path("ring");
        let err = HostRingWriter::create(&path, 3 << 20)
            .err()
            .expect("not a power of two");
        assert!(err.to_string().contains("power of two"), "{err}");
        std::fs::write(&path, vec![7u8; 4096 + HEADER_BYTES]).expect("write");
        let err = HostRingReader::open(&path, None).err().expect("foreign file");
        assert!(
            err.to_string().contains("bad magic") && err.to_string().contains("ring"),
            "{err}"
        );
        std::fs::write(&path, b"short").expect("write");
        let err = HostRingReader::open(&path, None).err().expect("short file");
        assert!(err.to_string().contains("shorter than a ring header"), "{err}");
        let writer = HostRingWriter::create(&path, HOST_RING_BYTES_MIN).expect("create");
        let reader = HostRingReader::open(&path, None).expect("open");
        assert!(matches!(reader.writer_state(), WriterState::Alive { .. }));
        drop(writer);
        assert_eq!(reader.writer_state(), WriterState::Closed);
    }

    /// A damaged entry the writer is nowhere near is an error, not a
    /// wild read.
    #[test]
    fn a_damaged_entry_is_an_error() {
        let (_dir, path) = ring_path("ring");
        let mut writer = HostRingWriter::create(&path, HOST_RING_BYTES_MIN).expect("create");
        let mut reader = HostRingReader::open(&path, None).expect("open");
        writer.append(&delivered(1, "md", 100));
        // Claim the entry is larger than the ring's end allows.
        writer.map.words()[HEADER_BYTES / 8]
            .store(u64::from(u32::MAX) | (u64::from(KIND_RECORD) << 32), Ordering::Relaxed);
        assert!(matches!(reader.poll(), Err(HostRingError::Damaged { .. })));
    }

    /// One writer thread and three reader threads, one of them slow: every
    /// record a reader hands out is whole and in order, and a reader that
    /// is lapped says so rather than handing out a torn record.
    #[test]
    fn concurrent_readers_never_see_a_torn_record() {
        let (_dir, path) = ring_path("ring");
        let mut writer = HostRingWriter::create(&path, HOST_RING_BYTES_MIN).expect("create");
        let total = 200_000u64;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|i| {
                let mut reader = HostRingReader::open(&path, None).expect("open");
                let done = done.clone();
                std::thread::spawn(move || {
                    let mut last = 0u64;
                    let mut laps = 0u64;
                    while last < total {
                        let finished = done.load(Ordering::Acquire);
                        match reader.poll() {
                            Ok(Some(d)) => {
                                assert!(d.record.seq > last, "in order");
                                assert_eq!(d, delivered(d.record.seq, "md", (d.record.seq as usize * 13) % 300));
                                last = d.record.seq;
                                if i == 2 && last.is_multiple_of(1000) {
                                    std::thread::sleep(std::time::Duration::from_millis(2));
                                }
                            }
                            Ok(None) if finished => break,
                            Ok(None) => std::thread::yield_now(),
                            Err(HostRingError::Lapped { .. }) => laps += 1,
                            Err(other) => panic!("reader {i}: {other}"),
                        }
                    }
                    (reader.counters().records, laps)
                })
            })
            .collect();
        for seq in 1..=total {
            writer.append(&delivered(seq, "md", (seq as usize * 13) % 300));
        }
        done.store(true, Ordering::Release);
        for reader in readers {
            let (records, laps) = reader.join().expect("reader");
            // A reader scheduled only after the writer lapped it may get
            // nothing; what it must never do is miss records untold.
            assert!(laps > 0 || records == total, "a reader that missed records was told");
        }
    }
}
