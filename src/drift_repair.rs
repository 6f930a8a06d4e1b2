//! Self-healing of a damaged record store, at start-up.
//!
//! Before its Raft starts, a node checks that its record store still holds
//! what it applied: every record's frame checksum and the hash chain from
//! the first record to the last (`StateMachine::check_records`), that the
//! store opened at all, and that it is not behind the point its WAL is
//! purged to. A store that fails is **drift**: bit rot, an edited or
//! truncated segment file, a hash chain that no longer matches its records.
//! Starting on it would serve wrong records, or stop at the first damaged
//! one, and openraft would never notice: it trusts its state machine.
//!
//! So the node repairs itself, with one `error` line and the
//! `txlog_drift_repairs_total` metric, and no operator step:
//!
//! 1. a marker file (`REPAIR_MARKER`) is written: a repair cut short by a
//!    crash is done again from the start on the next start-up;
//! 2. the state directory is moved aside (`state.damaged-<unix seconds>`,
//!    kept for a post-mortem, never read again; the newest
//!    [`DAMAGED_KEPT_MAX`] are kept) and an empty one opened (a repair
//!    started again removes the partial copy instead);
//! 3. a full copy is fetched from a peer (`FetchSnapshot`; the leader
//!    first when this node knows it): a snapshot of committed records that
//!    covers the WAL's purge point, verified end to end on arrival;
//! 4. it is installed as the store and as this node's snapshot;
//! 5. the WAL is aligned with the copy: if it holds another term's entry
//!    at the copy's last index, that entry and those after it (uncommitted)
//!    are cut; then it is purged up to the copy's last log id (an
//!    uncommitted entry of an old term left below the applied index could
//!    never be replaced by openraft);
//! 6. the marker is removed; Raft starts from the copy, and the WAL's
//!    committed entries after it are applied on top.
//!
//! The WAL and the vote are never touched beyond step 5, so what this node
//! acknowledged after the copy's end is still on its disk. Peers are asked
//! in turn, every [`RETRY_EVERY`], for at most [`REPAIR_WAIT_MAX`] in all:
//! a node whose peers are all down cannot repair, and says so.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use txlog_raft::openraft::storage::RaftLogReader;
use txlog_raft::openraft::storage::RaftLogStorage;
use txlog_raft::LogId;
use txlog_raft::LogStore;
use txlog_raft::Network;
use txlog_raft::StateMachine;

use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::Error;
use crate::Result;

/// Damaged state directories kept aside; older ones are removed.
pub const DAMAGED_KEPT_MAX: usize = 2;
/// Present in the data dir while a repair is under way.
pub const REPAIR_MARKER: &str = "repair-in-progress";
/// How long a node keeps asking its peers for a copy.
pub const REPAIR_WAIT_MAX: Duration = Duration::from_secs(600);
/// Pause between rounds of asking every peer.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// One peer's whole transfer (a large store takes a while).
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the store cannot be trusted, or `None`.
pub async fn check(
    config: &NodeConfig,
    state_machine: &StateMachine,
    log_store: &mut LogStore,
) -> Result<Option<String>> {
    if config.data_dir.join(REPAIR_MARKER).exists() {
        return Ok(Some("a repair was cut short".into()));
    }
    let started = std::time::Instant::now();
    let reader = state_machine.reader();
    let damage = tokio::task::spawn_blocking(move || reader.check_records())
        .await
        .map_err(|e| Error::Internal(format!("record check failed: {e}")))??;
    let records = state_machine.reader().last_seq();
    tracing::info!(
        records,
        took_ms = started.elapsed().as_millis() as u64,
        "record store checked against its hash chain"
    );
    if damage.is_some() {
        return Ok(damage);
    }
    let purged = log_store.get_log_state().await?.last_purged_log_id;
    let applied = state_machine.reader().last_applied();
    if purged.is_some() && applied < purged {
        return Ok(Some(format!(
            "the record store ends at {applied:?}, before the WAL's purge point {purged:?}: records are missing"
        )));
    }
    Ok(None)
}

/// Where to ask: the members this node knew (`known`), then the configured
/// peers, then the member it joined through; the leader it last knew
/// first; never itself, nor an address twice.
pub fn peer_addresses(
    self_id: u64,
    known: &[(u64, String)],
    configured: &[(u64, String)],
    join: Option<&str>,
    leader: Option<u64>,
) -> Vec<String> {
    let mut ordered: Vec<(u64, String)> = known.iter().chain(configured).cloned().collect();
    ordered.sort_by_key(|(id, _)| Some(*id) != leader);
    let mut addresses: Vec<String> = Vec::new();
    for (id, address) in ordered {
        if id != self_id && !address.is_empty() && !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    if let Some(join) = join {
        if !addresses.iter().any(|a| a == join) {
            addresses.push(join.to_string());
        }
    }
    addresses
}

/// What [`repair`] needs besides the stores.
pub struct Repair<'a> {
    pub config: &'a NodeConfig,
    pub metrics: &'a Metrics,
    pub keys: Option<Arc<txlog_raft::Keys>>,
    /// Builds the network the copy comes over, for the new state machine.
    pub network: &'a dyn Fn(&StateMachine) -> Network,
    /// Peers to ask, best first.
    pub peers: Vec<String>,
    /// The node's shutdown: a repair stops waiting on it (and resumes on the
    /// next start).
    pub shutdown: &'a tokio_util::sync::CancellationToken,
}

/// Replace the damaged store with a copy fetched from a peer (see the module
/// doc). `state_machine` is the damaged one (dropped here), or `None` if it
/// did not even open.
pub async fn repair(
    repair: Repair<'_>,
    why: &str,
    state_machine: Option<StateMachine>,
    log_store: &mut LogStore,
) -> Result<StateMachine> {
    let config = repair.config;
    let state_dir = config.data_dir.join("state");
    tracing::error!(
        data_dir = %config.data_dir.display(),
        %why,
        "record store does not match what this node applied; replacing it with a full copy from the cluster"
    );
    if repair.peers.is_empty() {
        return Err(Error::Config(
            "the record store is damaged and this node knows no peer to copy it from (no --peers, no --join)".into(),
        ));
    }
    repair.metrics.drift_repairs.inc();
    let resumed = config.data_dir.join(REPAIR_MARKER).exists();
    write_marker(&config.data_dir)?;
    drop(state_machine);
    if resumed {
        // What is there is a copy cut short, not the damaged store (kept
        // aside by the first attempt): nothing to keep.
        if state_dir.exists() {
            std::fs::remove_dir_all(&state_dir)?;
        }
        tracing::warn!("an earlier repair was cut short; starting it again");
    } else {
        let aside = quarantine(&state_dir)?;
        tracing::warn!(moved_to = %aside.display(), "damaged state directory kept aside for inspection");
    }
    let fresh = StateMachine::open_with_keys(&state_dir, repair.keys.clone())?;
    let network = (repair.network)(&fresh);
    let log_state = log_store.get_log_state().await?;
    let min_index = log_state.last_purged_log_id.map_or(0, |l| l.index);
    let deadline = Instant::now() + REPAIR_WAIT_MAX;
    let gave_up = || {
        Error::Unavailable(format!(
            "the record store is damaged and no peer sent a full copy within {REPAIR_WAIT_MAX:?}; asked {}",
            repair.peers.join(", ")
        ))
    };
    let (meta, staged) = 'fetched: loop {
        for address in &repair.peers {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(gave_up());
            }
            let fetch = tokio::time::timeout(FETCH_TIMEOUT.min(left), network.fetch_snapshot(address, min_index));
            let fetched = tokio::select! {
                _ = repair.shutdown.cancelled() => {
                    return Err(Error::Unavailable("stopped while repairing the record store; it resumes on the next start".into()));
                }
                fetched = fetch => fetched,
            };
            match fetched {
                Ok(Ok(copy)) => {
                    tracing::info!(peer = %address, last_log_id = ?copy.0.last_log_id, "full copy received");
                    break 'fetched copy;
                }
                Ok(Err(err)) => tracing::warn!(peer = %address, %err, "no full copy from this peer"),
                Err(_) => tracing::warn!(peer = %address, "full copy from this peer timed out"),
            }
        }
        if Instant::now() >= deadline {
            return Err(gave_up());
        }
        tokio::select! {
            _ = repair.shutdown.cancelled() => {
                return Err(Error::Unavailable("stopped while repairing the record store; it resumes on the next start".into()));
            }
            _ = tokio::time::sleep(RETRY_EVERY) => {}
        }
    };
    fresh.install_fetched(meta.clone(), staged).await?;
    if let Some(copied) = meta.last_log_id {
        align_wal(log_store, copied).await?;
    }
    remove_marker(&config.data_dir)?;
    tracing::info!(
        last_log_id = ?meta.last_log_id,
        records = fresh.reader().last_seq(),
        "record store repaired from a full copy"
    );
    Ok(fresh)
}

/// Make the WAL agree with a copy of the committed log up to `copied`. If
/// the WAL holds another term's entry at `copied.index`, that entry and
/// everything after it are uncommitted (the committed one is in the copy)
/// and are cut; then everything up to `copied` is purged (it is in the
/// copy), also when `copied` is past the WAL's end.
async fn align_wal(log_store: &mut LogStore, copied: LogId) -> Result<()> {
    let state = log_store.get_log_state().await?;
    if state.last_log_id.is_some_and(|last| last.index >= copied.index) {
        let at = log_store.try_get_log_entries(copied.index..=copied.index).await?;
        if at.first().is_none_or(|entry| entry.log_id != copied) {
            let keep = match copied.index.checked_sub(1) {
                Some(before) => log_store
                    .try_get_log_entries(before..=before)
                    .await?
                    .first()
                    .map(|entry| entry.log_id)
                    .or(state.last_purged_log_id),
                None => None,
            };
            tracing::warn!(
                copied = ?copied,
                wal_last = ?state.last_log_id,
                "the WAL holds uncommitted entries of another term from the copy's end on; cutting them"
            );
            log_store.truncate_after(keep).await?;
        }
    }
    log_store.purge(copied).await?;
    Ok(())
}

fn write_marker(data_dir: &Path) -> Result<()> {
    let path = data_dir.join(REPAIR_MARKER);
    std::fs::write(
        &path,
        b"a record store repair is under way; it restarts on the next start-up\n",
    )?;
    std::fs::File::open(&path)?.sync_all()?;
    sync_dir(data_dir)
}

fn remove_marker(data_dir: &Path) -> Result<()> {
    std::fs::remove_file(data_dir.join(REPAIR_MARKER))?;
    sync_dir(data_dir)
}

/// Move `state_dir` aside (a rename, durable before anything is fetched).
fn quarantine(state_dir: &Path) -> Result<PathBuf> {
    let parent = state_dir.parent().unwrap_or(Path::new("."));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut aside = parent.join(format!("state.damaged-{now}"));
    let mut n = 1;
    while aside.exists() {
        aside = parent.join(format!("state.damaged-{now}-{n}"));
        n += 1;
    }
    if state_dir.exists() {
        std::fs::rename(state_dir, &aside)?;
        sync_dir(parent)?;
    }
    let mut kept: Vec<PathBuf> = std::fs::read_dir(parent)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("state.damaged-"))
        .map(|e| e.path())
        .collect();
    // Named by time: oldest first.
    kept.sort();
    while kept.len() > DAMAGED_KEPT_MAX {
        let old = kept.remove(0);
        tracing::warn!(removed = %old.display(), "removing an old damaged state directory");
        std::fs::remove_dir_all(&old)?;
    }
    Ok(aside)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use txlog_raft::openraft::entry::RaftEntry;
    use txlog_raft::openraft::storage::IOFlushed;
    use txlog_raft::openraft::type_config::TypeConfigExt;
    use txlog_raft::Entry;
    use txlog_raft::TypeConfig;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(
            txlog_raft::openraft::vote::leader_id_adv::LeaderId { term, node_id: 1 },
            index,
        )
    }

    async fn wal_with(dir: &Path, ids: &[LogId]) -> LogStore {
        let mut wal = LogStore::open(dir, txlog_storage::WalOptions::default()).expect("open wal");
        let entries: Vec<Entry> = ids.iter().map(|id| Entry::new_blank(*id)).collect();
        let (tx, rx) = TypeConfig::oneshot();
        wal.append(entries, IOFlushed::signal(tx)).await.expect("append");
        rx.await.expect("flushed").expect("io ok");
        wal
    }

    async fn wal_ids(wal: &mut LogStore) -> Vec<LogId> {
        wal.try_get_log_entries(0..u64::MAX)
            .await
            .expect("read")
            .into_iter()
            .map(|e| e.log_id)
            .collect()
    }

    /// A WAL that agrees with the copy is purged up to its end; one that
    /// holds another term's entries from the copy's last index on (a deposed
    /// leader's, uncommitted) loses them first, also when its last log id
    /// sorts after the copy's (a higher term at a lower index); a WAL that
    /// ends before the copy ends empty at the copy's log id.
    #[tokio::test]
    async fn the_wal_is_aligned_with_the_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let same: Vec<LogId> = (1..=10).map(|i| log_id(2, i)).collect();
        let mut wal = wal_with(&dir.path().join("same"), &same).await;
        align_wal(&mut wal, log_id(2, 6)).await.expect("align");
        assert_eq!(
            wal_ids(&mut wal).await,
            (7..=10).map(|i| log_id(2, i)).collect::<Vec<_>>()
        );

        // Entries 1..=5 of term 2, then 6..=10 of a deposed leader's term 3;
        // the cluster committed 6 in term 4.
        let mut diverged: Vec<LogId> = (1..=5).map(|i| log_id(2, i)).collect();
        diverged.extend((6..=10).map(|i| log_id(3, i)));
        let mut wal = wal_with(&dir.path().join("diverged"), &diverged).await;
        align_wal(&mut wal, log_id(4, 6)).await.expect("align");
        assert_eq!(wal_ids(&mut wal).await, Vec::<LogId>::new());
        let state = wal.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(4, 6)));
        assert_eq!(state.last_log_id, Some(log_id(4, 6)));

        let short: Vec<LogId> = (1..=3).map(|i| log_id(2, i)).collect();
        let mut wal = wal_with(&dir.path().join("short"), &short).await;
        align_wal(&mut wal, log_id(2, 8)).await.expect("align");
        let state = wal.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(2, 8)));
        assert_eq!(wal_ids(&mut wal).await, Vec::<LogId>::new());
    }

    /// The leader comes first, this node and duplicates never, the join
    /// address last.
    #[test]
    fn peers_are_ordered_leader_first() {
        let known = vec![
            (1, "10.0.0.1:7401".to_string()),
            (2, "10.0.0.2:7401".to_string()),
            (3, "10.0.0.3:7401".to_string()),
        ];
        let configured = vec![(1, "10.0.0.1:7401".to_string()), (4, "10.0.0.4:7401".to_string())];
        assert_eq!(
            peer_addresses(2, &known, &configured, Some("10.0.0.9:7401"), Some(3)),
            vec!["10.0.0.3:7401", "10.0.0.1:7401", "10.0.0.4:7401", "10.0.0.9:7401"]
        );
        assert_eq!(
            peer_addresses(1, &[], &[(1, "10.0.0.1:7401".into())], None, None),
            Vec::<String>::new()
        );
    }
}
