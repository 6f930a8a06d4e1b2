//! When snapshots are built: after a number of log entries (openraft's
//! policy), and here also once the WAL holds more than
//! `snapshot_wal_bytes_max`, so the disk the log takes is bounded in bytes,
//! not only in entries (10,000 entries of 100-record batches are ~280 MB).
//! A snapshot lets openraft purge the WAL behind it, which deletes whole
//! segments.
//!
//! Both thresholds are staggered by node id, so the nodes of a cluster do
//! not all build at the same log index. Builds are cheap (linked snapshots
//! share the record file), so this is about not lining up their fsyncs, not
//! about hiding a long build.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::Raft;

/// How often the WAL size is checked.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// `base` raised by up to half, by a hash of `id`, so nodes with any ids
/// (1, 2, 3 or 1000, 2000, 3000) get different thresholds.
pub fn staggered(base: u64, id: u64) -> u64 {
    base.saturating_add(mix(id) % (base / 2 + 1))
}

/// splitmix64's finaliser: consecutive and round ids spread evenly.
fn mix(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Ask for a snapshot whenever the WAL in `wal_dir` holds more than
/// `wal_bytes_max` (staggered) bytes and at least `entries_min` entries have
/// been applied since the last snapshot (fewer could not free a segment:
/// that many are kept behind a snapshot anyway). 0 turns it off.
pub async fn snapshot_on_wal_bytes(
    raft: Raft,
    id: u64,
    wal_dir: PathBuf,
    wal_bytes_max: u64,
    entries_min: u64,
    shutdown: CancellationToken,
) {
    if wal_bytes_max == 0 {
        return;
    }
    let threshold = staggered(wal_bytes_max, id);
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let metrics = raft.metrics().borrow_watched().clone();
        let applied = metrics.last_applied.map(|l| l.index).unwrap_or(0);
        let snapshot = metrics.snapshot.map(|l| l.index).unwrap_or(0);
        if applied.saturating_sub(snapshot) <= entries_min {
            continue;
        }
        let dir = wal_dir.clone();
        let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || wal_bytes(&dir)).await else {
            continue;
        };
        if bytes > threshold {
            tracing::info!(
                wal_bytes = bytes,
                threshold,
                applied,
                snapshot,
                "wal over its size limit; building a snapshot"
            );
            if let Err(err) = raft.trigger().snapshot().await {
                tracing::warn!(%err, "could not ask for a snapshot");
            }
        }
    }
}

/// Bytes of the WAL's segment files.
fn wal_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut bytes = 0;
    for dirent in std::fs::read_dir(dir)? {
        let dirent = dirent?;
        if dirent.path().extension().is_some_and(|x| x == "wal") {
            bytes += dirent.metadata()?.len();
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thresholds stay within base..=base*3/2, and the usual id choices
    /// (1–3, 1000–3000) give three different thresholds.
    #[test]
    fn thresholds_are_staggered() {
        for id in 0..10_000 {
            let t = staggered(16_000, id);
            assert!((16_000..=24_000).contains(&t), "{id}: {t}");
        }
        for ids in [[1, 2, 3], [1000, 2000, 3000]] {
            let mut t: Vec<u64> = ids.iter().map(|&id| staggered(10_000, id)).collect();
            t.sort_unstable();
            t.dedup();
            assert_eq!(t.len(), 3, "{ids:?} share a threshold");
        }
    }
}
