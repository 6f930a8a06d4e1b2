//! The key file, reloaded when it changes.
//!
//! A KEK rotation adds a key to every node's key file, then rewraps the
//! keyring under it; retiring the old KEK removes it from the files. Nodes
//! take either change without a restart: every [`KEY_FILE_POLL`] this task
//! reads the file again when its size or modification time changed, checks
//! its mode, and hands its KEKs to [`txlog_raft::Keys::reload`], which
//! refuses a file that would strand a key (drops the last KEK a key in the
//! log is wrapped under) or that changes a KEK it holds. A refused or
//! unreadable file leaves the KEKs held as they were, with one error line
//! per change of the file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use txlog_raft::Keys;

/// How often the key file is checked for a change.
pub const KEY_FILE_POLL: Duration = Duration::from_secs(2);

/// What tells one version of a file from another without reading it.
pub(crate) fn stamp(path: &std::path::Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

pub async fn run(path: PathBuf, keys: Arc<Keys>, shutdown: CancellationToken) {
    let mut seen = stamp(&path);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(KEY_FILE_POLL) => {}
        }
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let outcome = txlog_storage::KekFile::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|file| keys.reload(&file).map_err(|e| e.to_string()));
        match outcome {
            Ok(()) => tracing::info!(
                file = %path.display(),
                keks = ?keys.kek_ids(),
                current = keys.current_kek(),
                "key file reloaded"
            ),
            Err(err) => tracing::error!(
                file = %path.display(),
                %err,
                keks = ?keys.kek_ids(),
                "key file changed but not taken; keeping the key-encryption keys held"
            ),
        }
    }
}
