//! Prefer-region: while this node leads from another region, hand
//! leadership to a voter in the preferred region once that voter has been
//! caught up and responsive for a while (`--prefer-region`; `txlog dev`
//! prefers paris).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::openraft::Instant as _;
use txlog_raft::openraft::ServerState;
use txlog_raft::timing::Timing;
use txlog_raft::Raft;

use crate::join::JOIN_LAG_MAX;

/// A preferred-region voter must look healthy this long before leadership moves to it.
const PREFERRED_STABLE: Duration = Duration::from_secs(2);
/// At most one automatic transfer per this interval.
const TRANSFER_INTERVAL_MIN: Duration = Duration::from_secs(5);

/// While this node leads from another region, move leadership to a voter in
/// `preferred` once it has been caught up and responsive for a while.
pub async fn prefer_region(raft: Raft, self_id: u64, preferred: String, timing: Timing, shutdown: CancellationToken) {
    let mut healthy_since: HashMap<u64, Instant> = HashMap::new();
    let mut last_transfer: Option<Instant> = None;
    let responsive = Duration::from_millis(timing.election_timeout_ms_min);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let metrics = raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let my_region = membership.get_node(&self_id).map(|n| n.region.clone());
        if metrics.state != ServerState::Leader || my_region.as_deref() == Some(preferred.as_str()) {
            healthy_since.clear();
            continue;
        }
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let replication = metrics.replication.clone().unwrap_or_default();
        let heartbeat = metrics.heartbeat.clone().unwrap_or_default();
        let now = Instant::now();
        let mut ready = None;
        for id in membership.voter_ids() {
            let in_region = membership.get_node(&id).is_some_and(|n| n.region == preferred);
            if id == self_id || !in_region {
                continue;
            }
            let matched = replication.get(&id).and_then(|m| m.map(|l| l.index)).unwrap_or(0);
            let fresh = heartbeat
                .get(&id)
                .and_then(|t| *t)
                .is_some_and(|t| t.into_inner().elapsed() < responsive);
            if fresh && last_log_index.saturating_sub(matched) <= JOIN_LAG_MAX {
                let since = *healthy_since.entry(id).or_insert(now);
                if now.duration_since(since) >= PREFERRED_STABLE {
                    ready = Some(id);
                }
            } else {
                healthy_since.remove(&id);
            }
        }
        let Some(target) = ready else { continue };
        if last_transfer.is_some_and(|t| now.duration_since(t) < TRANSFER_INTERVAL_MIN) {
            continue;
        }
        last_transfer = Some(now);
        tracing::info!(target, region = %preferred, "handing leadership back to the preferred region");
        if let Err(err) = raft.trigger().transfer_leader(target).await {
            tracing::warn!(%err, "leadership transfer failed");
        }
    }
}
