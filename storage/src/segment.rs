//! One segment file: a versioned header followed by framed records. The WAL
//! and the record file are both made of them; a [`SegmentKind`] tells them
//! apart by magic and file suffix.
//!
//! Header (28 bytes): `magic (8 bytes) | version u32 LE | reserved u32 |
//! first u64 LE | crc32(previous 24 bytes) u32 LE`, where `first` is the
//! log index (WAL) or sequence (record file) of the first frame. The file
//! name is that number, zero-padded, so a directory listing sorts in order.

use std::fs::File;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;

use crate::error::Error;
use crate::error::Result;
use crate::frame;

pub(crate) const SEGMENT_VERSION: u32 = 1;
pub(crate) const SEGMENT_HEADER_BYTES: u64 = 28;

/// A family of segment files: its header magic, its file name suffix, and
/// its name in log lines.
pub(crate) struct SegmentKind {
    magic: &'static [u8; 8],
    suffix: &'static str,
    name: &'static str,
}

/// Raft WAL segments (`txlog_storage::LogStore`).
pub(crate) const WAL: SegmentKind = SegmentKind {
    magic: b"TXLOGWAL",
    suffix: ".wal",
    name: "wal",
};

/// Record file segments (committed records, `crate::record_file`).
pub(crate) const RECORDS: SegmentKind = SegmentKind {
    magic: b"TXLOGREC",
    suffix: ".rec",
    name: "record file",
};

impl SegmentKind {
    pub(crate) fn path(&self, dir: &Path, first: u64) -> PathBuf {
        dir.join(format!("{first:020}{}", self.suffix))
    }

    /// Parse a segment file name back into its first index.
    pub(crate) fn parse_name(&self, name: &str) -> Option<u64> {
        let digits = name.strip_suffix(self.suffix)?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// The first numbers of this kind's segment files in `dir`, in order.
    pub(crate) fn list(&self, dir: &Path) -> Result<Vec<u64>> {
        let mut firsts = Vec::new();
        for dirent in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let dirent = dirent.map_err(|e| Error::io(dir, e))?;
            if let Some(first) = dirent.file_name().to_str().and_then(|name| self.parse_name(name)) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        Ok(firsts)
    }
}

fn encode_header(kind: &SegmentKind, first_index: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[0..8].copy_from_slice(kind.magic);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32fast::hash(&header[0..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Create a new, empty segment: header written and fsynced, directory fsynced.
pub(crate) fn create(kind: &SegmentKind, dir: &Path, first_index: u64) -> Result<File> {
    let path = kind.path(dir, first_index);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    file.write_all_at(&encode_header(kind, first_index), 0)
        .map_err(|e| Error::io(&path, e))?;
    if let Err(err) = file.sync_all() {
        crate::fatal_fsync_failure(&path.display().to_string(), &err);
    }
    crate::fsync_dir(dir)?;
    Ok(file)
}

/// What scanning one segment found.
pub(crate) struct Scan {
    /// Offset just past the last valid frame.
    pub valid_bytes: u64,
    /// Total file length; larger than `valid_bytes` when there is a torn tail.
    pub file_bytes: u64,
    /// Why the scan stopped early, when it did.
    pub tail_problem: Option<String>,
}

/// Outcome of reading a segment header.
pub(crate) enum Header {
    Valid,
    /// Shorter than a header: a segment whose creation was cut off.
    Torn,
}

/// Bytes read from a segment at a time while scanning. Frames are visited
/// in place in this buffer, so opening a WAL of any size costs one buffer,
/// not a copy of every segment (reading whole segments into memory made
/// start-up scale with the WAL: ~0.5 s per 60 MB, mostly page faults).
const SCAN_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Read and check a whole segment, calling `visit(offset, body)` for every
/// valid frame in file order. Damage in the middle of the file is
/// `Corruption`; a bad or incomplete frame that runs to the end of the file
/// is reported in `tail_problem` and left for the caller to cut.
pub(crate) fn scan(
    kind: &SegmentKind,
    path: &Path,
    expected_first_index: u64,
    mut visit: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<(Header, Scan)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_bytes = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut scan = Scan {
        valid_bytes: 0,
        file_bytes,
        tail_problem: None,
    };
    if file_bytes < SEGMENT_HEADER_BYTES {
        return Ok((Header::Torn, scan));
    }
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    file.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    check_header(kind, path, &header, expected_first_index)?;

    scan.valid_bytes = SEGMENT_HEADER_BYTES;
    // `buf[start..]` holds the file's bytes from offset `scan.valid_bytes`.
    let mut buf: Vec<u8> = Vec::with_capacity(SCAN_CHUNK_BYTES);
    let mut start = 0usize;
    let mut read_bytes = SEGMENT_HEADER_BYTES;
    loop {
        match frame::decode(&buf[start..]) {
            frame::Decoded::Frame { body, frame_bytes } => {
                visit(scan.valid_bytes, body)?;
                start += frame_bytes;
                scan.valid_bytes += frame_bytes as u64;
            }
            frame::Decoded::Incomplete if read_bytes < file_bytes => {
                // Keep the partial frame, then read at least a chunk more
                // (more when one frame is larger than a chunk).
                buf.drain(..start);
                start = 0;
                let want = (file_bytes - read_bytes).min(SCAN_CHUNK_BYTES.max(buf.len()) as u64) as usize;
                let old = buf.len();
                buf.resize(old + want, 0);
                file.read_exact(&mut buf[old..]).map_err(|e| Error::io(path, e))?;
                read_bytes += want as u64;
            }
            frame::Decoded::Incomplete => {
                if scan.valid_bytes < file_bytes {
                    scan.tail_problem = Some(format!("incomplete record at offset {}", scan.valid_bytes));
                }
                break;
            }
            frame::Decoded::Invalid { detail, frame_end } => {
                // A length out of range claims the rest of the file; a bad
                // checksum covers exactly its frame.
                let claimed_end = match frame::body_len(buf[start..].first_chunk().expect("a header was decoded")) {
                    Some(_) => scan.valid_bytes + frame_end as u64,
                    None => file_bytes,
                };
                if claimed_end < file_bytes {
                    return Err(Error::corruption(
                        path,
                        format!("{detail} at offset {}, with data after it", scan.valid_bytes),
                    ));
                }
                scan.tail_problem = Some(format!("{detail} at offset {}", scan.valid_bytes));
                break;
            }
        }
    }
    Ok((Header::Valid, scan))
}

/// What [`recover`] left of a segment.
pub(crate) enum Recovered {
    /// Its creation had been cut off (shorter than a header): it is gone.
    Removed,
    /// Every frame up to `valid_bytes` is whole; anything after was cut.
    Valid { valid_bytes: u64 },
}

/// Stream a segment through [`scan`] and repair what a crash can leave in
/// the last one of a directory: a segment whose creation was cut off is
/// removed (directory fsynced), a torn tail is cut. In any other segment
/// either is corruption.
pub(crate) fn recover(
    kind: &SegmentKind,
    dir: &Path,
    first: u64,
    is_last: bool,
    visit: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<Recovered> {
    let path = kind.path(dir, first);
    let (header, scan) = scan(kind, &path, first, visit)?;
    if let Header::Torn = header {
        if !is_last {
            return Err(Error::corruption(&path, "segment shorter than its header"));
        }
        tracing::warn!(path = %path.display(), bytes = scan.file_bytes, "removing {} segment whose creation was cut off", kind.name);
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        crate::fsync_dir(dir)?;
        return Ok(Recovered::Removed);
    }
    if let Some(problem) = &scan.tail_problem {
        if !is_last {
            return Err(Error::corruption(&path, format!("{problem} in a sealed segment")));
        }
        tracing::warn!(
            path = %path.display(),
            problem = %problem,
            cut_bytes = scan.file_bytes - scan.valid_bytes,
            "cutting torn tail of the {}",
            kind.name
        );
        cut_tail(&path, scan.valid_bytes)?;
    }
    Ok(Recovered::Valid {
        valid_bytes: scan.valid_bytes,
    })
}

pub(crate) fn check_header(
    kind: &SegmentKind,
    path: &Path,
    header: &[u8; SEGMENT_HEADER_BYTES as usize],
    expected_first_index: u64,
) -> Result<()> {
    if &header[0..8] != kind.magic {
        return Err(Error::corruption(path, "bad segment magic"));
    }
    let crc = u32::from_le_bytes(header[24..28].try_into().expect("4 bytes"));
    if crc32fast::hash(&header[0..24]) != crc {
        return Err(Error::corruption(path, "segment header checksum mismatch"));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != SEGMENT_VERSION {
        return Err(Error::corruption(
            path,
            format!("unsupported segment version {version}"),
        ));
    }
    let first_index = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    if first_index != expected_first_index {
        return Err(Error::corruption(
            path,
            format!("header first index {first_index} does not match file name {expected_first_index}"),
        ));
    }
    Ok(())
}

/// Write the first `bytes` bytes of `from` (read at offsets, so a shared
/// handle's cursor is untouched) to a new file at `to`, fsync it and return
/// it open for reading and writing. `from` holding fewer is corruption.
pub(crate) fn copy_head(from: &File, from_path: &Path, bytes: u64, to: &Path) -> Result<File> {
    const CHUNK_BYTES: u64 = 4 * 1024 * 1024;
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(to)
        .map_err(|e| Error::io(to, e))?;
    let mut buf = vec![0u8; bytes.min(CHUNK_BYTES) as usize];
    let mut offset = 0u64;
    while offset < bytes {
        let n = (bytes - offset).min(CHUNK_BYTES) as usize;
        from.read_exact_at(&mut buf[..n], offset).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                Error::corruption(from_path, format!("holds fewer than the {bytes} bytes to copy"))
            }
            _ => Error::io(from_path, e),
        })?;
        out.write_all_at(&buf[..n], offset).map_err(|e| Error::io(to, e))?;
        offset += n as u64;
    }
    crate::snapshot_dir::fsync_file(&out, to);
    Ok(out)
}

/// Cut the segment at `path` to `valid_bytes` and fsync it (fatal on failure).
pub(crate) fn cut_tail(path: &Path, valid_bytes: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.set_len(valid_bytes).map_err(|e| Error::io(path, e))?;
    if let Err(err) = file.sync_all() {
        crate::fatal_fsync_failure(&path.display().to_string(), &err);
    }
    Ok(())
}
