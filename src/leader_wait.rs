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

/// How often a held call looks again.
const POLL: Duration = Duration::from_millis(1);

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
}

/// What this node knows of the leader right now.
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
        }
    }

    /// Ok when this node leads; otherwise the leader to redirect to
    /// ([`Error::NotLeader`]) once one is known and live, or, after
    /// `wait_max`, whatever this node knows then.
    pub async fn leader(&self) -> Result<()> {
        let started = Instant::now();
        let mut counted = false;
        loop {
            match self.look() {
                Leader::Here => return Ok(()),
                Leader::There(address) => return Err(Error::NotLeader { leader: Some(address) }),
                Leader::InDoubt if started.elapsed() >= self.wait_max => return self.answer_now(),
                Leader::InDoubt => {}
            }
            if !counted {
                counted = true;
                self.held.inc();
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn look(&self) -> Leader {
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow_watched();
        let Some(leader) = metrics.current_leader else {
            return Leader::InDoubt;
        };
        if leader == self.node_id {
            return Leader::Here;
        }
        let address = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.address.clone())
            .unwrap_or_default();
        let live = self.contact.silence().is_some_and(|s| s < self.silent_after);
        if live && !address.is_empty() {
            Leader::There(address)
        } else {
            Leader::InDoubt
        }
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
