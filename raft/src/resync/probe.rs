//! Probe and plan: the follower answers where its records end and what its
//! hash chain is there; the leader compares that with its own chain and
//! decides between a delta and the full snapshot.

use txlog_storage::ChainHash;

use super::follower::ResyncFollower;
use super::messages::ProbeRequest;
use super::messages::ProbeResponse;
use crate::error::Error;
use crate::error::Result;
use crate::state_machine::StateMachineReader;

impl ResyncFollower {
    /// The follower's answer to a probe.
    ///
    /// While a snapshot is being installed the store holds only part of it,
    /// so the probe is refused (retryable) rather than answered with that
    /// prefix: a leader whose previous transfer was cut off would otherwise
    /// plan a delta on a half-restored store.
    pub fn answer_probe(&self, req: &ProbeRequest) -> Result<ProbeResponse> {
        let installing = || Error::Unavailable("installing a snapshot; probe again later".into());
        let epoch = self.reader().install_epoch();
        if epoch % 2 == 1 {
            return Err(installing());
        }
        let read = || -> Result<(u64, ChainHash)> {
            let store = self.reader().store();
            let last_seq = store.last_seq()?;
            let chain = store
                .chain_at(last_seq)?
                .ok_or_else(|| Error::Internal(format!("no hash chain value at applied seq {last_seq}")))?;
            Ok((last_seq, chain))
        };
        let read = read();
        if self.reader().install_epoch() != epoch {
            // An install began while the store was read: whatever was read,
            // or failed to be, describes a store being replaced.
            return Err(installing());
        }
        let (last_seq, chain) = read?;
        let delta_ok = self.delta_ok();
        let staged = self.state().staged.clone().filter(|s| s.snapshot == req.snapshot);
        Ok(ProbeResponse {
            last_seq,
            chain,
            delta_ok,
            staged,
        })
    }
}

/// What the leader will send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Delta {
        base_seq: u64,
        base_chain: ChainHash,
        first_seq: u64,
        last_seq: u64,
    },
    /// Nothing: the follower already holds every record of the snapshot and
    /// more (its chain at its own last seq equals the leader's), so it has
    /// applied past the snapshot's log id. Seen when a transfer's answer was
    /// lost after the follower installed it and went on applying.
    Covered { follower_seq: u64 },
    /// The full snapshot, and why.
    Full(String),
}

impl Plan {
    /// Decide between delta and full from the follower's probe answer and
    /// the leader's own chain. `snapshot_last_seq` is the last record in the
    /// snapshot named `snapshot`.
    pub fn decide(reader: &StateMachineReader, probe: &ProbeResponse, snapshot_last_seq: u64, snapshot: &str) -> Plan {
        if !probe.delta_ok {
            return Plan::Full("the follower asked for a full snapshot".into());
        }
        if probe.last_seq == 0 {
            return Plan::Full("the follower has no records".into());
        }
        // Whether the follower's first `last_seq` records are the leader's.
        let differs = match reader.store().chain_at(probe.last_seq) {
            Ok(Some(chain)) if chain == probe.chain => None,
            Ok(Some(_)) => Some(format!("hash chains differ at seq {}", probe.last_seq)),
            Ok(None) => Some(format!("no local chain value at seq {}", probe.last_seq)),
            Err(err) => Some(format!("reading the local chain: {err}")),
        };
        if probe.last_seq > snapshot_last_seq {
            return match differs {
                None => Plan::Covered {
                    follower_seq: probe.last_seq,
                },
                Some(why) => Plan::Full(format!(
                    "the follower's seq {} is past the snapshot's {snapshot_last_seq}: {why}",
                    probe.last_seq
                )),
            };
        }
        if let Some(why) = differs {
            return Plan::Full(why);
        }
        let first_seq = match &probe.staged {
            Some(staged) if staged.snapshot == snapshot && staged.base == probe.last_seq => staged.last_seq + 1,
            _ => probe.last_seq + 1,
        };
        Plan::Delta {
            base_seq: probe.last_seq,
            base_chain: probe.chain,
            first_seq,
            last_seq: snapshot_last_seq,
        }
    }
}
