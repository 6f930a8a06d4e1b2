//! Snapshot files: the state machine's records at one applied log id.
//!
//! Layout:
//!
//! ```text
//! magic "TXLSNAP1" | version u32 | meta_len u32 | meta | crc32(meta) u32
//! record frame*                      (len u32 | crc32 u32 | StoredRecord)
//! trailer: magic "TXLSEND1" | record_count u64 | crc32(all bytes before the trailer) u32
//! ```
//!
//! A snapshot is written under a temporary name, fsynced, renamed into place
//! and the directory fsynced, so a file with the final name is always whole.
//! [`verify`] checks every checksum before a snapshot is trusted; received
//! snapshots are verified before they are installed.
//!
//! A snapshot a node builds of its own records is a *linked* snapshot, a
//! directory that shares the record file's segments
//! ([`crate::linked_snapshot`]); files are what a node receives from a peer
//! or merges in a delta resync. Every reader below takes either: given a
//! directory it reads the linked snapshot, and [`read_chunks`] streams it as
//! the bytes of this file format.

use std::fs::File;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use crate::error::Error;
use crate::error::Result;
use crate::frame;
use crate::linked_snapshot;
use crate::StoredRecord;

const MAGIC: &[u8; 8] = b"TXLSNAP1";
const TRAILER_MAGIC: &[u8; 8] = b"TXLSEND1";
const VERSION: u32 = 1;
const TRAILER_BYTES: u64 = 20;
const META_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// Streams records into a new snapshot file.
pub struct SnapshotWriter {
    tmp: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    count: u64,
    scratch: Vec<u8>,
}

impl SnapshotWriter {
    /// Start writing the snapshot that will be named `path` once finished.
    pub fn create(path: impl Into<PathBuf>, meta: &[u8]) -> Result<Self> {
        let path = path.into();
        let tmp = path.with_extension("partial");
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut writer = SnapshotWriter {
            tmp,
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            count: 0,
            scratch: Vec::new(),
        };
        writer.write(&encode_header(meta))?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes).map_err(|e| Error::io(&self.tmp, e))
    }

    pub fn append(&mut self, record: &StoredRecord) -> Result<()> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        frame::encode_into(&mut buf, &record.encode());
        self.write(&buf)?;
        self.scratch = buf;
        self.count += 1;
        Ok(())
    }

    /// Seal, fsync and rename into place; returns the final path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let trailer = encode_trailer(self.count, self.crc.clone().finalize());
        self.out.write_all(&trailer).map_err(|e| Error::io(&self.tmp, e))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        if let Err(err) = file.sync_all() {
            crate::fatal_fsync_failure(&self.tmp.display().to_string(), &err);
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        crate::fsync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        Ok(self.path)
    }
}

fn encode_header(meta: &[u8]) -> Vec<u8> {
    crate::durable_file::versioned_frame(MAGIC, VERSION, meta)
}

fn encode_trailer(count: u64, crc: u32) -> Vec<u8> {
    let mut trailer = Vec::with_capacity(TRAILER_BYTES as usize);
    trailer.extend_from_slice(TRAILER_MAGIC);
    trailer.extend_from_slice(&count.to_le_bytes());
    trailer.extend_from_slice(&crc.to_le_bytes());
    trailer
}

/// Bytes of a snapshot file with `meta` and no records: header and trailer.
pub(crate) fn stream_bytes_without_records(meta: &[u8]) -> u64 {
    20 + meta.len() as u64 + TRAILER_BYTES
}

/// The bytes of a snapshot file built in memory, for streaming a snapshot
/// kept in another form (a linked snapshot) as this format.
pub(crate) struct FileStream {
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    count: u64,
}

impl FileStream {
    pub(crate) fn new(meta: &[u8]) -> Self {
        let mut stream = FileStream {
            buf: Vec::new(),
            crc: crc32fast::Hasher::new(),
            count: 0,
        };
        let header = encode_header(meta);
        stream.crc.update(&header);
        stream.buf = header;
        stream
    }

    /// Add the frame of one encoded record.
    pub(crate) fn record(&mut self, encoded: &[u8]) {
        let start = self.buf.len();
        frame::encode_into(&mut self.buf, encoded);
        self.crc.update(&self.buf[start..]);
        self.count += 1;
    }

    /// Add the trailer; `count` is the number of records the source claims
    /// to hold, checked against the number added.
    pub(crate) fn finish(&mut self, count: u64) {
        assert_eq!(count, self.count, "snapshot stream record count");
        let trailer = encode_trailer(self.count, self.crc.clone().finalize());
        self.buf.extend_from_slice(&trailer);
    }

    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The first `at_most` buffered bytes.
    pub(crate) fn take(&mut self, at_most: usize) -> Vec<u8> {
        let n = at_most.min(self.buf.len());
        let rest = self.buf.split_off(n);
        std::mem::replace(&mut self.buf, rest)
    }
}

/// What [`verify`] found in a whole, valid snapshot file.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub meta: Vec<u8>,
    pub record_count: u64,
    /// Bytes of the snapshot file; for a linked snapshot, of the file it
    /// streams as (not what it holds on disk).
    pub file_bytes: u64,
}

fn read_header(path: &Path, reader: &mut impl Read, crc: &mut crc32fast::Hasher) -> Result<Vec<u8>> {
    let mut fixed = [0u8; 16];
    reader
        .read_exact(&mut fixed)
        .map_err(|_| Error::corruption(path, "snapshot shorter than its header"))?;
    crc.update(&fixed);
    if &fixed[0..8] != MAGIC {
        return Err(Error::corruption(path, "bad snapshot magic"));
    }
    let version = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(Error::corruption(
            path,
            format!("unsupported snapshot version {version}"),
        ));
    }
    let meta_len = u32::from_le_bytes(fixed[12..16].try_into().expect("4 bytes"));
    if meta_len > META_BYTES_MAX {
        return Err(Error::corruption(
            path,
            format!("snapshot meta length {meta_len} over limit"),
        ));
    }
    let mut meta = vec![0u8; meta_len as usize + 4];
    reader
        .read_exact(&mut meta)
        .map_err(|_| Error::corruption(path, "snapshot meta cut short"))?;
    crc.update(&meta);
    let meta_crc = u32::from_le_bytes(meta[meta_len as usize..].try_into().expect("4 bytes"));
    meta.truncate(meta_len as usize);
    if crc32fast::hash(&meta) != meta_crc {
        return Err(Error::corruption(path, "snapshot meta checksum mismatch"));
    }
    Ok(meta)
}

/// The metadata block of a snapshot file, checked by its own CRC; the
/// records are not read (use [`verify`] before trusting them).
pub fn read_meta(path: &Path) -> Result<Vec<u8>> {
    if linked_snapshot::is_linked(path) {
        return linked_snapshot::read_meta(path);
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    read_header(path, &mut reader, &mut crc32fast::Hasher::new())
}

/// Check a snapshot file end to end without keeping its records.
pub fn verify(path: &Path) -> Result<SnapshotInfo> {
    if linked_snapshot::is_linked(path) {
        return linked_snapshot::verify(path);
    }
    let mut info = None;
    read_all(path, |_| Ok(()), &mut info)?;
    Ok(info.expect("read_all sets info on success"))
}

/// Visit every record of a verified snapshot, in sequence order.
pub fn for_each_record(path: &Path, mut visit: impl FnMut(StoredRecord) -> Result<()>) -> Result<SnapshotInfo> {
    if linked_snapshot::is_linked(path) {
        return linked_snapshot::for_each_record(path, visit);
    }
    let mut info = None;
    read_all(path, &mut visit, &mut info)?;
    Ok(info.expect("read_all sets info on success"))
}

/// Visit the records `from_seq..` of a verified snapshot, in order. A
/// linked snapshot skips what comes before; a file is read from the start.
pub fn for_each_record_from(
    path: &Path,
    from_seq: u64,
    mut visit: impl FnMut(StoredRecord) -> Result<()>,
) -> Result<()> {
    if linked_snapshot::is_linked(path) {
        return linked_snapshot::for_each_record_from(path, from_seq, visit);
    }
    for_each_record(
        path,
        |record| if record.seq < from_seq { Ok(()) } else { visit(record) },
    )?;
    Ok(())
}

/// Read the file's raw bytes in chunks of `chunk_bytes` (the last one
/// shorter, possibly empty) and hand each to `send` with whether it is the
/// last; stops early when `send` returns false. Returns the bytes sent.
/// This is how a whole snapshot is shipped to a peer, which verifies it.
pub fn read_chunks(path: &Path, chunk_bytes: usize, mut send: impl FnMut(Vec<u8>, bool) -> bool) -> Result<u64> {
    if linked_snapshot::is_linked(path) {
        return linked_snapshot::read_chunks(path, chunk_bytes, send);
    }
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut offset = 0u64;
    loop {
        let mut data = vec![0u8; chunk_bytes];
        let mut filled = 0;
        while filled < data.len() {
            let n = file.read(&mut data[filled..]).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        data.truncate(filled);
        offset += filled as u64;
        let done = filled < chunk_bytes;
        if !send(data, done) || done {
            return Ok(offset);
        }
    }
}

/// The hash chain stored with record `seq` of a linked snapshot, reading
/// only the segment that holds it; `None` for a snapshot file (which does
/// not store chains) or a seq past the snapshot's end.
pub fn chain_at(path: &Path, seq: u64) -> Result<Option<crate::ChainHash>> {
    if linked_snapshot::is_linked(path) {
        return linked_snapshot::chain_at(path, seq);
    }
    Ok(None)
}

/// Records in a whole snapshot file, read from its trailer without
/// verifying the file (records are `1..=count`, dense).
pub fn record_count(path: &Path) -> Result<u64> {
    use std::io::Seek;
    if linked_snapshot::is_linked(path) {
        return linked_snapshot::record_count(path);
    }
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < TRAILER_BYTES {
        return Err(Error::corruption(path, "snapshot has no trailer"));
    }
    file.seek(std::io::SeekFrom::Start(len - TRAILER_BYTES))
        .map_err(|e| Error::io(path, e))?;
    let mut trailer = [0u8; TRAILER_BYTES as usize];
    file.read_exact(&mut trailer).map_err(|e| Error::io(path, e))?;
    if &trailer[0..8] != TRAILER_MAGIC {
        return Err(Error::corruption(path, "bad snapshot trailer magic"));
    }
    Ok(u64::from_le_bytes(trailer[8..16].try_into().expect("8 bytes")))
}

/// Read the rest of the trailer (after its magic) and check the record
/// count and the checksum of everything before it.
fn check_trailer(path: &Path, reader: &mut impl Read, count: u64, crc: crc32fast::Hasher) -> Result<()> {
    let mut rest = [0u8; 12];
    reader.read_exact(&mut rest).map_err(|e| Error::io(path, e))?;
    let expected_count = u64::from_le_bytes(rest[0..8].try_into().expect("8 bytes"));
    let expected_crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
    if expected_count != count {
        return Err(Error::corruption(
            path,
            format!("trailer says {expected_count} records, found {count}"),
        ));
    }
    if expected_crc != crc.finalize() {
        return Err(Error::corruption(path, "snapshot checksum mismatch"));
    }
    Ok(())
}

fn read_all(
    path: &Path,
    mut visit: impl FnMut(StoredRecord) -> Result<()>,
    info: &mut Option<SnapshotInfo>,
) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_bytes = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut crc = crc32fast::Hasher::new();
    let meta = read_header(path, &mut reader, &mut crc)?;
    let mut position = 16 + meta.len() as u64 + 4;
    let mut count = 0u64;
    let mut last_seq = None;
    loop {
        if position + TRAILER_BYTES > file_bytes {
            return Err(Error::corruption(path, "snapshot has no trailer"));
        }
        let mut head = [0u8; frame::FRAME_HEADER_BYTES];
        reader.read_exact(&mut head).map_err(|e| Error::io(path, e))?;
        if &head == TRAILER_MAGIC && position + TRAILER_BYTES == file_bytes {
            check_trailer(path, &mut reader, count, crc)?;
            *info = Some(SnapshotInfo {
                meta,
                record_count: count,
                file_bytes,
            });
            return Ok(());
        }
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
        if frame::body_len(&head).is_none() || position + 8 + u64::from(len) + TRAILER_BYTES > file_bytes {
            return Err(Error::corruption(
                path,
                format!("record length {len} at offset {position} out of range"),
            ));
        }
        let mut body = vec![0u8; len as usize];
        reader.read_exact(&mut body).map_err(|e| Error::io(path, e))?;
        crc.update(&head);
        crc.update(&body);
        if !frame::body_matches(&head, &body) {
            return Err(Error::corruption(
                path,
                format!("record checksum mismatch at offset {position}"),
            ));
        }
        let record = StoredRecord::decode(&body)?;
        if let Some(last) = last_seq {
            if record.seq != last + 1 {
                return Err(Error::corruption(
                    path,
                    format!("record seq {} follows {last}", record.seq),
                ));
            }
        }
        last_seq = Some(record.seq);
        visit(record)?;
        count += 1;
        position += 8 + u64::from(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> StoredRecord {
        StoredRecord::for_test(seq, 32)
    }

    /// A written snapshot verifies and reads back; any single flipped byte is reported as corruption.
    #[test]
    fn round_trip_and_every_byte_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.snap");
        let mut writer = SnapshotWriter::create(&path, b"meta-bytes").unwrap();
        for seq in 1..=5 {
            writer.append(&record(seq)).unwrap();
        }
        writer.finish().unwrap();
        let mut seen = Vec::new();
        let info = for_each_record(&path, |r| {
            seen.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(info.meta, b"meta-bytes");
        assert_eq!(info.record_count, 5);
        assert_eq!(seen, (1..=5).map(record).collect::<Vec<_>>());

        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            assert!(verify(&path).is_err(), "flip at byte {i} went unnoticed");
        }
        for cut in 0..good.len() {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(verify(&path).is_err(), "cut at byte {cut} went unnoticed");
        }
    }
}
