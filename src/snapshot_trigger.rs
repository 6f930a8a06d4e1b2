//! When snapshots are built and the WAL is purged. openraft's own policy is
//! off (`SnapshotPolicy::Never`); this task is the one place that decides.
//!
//! * **By entries:** a snapshot once `snapshot_logs_since_last` entries were
//!   applied since the last one; openraft then purges the WAL behind it,
//!   keeping `log_entries_kept_after_snapshot` entries for briefly lagging
//!   followers.
//! * **By bytes:** while the WAL holds more than `snapshot_wal_bytes_max`,
//!   a snapshot whenever entries were applied since the last, and a purge up
//!   to the last snapshot, past the kept window (with 100-record batches
//!   10,000 entries are ~280 MB, and the kept window alone can be most of
//!   the WAL). A follower that then lags behind the purge point catches up
//!   by a delta snapshot.
//!
//! **Staggered:** each threshold is raised by up to half, by this node's
//! rank among the members (sorted ids), so the nodes of a cluster build at
//! different log indexes whatever their ids. Builds are cheap (linked
//! snapshots share the record file); this keeps their fsyncs from lining up.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use txlog_raft::openraft::error::Fatal;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::openraft::RaftMetrics;
use txlog_raft::Raft;
use txlog_raft::TypeConfig;

/// How often the WAL's size is checked: a directory listing, cheap; at
/// ~60 MB/s of appends the WAL grows ~30 MB between two checks.
const WAL_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// A snapshot asked for and not seen within this is asked for again
/// (openraft drops a request while a build runs; builds take ~6–75 ms).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What the policy is given.
#[derive(Debug, Clone)]
pub struct SnapshotPolicy {
    pub id: u64,
    pub wal_dir: PathBuf,
    /// Entries between snapshots (0: never by entries).
    pub logs_since_last: u64,
    /// WAL bytes above which snapshots and purges run (0: never by bytes).
    pub wal_bytes_max: u64,
}

/// `base` raised by `rank / (2 * members)` of itself: the members of a
/// cluster spread over `[base, 1.5 * base)`.
pub fn staggered(base: u64, rank: usize, members: usize) -> u64 {
    let members = members.max(1) as u128;
    let rank = (rank as u128).min(members - 1);
    let raise = u128::from(base / 2) * rank / members;
    base.saturating_add(raise as u64)
}

/// This node's position among the members' sorted ids, and their number.
fn rank(metrics: &RaftMetrics<TypeConfig>, id: u64) -> (usize, usize) {
    let mut ids: Vec<u64> = metrics
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    let rank = ids.iter().position(|&n| n == id).unwrap_or(ids.len());
    (rank, ids.len().max(1))
}

/// Run the policy until shutdown; the WAL size it measures is exported.
pub async fn run(
    raft: Raft,
    policy: SnapshotPolicy,
    exported: std::sync::Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    let mut rx = raft.metrics();
    let mut wal_tick = tokio::time::interval(WAL_CHECK_INTERVAL);
    // The applied index a snapshot was asked for at, and when.
    let mut requested: Option<(u64, Instant)> = None;
    let mut over = false;
    loop {
        let check_wal = tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return } else { false },
            _ = wal_tick.tick() => true,
        };
        // Metrics change with every apply: read what is needed in place
        // rather than cloning them (membership and replication maps).
        let (applied, snapshot, purged, (rank, members)) = {
            let metrics = rx.borrow_and_update();
            let index = |id: Option<txlog_raft::LogId>| id.map(|l| l.index).unwrap_or(0);
            (
                index(metrics.last_applied),
                index(metrics.snapshot),
                index(metrics.purged),
                rank(&metrics, policy.id),
            )
        };
        if requested.is_some_and(|(at, when)| snapshot >= at || when.elapsed() > REQUEST_TIMEOUT) {
            requested = None;
        }
        let mut want_snapshot = policy.logs_since_last > 0
            && applied.saturating_sub(snapshot) >= staggered(policy.logs_since_last, rank, members);
        let mut purge_to = None;
        if check_wal && policy.wal_bytes_max > 0 {
            let threshold = staggered(policy.wal_bytes_max, rank, members);
            let dir = policy.wal_dir.clone();
            let bytes = match tokio::task::spawn_blocking(move || wal_bytes(&dir)).await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(err)) => {
                    tracing::warn!(%err, dir = %policy.wal_dir.display(), "could not measure the wal");
                    continue;
                }
                Err(err) => {
                    tracing::warn!(%err, "wal measurement task failed");
                    continue;
                }
            };
            exported.wal_bytes.set(bytes as i64);
            if bytes > threshold {
                if !over {
                    tracing::info!(
                        wal_bytes = bytes,
                        threshold,
                        applied,
                        snapshot,
                        purged,
                        "wal over its size limit; snapshotting and purging"
                    );
                    over = true;
                }
                want_snapshot |= applied > snapshot;
                purge_to = (snapshot > purged).then_some(snapshot);
            } else {
                over = false;
            }
        }
        let result = async {
            if let Some(upto) = purge_to {
                raft.trigger().purge_log(upto).await?;
            }
            if want_snapshot && requested.is_none() {
                requested = Some((applied, Instant::now()));
                raft.trigger().snapshot().await?;
            }
            Ok::<(), Fatal<TypeConfig>>(())
        };
        if let Err(err) = result.await {
            tracing::warn!(%err, "could not snapshot or purge the wal");
        }
    }
}

/// Bytes of the WAL's segment files.
fn wal_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut bytes = 0;
    for dirent in std::fs::read_dir(dir)? {
        let dirent = dirent?;
        if dirent.path().extension().is_some_and(|x| x == "wal") {
            match dirent.metadata() {
                Ok(meta) => bytes += meta.len(),
                // Purged between the listing and the look.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members spread evenly over [base, 1.5 base); a lone node or a node
    /// not (yet) among the members stays within the range.
    #[test]
    fn thresholds_are_staggered_by_rank() {
        let three: Vec<u64> = (0..3).map(|rank| staggered(12_000, rank, 3)).collect();
        assert_eq!(three, vec![12_000, 14_000, 16_000]);
        assert_eq!(staggered(12_000, 0, 1), 12_000);
        assert_eq!(staggered(12_000, 3, 3), 16_000);
        assert_eq!(staggered(u64::MAX, 4, 5), u64::MAX);
    }
}
