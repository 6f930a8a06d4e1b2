//! The speculative stream's publishing side: records as the node's log
//! appends them, before anyone knows they are committed, then one
//! resolution per entry.
//!
//! **What a subscriber may rely on.** A speculative record may never
//! commit. Each entry whose records the stream carried is later resolved
//! exactly once on that stream, in the publisher's session:
//! * *committed* once the node has applied it from its own log — a Raft
//!   entry the node applied is committed, and the node's log held this very
//!   entry (it was not truncated before the apply, see below);
//! * *rolled back* once the node truncated it (a new leader's log
//!   disagreed): its records never existed;
//! * *unknown* when the publisher cannot tell: a snapshot was installed
//!   while the entry was pending (the log was replaced, not applied), or
//!   more than [`PENDING_ENTRIES_MAX`] entries were pending.
//!
//! A publisher that dies leaves its pending entries unresolved: the
//! subscriber reports them so, and the committed streams (any node's, or
//! the log) decide.
//!
//! **Why the order of reads matters.** The node reports appends and
//! truncations as they happen, in order ([`LogEvent`]). Each round the
//! source reads the applied index *before* it takes the events: every
//! truncation that happened before that apply is then among the events
//! taken, so an entry still pending after them with an index at or below
//! the applied one is the entry that was applied. Install epochs (odd while
//! a snapshot installs, changed by each install) stamped on each append
//! catch a snapshot that replaced the log instead.

use std::collections::VecDeque;

use crate::packet::Outcome;
use crate::packet::Resolution;

/// Entries awaiting resolution, at most; older ones are resolved unknown.
pub const PENDING_ENTRIES_MAX: usize = 1 << 16;

/// A record of an appended entry, as the speculative stream carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeculativeRecord {
    pub channel: String,
    pub txid: Vec<u8>,
    pub payload: Vec<u8>,
    /// `payload` is sealed for the speculative stream (a sealed cluster's).
    pub sealed: bool,
}

/// One Raft entry the node appended to its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedEntry {
    pub term: u64,
    pub index: u64,
    /// The state machine's install epoch when the entry was appended.
    pub epoch: u64,
    /// The entry's records, in entry order (empty for membership and blank
    /// entries, and for batches the publisher cannot read).
    pub records: Vec<SpeculativeRecord>,
}

/// What the node's log did, in the order it did it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    Appended(AppendedEntry),
    /// Every entry after this index (after none: all) was removed.
    TruncatedAfter(Option<u64>),
}

/// One round of input for the speculative stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpeculativeUpdate {
    /// The applied index, read before `events` were taken.
    pub applied_index: u64,
    /// The install epoch read around `applied_index` (the same before and
    /// after), or `None` if an install was under way: nothing is resolved
    /// as committed this round.
    pub epoch: Option<u64>,
    pub events: Vec<LogEvent>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    term: u64,
    index: u64,
    epoch: u64,
}

/// The entries published on the speculative stream and not yet resolved.
#[derive(Debug, Default)]
pub struct Tracker {
    pending: VecDeque<Pending>,
}

impl Tracker {
    /// Entries awaiting resolution.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Track `entry`, whose records were published. Returns what it
    /// resolves (entries it overwrote without a reported truncation, and
    /// the oldest past [`PENDING_ENTRIES_MAX`]): all unknown.
    pub fn appended(&mut self, entry: &AppendedEntry, out: &mut Vec<Resolution>) {
        // Indexes of pending entries only grow; one at or past this index
        // was replaced without a truncation this tracker saw.
        while self.pending.back().is_some_and(|p| p.index >= entry.index) {
            let stale = self.pending.pop_back().expect("checked");
            out.push(resolution(Outcome::Unknown, stale));
        }
        self.pending.push_back(Pending {
            term: entry.term,
            index: entry.index,
            epoch: entry.epoch,
        });
        while self.pending.len() > PENDING_ENTRIES_MAX {
            let oldest = self.pending.pop_front().expect("non-empty");
            out.push(resolution(Outcome::Unknown, oldest));
        }
    }

    /// Entries after `last` were truncated: they are rolled back.
    pub fn truncated_after(&mut self, last: Option<u64>, out: &mut Vec<Resolution>) {
        let last = last.unwrap_or(0);
        while self.pending.back().is_some_and(|p| p.index > last) {
            let gone = self.pending.pop_back().expect("checked");
            out.push(resolution(Outcome::RolledBack, gone));
        }
    }

    /// Resolve entries at or below `applied_index` (read before the events
    /// this tracker has seen): committed if no snapshot install came
    /// between their append and now, unknown otherwise. With `epoch`
    /// `None` an install is under way and nothing is resolved.
    pub fn applied(&mut self, applied_index: u64, epoch: Option<u64>, out: &mut Vec<Resolution>) {
        let Some(epoch) = epoch else { return };
        while self.pending.front().is_some_and(|p| p.index <= applied_index) {
            let done = self.pending.pop_front().expect("checked");
            let outcome = if done.epoch == epoch {
                Outcome::Committed
            } else {
                Outcome::Unknown
            };
            out.push(resolution(outcome, done));
        }
    }
}

fn resolution(outcome: Outcome, pending: Pending) -> Resolution {
    Resolution {
        outcome,
        term: pending.term,
        index: pending.index,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(term: u64, index: u64, epoch: u64) -> AppendedEntry {
        AppendedEntry {
            term,
            index,
            epoch,
            records: Vec::new(),
        }
    }

    fn outcomes(out: &[Resolution]) -> Vec<(Outcome, u64, u64)> {
        out.iter().map(|r| (r.outcome, r.term, r.index)).collect()
    }

    /// Appended, then applied: committed once, in index order.
    #[test]
    fn applied_entries_commit_in_order() {
        let mut tracker = Tracker::default();
        let mut out = Vec::new();
        for index in 5..=8 {
            tracker.appended(&entry(2, index, 0), &mut out);
        }
        tracker.applied(6, Some(0), &mut out);
        assert_eq!(outcomes(&out), [(Outcome::Committed, 2, 5), (Outcome::Committed, 2, 6)]);
        out.clear();
        tracker.applied(6, Some(0), &mut out);
        assert!(out.is_empty(), "resolved once");
        tracker.applied(100, Some(0), &mut out);
        assert_eq!(outcomes(&out), [(Outcome::Committed, 2, 7), (Outcome::Committed, 2, 8)]);
        assert_eq!(tracker.pending(), 0);
    }

    /// A truncation rolls back what it removed, newest first; the entry
    /// that replaces an index commits under its own term.
    #[test]
    fn truncation_rolls_back_and_the_new_entry_commits() {
        let mut tracker = Tracker::default();
        let mut out = Vec::new();
        for index in 10..=12 {
            tracker.appended(&entry(3, index, 0), &mut out);
        }
        tracker.truncated_after(Some(10), &mut out);
        tracker.appended(&entry(4, 11, 0), &mut out);
        tracker.applied(11, Some(0), &mut out);
        assert_eq!(
            outcomes(&out),
            [
                (Outcome::RolledBack, 3, 12),
                (Outcome::RolledBack, 3, 11),
                (Outcome::Committed, 3, 10),
                (Outcome::Committed, 4, 11),
            ]
        );
        out.clear();
        tracker.appended(&entry(4, 12, 0), &mut out);
        tracker.truncated_after(None, &mut out);
        assert_eq!(outcomes(&out), [(Outcome::RolledBack, 4, 12)]);
    }

    /// An install between append and apply, or under way, never yields
    /// "committed"; an overwritten index without a truncation is unknown.
    #[test]
    fn installs_and_overwrites_are_unknown() {
        let mut tracker = Tracker::default();
        let mut out = Vec::new();
        tracker.appended(&entry(1, 1, 0), &mut out);
        tracker.applied(1, None, &mut out);
        assert!(out.is_empty(), "nothing resolves during an install");
        tracker.applied(1, Some(2), &mut out);
        assert_eq!(outcomes(&out), [(Outcome::Unknown, 1, 1)]);
        out.clear();
        tracker.appended(&entry(1, 5, 2), &mut out);
        tracker.appended(&entry(2, 5, 2), &mut out);
        assert_eq!(outcomes(&out), [(Outcome::Unknown, 1, 5)]);
    }

    /// Past the bound, the oldest pending entry is resolved unknown.
    #[test]
    fn pending_is_bounded() {
        let mut tracker = Tracker::default();
        let mut out = Vec::new();
        for index in 1..=(PENDING_ENTRIES_MAX as u64 + 2) {
            tracker.appended(&entry(1, index, 0), &mut out);
        }
        assert_eq!(tracker.pending(), PENDING_ENTRIES_MAX);
        assert_eq!(outcomes(&out), [(Outcome::Unknown, 1, 1), (Outcome::Unknown, 1, 2)]);
    }
}
