//! Raft timing profiles. All durations carry their unit in the name.
//!
//! * **Regional** (default): heartbeat every 10 ms, election timeout
//!   25–50 ms, and no heartbeat or vote given less than 40 ms to be
//!   answered. For one site and for the three regions (round trips of
//!   4–10 ms): openraft gives a heartbeat the heartbeat interval (10 ms)
//!   and a vote the shortest election timeout (25 ms) as deadlines, under
//!   a Paris–Frankfurt round trip with jitter, or a reconnect's handshakes.
//! * **LAN**: the same without the deadline floor (what txlog ran before
//!   the regional profile; kept to compare).
//! * **WAN**: heartbeat 100 ms, election timeout 500–1000 ms, for links
//!   with tens of milliseconds of latency and jitter.
//!
//! openraft gives every follower a leader lease of `election_timeout_ms_max`
//! after each heartbeat: until it runs out the follower refuses to vote for
//! anyone else, and its own election timer only fires after lease + a random
//! election timeout (75–100 ms with LAN timings). txlog's failure detector
//! (in the node) does not wait for that timer: a follower that has heard
//! nothing for `failure_detect_ms` (lease + a small per-node jitter), starts
//! a pre-vote round at once. With LAN timings a dead leader is noticed 50–60 ms
//! after its last heartbeat.
//!
//! Pre-vote is on in both: a node that was partitioned away cannot bump the
//! term and unseat a healthy leader when it comes back.

use serde::Deserialize;
use serde::Serialize;

use crate::error::Error;

/// Longest `rpc_deadline_ms_min` accepted.
const RPC_DEADLINE_MS_MIN_MAX: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// No heartbeat or vote RPC gets a shorter deadline (0: openraft's).
    #[serde(default)]
    pub rpc_deadline_ms_min: u64,
}

impl Timing {
    pub const REGIONAL: Timing = Timing {
        rpc_deadline_ms_min: 40,
        ..Self::LAN
    };
    pub const LAN: Timing = Timing {
        heartbeat_interval_ms: 10,
        election_timeout_ms_min: 25,
        election_timeout_ms_max: 50,
        rpc_deadline_ms_min: 0,
    };
    pub const WAN: Timing = Timing {
        heartbeat_interval_ms: 100,
        election_timeout_ms_min: 500,
        election_timeout_ms_max: 1000,
        rpc_deadline_ms_min: 0,
    };
    /// The profile names [`Timing::profile`] knows.
    pub const PROFILES: &'static str = "regional, lan or wan";

    pub fn profile(name: &str) -> Option<Timing> {
        match name {
            "regional" => Some(Self::REGIONAL),
            "lan" => Some(Self::LAN),
            "wan" => Some(Self::WAN),
            _ => None,
        }
    }

    /// Silence after which a follower considers the leader dead and starts a
    /// pre-vote: the leader lease (`election_timeout_ms_max`), plus a jitter
    /// of up to one heartbeat so that two followers rarely campaign at once.
    pub fn failure_detect(&self, jitter_seed: u64) -> std::time::Duration {
        let jitter = jitter_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) % self.heartbeat_interval_ms.max(1);
        std::time::Duration::from_millis(self.election_timeout_ms_max + jitter)
    }

    /// Check the relations Raft needs between the timings.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |detail: &str| Err(Error::InvalidInput(detail.to_string()));
        if self.heartbeat_interval_ms == 0 {
            return invalid("heartbeat_interval_ms must be > 0");
        }
        if self.election_timeout_ms_min <= self.heartbeat_interval_ms {
            return invalid("election_timeout_ms_min must exceed heartbeat_interval_ms");
        }
        if self.election_timeout_ms_max <= self.election_timeout_ms_min {
            return invalid("election_timeout_ms_max must exceed election_timeout_ms_min");
        }
        if self.rpc_deadline_ms_min > RPC_DEADLINE_MS_MIN_MAX {
            return invalid("rpc_deadline_ms_min must be at most 10000");
        }
        Ok(())
    }

    /// openraft's config for this timing, with txlog's other Raft settings.
    /// openraft never snapshots by itself: the node's snapshot policy task
    /// decides (by entries and by WAL bytes, staggered across nodes) and
    /// triggers builds and purges.
    pub fn to_openraft_config(&self, logs_kept_after_snapshot: u64) -> Result<openraft::Config, Error> {
        self.validate()?;
        let config = openraft::Config {
            cluster_name: "txlog".to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_ms_min,
            election_timeout_max: self.election_timeout_ms_max,
            // Deadline for ordinary RPCs; snapshot streaming takes longer.
            install_snapshot_timeout: 2_000,
            max_payload_entries: 256,
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: logs_kept_after_snapshot,
            enable_pre_vote: Some(true),
            // Replicate an entry as soon as it is written locally, in parallel
            // with the local fsync, instead of after it.
            broadcast_submitted_on_append: Some(true),
            // A follower whose data dir was wiped comes back with an empty
            // log. Without this the leader panics on seeing the reversion;
            // with it, the leader resyncs the follower (full snapshot).
            allow_log_reversion: Some(true),
            ..Default::default()
        };
        config.validate().map_err(|e| Error::InvalidInput(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both profiles validate and map onto openraft; inverted timings are rejected.
    #[test]
    fn profiles_validate() {
        for t in [Timing::REGIONAL, Timing::LAN, Timing::WAN] {
            let c = t.to_openraft_config(1_000).unwrap();
            assert_eq!(c.heartbeat_interval, t.heartbeat_interval_ms);
        }
        let bad = Timing {
            heartbeat_interval_ms: 100,
            election_timeout_ms_min: 50,
            election_timeout_ms_max: 100,
            rpc_deadline_ms_min: 0,
        };
        assert!(bad.validate().is_err());
    }
}
