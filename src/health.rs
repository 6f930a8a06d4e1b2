//! Standard gRPC health (`grpc.health.v1.Health`) for load balancers,
//! `grpc_health_probe` and `grpcurl`.
//!
//! A node reports `SERVING` — for the whole server (service name `""`) and
//! for `txlog.v1.LogService` — only while it knows a leader, has heard from
//! it (a follower) or from a quorum (the leader) within
//! [`HEALTH_CONTACT_MS_MAX`], and has applied within
//! [`HEALTH_LAG_ENTRIES_MAX`] entries of what the cluster committed.
//! A node that has just restarted and is still catching up, or that sits
//! in a minority partition, answers `NOT_SERVING`, so a balancer sends
//! stale reads elsewhere. `AdminService` is always `SERVING` while the
//! process runs: operators need it most when the node is unhealthy.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::openraft::Instant;
use txlog_raft::openraft::ServerState;
use txlog_raft::LeaderContact;
use txlog_raft::Raft;

/// Applied entries a node may trail the cluster's commit index by and still
/// be "caught up". Under load a healthy follower trails by a few batches;
/// a restarted one trails by thousands until it has caught up.
pub const HEALTH_LAG_ENTRIES_MAX: u64 = 100;

/// Longest silence from the leader (or, on the leader, from a quorum) that
/// still counts as connected: many heartbeats on any timing profile, short
/// enough that a partitioned node stops attracting reads within a second.
pub const HEALTH_CONTACT_MS_MAX: u64 = 1_000;

/// Health is re-evaluated at least this often (silence grows without any
/// metrics change to wake the reporter).
const HEALTH_CHECK_EVERY: Duration = Duration::from_millis(200);

const LOG_SERVICE: &str = "txlog.v1.LogService";
const ADMIN_SERVICE: &str = "txlog.v1.AdminService";

/// Whether a node with these facts should answer `SERVING`.
pub fn is_serving(
    leader_known: bool,
    silence: Option<Duration>,
    applied_index: u64,
    cluster_committed_index: u64,
) -> bool {
    leader_known
        && silence.is_some_and(|s| s <= Duration::from_millis(HEALTH_CONTACT_MS_MAX))
        && applied_index + HEALTH_LAG_ENTRIES_MAX >= cluster_committed_index
}

/// Keep the reporter in step with Raft's metrics until `shutdown`.
pub async fn report(raft: Raft, contact: LeaderContact, reporter: HealthReporter, shutdown: CancellationToken) {
    reporter.set_service_status(ADMIN_SERVICE, ServingStatus::Serving).await;
    let mut rx = raft.metrics();
    let mut tick = tokio::time::interval(HEALTH_CHECK_EVERY);
    let mut last = None;
    loop {
        let serving = {
            let m = rx.borrow_watched();
            let silence = if m.state == ServerState::Leader {
                m.last_quorum_acked.as_ref().map(|at| at.elapsed())
            } else {
                contact.silence()
            };
            is_serving(
                m.current_leader.is_some(),
                silence,
                m.last_applied.map(|l| l.index).unwrap_or(0),
                m.cluster_committed.map(|l| l.index).unwrap_or(0),
            )
        };
        if last != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(LOG_SERVICE, status).await;
            tracing::info!(serving, "health changed");
            last = Some(serving);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = rx.changed() => if changed.is_err() { break },
            _ = tick.tick() => {}
        }
    }
    reporter.set_service_status("", ServingStatus::NotServing).await;
    reporter
        .set_service_status(LOG_SERVICE, ServingStatus::NotServing)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serving needs a known leader, recent contact and an applied index within the lag limit.
    #[test]
    fn serving_rule() {
        let recent = Some(Duration::from_millis(20));
        assert!(is_serving(true, recent, 500, 500));
        assert!(is_serving(true, recent, 400, 500));
        assert!(!is_serving(true, recent, 399, 500));
        assert!(!is_serving(false, recent, 500, 500));
        assert!(is_serving(true, recent, 0, 0));
        assert!(!is_serving(true, None, 500, 500));
        assert!(!is_serving(true, Some(Duration::from_millis(1_001)), 500, 500));
    }
}
