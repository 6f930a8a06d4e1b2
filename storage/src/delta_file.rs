//! Delta files: the records a lagging follower is missing, as received from
//! the leader during a delta resync.
//!
//! A delta file is a plain sequence of record frames (`len | crc32 | record`,
//! the WAL frame) with dense sequences starting at `base + 1`. It is a
//! staging area, not a durable artefact: the follower keeps it while the
//! transfer runs so that a broken stream resumes where it stopped, then
//! merges it with its own prefix into an ordinary snapshot file.

use std::fs::File;
use std::fs::OpenOptions;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use crate::error::Error;
use crate::error::Result;
use crate::frame;
use crate::StoredRecord;

/// Append `record` as one frame to `out` (the leader's side of the stream).
pub fn encode_record(out: &mut Vec<u8>, record: &StoredRecord) {
    frame::encode_into(out, &record.encode());
}

/// Split `bytes` into whole, checksummed frames and decode each record.
/// Anything that is not a whole valid frame is an error: chunks on the wire
/// always carry whole frames.
pub fn decode_records(bytes: &[u8]) -> std::result::Result<Vec<StoredRecord>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match frame::decode(&bytes[at..]) {
            frame::Decoded::Frame { body, frame_bytes } => {
                out.push(StoredRecord::decode(body).map_err(|e| e.to_string())?);
                at += frame_bytes;
            }
            frame::Decoded::Incomplete => return Err(format!("frame cut short at byte {at}")),
            frame::Decoded::Invalid { detail, .. } => return Err(format!("bad frame at byte {at}: {detail}")),
        }
    }
    Ok(out)
}

/// Appends records to a delta file, resuming an earlier partial transfer.
pub struct DeltaWriter {
    path: PathBuf,
    file: File,
    base: u64,
    last_seq: u64,
}

impl DeltaWriter {
    /// Open (or create) the delta file for records after `base`. Whole
    /// frames already present are kept; a torn tail is cut off.
    pub fn open(path: impl Into<PathBuf>, base: u64) -> Result<Self> {
        let path = path.into();
        let mut last_seq = base;
        let mut valid_bytes = 0u64;
        if path.exists() {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let mut at = 0usize;
            while let frame::Decoded::Frame { body, frame_bytes } = frame::decode(&bytes[at..]) {
                let Ok(record) = StoredRecord::decode(body) else { break };
                if record.seq != last_seq + 1 {
                    break;
                }
                last_seq = record.seq;
                at += frame_bytes;
            }
            valid_bytes = at as u64;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.set_len(valid_bytes).map_err(|e| Error::io(&path, e))?;
        let mut writer = DeltaWriter {
            path,
            file,
            base,
            last_seq,
        };
        writer.seek_end(valid_bytes)?;
        Ok(writer)
    }

    fn seek_end(&mut self, at: u64) -> Result<()> {
        use std::io::Seek;
        self.file
            .seek(std::io::SeekFrom::Start(at))
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(())
    }

    /// Highest sequence held (`base` when empty).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    /// Append a chunk of frames; every record must continue the sequence.
    pub fn append_chunk(&mut self, bytes: &[u8]) -> Result<usize> {
        let records = decode_records(bytes).map_err(|d| Error::corruption(&self.path, d))?;
        let mut expected = self.last_seq + 1;
        for record in &records {
            if record.seq != expected {
                return Err(Error::InvalidInput(format!(
                    "delta record seq {} where {expected} was expected",
                    record.seq
                )));
            }
            expected += 1;
        }
        self.file.write_all(bytes).map_err(|e| Error::io(&self.path, e))?;
        self.last_seq = expected - 1;
        Ok(records.len())
    }

    /// Flush to disk (a failed fsync aborts the process, see
    /// [`crate::fatal_fsync_failure`]); returns the path.
    pub fn sync(&self) -> &Path {
        crate::snapshot_dir::fsync_file(&self.file, &self.path);
        &self.path
    }
}

/// Visit every record of a delta file in order.
pub fn for_each_record(path: &Path, mut visit: impl FnMut(StoredRecord) -> Result<()>) -> Result<u64> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut count = 0u64;
    loop {
        let mut head = [0u8; frame::FRAME_HEADER_BYTES];
        match reader.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(count),
            Err(e) => return Err(Error::io(path, e)),
        }
        let Some(len) = frame::body_len(&head) else {
            let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
            return Err(Error::corruption(
                path,
                format!("delta frame length {len} out of range"),
            ));
        };
        let mut body = vec![0u8; len as usize];
        reader
            .read_exact(&mut body)
            .map_err(|_| Error::corruption(path, "delta frame cut short"))?;
        if !frame::body_matches(&head, &body) {
            return Err(Error::corruption(path, "delta frame checksum mismatch"));
        }
        visit(StoredRecord::decode(&body)?)?;
        count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> StoredRecord {
        StoredRecord::for_test(seq, 40)
    }

    fn chunk(seqs: std::ops::RangeInclusive<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        for seq in seqs {
            encode_record(&mut out, &record(seq));
        }
        out
    }

    /// A transfer broken mid-frame resumes after the last whole record; gaps and damaged frames are refused.
    #[test]
    fn resume_after_torn_tail_and_reject_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.delta");
        let mut writer = DeltaWriter::open(&path, 10).unwrap();
        assert_eq!(writer.append_chunk(&chunk(11..=15)).unwrap(), 5);
        writer.sync();
        drop(writer);
        // A half-written frame at the end, as a broken stream leaves it.
        let mut torn = std::fs::read(&path).unwrap();
        torn.extend_from_slice(&chunk(16..=16)[..20]);
        std::fs::write(&path, &torn).unwrap();

        let mut writer = DeltaWriter::open(&path, 10).unwrap();
        assert_eq!(writer.last_seq(), 15, "resumes after the last whole record");
        assert!(writer.append_chunk(&chunk(17..=18)).is_err(), "a gap is refused");
        let mut damaged = chunk(16..=17);
        damaged[12] ^= 1;
        assert!(writer.append_chunk(&damaged).is_err(), "a damaged frame is refused");
        assert_eq!(writer.append_chunk(&chunk(16..=20)).unwrap(), 5);
        writer.sync();
        let mut seen = Vec::new();
        for_each_record(&path, |r| {
            seen.push(r.seq);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (11..=20).collect::<Vec<_>>());
    }
}
