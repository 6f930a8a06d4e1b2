//! The follower's resync state: a partially received delta (so a broken
//! stream resumes) and whether it must be sent full snapshots. Kept in
//! memory: a restart discards the staging file and starts over.

use std::sync::Mutex;
use std::sync::MutexGuard;

use serde::Deserialize;
use serde::Serialize;

use crate::state_machine::StateMachineReader;

/// A partially received delta, kept so a broken stream can resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// Name of the leader snapshot the delta belongs to.
    pub snapshot: String,
    pub base: u64,
    /// Highest sequence already staged.
    pub last_seq: u64,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    /// Set to the state machine's full-install count when this node found
    /// its own records inconsistent with its chain during a delta: until a
    /// full snapshot has been installed since, it asks for full ones.
    pub(crate) diverged_at: Option<u64>,
    pub(crate) staged: Option<Staged>,
}

/// One follower's side of resync: its state machine and its resync state.
pub struct ResyncFollower {
    reader: StateMachineReader,
    state: Mutex<State>,
}

impl ResyncFollower {
    pub fn new(reader: StateMachineReader) -> Self {
        ResyncFollower {
            reader,
            state: Mutex::new(State::default()),
        }
    }

    pub fn reader(&self) -> &StateMachineReader {
        &self.reader
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("resync lock poisoned")
    }

    /// Whether this follower's records may serve as the base of a delta.
    pub(crate) fn delta_ok(&self) -> bool {
        let full_installs = self.reader.full_installs();
        self.state().diverged_at.is_none_or(|at| full_installs > at)
    }

    /// Remember that this follower's records diverged: ask for full
    /// snapshots until one has been installed.
    pub(crate) fn mark_diverged(&self) {
        self.state().diverged_at = Some(self.reader.full_installs());
    }
}
