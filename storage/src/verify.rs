//! Read-only checks of a stopped node's files, for `txlog verify`.
//!
//! Nothing here opens sled, cuts a torn tail, rewrites an index or removes
//! a staged file: what a node's own open would repair is reported, not
//! repaired. Each function checks one kind of file and hands what it
//! decoded to the caller, who checks what the storage layer cannot (Raft
//! entries, seals).

use std::path::Path;
use std::path::PathBuf;

use crate::delta_file;
use crate::error::Error;
use crate::error::Result;
use crate::record_file::decode_body;
use crate::record_store::chain_of;
use crate::segment;
use crate::snapshot_file;
use crate::ChainHash;
use crate::StoredRecord;

/// What a pass over a directory of segments found.
#[derive(Debug, Default)]
pub struct SegmentsChecked {
    pub segments: usize,
    pub frames: u64,
    pub bytes: u64,
    /// A torn tail of the last segment (what a crash leaves, and the node
    /// cuts on its next start): where, and why.
    pub torn_tail: Option<String>,
}

/// Every WAL segment in `dir` (a node's `wal/`), in order: each header and
/// every frame's CRC. `visit(path, offset, body)` gets every whole frame.
/// Damage before the last frame of the last segment is an error; a torn
/// tail there is reported.
pub fn wal(dir: &Path, visit: impl FnMut(&Path, u64, &[u8]) -> Result<()>) -> Result<SegmentsChecked> {
    segments(&segment::WAL, dir, visit)
}

/// The WAL's purge point in `dir` (a node's `wal/`), encoded as the log
/// store wrote it (postcard of its log id type); `None` before any purge.
/// Entries at or below it may remain in segments; the first one after it
/// may follow a gap.
pub fn wal_purge_point(dir: &Path) -> Result<Option<Vec<u8>>> {
    crate::durable_file::read(&dir.join("purged"), crate::log_store::PURGED_MAGIC)
}

/// Every record segment in `dir` (`state/records/segments`), in order:
/// every frame's CRC, dense seqs, and the hash chain recomputed from the
/// records and compared with the value stored at every seq. `visit` gets
/// each record and where it is.
pub fn records(dir: &Path, mut visit: impl FnMut(&Path, &StoredRecord) -> Result<()>) -> Result<SegmentsChecked> {
    // The record file always starts at seq 1 (its open refuses one that
    // does not), so a missing segment shows as a seq out of place.
    let mut next_seq = 1u64;
    let mut chain: ChainHash = [0u8; 32];
    segments(&segment::RECORDS, dir, |path, offset, body| {
        let (stored, record) = decode_body(path, body)?;
        if record.seq != next_seq {
            return Err(Error::corruption(
                path,
                format!("record at offset {offset} has seq {}, expected {next_seq}", record.seq),
            ));
        }
        chain = chain_of(&chain, &body[stored.len()..]);
        if chain != stored {
            return Err(Error::corruption(
                path,
                format!(
                    "hash chain differs from the records at seq {} (offset {offset})",
                    record.seq
                ),
            ));
        }
        next_seq += 1;
        visit(path, &record)
    })
}

fn segments(
    kind: &segment::SegmentKind,
    dir: &Path,
    mut visit: impl FnMut(&Path, u64, &[u8]) -> Result<()>,
) -> Result<SegmentsChecked> {
    if !dir.exists() {
        // A node stopped before its first open of this part: nothing yet.
        return Ok(SegmentsChecked::default());
    }
    let firsts = kind.list(dir)?;
    let mut checked = SegmentsChecked::default();
    for (i, &first) in firsts.iter().enumerate() {
        let path = kind.path(dir, first);
        let is_last = i + 1 == firsts.len();
        let (header, scan) = segment::scan(kind, &path, first, |offset, body| {
            checked.frames += 1;
            visit(&path, offset, body)
        })?;
        checked.segments += 1;
        checked.bytes += scan.valid_bytes;
        let problem = match header {
            segment::Header::Torn => Some("shorter than its header (its creation was cut off)".to_string()),
            segment::Header::Valid => scan.tail_problem,
        };
        if let Some(problem) = problem {
            if !is_last {
                return Err(Error::corruption(&path, format!("{problem}, and segments follow it")));
            }
            checked.torn_tail = Some(format!(
                "{}: {problem}; {} bytes after the last whole frame",
                path.display(),
                scan.file_bytes - scan.valid_bytes
            ));
        }
    }
    Ok(checked)
}

/// A snapshot or staged delta in a node's `state/snapshots/`.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    /// A snapshot (`<index>-<term>.snap`, a file or a linked directory).
    Snapshot,
    /// A delta being received (`delta-*.partial`; removed on the next start).
    StagedDelta,
}

/// The snapshots and staged deltas in `dir`, by name.
pub fn snapshots_in(dir: &Path) -> Result<Vec<(SnapshotKind, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(err) => return Err(Error::io(dir, err)),
    };
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".snap") {
            found.push((SnapshotKind::Snapshot, path));
        } else if name.starts_with("delta-") && name.ends_with(".partial") {
            found.push((SnapshotKind::StagedDelta, path));
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(found)
}

/// Check a snapshot end to end (every CRC, dense seqs, the hash chain and
/// its final value) or a staged delta (every CRC, dense seqs), then visit
/// its records. Returns how many there were.
pub fn snapshot(kind: &SnapshotKind, path: &Path, mut visit: impl FnMut(&StoredRecord) -> Result<()>) -> Result<u64> {
    match kind {
        SnapshotKind::Snapshot => {
            snapshot_file::verify(path)?;
            Ok(snapshot_file::for_each_record(path, |record| visit(&record))?.record_count)
        }
        SnapshotKind::StagedDelta => {
            let mut next_seq: Option<u64> = None;
            delta_file::for_each_record(path, |record| {
                if next_seq.is_some_and(|next| record.seq != next) {
                    return Err(Error::corruption(
                        path,
                        format!("record seq {} where {} was expected", record.seq, next_seq.unwrap_or(0)),
                    ));
                }
                next_seq = Some(record.seq + 1);
                visit(&record)
            })
        }
    }
}
