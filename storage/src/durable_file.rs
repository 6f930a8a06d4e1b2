//! Small files replaced atomically and durably: the vote and the purge point.
//!
//! Layout: `magic(8) | version u32 | len u32 | body | crc32(body) u32`.
//! A replace writes `NAME.tmp`, fsyncs it, renames it over `NAME` and fsyncs
//! the directory, so a reader sees either the old or the new value, whole.

use std::fs::File;
use std::fs::OpenOptions;
use std::io::Read;
use std::io::Write;
use std::path::Path;

use crate::error::Error;
use crate::error::Result;

const FORMAT_VERSION: u32 = 1;
const BODY_BYTES_MAX: u32 = 1024 * 1024;

/// fsync a directory so that creates, renames and deletes inside it are durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let file = File::open(dir).map_err(|e| Error::io(dir, e))?;
    if let Err(err) = file.sync_all() {
        crate::fatal_fsync_failure(&dir.display().to_string(), &err);
    }
    Ok(())
}

/// Durably replace `path` with `body`. Returns only after file and directory are fsynced.
pub(crate) fn write_atomic(path: &Path, magic: &[u8; 8], body: &[u8]) -> Result<()> {
    write_atomic_mode(path, magic, body, 0o644)
}

/// [`write_atomic`] with the file created with `mode` (secrets use 0600:
/// the temporary file never exists with wider permissions).
pub(crate) fn write_atomic_mode(path: &Path, magic: &[u8; 8], body: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    assert!(
        body.len() as u64 <= u64::from(BODY_BYTES_MAX),
        "durable file body too large"
    );
    let tmp = path.with_extension("tmp");
    let bytes = frame_bytes(magic, body);
    // A leftover temporary file keeps its old mode through `open`.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&tmp, e)),
    }
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        file.write_all(&bytes).map_err(|e| Error::io(&tmp, e))?;
        if let Err(err) = file.sync_all() {
            crate::fatal_fsync_failure(&tmp.display().to_string(), &err);
        }
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Read a file written by [`write_atomic`]; `Ok(None)` when it does not exist.
pub(crate) fn read(path: &Path, magic: &[u8; 8]) -> Result<Option<Vec<u8>>> {
    read_inner(path, magic, false)
}

/// Read a file written by [`write_unsynced`], where stale bytes may follow the record.
pub(crate) fn read_prefix(path: &Path, magic: &[u8; 8]) -> Result<Option<Vec<u8>>> {
    read_inner(path, magic, true)
}

/// Overwrite the record at the start of `file` without fsync: for hints whose
/// loss is harmless. Readers use [`read_prefix`] and reject a torn record by CRC.
pub(crate) fn write_unsynced(file: &File, magic: &[u8; 8], body: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let bytes = frame_bytes(magic, body);
    file.write_all_at(&bytes, 0).map_err(|e| Error::io("committed hint", e))
}

fn frame_bytes(magic: &[u8; 8], body: &[u8]) -> Vec<u8> {
    versioned_frame(magic, FORMAT_VERSION, body)
}

/// `magic | version | len | body | crc32(body)`, little-endian: the frame of
/// these files, and the header of a snapshot file (with its own version).
pub(crate) fn versioned_frame(magic: &[u8; 8], version: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(body.len() + 20);
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    bytes
}

fn read_inner(path: &Path, magic: &[u8; 8], allow_trailing: bool) -> Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() < 20 || &bytes[..8] != magic {
        return Err(Error::corruption(path, "bad magic or short file"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(Error::corruption(path, format!("unsupported format version {version}")));
    }
    let len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let size_ok = if allow_trailing {
        bytes.len() >= 20 + len as usize
    } else {
        bytes.len() == 20 + len as usize
    };
    if len > BODY_BYTES_MAX || !size_ok {
        return Err(Error::corruption(
            path,
            format!("length {len} does not match file size {}", bytes.len()),
        ));
    }
    let body = &bytes[16..16 + len as usize];
    let crc_at = 16 + len as usize;
    let crc = u32::from_le_bytes(bytes[crc_at..crc_at + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc {
        return Err(Error::corruption(path, "checksum mismatch"));
    }
    Ok(Some(body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replaced file reads back the latest body; a flipped byte is reported as corruption.
    #[test]
    fn write_read_and_detect_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote");
        assert!(read(&path, b"TESTFILE").unwrap().is_none());
        write_atomic(&path, b"TESTFILE", b"first").unwrap();
        write_atomic(&path, b"TESTFILE", b"second").unwrap();
        assert_eq!(read(&path, b"TESTFILE").unwrap().unwrap(), b"second");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[17] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(read(&path, b"TESTFILE"), Err(Error::Corruption { .. })));
    }
}
