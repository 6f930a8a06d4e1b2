//! Leader placement (`--prefer-region`). While this node leads, it hands
//! leadership to a better-placed voter once that voter has been caught up
//! and responsive for a while:
//!
//! * `--prefer-region REGION` (`txlog dev` prefers paris): a voter in
//!   REGION, whenever another region leads.
//! * `--prefer-region auto`: the voter whose commit quorum is nearest —
//!   the smallest quorum RTT (`txlog_raft::PeerLatency`: measured by every
//!   node's pings and carried in them) — when it beats this node's own by
//!   [`AUTO_MARGIN_PERCENT`] and at least [`AUTO_MARGIN_MIN`]. Ties stay
//!   put: with three regions both ends of the shortest link (Paris and
//!   Lyon) have the same quorum RTT, and moving between them gains nothing.
//!
//! Either way leadership comes back after a failover: the new leader runs
//! the same check, and moves it once the better-placed voter has rejoined,
//! caught up and stayed healthy for [`PREFERRED_STABLE`].

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::openraft::Instant as _;
use txlog_raft::openraft::ServerState;
use txlog_raft::timing::Timing;
use txlog_raft::PeerLatency;
use txlog_raft::Raft;

use crate::join::JOIN_LAG_MAX;

/// A better-placed voter must look healthy this long before leadership moves to it.
const PREFERRED_STABLE: Duration = Duration::from_secs(2);
/// At most one automatic transfer per this interval.
const TRANSFER_INTERVAL_MIN: Duration = Duration::from_secs(5);
/// In auto mode a voter must have a quorum RTT this much smaller (percent
/// of this node's)...
pub const AUTO_MARGIN_PERCENT: u32 = 20;
/// ...and at least this much smaller, so that on one site (round trips of
/// tens of microseconds, all alike) leadership never moves on noise.
pub const AUTO_MARGIN_MIN: Duration = Duration::from_micros(500);

/// Where leadership should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In this region.
    Region(String),
    /// Where the commit quorum is nearest.
    Auto,
}

impl Placement {
    /// `auto`, or a region name.
    pub fn parse(setting: &str) -> Placement {
        match setting.trim() {
            "auto" => Placement::Auto,
            region => Placement::Region(region.to_string()),
        }
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Region(region) => write!(f, "region {region}"),
            Placement::Auto => write!(f, "the nearest commit quorum"),
        }
    }
}

/// The voters leadership may move to, best first (empty: stay).
fn better_voters(placement: &Placement, self_id: u64, voters: &[(u64, String)], latency: &PeerLatency) -> Vec<u64> {
    match placement {
        Placement::Region(preferred) => {
            let mine = voters.iter().find(|(id, _)| *id == self_id).map(|(_, r)| r);
            if mine == Some(preferred) {
                return Vec::new();
            }
            voters
                .iter()
                .filter(|(id, region)| *id != self_id && region == preferred)
                .map(|(id, _)| *id)
                .collect()
        }
        Placement::Auto => {
            let ids: Vec<u64> = voters.iter().map(|(id, _)| *id).collect();
            let Some(mine) = latency.member_quorum_rtt(self_id, &ids) else {
                return Vec::new();
            };
            let margin = (mine * AUTO_MARGIN_PERCENT / 100).max(AUTO_MARGIN_MIN);
            let mut better: Vec<(Duration, u64)> = ids
                .iter()
                .filter(|&&id| id != self_id)
                .filter_map(|&id| Some((latency.member_quorum_rtt(id, &ids)?, id)))
                .filter(|(rtt, _)| *rtt + margin <= mine)
                .collect();
            better.sort();
            better.into_iter().map(|(_, id)| id).collect()
        }
    }
}

/// While this node leads, move leadership to a better-placed voter (see
/// [`Placement`]) once it has been caught up and responsive for a while.
pub async fn prefer_region(
    raft: Raft,
    self_id: u64,
    placement: Placement,
    latency: PeerLatency,
    timing: Timing,
    shutdown: CancellationToken,
) {
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
        if metrics.state != ServerState::Leader {
            healthy_since.clear();
            continue;
        }
        let membership = metrics.membership_config.membership();
        let voters: Vec<(u64, String)> = membership
            .voter_ids()
            .map(|id| {
                (
                    id,
                    membership.get_node(&id).map(|n| n.region.clone()).unwrap_or_default(),
                )
            })
            .collect();
        // Never towards a voter whose clock is off from this one's: the
        // clock guard would hand leadership straight back (and if this
        // node's clock is the one off, the clock guard moves it anyway).
        let candidates: Vec<u64> = better_voters(&placement, self_id, &voters, &latency)
            .into_iter()
            .filter(|id| !latency.clock_differs(*id, crate::clock_guard::CLOCK_TOLERANCE))
            .collect();
        if candidates.is_empty() {
            healthy_since.clear();
            continue;
        }
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let replication = metrics.replication.clone().unwrap_or_default();
        let heartbeat = metrics.heartbeat.clone().unwrap_or_default();
        let now = Instant::now();
        healthy_since.retain(|id, _| candidates.contains(id));
        let mut ready = None;
        for &id in &candidates {
            let matched = replication.get(&id).and_then(|m| m.map(|l| l.index)).unwrap_or(0);
            let fresh = heartbeat
                .get(&id)
                .and_then(|t| *t)
                .is_some_and(|t| t.into_inner().elapsed() < responsive);
            if fresh && last_log_index.saturating_sub(matched) <= JOIN_LAG_MAX {
                let since = *healthy_since.entry(id).or_insert(now);
                if ready.is_none() && now.duration_since(since) >= PREFERRED_STABLE {
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
        let ids: Vec<u64> = voters.iter().map(|(id, _)| *id).collect();
        tracing::info!(
            target,
            placement = %placement,
            own_quorum_rtt = ?latency.member_quorum_rtt(self_id, &ids),
            target_quorum_rtt = ?latency.member_quorum_rtt(target, &ids),
            "handing leadership to a better-placed voter"
        );
        if let Err(err) = raft.trigger().transfer_leader(target).await {
            tracing::warn!(%err, "leadership transfer failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use txlog_raft::PingReport;

    fn voters() -> Vec<(u64, String)> {
        vec![(10, "paris".into()), (20, "frankfurt".into()), (30, "lyon".into())]
    }

    fn report(from: u64, ms: u64) -> PingReport {
        PingReport {
            from,
            quorum_rtt_us: Some(ms * 1000),
            wall_clock_ns: txlog_raft::wall_clock_ns(),
        }
    }

    /// Region mode names the preferred region's voters unless this node is in it.
    #[test]
    fn region_mode_moves_to_the_region() {
        let latency = PeerLatency::new(20);
        let paris = Placement::parse("paris");
        assert_eq!(better_voters(&paris, 20, &voters(), &latency), vec![10]);
        assert!(better_voters(&paris, 10, &voters(), &latency).is_empty());
    }

    /// Auto mode, with the region model's round trips (paris-frankfurt 9 ms,
    /// paris-lyon 4.4 ms, frankfurt-lyon 8 ms): frankfurt (quorum RTT 8 ms)
    /// hands over to lyon or paris (4.4 ms), best first; paris and lyon,
    /// tied, stay; nothing moves without measurements or within the margin.
    #[test]
    fn auto_mode_moves_to_the_nearest_quorum() {
        let auto = Placement::parse(" auto ");
        assert_eq!(auto, Placement::Auto);
        let frankfurt = PeerLatency::new(20);
        assert!(
            better_voters(&auto, 20, &voters(), &frankfurt).is_empty(),
            "no measurement yet"
        );
        frankfurt.sample(10, Duration::from_millis(9));
        frankfurt.sample(30, Duration::from_millis(8));
        frankfurt.receive(report(10, 5));
        frankfurt.receive(report(30, 4));
        assert_eq!(better_voters(&auto, 20, &voters(), &frankfurt), vec![30, 10]);

        let paris = PeerLatency::new(10);
        paris.sample(20, Duration::from_millis(9));
        paris.sample(30, Duration::from_micros(4_400));
        paris.receive(report(30, 4));
        paris.receive(report(20, 8));
        assert!(
            better_voters(&auto, 10, &voters(), &paris).is_empty(),
            "lyon is not 20 % better"
        );

        // One site: everything within half a millisecond stays.
        let local = PeerLatency::new(10);
        local.sample(20, Duration::from_micros(300));
        local.sample(30, Duration::from_micros(400));
        local.receive(PingReport {
            from: 20,
            quorum_rtt_us: Some(20),
            wall_clock_ns: txlog_raft::wall_clock_ns(),
        });
        assert!(better_voters(&auto, 10, &voters(), &local).is_empty());
    }
}
