//! Leadership away from a node whose clock is off.
//!
//! Request tokens are checked against the wall clock of the node that
//! receives them (`token_check.rs`: ±[`CLOCK_SKEW_MAX`]), and clients send
//! their calls to the leader. A leader whose clock is minutes off (a bad
//! NTP step, a VM restored from a snapshot) refuses every signed call while
//! Raft itself, which runs on monotonic timers, sees nothing wrong: the
//! cluster is up and serves nobody.
//!
//! Every ping carries its sender's wall clock (`txlog_raft::PeerLatency`),
//! so each node knows its offset to each peer. Every 200 ms this task
//! exports the median offset (`txlog_clock_offset_seconds`), and a node
//! whose clock is more than [`CLOCK_TOLERANCE`] from most of its peers'
//! logs it (once per episode), answers calls whose tokens it refuses for
//! their times with `UNAVAILABLE` instead of `UNAUTHENTICATED` (the fault
//! is its own; the client library tries another node), and, while it
//! leads, hands leadership to a caught-up voter. It does not try to fix
//! the clock.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::openraft::ServerState;
use txlog_raft::PeerLatency;
use txlog_raft::Raft;

use crate::join::JOIN_LAG_MAX;
use crate::metrics::Metrics;
use crate::token_check::CLOCK_SKEW_MAX;

/// A clock this far from most peers' counts as off: a third of what token
/// checks allow, so leadership moves before calls start failing.
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(CLOCK_SKEW_MAX.as_secs() / 3);
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// At most one transfer per this interval.
const TRANSFER_INTERVAL_MIN: Duration = Duration::from_secs(5);

/// `clock_suspect` is the access guard's flag: set while this node's clock
/// is off (its token-time refusals are then answered `UNAVAILABLE`).
pub async fn run(
    raft: Raft,
    latency: PeerLatency,
    metrics: std::sync::Arc<Metrics>,
    clock_suspect: std::sync::Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) {
    let self_id = latency.self_id();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut off = false;
    let mut last_transfer: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut offsets: Vec<f64> = latency
            .clock_offsets()
            .iter()
            .map(|(_, d, ahead)| if *ahead { d.as_secs_f64() } else { -d.as_secs_f64() })
            .collect();
        offsets.sort_by(f64::total_cmp);
        let metrics_now = raft.metrics().borrow_watched().clone();
        let membership = metrics_now.membership_config.membership();
        let others = membership.nodes().filter(|(id, _)| **id != self_id).count();
        let now_off = latency.clock_is_off(others, CLOCK_TOLERANCE);
        if let Some(median) = offsets.get(offsets.len() / 2) {
            // Peers' clocks minus ours, so ours minus theirs is the negation.
            metrics.clock_offset_seconds.set(-median);
        }
        if now_off && !off {
            tracing::error!(
                median_offset_s = -offsets[offsets.len() / 2],
                tolerance = ?CLOCK_TOLERANCE,
                "this node's wall clock disagrees with most of its peers'; signed calls to it fail until it is fixed"
            );
        } else if off && !now_off {
            tracing::info!("this node's wall clock agrees with its peers' again");
        }
        off = now_off;
        clock_suspect.store(off, std::sync::atomic::Ordering::Relaxed);
        if !off || metrics_now.state != ServerState::Leader {
            continue;
        }
        if last_transfer.is_some_and(|t| t.elapsed() < TRANSFER_INTERVAL_MIN) {
            continue;
        }
        let last_log_index = metrics_now.last_log_index.unwrap_or(0);
        let replication = metrics_now.replication.clone().unwrap_or_default();
        let target = membership
            .voter_ids()
            .filter(|id| *id != self_id)
            .max_by_key(|id| replication.get(id).and_then(|m| m.map(|l| l.index)).unwrap_or(0));
        let Some(target) = target else { continue };
        let matched = replication.get(&target).and_then(|m| m.map(|l| l.index)).unwrap_or(0);
        if last_log_index.saturating_sub(matched) > JOIN_LAG_MAX {
            continue;
        }
        last_transfer = Some(tokio::time::Instant::now());
        tracing::warn!(target, "handing leadership away: this node's clock is off");
        if let Err(err) = raft.trigger().transfer_leader(target).await {
            tracing::warn!(%err, "leadership transfer failed");
        }
    }
}
