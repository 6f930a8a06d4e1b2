//! Cross-check: on thousands of small random histories (valid ones and ones
//! with a random mutation), the checker's verdict equals porcupine's
//! linearizability verdict for an append-only log model.

use std::time::Duration;

use porcupine_rs::CheckResult;
use porcupine_rs::Model;
use porcupine_rs::Operation;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use txlog_chaos::checker::check;
use txlog_chaos::history::pair;
use txlog_chaos::history::Event;
use txlog_chaos::history::Function;
use txlog_chaos::history::Kind;
use txlog_chaos::synthetic::linearizable_history;
use txlog_chaos::synthetic::SyntheticOptions;

#[derive(Clone, Debug)]
struct LogModel;

#[derive(Clone, Debug)]
enum LogOp {
    /// `seq` is `None` when the outcome is unknown.
    Append {
        value: u64,
        seq: Option<u64>,
    },
    Read {
        from: u64,
        values: Vec<u64>,
        last: u64,
    },
}

impl Model for LogModel {
    type State = Vec<u64>;
    type Op = LogOp;
    type Metadata = ();

    fn init() -> Vec<u64> {
        Vec::new()
    }

    fn step(state: &Vec<u64>, op: &LogOp) -> (bool, Vec<u64>) {
        match op {
            LogOp::Append { value, seq } => {
                if seq.is_some_and(|s| s != state.len() as u64 + 1) {
                    return (false, state.clone());
                }
                let mut next = state.clone();
                next.push(*value);
                (true, next)
            }
            LogOp::Read { from, values, last } => {
                let start = (*from as usize).saturating_sub(1);
                let ok = *last == state.len() as u64
                    && start + values.len() <= state.len()
                    && state[start..start + values.len()] == values[..];
                (ok, state.clone())
            }
        }
    }
}

/// Final reads become reads: the longest at the end of the history, every
/// other one spanning the whole history (a node's log only has to be the
/// log as it was at some moment).
fn porcupine_verdict(events: &[Event]) -> CheckResult {
    let ops = pair(events).unwrap();
    let longest = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.f == Function::FinalRead)
        .max_by_key(|(_, op)| op.read.as_ref().unwrap().values.len())
        .map(|(i, _)| i);
    let mut history: Vec<Operation<LogModel>> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let never = 1_000_000_000_000 + i as i64;
        let (model_op, return_time) = match (op.f, op.outcome) {
            (Function::Append, Kind::Ok) => (
                LogOp::Append {
                    value: op.value.unwrap(),
                    seq: op.seq,
                },
                op.complete_ns.unwrap() as i64,
            ),
            (Function::Append, Kind::Info) => (
                LogOp::Append {
                    value: op.value.unwrap(),
                    seq: None,
                },
                never,
            ),
            (Function::Read | Function::FinalRead, Kind::Ok) => {
                let read = op.read.clone().unwrap();
                (
                    LogOp::Read {
                        from: read.from,
                        values: read.values,
                        last: read.last,
                    },
                    op.complete_ns.unwrap() as i64,
                )
            }
            _ => continue,
        };
        let spans_everything = op.f == Function::FinalRead && Some(i) != longest;
        history.push(Operation {
            client_id: Some(op.process as u32),
            call_time: if spans_everything { 0 } else { op.invoke_ns as i64 },
            return_time,
            op: model_op,
            metadata: None,
        });
    }
    porcupine_rs::check_operations_timeout(&history, Duration::from_secs(10))
}

/// Change one thing in a valid history (it may or may not stay valid).
fn mutate(events: &mut [Event], rng: &mut StdRng) {
    let pick = |events: &[Event], rng: &mut StdRng, want: &dyn Fn(&Event) -> bool| {
        let candidates: Vec<usize> = (0..events.len()).filter(|&i| want(&events[i])).collect();
        (!candidates.is_empty()).then(|| candidates[rng.random_range(0..candidates.len())])
    };
    let finals = |e: &Event| e.f == Function::FinalRead && e.kind == Kind::Ok;
    match rng.random_range(0..9) {
        8 => {
            // One node's log has two records the other way round.
            if let Some(i) = pick(events, rng, &|e| {
                finals(e) && e.read.as_ref().unwrap().values.len() >= 2
            }) {
                events[i].read.as_mut().unwrap().values.swap(0, 1);
            }
        }
        0 => {
            // Swap two records in every final log.
            for e in events.iter_mut().filter(|e| finals(e)) {
                let values = &mut e.read.as_mut().unwrap().values;
                if values.len() >= 2 {
                    let i = values.len() / 2;
                    values.swap(i - 1, i);
                }
            }
        }
        1 => {
            if let Some(i) = pick(events, rng, &|e| e.f == Function::Append && e.kind == Kind::Ok) {
                let seq = events[i].seq.unwrap();
                events[i].seq = Some(if seq > 1 && rng.random_bool(0.5) {
                    seq - 1
                } else {
                    seq + 1
                });
            }
        }
        2 => {
            if let Some(i) = pick(events, rng, &|e| {
                e.f == Function::Read && e.kind == Kind::Ok && !e.read.as_ref().unwrap().values.is_empty()
            }) {
                events[i].read.as_mut().unwrap().values.remove(0);
            }
        }
        3 => {
            if let Some(i) = pick(events, rng, &|e| e.f == Function::Read && e.kind == Kind::Ok) {
                let read = events[i].read.as_mut().unwrap();
                if read.last > 0 && read.values.is_empty() {
                    read.last -= 1;
                } else {
                    read.last += 1;
                }
            }
        }
        4 => {
            // Shrink an operation's interval to its very end (or start).
            if let Some(i) = pick(events, rng, &|e| e.kind == Kind::Ok && e.f != Function::FinalRead) {
                let process = events[i].process;
                let invoke = (0..i).rev().find(|&j| events[j].process == process).unwrap();
                if rng.random_bool(0.5) {
                    events[invoke].time_ns = events[i].time_ns - 1;
                } else {
                    events[i].time_ns = events[invoke].time_ns + 1;
                }
            }
        }
        5 => {
            for e in events.iter_mut().filter(|e| finals(e)) {
                e.read.as_mut().unwrap().values.pop();
                e.read.as_mut().unwrap().last = e.read.as_ref().unwrap().values.len() as u64;
            }
        }
        6 => {
            for e in events.iter_mut().filter(|e| finals(e)) {
                e.read.as_mut().unwrap().values.push(999);
                e.read.as_mut().unwrap().last += 1;
            }
        }
        _ => {
            // One node's final log loses its last record.
            if let Some(i) = pick(events, rng, &finals) {
                let read = events[i].read.as_mut().unwrap();
                read.values.pop();
                read.last = read.values.len() as u64;
            }
        }
    }
    events.sort_by_key(|e| e.time_ns);
}

#[test]
fn agrees_with_porcupine() {
    let mut rng = StdRng::seed_from_u64(2026);
    let (mut agreed_valid, mut agreed_invalid) = (0, 0);
    for seed in 0..3_000u64 {
        let mut events = linearizable_history(SyntheticOptions {
            seed,
            processes: 3,
            operations: 8,
            read_fraction: 0.35,
            info_fraction: 0.15,
            fail_fraction: 0.05,
            read_window: if seed % 2 == 0 { 0 } else { 2 },
            nodes: 2,
        });
        if seed % 4 != 0 {
            mutate(&mut events, &mut rng);
        }
        let ours = check(&events).unwrap().valid;
        let theirs = match porcupine_verdict(&events) {
            CheckResult::Ok => true,
            CheckResult::Illegal => false,
            CheckResult::Unknown => continue,
        };
        if ours != theirs {
            for e in &events {
                eprintln!("{}", serde_json::to_string(e).unwrap());
            }
            eprintln!("{:?}", check(&events).unwrap().anomalies);
        }
        assert_eq!(ours, theirs, "seed {seed}: checker says {ours}, porcupine {theirs}");
        if ours {
            agreed_valid += 1;
        } else {
            agreed_invalid += 1;
        }
    }
    println!("agreed on {agreed_valid} valid and {agreed_invalid} invalid histories");
    assert!(
        agreed_valid > 500 && agreed_invalid > 500,
        "{agreed_valid} valid, {agreed_invalid} invalid"
    );
}
