//! One WAL segment file: a versioned header followed by framed records.
//!
//! Header (28 bytes): `magic "TXLOGWAL" | version u32 LE | reserved u32 |
//! first_index u64 LE | crc32(previous 24 bytes) u32 LE`. The file name is
//! the first index, zero-padded, so a directory listing sorts in log order.

use std::fs::File;
use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;

use crate::error::Error;
use crate::error::Result;
use crate::frame;

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"TXLOGWAL";
pub(crate) const SEGMENT_VERSION: u32 = 1;
pub(crate) const SEGMENT_HEADER_BYTES: u64 = 28;
const SEGMENT_SUFFIX: &str = ".wal";

pub(crate) fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}{SEGMENT_SUFFIX}"))
}

/// Parse a segment file name back into its first index.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn encode_header(first_index: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[0..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32fast::hash(&header[0..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Create a new, empty segment: header written and fsynced, directory fsynced.
pub(crate) fn create(dir: &Path, first_index: u64) -> Result<File> {
    let path = segment_path(dir, first_index);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    file.write_all_at(&encode_header(first_index), 0)
        .map_err(|e| Error::io(&path, e))?;
    if let Err(err) = file.sync_all() {
        crate::fatal_fsync_failure(&path.display().to_string(), &err);
    }
    crate::fsync_dir(dir)?;
    Ok(file)
}

/// What scanning one segment found.
pub(crate) struct Scan {
    /// `(offset, body)` for every valid frame, in file order.
    pub frames: Vec<(u64, Vec<u8>)>,
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

/// Read and check a whole segment. Damage in the middle of the file is
/// `Corruption`; a bad or incomplete frame that runs to the end of the file
/// is reported in `tail_problem` and left for the caller to cut.
pub(crate) fn scan(path: &Path, expected_first_index: u64) -> Result<(Header, Scan)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    let file_bytes = bytes.len() as u64;
    let empty = Scan {
        frames: Vec::new(),
        valid_bytes: 0,
        file_bytes,
        tail_problem: None,
    };
    if file_bytes < SEGMENT_HEADER_BYTES {
        return Ok((Header::Torn, empty));
    }
    let header = &bytes[..SEGMENT_HEADER_BYTES as usize];
    if &header[0..8] != SEGMENT_MAGIC {
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

    let mut scan = Scan {
        valid_bytes: SEGMENT_HEADER_BYTES,
        ..empty
    };
    let mut offset = SEGMENT_HEADER_BYTES as usize;
    while offset < bytes.len() {
        match frame::decode(&bytes[offset..]) {
            frame::Decoded::Frame { body, frame_bytes } => {
                scan.frames.push((offset as u64, body.to_vec()));
                offset += frame_bytes;
                scan.valid_bytes = offset as u64;
            }
            frame::Decoded::Incomplete => {
                scan.tail_problem = Some(format!("incomplete record at offset {offset}"));
                break;
            }
            frame::Decoded::Invalid { detail, frame_end } => {
                if offset + frame_end < bytes.len() {
                    return Err(Error::corruption(
                        path,
                        format!("{detail} at offset {offset}, with data after it"),
                    ));
                }
                scan.tail_problem = Some(format!("{detail} at offset {offset}"));
                break;
            }
        }
    }
    Ok((Header::Valid, scan))
}
