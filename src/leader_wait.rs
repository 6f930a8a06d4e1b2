//! Holding a call while the leader is in doubt.
//!
//! A call that needs the leader (an append) and reaches a follower is
//! answered with the leader's address, and the client library goes there at
//! once. Right after the leader dies that answer is wrong: the follower
//! still names the dead leader until its lease runs out (50 ms with the
//! default timing) and an election follows, so a client that kept asking
//! would bounce between a refused connection and stale answers, pausing a
//! growing backoff each time, and reach the new leader tens of milliseconds
//! after it was elected (that was most of the failover time across the
//! regions).
//!
//! So a node whose leader has gone quiet (no AppendEntries for
//! [`LeaderWait::silent_after`]) or that knows no leader holds the call and
//! answers as soon as a live leader is known: itself (the call goes ahead)
//! or another node (the client is redirected there, once, to the right
//! place). A call is held at most [`LeaderWait::wait_max`], past which it
//! gets the old answer; a quiet-but-live leader costs a held call only
//! until its next heartbeat arrives.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::timing::Timing;
use txlog_raft::LeaderContact;
use txlog_raft::Raft;

use crate::Error;
use crate::Result;

/// A held call looks again when Raft's metrics change (a new leader is
/// announced there) and at least this often (a quiet leader heard from
/// again shows only in the contact time).
const RECHECK_EVERY: Duration = Duration::from_millis(5);

/// Where a call that needs the leader should go, waiting out an election.
#[derive(Clone)]
pub struct LeaderWait {
    raft: Raft,
    node_id: u64,
    contact: LeaderContact,
    /// A leader not heard from for this long is in doubt: one and a half
    /// heartbeats, so a heartbeat late by jitter or load does not count.
    silent_after: Duration,
    /// Longest hold: the leader lease (after which followers campaign) plus
    /// two election timeouts for the election itself.
    wait_max: Duration,
    /// Calls that were held (the leader was in doubt when they arrived).
    held: Counter,
    /// When a hold last ran out: until `wait_max` after it, calls are
    /// answered at once, so a stream of calls (an append stream checks
    /// its calls one after another) is not held `wait_max` each while the
    /// cluster has no leader.
    gave_up_at: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

/// What this node knows of the leader right now.
#[derive(Debug, PartialEq, Eq)]
enum Leader {
    /// This node leads: the call goes ahead.
    Here,
    /// Another node leads and was heard from lately: its address.
    There(String),
    /// None known, or the known one has gone quiet.
    InDoubt,
}

impl LeaderWait {
    pub fn new(raft: Raft, node_id: u64, contact: LeaderContact, timing: &Timing, held: Counter) -> Self {
        LeaderWait {
            raft,
            node_id,
            contact,
            silent_after: Duration::from_millis(timing.heartbeat_interval_ms * 3 / 2),
            wait_max: Duration::from_millis(timing.election_timeout_ms_max * 3),
            held,
            gave_up_at: Default::default(),
        }
    }

    /// Ok when this node leads; otherwise the leader to redirect to
    /// ([`Error::NotLeader`]) once one is known and live, or, after
    /// `wait_max`, whatever this node knows then.
    pub async fn leader(&self) -> Result<()> {
        let started = Instant::now();
        let recently_gave_up = self
            .gave_up_at
            .lock()
            .expect("leader wait lock poisoned")
            .is_some_and(|at| started.duration_since(at) < self.wait_max);
        let mut metrics = self.raft.metrics();
        let mut counted = false;
        loop {
            match self.look() {
                Leader::Here => return Ok(()),
                Leader::There(address) => return Err(Error::NotLeader { leader: Some(address) }),
                Leader::InDoubt if recently_gave_up => return self.answer_now(),
                Leader::InDoubt if started.elapsed() >= self.wait_max => {
                    *self.gave_up_at.lock().expect("leader wait lock poisoned") = Some(Instant::now());
                    return self.answer_now();
                }
                Leader::InDoubt => {}
            }
            if !counted {
                counted = true;
                self.held.inc();
            }
            tokio::select! {
                Ok(()) = metrics.changed() => {}
                _ = tokio::time::sleep(RECHECK_EVERY) => {}
            }
        }
    }

    fn look(&self) -> Leader {
        classify(
            crate::log_service::known_leader(&self.raft),
            self.node_id,
            self.contact.silence(),
            self.silent_after,
        )
    }

    /// The answer without waiting: the leader this node names, if any.
    fn answer_now(&self) -> Result<()> {
        match crate::log_service::known_leader(&self.raft) {
            Some((id, _)) if id == self.node_id => Ok(()),
            Some((_, address)) => Err(Error::NotLeader {
                leader: Some(address).filter(|a| !a.is_empty()),
            }),
            None => Err(Error::Unavailable(
                "no leader is known yet (election in progress)".into(),
            )),
        }
    }
}

/// Where a call goes, from the leader this node names (`known`), and how
/// long ago it last heard from a leader (`silence`).
fn classify(known: Option<(u64, String)>, self_id: u64, silence: Option<Duration>, silent_after: Duration) -> Leader {
    match known {
        None => Leader::InDoubt,
        Some((id, _)) if id == self_id => Leader::Here,
        Some((_, address)) => {
            let live = silence.is_some_and(|s| s < silent_after);
            if live && !address.is_empty() {
                Leader::There(address)
            } else {
                Leader::InDoubt
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leader heard from within 1.5 heartbeats gets the redirect; a quiet
    /// one, an unknown one, or one without an address holds the call; this
    /// node leading lets it through whatever the silence.
    #[test]
    fn calls_are_held_only_while_the_leader_is_in_doubt() {
        let after = Duration::from_millis(15);
        let ms = |n| Some(Duration::from_millis(n));
        let other = || Some((2, "10.0.0.2:7401".to_string()));
        assert_eq!(
            classify(other(), 1, ms(3), after),
            Leader::There("10.0.0.2:7401".into())
        );
        assert_eq!(classify(other(), 1, ms(20), after), Leader::InDoubt);
        assert_eq!(classify(other(), 1, None, after), Leader::InDoubt, "never heard from");
        assert_eq!(classify(None, 1, ms(1), after), Leader::InDoubt);
        assert_eq!(classify(Some((2, String::new())), 1, ms(1), after), Leader::InDoubt);
        assert_eq!(classify(Some((1, "self".into())), 1, ms(500), after), Leader::Here);
    }
}
