//! The checker on synthetic histories: valid ones pass, and each history
//! with exactly one injected anomaly is reported under that anomaly's name
//! and no other.

use txlog_chaos::checker::check;
use txlog_chaos::checker::AnomalyKind;
use txlog_chaos::checker::Verdict;
use txlog_chaos::history::Event;
use txlog_chaos::history::Function;
use txlog_chaos::history::Kind;
use txlog_chaos::history::ReadValue;
use txlog_chaos::history::FINAL_PROCESS;
use txlog_chaos::synthetic::linearizable_history;
use txlog_chaos::synthetic::push_final_reads;
use txlog_chaos::synthetic::SyntheticOptions;

/// A quiet process that runs the operations added after the random part.
const TAIL_PROCESS: u64 = 100;

/// A random valid history plus, after everything, two sequential ok appends
/// by one process (values 1_000_001 and 1_000_002, at ticks `t`, `t + 100`).
/// Returns the events without final reads, the final log and the time after
/// the tail.
fn base(seed: u64) -> (Vec<Event>, Vec<u64>, u64) {
    let options = SyntheticOptions {
        seed,
        operations: 300,
        ..SyntheticOptions::default()
    };
    let mut events = linearizable_history(options);
    let finals: Vec<Event> = events.iter().filter(|e| e.f == Function::FinalRead).cloned().collect();
    events.retain(|e| e.f != Function::FinalRead);
    let mut log = finals.last().and_then(|e| e.read.clone()).expect("final read").values;
    let mut t = finals[0].time_ns + 1_000;
    for value in [1_000_001, 1_000_002] {
        log.push(value);
        events.push(append(t, TAIL_PROCESS, value, Kind::Invoke, None));
        events.push(append(t + 50, TAIL_PROCESS, value, Kind::Ok, Some(log.len() as u64)));
        t += 100;
    }
    (events, log, t)
}

fn append(time_ns: u64, process: u64, value: u64, kind: Kind, seq: Option<u64>) -> Event {
    let mut e = Event::new(time_ns, process, kind, Function::Append);
    e.value = Some(value);
    e.seq = seq;
    e
}

fn read(invoke_ns: u64, complete_ns: u64, process: u64, log: &[u64], last: usize) -> [Event; 2] {
    let from = last.saturating_sub(4) + 1;
    let mut done = Event::new(complete_ns, process, Kind::Ok, Function::Read);
    done.read = Some(ReadValue {
        from: from as u64,
        values: log[from - 1..last].to_vec(),
        last: last as u64,
    });
    [Event::new(invoke_ns, process, Kind::Invoke, Function::Read), done]
}

fn finish(mut events: Vec<Event>, log: &[u64], t: u64) -> Vec<Event> {
    push_final_reads(&mut events, t + 1_000, 3, log);
    events
}

fn only(verdict: &Verdict, kind: AnomalyKind) {
    assert!(!verdict.valid, "{kind:?} not detected");
    for k in AnomalyKind::ALL {
        let n = verdict.anomaly_counts[k.name()];
        if k == kind {
            assert!(n >= 1, "{kind:?} not detected: {:?}", verdict.anomaly_counts);
        } else {
            assert_eq!(
                n, 0,
                "unexpected {k:?} while injecting {kind:?}: {:?}",
                verdict.anomalies
            );
        }
    }
}

#[test]
fn valid_histories_pass() {
    // Many random linearizable histories (windowed and full reads, info and fail appends) are valid.
    for seed in 0..200 {
        for read_window in [0, 3] {
            let events = linearizable_history(SyntheticOptions {
                seed,
                read_window,
                ..SyntheticOptions::default()
            });
            let verdict = check(&events).unwrap();
            assert!(verdict.valid, "seed {seed}: {:?}", verdict.anomalies);
            assert!(verdict.appends.ok > 0 && verdict.reads.ok > 0);
        }
    }
    let (events, log, t) = base(7);
    let verdict = check(&finish(events, &log, t)).unwrap();
    assert!(verdict.valid, "{:?}", verdict.anomalies);
    assert_eq!(verdict.final_log_length, log.len() as u64);
}

#[test]
fn lost_append() {
    // The last acknowledged append is missing from every node's final log.
    let (events, mut log, t) = base(1);
    log.pop();
    only(&check(&finish(events, &log, t)).unwrap(), AnomalyKind::Lost);
}

#[test]
fn lost_behind_a_read() {
    // A read saw a record (from an append that timed out) that no final log has.
    let (mut events, log, t) = base(2);
    for e in events
        .iter_mut()
        .filter(|e| e.value == Some(1_000_002) && e.kind == Kind::Ok)
    {
        e.kind = Kind::Info;
        e.seq = None;
    }
    events.extend(read(t, t + 10, TAIL_PROCESS, &log, log.len()));
    let verdict = check(&finish(events, &log[..log.len() - 1], t + 20)).unwrap();
    only(&verdict, AnomalyKind::Lost);
    assert!(verdict.anomalies.iter().all(|a| a.detail.contains("read")));
}

#[test]
fn duplicated_value() {
    // A value appears a second time at the end of every final log.
    let (events, mut log, t) = base(3);
    log.push(log[10]);
    only(&check(&finish(events, &log, t)).unwrap(), AnomalyKind::Duplicated);
}

#[test]
fn unexpected_value() {
    // A value nobody appended appears in the final logs.
    let (events, mut log, t) = base(4);
    log.push(777_777_777);
    only(&check(&finish(events, &log, t)).unwrap(), AnomalyKind::Unexpected);
}

#[test]
fn aborted_read() {
    // A failed append shows up in the final logs.
    let (mut events, mut log, t) = base(5);
    events.push(append(t, TAIL_PROCESS, 2_000_000, Kind::Invoke, None));
    events.push(append(t + 10, TAIL_PROCESS, 2_000_000, Kind::Fail, None));
    log.push(2_000_000);
    only(&check(&finish(events, &log, t + 20)).unwrap(), AnomalyKind::AbortedRead);
}

#[test]
fn incompatible_final_logs() {
    // One node's log has two records in the other order.
    let (events, log, t) = base(6);
    let mut events = finish(events, &log, t);
    let first_final = events
        .iter_mut()
        .find(|e| e.process == FINAL_PROCESS && e.kind == Kind::Ok)
        .unwrap();
    first_final.read.as_mut().unwrap().values.swap(3, 4);
    only(&check(&events).unwrap(), AnomalyKind::IncompatibleOrder);
}

#[test]
fn acknowledged_at_another_seq() {
    // An append was acknowledged at a sequence the final log gives to another value.
    let (mut events, log, t) = base(8);
    let ack = events
        .iter_mut()
        .rev()
        .find(|e| e.value == Some(1_000_002) && e.kind == Kind::Ok)
        .unwrap();
    ack.seq = Some(ack.seq.unwrap() + 1);
    only(
        &check(&finish(events, &log, t)).unwrap(),
        AnomalyKind::IncompatibleOrder,
    );
}

#[test]
fn stale_read() {
    // A read begun after the last append was acknowledged does not see it.
    let (mut events, log, t) = base(9);
    events.extend(read(t + 10, t + 20, TAIL_PROCESS, &log, log.len() - 1));
    only(&check(&finish(events, &log, t + 30)).unwrap(), AnomalyKind::StaleRead);
}

#[test]
fn non_monotonic_reads() {
    // A second read, begun after a first one completed, sees a shorter log.
    let (mut events, log, t) = base(10);
    // Both reads start after the tail, so neither misses an acknowledged append
    // except through the other: make the first see everything, the second not.
    events.extend(read(t + 10, t + 20, TAIL_PROCESS, &log, log.len()));
    events.extend(read(t + 30, t + 40, TAIL_PROCESS, &log, log.len() - 1));
    only(&check(&finish(events, &log, t + 50)).unwrap(), AnomalyKind::StaleRead);
}

#[test]
fn appends_against_real_time() {
    // The two tail appends ran one after the other, but the log (and the acks) order them the other way.
    let (mut events, mut log, t) = base(11);
    let n = log.len();
    log.swap(n - 2, n - 1);
    for e in events
        .iter_mut()
        .filter(|e| e.kind == Kind::Ok && e.f == Function::Append)
    {
        if e.value == Some(1_000_001) {
            e.seq = Some(n as u64);
        } else if e.value == Some(1_000_002) {
            e.seq = Some(n as u64 - 1);
        }
    }
    only(&check(&finish(events, &log, t)).unwrap(), AnomalyKind::StaleRead);
}

#[test]
fn future_read() {
    // A read that completed before the last append was invoked already saw it.
    let (mut events, log, t) = base(12);
    // Move the last append to after a read that sees it.
    let last = log.len();
    for e in events.iter_mut().filter(|e| e.value == Some(1_000_002)) {
        e.time_ns += 10_000;
    }
    events.extend(read(t, t + 10, TAIL_PROCESS + 1, &log, last));
    events.sort_by_key(|e| e.time_ns);
    only(
        &check(&finish(events, &log, t + 20_000)).unwrap(),
        AnomalyKind::FutureRead,
    );
}

#[test]
fn info_appends_may_or_may_not_appear() {
    // A timed-out append may be in the log once; twice is still `duplicated`.
    let (mut events, mut log, t) = base(13);
    let absent_before = check(&finish(events.clone(), &log, t + 20))
        .unwrap()
        .info_appends_absent;
    events.push(append(t, TAIL_PROCESS, 3_000_000, Kind::Invoke, None));
    events.push(append(t + 10, TAIL_PROCESS, 3_000_000, Kind::Info, None));
    let verdict = check(&finish(events.clone(), &log, t + 20)).unwrap();
    assert!(verdict.valid);
    assert_eq!(verdict.info_appends_absent, absent_before + 1);
    log.push(3_000_000);
    let verdict = check(&finish(events.clone(), &log, t + 20)).unwrap();
    assert!(verdict.valid, "{:?}", verdict.anomalies);
    log.push(3_000_000);
    only(&check(&finish(events, &log, t + 20)).unwrap(), AnomalyKind::Duplicated);
}

#[test]
fn malformed_histories_are_errors() {
    // A completion without an invoke, or a history without a final read, is refused.
    let (events, log, t) = base(14);
    let mut orphan = finish(events.clone(), &log, t);
    orphan.insert(0, append(0, 999, 5, Kind::Ok, Some(1)));
    assert!(check(&orphan).is_err());
    assert!(check(&events).unwrap_err().to_string().contains("final read"));
}

#[test]
fn large_history() {
    // 100,000 operations check as valid (the time is printed, not asserted).
    let events = linearizable_history(SyntheticOptions {
        seed: 42,
        processes: 20,
        operations: 100_000,
        ..SyntheticOptions::default()
    });
    let started = std::time::Instant::now();
    let verdict = check(&events).unwrap();
    println!("checked 100,000 operations in {:?}", started.elapsed());
    assert!(verdict.valid, "{:?}", verdict.anomalies);
    assert_eq!(verdict.appends.total() + verdict.reads.total(), 100_000);
}
