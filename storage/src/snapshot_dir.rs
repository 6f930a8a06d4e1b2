//! The snapshot directory: every file the state machine keeps or stages
//! next to its record store, and every operation that names, copies, renames,
//! fsyncs or deletes one.
//!
//! ```text
//! <index:020>-<term:010>.snap        a whole snapshot (the newest is kept): a file,
//!                                    or a directory for a linked snapshot
//! <index:020>-<term:010>.partial     a snapshot being written or installed
//! incoming-<n>.partial               a full snapshot being received from the leader
//! delta-<snapshot stem>-<base>.partial   records of a delta being received
//! ```
//!
//! Invariants:
//! * A name ending in `.snap` is whole: it was written as `.partial`,
//!   fsynced, renamed and the directory fsynced ([`SnapshotDir::install_copy`],
//!   [`crate::snapshot_file::SnapshotWriter::finish`], linked snapshots in
//!   [`crate::linked_snapshot`]), and it is renamed back to `.partial`
//!   before it is removed ([`SnapshotDir::discard`]).
//! * Anything else in the directory is a leftover of an interrupted write or
//!   transfer and is removed on open ([`SnapshotDir::open`]).
//! * Every fsync here goes through [`crate::fatal_fsync_failure`].
//!
//! Everything here is blocking `std::fs` work: async callers run it on a
//! blocking thread (`tokio::task::spawn_blocking`).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use crate::error::Error;
use crate::error::Result;

const SNAPSHOT_SUFFIX: &str = ".snap";
const PARTIAL_EXTENSION: &str = "partial";

/// Names concurrent incoming snapshots apart; leftovers are removed on open.
static INCOMING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The directory holding snapshot files and staged transfers.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// Create the directory if needed and remove leftovers of interrupted
    /// writes and transfers (anything not ending in `.snap`).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let snapshot_dir = SnapshotDir { dir };
        for name in snapshot_dir.names()? {
            if !name.ends_with(SNAPSHOT_SUFFIX) {
                let path = snapshot_dir.dir.join(name);
                if let Err(err) = crate::linked_snapshot::remove_any(&path) {
                    tracing::warn!(path = %path.display(), %err, "could not remove a leftover");
                }
            }
        }
        Ok(snapshot_dir)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file name of the snapshot taken at log `index` in `term`; names
    /// sort in log order.
    pub fn file_name(index: u64, term: u64) -> String {
        format!("{index:020}-{term:010}{SNAPSHOT_SUFFIX}")
    }

    /// Where the snapshot named `name` (see [`SnapshotDir::file_name`]) lives.
    pub fn snapshot_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The newest whole snapshot (file or linked), if any.
    pub fn newest(&self) -> Result<Option<PathBuf>> {
        let mut names = self.names()?;
        names.retain(|n| n.ends_with(SNAPSHOT_SUFFIX));
        names.sort();
        Ok(names.pop().map(|n| self.dir.join(n)))
    }

    fn names(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }

    /// The linked snapshot this node built under `name`, if any. A
    /// snapshot under a name is of that log id, so it holds the same records
    /// as any other of it: what would be written there can be this one
    /// instead (a directory, which a file cannot be renamed over).
    pub fn linked(&self, name: &str) -> Option<PathBuf> {
        Some(self.snapshot_path(name)).filter(|path| path.is_dir())
    }

    /// Durably copy the verified snapshot at `source` (a file, or a linked
    /// snapshot's directory) to `name` in this directory: hard-link (or
    /// copy) to `.partial`, fsync, rename, fsync the directory.
    /// Returns the final path; a source already there is left alone.
    pub fn install_copy(&self, source: &Path, name: &str) -> Result<PathBuf> {
        let target = self.snapshot_path(name);
        if source == target {
            return Ok(target);
        }
        if let Some(linked) = self.linked(name) {
            return Ok(linked);
        }
        let staging = target.with_extension(PARTIAL_EXTENSION);
        crate::linked_snapshot::remove_any(&staging)?;
        if source.is_dir() {
            // A linked snapshot (another node's, in tests): the same files
            // under a new directory.
            std::fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
            for dirent in std::fs::read_dir(source).map_err(|e| Error::io(source, e))? {
                let from = dirent.map_err(|e| Error::io(source, e))?.path();
                let to = staging.join(from.file_name().expect("a directory entry has a name"));
                link_or_copy(&from, &to)?;
            }
            crate::fsync_dir(&staging)?;
        } else {
            link_or_copy(source, &staging)?;
        }
        std::fs::rename(&staging, &target).map_err(|e| Error::io(&target, e))?;
        crate::fsync_dir(&self.dir)?;
        Ok(target)
    }

    /// Remove the snapshot at `path` (a file or a linked snapshot's
    /// directory): renamed to `.partial` first, so a crash part-way through
    /// removing a directory never leaves a partial one under a `.snap` name
    /// (open removes the leftover).
    pub fn discard(&self, path: &Path) -> Result<()> {
        let staging = path.with_extension(PARTIAL_EXTENSION);
        crate::linked_snapshot::remove_any(&staging)?;
        match std::fs::rename(path, &staging) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(Error::io(path, err)),
        }
        crate::linked_snapshot::remove_any(&staging)
    }

    /// Put `replacement` (a whole snapshot of the same log id, outside the
    /// `.snap` names) under `target`'s name. The old one is first renamed to
    /// `<stem>-r.snap`, still a whole snapshot of that log id that sorts just
    /// before it, so a crash at any step leaves one under a `.snap` name;
    /// then it is removed.
    pub fn swap_in(&self, target: &Path, replacement: &Path) -> Result<()> {
        let stem = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SNAPSHOT_SUFFIX))
            .ok_or_else(|| Error::InvalidInput(format!("{} is not a snapshot name", target.display())))?;
        let aside = self.dir.join(format!("{stem}-r{SNAPSHOT_SUFFIX}"));
        crate::linked_snapshot::remove_any(&aside)?;
        std::fs::rename(target, &aside).map_err(|e| Error::io(target, e))?;
        crate::fsync_dir(&self.dir)?;
        std::fs::rename(replacement, target).map_err(|e| Error::io(target, e))?;
        crate::fsync_dir(&self.dir)?;
        self.discard(&aside)
    }

    /// Delete every snapshot that sorts before `keep` (older log ids).
    /// One that cannot be removed is logged and left for the next prune.
    pub fn prune_older_than(&self, keep: &Path) {
        let Ok(names) = self.names() else {
            return;
        };
        for name in names {
            let path = self.dir.join(&name);
            if name.ends_with(SNAPSHOT_SUFFIX) && path.file_name() < keep.file_name() {
                if let Err(err) = self.discard(&path) {
                    tracing::warn!(path = %path.display(), %err, "could not remove old snapshot");
                }
            }
        }
    }

    /// Start staging a full snapshot received from a peer.
    pub fn incoming(&self) -> Result<IncomingSnapshot> {
        let n = INCOMING_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("incoming-{n}.{PARTIAL_EXTENSION}"));
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(IncomingSnapshot { path, file, bytes: 0 })
    }

    /// Where the delta for snapshot `snapshot` (a file name) on top of
    /// `base` records is staged.
    pub fn delta_path(&self, snapshot: &str, base: u64) -> PathBuf {
        let stem = snapshot.trim_end_matches(SNAPSHOT_SUFFIX);
        self.dir.join(format!("delta-{stem}-{base}.{PARTIAL_EXTENSION}"))
    }

    /// Remove a staged or superseded file; a file already gone is fine.
    pub fn remove(&self, path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(path = %path.display(), %err, "could not remove staged file"),
        }
    }
}

/// Give the immutable file `from` the name `to` and fsync it. Snapshot
/// files and the segment bytes a snapshot covers are never modified, so a
/// second name for the same inode is as good as a copy; copy only where a
/// link cannot be made (another file system).
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(|e| Error::io(to, e))?;
    }
    let file = File::open(to).map_err(|e| Error::io(to, e))?;
    fsync_file(&file, to);
    Ok(())
}

/// fsync a file or abort: see [`crate::fatal_fsync_failure`].
pub(crate) fn fsync_file(file: &File, path: &Path) {
    if let Err(err) = file.sync_all() {
        crate::fatal_fsync_failure(&path.display().to_string(), &err);
    }
}

/// A full snapshot being received: bytes are appended as they arrive, then
/// [`IncomingSnapshot::finish`] makes them durable. The caller verifies the
/// file before installing it and removes it afterwards.
pub struct IncomingSnapshot {
    path: PathBuf,
    file: File,
    bytes: u64,
}

impl IncomingSnapshot {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all(data).map_err(|e| Error::io(&self.path, e))?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// fsync the staged file; returns its path.
    pub fn finish(self) -> PathBuf {
        fsync_file(&self.file, &self.path);
        self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opening removes leftovers but keeps snapshots; installs land under their name;
    /// pruning keeps the newest; the newest is found by name order.
    #[test]
    fn leftovers_install_prune() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("incoming-3.partial"), b"x").unwrap();
        std::fs::write(dir.path().join(SnapshotDir::file_name(5, 1)), b"old").unwrap();
        let snapshots = SnapshotDir::open(dir.path()).unwrap();
        assert!(!dir.path().join("incoming-3.partial").exists());
        assert!(dir.path().join(SnapshotDir::file_name(5, 1)).exists());

        let mut incoming = snapshots.incoming().unwrap();
        incoming.append(b"new snapshot").unwrap();
        assert_eq!(incoming.bytes(), 12);
        let staged = incoming.finish();
        let name = SnapshotDir::file_name(10, 2);
        let installed = snapshots.install_copy(&staged, &name).unwrap();
        assert_eq!(std::fs::read(&installed).unwrap(), b"new snapshot");
        snapshots.remove(&staged);
        assert_eq!(snapshots.newest().unwrap(), Some(installed.clone()));
        snapshots.prune_older_than(&installed);
        assert!(!dir.path().join(SnapshotDir::file_name(5, 1)).exists());
        assert!(installed.exists());
        assert_eq!(
            snapshots.delta_path(&name, 7).file_name().unwrap(),
            "delta-00000000000000000010-0000000002-7.partial"
        );
    }
}
