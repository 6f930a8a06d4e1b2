//! The failure detector: a voter that stops hearing from its leader starts
//! a pre-vote at once instead of waiting for openraft's (longer) election
//! timer. Contact is recorded by the Raft service on every AppendEntries
//! from the leader (`txlog_raft::LeaderContact`).

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::openraft::ServerState;
use txlog_raft::timing::Timing;
use txlog_raft::Raft;

/// A voter that has not heard from its leader for `timing.failure_detect`
/// starts a pre-vote round at once. The pre-vote only succeeds if a majority
/// has also lost the leader (their leases ran out too), so a slow or
/// flapping node cannot unseat a healthy leader.
pub async fn failure_detector(
    raft: Raft,
    self_id: u64,
    contact: txlog_raft::LeaderContact,
    timing: Timing,
    shutdown: CancellationToken,
) {
    let threshold = timing.failure_detect(self_id);
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_attempt: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(silence) = contact.silence() else { continue };
        if silence < threshold {
            continue;
        }
        let (state, leader, voter) = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            let voter = m.membership_config.membership().voter_ids().any(|v| v == self_id);
            (m.state, m.current_leader, voter)
        };
        if state != ServerState::Follower || !voter || leader.is_none_or(|l| l == self_id) {
            continue;
        }
        // One attempt per election timeout; openraft's own timer remains the fallback.
        let now = Instant::now();
        if last_attempt.is_some_and(|t| now.duration_since(t) < Duration::from_millis(timing.election_timeout_ms_min)) {
            continue;
        }
        if last_attempt.is_none_or(|t| now.duration_since(t) > silence) {
            // First attempt of this silence: worth a line in the log.
            tracing::info!(?silence, leader = ?leader, "leader silent; starting a pre-vote");
        } else {
            tracing::debug!(?silence, "leader still silent; pre-vote again");
        }
        last_attempt = Some(now);
        if let Err(err) = raft.trigger().elect(true).await {
            tracing::warn!(%err, "could not start an election");
            return;
        }
    }
}
