//! Linked snapshots: a snapshot that shares the record file's segments
//! instead of copying every record into a new file.
//!
//! A full snapshot file costs a read and a write of every record the node
//! holds, on every node at once, and doubles the disk the records take. A
//! linked snapshot costs one hard link per record segment, an fsync of the
//! bytes not yet synced (at most the active segment's) and a small manifest,
//! whatever the size of the log.
//!
//! Layout: a directory named like a snapshot file (`<index>-<term>.snap`)
//! holding
//!
//! ```text
//! manifest              magic "TXLSNAPL" | version u32 | meta_len u32 | meta
//!                       | last_seq u64 | chain at last_seq [32]
//!                       | segment_count u32 | (first_seq u64, end u64)*
//!                       | crc32(all bytes before it) u32
//! <first seq:020>.rec   a hard link to the record-file segment starting at
//!                       that seq; the snapshot holds its frames up to byte `end`
//! ```
//!
//! Why sharing is safe: record segments are append-only, and the bytes a
//! snapshot covers were fsynced before its manifest was written. The record
//! file rewrites bytes below its end in one place only, when it cuts records
//! after a crash or a failed write, and there it first gives the segment a
//! new inode when another name links to it ([`crate::record_file`]). Deleting
//! a segment from the store only drops the store's name for it.
//!
//! Reading: everything [`crate::snapshot_file`] offers for a file — its
//! metadata, a check end to end (every frame's CRC, dense seqs, and the hash
//! chain recomputed and compared at every record and with the manifest),
//! the records in order, the record count, and the byte stream of the
//! equivalent snapshot *file*, which is what a full resync sends, so a
//! receiver cannot tell the two apart. `snapshot_file` dispatches here when
//! a snapshot path is a directory.

use std::fs::File;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Error;
use crate::error::Result;
use crate::frame;
use crate::record_store::chain_of;
use crate::record_store::ChainHash;
use crate::segment;
use crate::snapshot_file::SnapshotInfo;
use crate::StoredRecord;

const MANIFEST: &str = "manifest";
const MANIFEST_MAGIC: &[u8; 8] = b"TXLSNAPL";
const MANIFEST_VERSION: u32 = 1;
/// A snapshot over more segments than this is damage: at the default
/// segment size it would be 64 TiB of records.
const SEGMENTS_MAX: u32 = 1 << 20;
const META_BYTES_MAX: u32 = 16 * 1024 * 1024;
const CHAIN_BYTES: usize = 32;
/// Bytes of a linked segment read at a time.
const READ_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// A record segment the snapshot being built shares: the store's file (kept
/// open by the store) and the end of the last frame the snapshot covers.
pub(crate) struct Source {
    pub first_seq: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub end: u64,
}

/// One linked segment as the manifest lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Linked {
    first_seq: u64,
    end: u64,
}

#[derive(Debug, PartialEq, Eq)]
struct Manifest {
    meta: Vec<u8>,
    last_seq: u64,
    chain: ChainHash,
    segments: Vec<Linked>,
}

impl Manifest {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.meta.len() + 16 * self.segments.len());
        out.extend_from_slice(MANIFEST_MAGIC);
        out.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.meta);
        out.extend_from_slice(&self.last_seq.to_le_bytes());
        out.extend_from_slice(&self.chain);
        out.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for linked in &self.segments {
            out.extend_from_slice(&linked.first_seq.to_le_bytes());
            out.extend_from_slice(&linked.end.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(path: &Path, bytes: &[u8]) -> Result<Self> {
        let bad = |detail: &str| Error::corruption(path, detail.to_string());
        let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
            return Err(bad("manifest shorter than its checksum"));
        };
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err(bad("manifest checksum mismatch"));
        }
        let mut reader = Fields { bytes: body, at: 0 };
        if reader.take(8).ok_or_else(|| bad("manifest cut short"))? != MANIFEST_MAGIC {
            return Err(bad("bad manifest magic"));
        }
        let version = reader.u32().ok_or_else(|| bad("manifest cut short"))?;
        if version != MANIFEST_VERSION {
            return Err(Error::corruption(
                path,
                format!("unsupported manifest version {version}"),
            ));
        }
        let meta_len = reader.u32().ok_or_else(|| bad("manifest cut short"))?;
        if meta_len > META_BYTES_MAX {
            return Err(bad("manifest meta length over limit"));
        }
        let meta = reader
            .take(meta_len as usize)
            .ok_or_else(|| bad("manifest meta cut short"))?
            .to_vec();
        let last_seq = reader.u64().ok_or_else(|| bad("manifest cut short"))?;
        let chain: ChainHash = reader
            .take(CHAIN_BYTES)
            .ok_or_else(|| bad("manifest cut short"))?
            .try_into()
            .expect("32 bytes");
        let count = reader.u32().ok_or_else(|| bad("manifest cut short"))?;
        if count > SEGMENTS_MAX || (body.len() - reader.at) as u64 != u64::from(count) * 16 {
            return Err(bad("manifest segment list does not match its count"));
        }
        let segments = (0..count)
            .map(|_| Linked {
                first_seq: reader.u64().expect("length checked"),
                end: reader.u64().expect("length checked"),
            })
            .collect();
        Ok(Manifest {
            meta,
            last_seq,
            chain,
            segments,
        })
    }
}

/// Reads little-endian fields off the front of a byte slice.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let taken = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(taken)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Whether the snapshot at `path` is a linked one (a directory).
pub(crate) fn is_linked(path: &Path) -> bool {
    path.is_dir()
}

/// Durably create the linked snapshot `path` over records `1..=last_seq`,
/// held in `sources` (in seq order, the first starting at seq 1), with
/// `chain` the hash chain at `last_seq`. A snapshot already at `path` is
/// the same log id and so the same records: it is kept as it is.
///
/// Order: link and fsync every segment, write and fsync the manifest, fsync
/// the staging directory, rename it into place, fsync the parent. A name
/// ending in `.snap` is therefore always whole.
pub(crate) fn write(path: &Path, meta: &[u8], last_seq: u64, chain: ChainHash, sources: &[Source]) -> Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    assert!(
        meta.len() as u64 <= u64::from(META_BYTES_MAX),
        "snapshot meta too large"
    );
    let staging = path.with_extension("partial");
    remove_any(&staging)?;
    std::fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
    let mut segments = Vec::with_capacity(sources.len());
    for source in sources {
        let link = segment::RECORDS.path(&staging, source.first_seq);
        // The store does not sync the active segment per write; the bytes
        // this snapshot covers must be durable before the WAL behind it can go.
        if let Err(err) = source.file.sync_data() {
            crate::fatal_fsync_failure(&source.path.display().to_string(), &err);
        }
        match std::fs::hard_link(&source.path, &link) {
            Ok(()) => check_same_file(&link, source)?,
            // Another file system, or one without hard links: this snapshot
            // gets its own copy of the covered bytes (a full copy's cost).
            Err(err) if matches!(err.raw_os_error(), Some(code) if code == EXDEV || code == EPERM) => {
                tracing::warn!(path = %link.display(), %err, "cannot hard-link a record segment; copying it into the snapshot");
                segment::copy_head(&source.file, &source.path, source.end, &link)?;
            }
            Err(err) => return Err(Error::io(&link, err)),
        }
        segments.push(Linked {
            first_seq: source.first_seq,
            end: source.end,
        });
    }
    let manifest = Manifest {
        meta: meta.to_vec(),
        last_seq,
        chain,
        segments,
    };
    let manifest_path = staging.join(MANIFEST);
    let mut file = File::create(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
    file.write_all(&manifest.encode())
        .map_err(|e| Error::io(&manifest_path, e))?;
    crate::snapshot_dir::fsync_file(&file, &manifest_path);
    crate::fsync_dir(&staging)?;
    std::fs::rename(&staging, path).map_err(|e| Error::io(path, e))?;
    crate::fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(path.to_path_buf())
}

/// `errno` values for "cannot link here": across file systems, or a file
/// system that does not allow hard links.
const EXDEV: i32 = 18;
const EPERM: i32 = 1;

/// The link must be the inode the store holds open (and just fsynced): if
/// the store replaced the file under that name meanwhile (a cut gives a
/// segment a new inode), the snapshot would share bytes nobody synced.
fn check_same_file(link: &Path, source: &Source) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let linked = std::fs::metadata(link).map_err(|e| Error::io(link, e))?;
    let held = source.file.metadata().map_err(|e| Error::io(&source.path, e))?;
    if (linked.dev(), linked.ino()) != (held.dev(), held.ino()) {
        return Err(Error::InvalidInput(format!(
            "record segment {} was replaced while a snapshot linked it",
            source.path.display()
        )));
    }
    if linked.len() < source.end {
        return Err(Error::corruption(
            link,
            format!(
                "segment holds {} bytes, the snapshot needs {}",
                linked.len(),
                source.end
            ),
        ));
    }
    Ok(())
}

/// Remove a file or a directory tree; one already gone is fine.
pub(crate) fn remove_any(path: &Path) -> Result<()> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(found) if found.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(err) => Err(err),
    };
    match removed {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, err)),
        _ => Ok(()),
    }
}

/// Largest manifest accepted: meta, the fixed fields and every segment.
const MANIFEST_BYTES_MAX: u64 = 64 + META_BYTES_MAX as u64 + SEGMENTS_MAX as u64 * 16;

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
    if len > MANIFEST_BYTES_MAX {
        return Err(Error::corruption(
            &path,
            format!("manifest of {len} bytes is over the limit"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    (&file).read_to_end(&mut bytes).map_err(|e| Error::io(&path, e))?;
    Manifest::decode(&path, &bytes)
}

/// A snapshot opened for reading: its manifest and every segment file,
/// opened up front so that a newer snapshot pruning this one (removing its
/// directory) cannot cut a transfer or a check short.
struct Opened {
    manifest: Manifest,
    files: Vec<(PathBuf, std::io::Result<File>)>,
}

fn open(dir: &Path) -> Result<Opened> {
    let manifest = read_manifest(dir)?;
    let files = manifest
        .segments
        .iter()
        .map(|linked| {
            let path = segment::RECORDS.path(dir, linked.first_seq);
            let file = File::open(&path);
            (path, file)
        })
        .collect();
    Ok(Opened { manifest, files })
}

/// The snapshot's metadata block, checked by the manifest's CRC.
pub(crate) fn read_meta(dir: &Path) -> Result<Vec<u8>> {
    Ok(read_manifest(dir)?.meta)
}

/// Records in the snapshot (`1..=count`), from its manifest.
pub(crate) fn record_count(dir: &Path) -> Result<u64> {
    Ok(read_manifest(dir)?.last_seq)
}

/// The hash chain stored with record `seq` (zeros at 0), reading only the
/// segment that holds it; `None` when the snapshot does not reach `seq`.
pub(crate) fn chain_at(dir: &Path, seq: u64) -> Result<Option<ChainHash>> {
    let Opened { manifest, files } = open(dir)?;
    if seq == 0 {
        return Ok(Some([0u8; CHAIN_BYTES]));
    }
    if seq > manifest.last_seq {
        return Ok(None);
    }
    let mut found = None;
    for_each_frame(dir, &manifest, files, seq, |at, chain, _| {
        if at == seq {
            found = Some(*chain);
            return Ok(false);
        }
        Ok(true)
    })?;
    Ok(found)
}

/// Check the snapshot end to end: every frame's CRC, dense seqs from 1 to
/// the manifest's last, and the hash chain recomputed from the records and
/// compared with the stored value at every record and with the manifest's.
pub(crate) fn verify(dir: &Path) -> Result<SnapshotInfo> {
    visit_records(dir, true, |_| Ok(()))
}

/// Visit every record in seq order, checking every frame (not the chain:
/// like a snapshot file's records, they are trusted once [`verify`] passed).
pub(crate) fn for_each_record(dir: &Path, visit: impl FnMut(StoredRecord) -> Result<()>) -> Result<SnapshotInfo> {
    visit_records(dir, false, visit)
}

/// Visit records `from_seq..` in order. Segments wholly before `from_seq`
/// are not read, and records before it in the first one read are not
/// decoded: a delta of the last records of a large snapshot reads only them.
pub(crate) fn for_each_record_from(
    dir: &Path,
    from_seq: u64,
    mut visit: impl FnMut(StoredRecord) -> Result<()>,
) -> Result<()> {
    let Opened { manifest, files } = open(dir)?;
    for_each_frame(dir, &manifest, files, from_seq, |seq, _, body| {
        if seq >= from_seq {
            visit(StoredRecord::decode(body)?)?;
        }
        Ok(true)
    })
}

fn visit_records(
    dir: &Path,
    check_chain: bool,
    mut visit: impl FnMut(StoredRecord) -> Result<()>,
) -> Result<SnapshotInfo> {
    let Opened { manifest, files } = open(dir)?;
    let mut chain = [0u8; CHAIN_BYTES];
    let mut stream_bytes = crate::snapshot_file::stream_bytes_without_records(&manifest.meta);
    for_each_frame(dir, &manifest, files, 1, |seq, stored, body| {
        if check_chain {
            chain = chain_of(&chain, body);
            if &chain != stored {
                return Err(Error::corruption(
                    dir,
                    format!("hash chain differs from the records at seq {seq}"),
                ));
            }
        }
        stream_bytes += (frame::FRAME_HEADER_BYTES + body.len()) as u64;
        visit(StoredRecord::decode(body)?)?;
        Ok(true)
    })?;
    if check_chain && chain != manifest.chain {
        return Err(Error::corruption(
            dir,
            "hash chain does not end at the manifest's value",
        ));
    }
    Ok(SnapshotInfo {
        meta: manifest.meta,
        record_count: manifest.last_seq,
        file_bytes: stream_bytes,
    })
}

/// Stream the snapshot as the bytes of the equivalent snapshot file, in
/// chunks of `chunk_bytes` (the last shorter, possibly empty), as
/// [`crate::snapshot_file::read_chunks`] does for a file. Every frame is
/// checked as it is read. Returns the bytes streamed.
pub(crate) fn read_chunks(dir: &Path, chunk_bytes: usize, mut send: impl FnMut(Vec<u8>, bool) -> bool) -> Result<u64> {
    assert!(chunk_bytes > 0, "chunks must hold bytes");
    let Opened { manifest, files } = open(dir)?;
    let mut out = crate::snapshot_file::FileStream::new(&manifest.meta);
    let mut sent = 0u64;
    // Hand every whole chunk buffered to `send`; false once it refuses more.
    let mut send_whole = |out: &mut crate::snapshot_file::FileStream, sent: &mut u64| {
        while out.buffered() >= chunk_bytes {
            let chunk = out.take(chunk_bytes);
            *sent += chunk.len() as u64;
            if !send(chunk, false) {
                return false;
            }
        }
        true
    };
    let mut stopped = false;
    for_each_frame(dir, &manifest, files, 1, |_, _, body| {
        out.record(body);
        stopped = !send_whole(&mut out, &mut sent);
        Ok(!stopped)
    })?;
    if stopped {
        return Ok(sent);
    }
    out.finish(manifest.last_seq);
    if !send_whole(&mut out, &mut sent) {
        return Ok(sent);
    }
    let last = out.take(chunk_bytes);
    sent += last.len() as u64;
    send(last, true);
    Ok(sent)
}

/// Visit every record frame the manifest covers as `(seq, stored chain,
/// encoded record)`, checking segment headers, frame CRCs, bounds and that
/// seqs run densely from 1 to the manifest's `last_seq`. Segments whose
/// records all precede `skip_before` are not read (their density is taken
/// from the manifest's segment list). `visit` returns whether to go on;
/// stopping early skips the checks of what was not read.
fn for_each_frame(
    dir: &Path,
    manifest: &Manifest,
    files: Vec<(PathBuf, std::io::Result<File>)>,
    skip_before: u64,
    mut visit: impl FnMut(u64, &ChainHash, &[u8]) -> Result<bool>,
) -> Result<()> {
    let mut next_seq = 1u64;
    for (i, (linked, (path, file))) in manifest.segments.iter().zip(files).enumerate() {
        if linked.first_seq != next_seq {
            return Err(Error::corruption(
                &path,
                format!("segment starts at seq {}, expected {next_seq}", linked.first_seq),
            ));
        }
        if let Some(following) = manifest.segments.get(i + 1) {
            if following.first_seq <= skip_before {
                next_seq = following.first_seq;
                continue;
            }
        }
        let mut file = file.map_err(|e| Error::io(&path, e))?;
        let mut header = [0u8; segment::SEGMENT_HEADER_BYTES as usize];
        file.read_exact(&mut header)
            .map_err(|_| Error::corruption(&path, "segment shorter than its header"))?;
        segment::check_header(&segment::RECORDS, &path, &header, linked.first_seq)?;
        let Some(mut left) = linked.end.checked_sub(segment::SEGMENT_HEADER_BYTES) else {
            return Err(Error::corruption(&path, "manifest end is inside the segment header"));
        };
        let mut buf: Vec<u8> = Vec::new();
        let mut start = 0usize;
        loop {
            match frame::decode(&buf[start..]) {
                frame::Decoded::Frame { body, frame_bytes } => {
                    let Some((chain, record)) = body.split_first_chunk::<CHAIN_BYTES>() else {
                        return Err(Error::corruption(&path, "record frame shorter than its chain value"));
                    };
                    let seq = record_seq(&path, record)?;
                    if seq != next_seq {
                        return Err(Error::corruption(
                            &path,
                            format!("record seq {seq} where {next_seq} belongs"),
                        ));
                    }
                    if seq > manifest.last_seq {
                        return Err(Error::corruption(
                            &path,
                            format!("record {seq} is past the manifest's last seq"),
                        ));
                    }
                    if !visit(seq, chain, record)? {
                        return Ok(());
                    }
                    next_seq += 1;
                    start += frame_bytes;
                }
                frame::Decoded::Incomplete if left > 0 => {
                    buf.drain(..start);
                    start = 0;
                    let want = left.min(READ_CHUNK_BYTES.max(buf.len()) as u64) as usize;
                    let old = buf.len();
                    buf.resize(old + want, 0);
                    file.read_exact(&mut buf[old..])
                        .map_err(|_| Error::corruption(&path, "segment shorter than the manifest says"))?;
                    left -= want as u64;
                }
                frame::Decoded::Incomplete if start == buf.len() => break,
                frame::Decoded::Incomplete => {
                    return Err(Error::corruption(&path, "a record runs past the manifest's end"));
                }
                frame::Decoded::Invalid { detail, .. } => {
                    return Err(Error::corruption(&path, format!("{detail} in a linked segment")));
                }
            }
        }
    }
    if next_seq != manifest.last_seq + 1 {
        return Err(Error::corruption(
            dir,
            format!(
                "snapshot holds records up to {}, its manifest says {}",
                next_seq - 1,
                manifest.last_seq
            ),
        ));
    }
    Ok(())
}

/// The seq of an encoded record, without decoding the rest of it.
fn record_seq(path: &Path, encoded: &[u8]) -> Result<u64> {
    #[derive(serde::Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    match encoded.split_first() {
        Some((_, body)) => postcard::take_from_bytes::<SeqOnly>(body)
            .map(|(found, _)| found.seq)
            .map_err(|e| Error::corruption(path, format!("undecodable record: {e}"))),
        None => Err(Error::corruption(path, "empty record")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest round-trips; any flipped byte or cut is refused.
    #[test]
    fn manifest_round_trip_and_every_byte_damage() {
        let manifest = Manifest {
            meta: b"meta".to_vec(),
            last_seq: 12,
            chain: [3u8; 32],
            segments: vec![Linked { first_seq: 1, end: 400 }, Linked { first_seq: 9, end: 300 }],
        };
        let path = Path::new("manifest");
        let good = manifest.encode();
        assert_eq!(Manifest::decode(path, &good).unwrap(), manifest);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(Manifest::decode(path, &bad).is_err(), "flip at byte {i} went unnoticed");
        }
        for cut in 0..good.len() {
            assert!(
                Manifest::decode(path, &good[..cut]).is_err(),
                "cut at {cut} went unnoticed"
            );
        }
    }
}
