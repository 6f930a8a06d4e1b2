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
//!    kept for a post-mortem, never read again) and an empty one opened;
//! 3. a full copy is fetched from a peer (`FetchSnapshot`; the leader
//!    first when this node knows it): a snapshot of committed records that
//!    covers the WAL's purge point, verified end to end on arrival;
//! 4. it is installed as the store and as this node's snapshot;
//! 5. the WAL is purged up to the copy's last log id: entries there are in
//!    the copy, and an uncommitted entry of an old term left there would
//!    otherwise sit below the applied index, where openraft cannot replace
//!    it;
//! 6. the marker is removed; Raft starts from the copy, and the WAL's
//!    committed entries after it are applied on top.
//!
//! The WAL and the vote are never touched beyond step 5, so what this node
//! acknowledged after the copy's end is still on its disk. Peers are asked
//! in turn, every [`RETRY_EVERY`], for at most [`REPAIR_WAIT_MAX`]: a node
//! whose peers are all down cannot repair, and says so.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use txlog_raft::openraft::storage::RaftLogStorage;
use txlog_raft::LogStore;
use txlog_raft::Network;
use txlog_raft::StateMachine;

use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::Error;
use crate::Result;

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
    repair.metrics.drift_repairs.inc();
    write_marker(&config.data_dir)?;
    drop(state_machine);
    let aside = quarantine(&state_dir)?;
    tracing::warn!(moved_to = %aside.display(), "damaged state directory kept aside for inspection");
    let fresh = StateMachine::open_with_keys(&state_dir, repair.keys.clone())?;
    let network = (repair.network)(&fresh);
    let log_state = log_store.get_log_state().await?;
    let min_index = log_state.last_purged_log_id.map_or(0, |l| l.index);
    if repair.peers.is_empty() {
        return Err(Error::Config(
            "the record store is damaged and this node knows no peer to copy it from (no --peers, no --join)".into(),
        ));
    }
    let deadline = Instant::now() + REPAIR_WAIT_MAX;
    let (meta, staged) = 'fetched: loop {
        for address in &repair.peers {
            match tokio::time::timeout(FETCH_TIMEOUT, network.fetch_snapshot(address, min_index)).await {
                Ok(Ok(copy)) => {
                    tracing::info!(peer = %address, last_log_id = ?copy.0.last_log_id, "full copy received");
                    break 'fetched copy;
                }
                Ok(Err(err)) => tracing::warn!(peer = %address, %err, "no full copy from this peer"),
                Err(_) => tracing::warn!(peer = %address, "full copy from this peer timed out"),
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::Unavailable(format!(
                "the record store is damaged and no peer sent a full copy within {REPAIR_WAIT_MAX:?}; asked {}",
                repair.peers.join(", ")
            )));
        }
        tokio::time::sleep(RETRY_EVERY).await;
    };
    fresh.install_fetched(meta.clone(), staged).await?;
    if let Some(copied) = meta.last_log_id {
        if log_state.last_log_id.is_some_and(|last| copied <= last) {
            log_store.purge(copied).await?;
        }
    }
    remove_marker(&config.data_dir)?;
    tracing::info!(
        last_log_id = ?meta.last_log_id,
        records = fresh.reader().last_seq(),
        "record store repaired from a full copy"
    );
    Ok(fresh)
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
    Ok(aside)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
