//! Synthetic histories of a correct (linearizable) log, for the checker's
//! tests and for timing the checker on large histories. Each process runs
//! one operation at a time; every operation takes effect at a random point
//! inside its interval (an `info` append anywhere after its invoke, or
//! never), and the log is the sequence of those points.

use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;

use crate::history::Event;
use crate::history::Function;
use crate::history::Kind;
use crate::history::ReadValue;
use crate::history::FINAL_PROCESS;

#[derive(Debug, Clone, Copy)]
pub struct SyntheticOptions {
    pub seed: u64,
    pub processes: u64,
    pub operations: usize,
    pub read_fraction: f64,
    pub info_fraction: f64,
    pub fail_fraction: f64,
    /// Values a read returns: the last `read_window` records (0 = all).
    pub read_window: usize,
    /// Nodes whose final log is read.
    pub nodes: u64,
}

impl Default for SyntheticOptions {
    fn default() -> Self {
        SyntheticOptions {
            seed: 1,
            processes: 5,
            operations: 200,
            read_fraction: 0.2,
            info_fraction: 0.05,
            fail_fraction: 0.02,
            read_window: 8,
            nodes: 3,
        }
    }
}

struct Planned {
    process: u64,
    f: Function,
    invoke: u64,
    effect: Option<u64>,
    complete: u64,
    outcome: Kind,
    value: u64,
}

/// Nanoseconds per simulated tick; processes are spread inside a tick so
/// that no two events share a timestamp.
const TICK_NS: u64 = 1_000;

/// A linearizable history, ending with a final read of every node.
pub fn linearizable_history(options: SyntheticOptions) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut free_at = vec![0u64; options.processes as usize];
    let mut planned = Vec::with_capacity(options.operations);
    for n in 0..options.operations {
        let process = rng.random_range(0..options.processes);
        let invoke = free_at[process as usize] + rng.random_range(1..6);
        let effect = invoke + rng.random_range(1..20);
        let complete = effect + rng.random_range(1..20);
        let is_read = rng.random_bool(options.read_fraction);
        let roll: f64 = rng.random();
        let (outcome, effect) = if is_read {
            (Kind::Ok, Some(effect))
        } else if roll < options.fail_fraction {
            (Kind::Fail, None)
        } else if roll < options.fail_fraction + options.info_fraction {
            // Unknown outcome: takes effect later, maybe after the timeout, or never.
            let later = effect + rng.random_range(0..40);
            (Kind::Info, rng.random_bool(0.5).then_some(later))
        } else {
            (Kind::Ok, Some(effect))
        };
        free_at[process as usize] = complete;
        planned.push(Planned {
            process,
            f: if is_read { Function::Read } else { Function::Append },
            invoke,
            effect,
            complete,
            outcome,
            value: n as u64 + 1,
        });
    }
    // Apply effects in order of their points.
    let mut order: Vec<usize> = (0..planned.len()).filter(|&i| planned[i].effect.is_some()).collect();
    order.sort_by_key(|&i| (planned[i].effect, planned[i].process));
    let mut log: Vec<u64> = Vec::new();
    let mut seqs = vec![None; planned.len()];
    let mut reads = vec![None; planned.len()];
    for i in order {
        let op = &planned[i];
        match op.f {
            Function::Append => {
                log.push(op.value);
                seqs[i] = Some(log.len() as u64);
            }
            _ => {
                let from = if options.read_window == 0 {
                    1
                } else {
                    log.len().saturating_sub(options.read_window) + 1
                };
                reads[i] = Some(ReadValue {
                    from: from as u64,
                    values: log[from - 1..].to_vec(),
                    last: log.len() as u64,
                });
            }
        }
    }
    let time = |tick: u64, process: u64| tick * TICK_NS + process;
    let mut events = Vec::with_capacity(planned.len() * 2 + options.nodes as usize * 2);
    for (i, op) in planned.iter().enumerate() {
        let mut invoke = Event::new(time(op.invoke, op.process), op.process, Kind::Invoke, op.f);
        let mut done = Event::new(time(op.complete, op.process), op.process, op.outcome, op.f);
        if op.f == Function::Append {
            invoke.value = Some(op.value);
            done.value = Some(op.value);
            if op.outcome == Kind::Ok {
                done.seq = seqs[i];
            }
        } else {
            done.read = reads[i].take();
        }
        events.push(invoke);
        events.push(done);
    }
    events.sort_by_key(|e| e.time_ns);
    let end = planned
        .iter()
        .map(|p| p.complete.max(p.effect.unwrap_or(0)))
        .max()
        .unwrap_or(0)
        + 10;
    push_final_reads(&mut events, end * TICK_NS, options.nodes, &log);
    events
}

/// Append a final read of `log` from each of `nodes` nodes, starting at `time_ns`.
pub fn push_final_reads(events: &mut Vec<Event>, time_ns: u64, nodes: u64, log: &[u64]) {
    for node in 1..=nodes {
        let t = time_ns + node * 2;
        let mut invoke = Event::new(t, FINAL_PROCESS, Kind::Invoke, Function::FinalRead);
        invoke.node = Some(node);
        let mut done = Event::new(t + 1, FINAL_PROCESS, Kind::Ok, Function::FinalRead);
        done.node = Some(node);
        done.read = Some(ReadValue {
            from: 1,
            values: log.to_vec(),
            last: log.len() as u64,
        });
        events.push(invoke);
        events.push(done);
    }
}
