//! The checker: a pure function from a history to a verdict.
//!
//! The reference order is the longest final log (every node's log is read
//! after all faults are healed). Each check is a pass over the operations
//! with hash lookups, plus one sort for the real-time check, so a history of
//! n operations checks in O(n log n).
//!
//! Real time. Give every append the key `(p, 0)` where p is its position in
//! the final log, and every read the key `(last, 1)`: the read happened after
//! append `last` and before append `last + 1`. The history is linearizable
//! (for an append-only log with unique values) exactly when no operation
//! that completed before another was invoked has a larger key. One sweep in
//! invoke order, keeping the largest key among the operations completed so
//! far, finds every violation and a witness for it:
//! - append before append with a lower position, append before a read that
//!   does not reach it, a read before a read that sees a shorter log:
//!   `stale-read`;
//! - a read before an append it already saw: `future-read`.
//!
//! `info` appends may take effect at any time after their invoke (or never),
//! so they can follow others but never precede them. `fail` appends must
//! never be seen.

use std::collections::BTreeMap;
use std::collections::HashMap;

use serde::Deserialize;
use serde::Serialize;

use crate::history::pair;
use crate::history::Event;
use crate::history::Function;
use crate::history::Kind;
use crate::history::Operation;

/// Examples kept per anomaly kind in the verdict.
pub const EXAMPLES_PER_KIND_MAX: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnomalyKind {
    /// An acknowledged append is missing from the final log (or a read saw
    /// records the final log no longer has).
    Lost,
    /// A value appears more than once in the final log.
    Duplicated,
    /// A value that was never appended appears.
    Unexpected,
    /// A `fail`ed append appears.
    AbortedRead,
    /// Nodes' logs, reads or acknowledged sequences disagree on what is at a sequence.
    IncompatibleOrder,
    /// An operation misses, or is ordered before, one that completed before it began.
    StaleRead,
    /// A read saw an append invoked after the read completed.
    FutureRead,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 7] = [
        AnomalyKind::Lost,
        AnomalyKind::Duplicated,
        AnomalyKind::Unexpected,
        AnomalyKind::AbortedRead,
        AnomalyKind::IncompatibleOrder,
        AnomalyKind::StaleRead,
        AnomalyKind::FutureRead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::Lost => "lost",
            AnomalyKind::Duplicated => "duplicated",
            AnomalyKind::Unexpected => "unexpected",
            AnomalyKind::AbortedRead => "aborted-read",
            AnomalyKind::IncompatibleOrder => "incompatible-order",
            AnomalyKind::StaleRead => "stale-read",
            AnomalyKind::FutureRead => "future-read",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub detail: String,
}

/// Operation counts by function and outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

impl Outcomes {
    fn add(&mut self, outcome: Kind) {
        match outcome {
            Kind::Ok => self.ok += 1,
            Kind::Fail => self.fail += 1,
            Kind::Info | Kind::Invoke => self.info += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.ok + self.fail + self.info
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub valid: bool,
    /// Count per anomaly kind (every kind listed, zeros included).
    pub anomaly_counts: BTreeMap<String, u64>,
    /// Up to `EXAMPLES_PER_KIND_MAX` examples per kind.
    pub anomalies: Vec<Anomaly>,
    pub appends: Outcomes,
    pub reads: Outcomes,
    /// Ok client operations / all client operations.
    pub availability: f64,
    pub final_log_length: u64,
    /// Nodes whose final log was read.
    pub final_reads: u64,
    /// `info` appends found in the final log / not found.
    pub info_appends_applied: u64,
    pub info_appends_absent: u64,
}

struct Findings {
    counts: BTreeMap<AnomalyKind, u64>,
    examples: Vec<Anomaly>,
}

impl Findings {
    fn report(&mut self, kind: AnomalyKind, value: Option<u64>, seq: Option<u64>, detail: String) {
        let count = self.counts.entry(kind).or_default();
        *count += 1;
        if *count as usize <= EXAMPLES_PER_KIND_MAX {
            self.examples.push(Anomaly {
                kind,
                value,
                seq,
                detail,
            });
        }
    }
}

/// Check a history (see the module docs). Errors only for a malformed
/// history or one without any final read.
pub fn check(events: &[Event]) -> anyhow::Result<Verdict> {
    let ops = pair(events)?;
    let mut findings = Findings {
        counts: BTreeMap::new(),
        examples: Vec::new(),
    };
    let (appends, append_outcomes, read_outcomes) = index_appends(&ops)?;
    let final_log = final_log(&ops, &mut findings)?;
    let final_reads = ops
        .iter()
        .filter(|op| op.f == Function::FinalRead && op.outcome == Kind::Ok)
        .count() as u64;
    let position = final_positions(&ops, &appends, &final_log, &mut findings);
    let (info_appends_applied, info_appends_absent) = check_appends(&ops, &position, &mut findings);
    check_reads(&ops, &appends, &final_log, &mut findings);
    check_real_time(&ops, &position, &mut findings);

    let client_ok = append_outcomes.ok + read_outcomes.ok;
    let client_total = append_outcomes.total() + read_outcomes.total();
    let anomaly_counts = AnomalyKind::ALL
        .iter()
        .map(|k| (k.name().to_string(), findings.counts.get(k).copied().unwrap_or(0)))
        .collect();
    Ok(Verdict {
        valid: findings.counts.values().all(|&n| n == 0) && final_reads > 0,
        anomaly_counts,
        anomalies: findings.examples,
        appends: append_outcomes,
        reads: read_outcomes,
        availability: if client_total == 0 {
            0.0
        } else {
            client_ok as f64 / client_total as f64
        },
        final_log_length: final_log.len() as u64,
        final_reads,
        info_appends_applied,
        info_appends_absent,
    })
}

/// Appended values → the append operation, and the outcome counts of
/// appends and reads. A value appended twice makes the history malformed.
fn index_appends(ops: &[Operation]) -> anyhow::Result<(HashMap<u64, usize>, Outcomes, Outcomes)> {
    let mut appends: HashMap<u64, usize> = HashMap::new();
    let mut append_outcomes = Outcomes::default();
    let mut read_outcomes = Outcomes::default();
    for (i, op) in ops.iter().enumerate() {
        match op.f {
            Function::Append => {
                let Some(value) = op.value else {
                    anyhow::bail!("append by process {} has no value", op.process);
                };
                if appends.insert(value, i).is_some() {
                    anyhow::bail!("value {value} was appended twice; values must be unique");
                }
                append_outcomes.add(op.outcome);
            }
            Function::Read => read_outcomes.add(op.outcome),
            Function::FinalRead | Function::Nemesis => {}
        }
    }
    Ok((appends, append_outcomes, read_outcomes))
}

/// Position (seq) of each value in the final log; repeats are `duplicated`.
fn final_positions(
    ops: &[Operation],
    appends: &HashMap<u64, usize>,
    final_log: &[u64],
    findings: &mut Findings,
) -> HashMap<u64, u64> {
    let mut position: HashMap<u64, u64> = HashMap::with_capacity(final_log.len());
    for (i, &value) in final_log.iter().enumerate() {
        let seq = i as u64 + 1;
        if let Some(first) = position.get(&value) {
            findings.report(
                AnomalyKind::Duplicated,
                Some(value),
                Some(seq),
                format!("value {value} is at seq {first} and again at seq {seq}"),
            );
            continue;
        }
        position.insert(value, seq);
        check_seen(ops, appends, value, seq, "the final log", findings);
    }
    position
}

/// Every acknowledged append is in the final log at the seq it was
/// acknowledged with. Returns how many indeterminate appends were applied
/// and how many were not.
fn check_appends(ops: &[Operation], position: &HashMap<u64, u64>, findings: &mut Findings) -> (u64, u64) {
    let mut info_appends_applied = 0;
    let mut info_appends_absent = 0;
    for op in ops.iter().filter(|op| op.f == Function::Append) {
        let value = op.value.expect("index_appends checked it");
        let found = position.get(&value).copied();
        match (op.outcome, found) {
            (Kind::Ok, None) => findings.report(
                AnomalyKind::Lost,
                Some(value),
                op.seq,
                format!(
                    "append of {value} was acknowledged at seq {:?} but is not in the final log",
                    op.seq
                ),
            ),
            (Kind::Ok, Some(at)) if op.seq != Some(at) => findings.report(
                AnomalyKind::IncompatibleOrder,
                Some(value),
                op.seq,
                format!(
                    "append of {value} was acknowledged at seq {:?} but the final log has it at seq {at}",
                    op.seq
                ),
            ),
            (Kind::Info, Some(_)) => info_appends_applied += 1,
            (Kind::Info, None) => info_appends_absent += 1,
            _ => {}
        }
    }
    (info_appends_applied, info_appends_absent)
}

/// Every value a successful read saw is in the final log at the same seq,
/// and no read saw a longer log than the final one.
fn check_reads(ops: &[Operation], appends: &HashMap<u64, usize>, final_log: &[u64], findings: &mut Findings) {
    for op in ops.iter().filter(|op| op.f == Function::Read && op.outcome == Kind::Ok) {
        let read = op.read.as_ref().expect("pair() checks ok reads carry a value");
        for (i, &value) in read.values.iter().enumerate() {
            let seq = read.from + i as u64;
            let what = format!("a read by process {} at {} ns", op.process, op.invoke_ns);
            if !check_seen(ops, appends, value, seq, &what, findings) {
                continue;
            }
            match final_log.get(seq as usize - 1) {
                None => findings.report(
                    AnomalyKind::Lost,
                    Some(value),
                    Some(seq),
                    format!("{what} saw {value} at seq {seq}, beyond the final log's end"),
                ),
                Some(&there) if there != value => findings.report(
                    AnomalyKind::IncompatibleOrder,
                    Some(value),
                    Some(seq),
                    format!("{what} saw {value} at seq {seq}; the final log has {there} there"),
                ),
                Some(_) => {}
            }
        }
        if read.last > final_log.len() as u64 {
            findings.report(
                AnomalyKind::Lost,
                None,
                Some(read.last),
                format!(
                    "a read by process {} saw a log of {} records; the final log has only {}",
                    op.process,
                    read.last,
                    final_log.len()
                ),
            );
        }
    }
}

/// Report `unexpected` / `aborted-read` for a value seen somewhere; false
/// when the value is not a possible append (so no further checks apply).
fn check_seen(
    ops: &[Operation],
    appends: &HashMap<u64, usize>,
    value: u64,
    seq: u64,
    where_: &str,
    findings: &mut Findings,
) -> bool {
    if value >= crate::workload::SYSTEM_VALUE_BASE {
        // The cluster's own record (a key announcement): no client appended it.
        return false;
    }
    match appends.get(&value).map(|&i| &ops[i]) {
        None => {
            findings.report(
                AnomalyKind::Unexpected,
                Some(value),
                Some(seq),
                format!("{where_} has {value} at seq {seq}, a value that was never appended"),
            );
            false
        }
        Some(op) if op.outcome == Kind::Fail => {
            findings.report(
                AnomalyKind::AbortedRead,
                Some(value),
                Some(seq),
                format!("{where_} has {value} at seq {seq}, whose append failed"),
            );
            false
        }
        Some(_) => true,
    }
}

/// The longest final log; every other node's log must be a prefix of it.
fn final_log(ops: &[Operation], findings: &mut Findings) -> anyhow::Result<Vec<u64>> {
    let logs: Vec<(u64, &Vec<u64>)> = ops
        .iter()
        .filter(|op| op.f == Function::FinalRead && op.outcome == Kind::Ok)
        .map(|op| {
            let read = op.read.as_ref().expect("pair() checks ok reads carry a value");
            (op.node.unwrap_or(0), &read.values)
        })
        .collect();
    let Some(&(longest_node, longest)) = logs.iter().max_by_key(|(_, log)| log.len()) else {
        anyhow::bail!("the history has no successful final read, so nothing can be checked");
    };
    for &(node, log) in &logs {
        if let Some(i) = log.iter().zip(longest.iter()).position(|(a, b)| a != b) {
            findings.report(
                AnomalyKind::IncompatibleOrder,
                Some(log[i]),
                Some(i as u64 + 1),
                format!(
                    "node {node}'s log has {} at seq {} where node {longest_node}'s has {}",
                    log[i],
                    i + 1,
                    longest[i]
                ),
            );
        }
    }
    Ok(longest.clone())
}

/// Where an operation sits in the linearization implied by the final log.
type Key = (u64, u8);

fn check_real_time(ops: &[Operation], position: &HashMap<u64, u64>, findings: &mut Findings) {
    // (invoke, complete, key, op index) of every operation with a place in the order.
    let mut placed: Vec<(u64, Option<u64>, Key, usize)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let key = match (op.f, op.outcome) {
            (Function::Append, Kind::Ok | Kind::Info) => match op.value.and_then(|v| position.get(&v)) {
                Some(&p) => (p, 0),
                None => continue,
            },
            (Function::Read, Kind::Ok) => (op.read.as_ref().map_or(0, |r| r.last), 1),
            _ => continue,
        };
        placed.push((op.invoke_ns, op.complete_ns, key, i));
    }
    let mut by_invoke: Vec<usize> = (0..placed.len()).collect();
    by_invoke.sort_by_key(|&j| placed[j].0);
    let mut by_complete: Vec<usize> = (0..placed.len()).filter(|&j| placed[j].1.is_some()).collect();
    by_complete.sort_by_key(|&j| placed[j].1);

    let mut before: Option<(Key, usize)> = None;
    let mut next = 0;
    for &j in &by_invoke {
        let (invoke, _, key, op_index) = placed[j];
        while next < by_complete.len() && placed[by_complete[next]].1.expect("filtered") < invoke {
            let (_, _, k, i) = placed[by_complete[next]];
            if before.is_none_or(|(max, _)| k > max) {
                before = Some((k, i));
            }
            next += 1;
        }
        let Some((max, witness)) = before else { continue };
        if max <= key {
            continue;
        }
        let (x, y) = (&ops[witness], &ops[op_index]);
        let describe = |op: &Operation, k: Key| match op.f {
            Function::Append => format!("append of {} (seq {})", op.value.unwrap_or(0), k.0),
            _ => format!("read by process {} (log length {})", op.process, k.0),
        };
        let kind = if x.f == Function::Read && y.f == Function::Append {
            AnomalyKind::FutureRead
        } else {
            AnomalyKind::StaleRead
        };
        let detail = match kind {
            AnomalyKind::FutureRead => format!(
                "{} completed at {} ns, before {} was invoked at {} ns, yet saw it",
                describe(x, max),
                x.complete_ns.unwrap_or(0),
                describe(y, key),
                y.invoke_ns
            ),
            _ => format!(
                "{} completed at {} ns, before {} was invoked at {} ns, yet is ordered after it",
                describe(x, max),
                x.complete_ns.unwrap_or(0),
                describe(y, key),
                y.invoke_ns
            ),
        };
        findings.report(kind, y.value, Some(key.0), detail);
    }
}
