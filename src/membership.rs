//! Node-side cluster behaviour: joining a running cluster at start-up
//! (`txlog node --join`), handing leadership back to a preferred region, and
//! the failure detector that replaces a silent leader without waiting for
//! openraft's (longer) election timer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use txlog_proto::JoinRequest;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::openraft::Instant as _;
use txlog_raft::openraft::ServerState;
use txlog_raft::timing::Timing;
use txlog_raft::Raft;

use crate::admin_service::admin_client;
use crate::admin_service::JOIN_LAG_MAX;

const JOIN_RETRY_MAX: Duration = Duration::from_secs(5);
/// A preferred-region voter must look healthy this long before leadership moves to it.
const PREFERRED_STABLE: Duration = Duration::from_secs(2);
/// At most one automatic transfer per this interval.
const TRANSFER_INTERVAL_MIN: Duration = Duration::from_secs(5);

/// Ask `via` (any member) to admit this node; retry until admitted, refused
/// for good, or shut down. A node that is already a voter is told so at once.
pub async fn join_cluster(
    via: String,
    id: u64,
    address: String,
    region: String,
    source: Option<IpAddr>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = join_once(&via, id, &address, &region, source);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(message) => {
                tracing::info!(%via, "joined the cluster: {message}");
                return;
            }
            Err(status)
                if matches!(
                    status.code(),
                    Code::AlreadyExists | Code::InvalidArgument | Code::NotFound | Code::PermissionDenied
                ) =>
            {
                tracing::error!(%via, code = ?status.code(), "the cluster refused to admit this node: {}", status.message());
                return;
            }
            Err(status) => {
                tracing::warn!(%via, code = ?status.code(), retry_in = ?backoff, "join attempt failed: {}", status.message());
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(JOIN_RETRY_MAX);
    }
}

async fn join_once(
    via: &str,
    id: u64,
    address: &str,
    region: &str,
    source: Option<IpAddr>,
) -> Result<String, tonic::Status> {
    let mut client = admin_client(via, source)?;
    let request = JoinRequest {
        node_id: id,
        address: address.to_string(),
        region: region.to_string(),
        learner_only: false,
        timeout_ms: 0,
    };
    let mut stream = client.join(request).await?.into_inner();
    while let Some(progress) = stream.message().await? {
        if progress.done {
            return Ok(progress.message);
        }
        tracing::info!(phase = %progress.phase, lag = progress.lag, "join: {}", progress.message);
    }
    Err(crate::Error::Unavailable("the join stream ended before the join finished".into()).into())
}

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
