//! The nemesis schedule: the seed reproduces it, faults never overlap,
//! every fault is healed before the end of the run, and only the chosen
//! kinds appear (clean restarts among them).

use std::time::Duration;

use txlog_chaos::nemesis::schedule;
use txlog_chaos::nemesis::Fault;
use txlog_chaos::nemesis::FaultKind;
use txlog_chaos::nemesis::Target;

#[test]
fn seeded_disjoint_and_within_the_run() {
    let kinds = FaultKind::parse_list("all").unwrap();
    let time = Duration::from_secs(120);
    let interval = Duration::from_secs(5);
    let a = schedule(9, &kinds, 5, time, interval);
    let b = schedule(9, &kinds, 5, time, interval);
    let c = schedule(10, &kinds, 5, time, interval);
    let text = |s: &[txlog_chaos::nemesis::Step]| serde_json::to_string(s).unwrap();
    assert_eq!(text(&a), text(&b), "same seed, same schedule");
    assert_ne!(text(&a), text(&c), "another seed, another schedule");
    assert!(a.len() >= 15, "{} faults in 120 s", a.len());
    for pair in a.windows(2) {
        assert!(
            pair[0].at_ms + pair[0].duration_ms < pair[1].at_ms,
            "faults overlap: {pair:?}"
        );
    }
    let last = a.last().unwrap();
    assert!(last.at_ms + last.duration_ms <= time.as_millis() as u64);
    let seen: std::collections::BTreeSet<_> = a.iter().map(|s| format!("{:?}", s.fault.kind())).collect();
    assert!(seen.len() >= 5, "only {seen:?} in 24 draws");

    let only_kill = schedule(9, &[FaultKind::Kill], 3, time, interval);
    assert!(only_kill.iter().all(|s| s.fault.kind() == FaultKind::Kill));
    assert!(kinds.contains(&FaultKind::Restart), "all includes restart");
    assert!(schedule(9, &[], 3, time, interval).is_empty());
    assert!(FaultKind::parse_list("kill,flood").is_err());
}

#[test]
fn restart_is_scheduled_by_name() {
    // `restart` parses by name, appears only when chosen, hits the leader and named nodes, and is seeded.
    let time = Duration::from_secs(120);
    let interval = Duration::from_secs(5);
    let kinds = FaultKind::parse_list("restart,kill").unwrap();
    assert_eq!(kinds, [FaultKind::Kill, FaultKind::Restart]);
    assert_eq!(FaultKind::Restart.name(), "restart");
    let a = schedule(11, &kinds, 3, time, interval);
    let text = |s: &[txlog_chaos::nemesis::Step]| serde_json::to_string(s).unwrap();
    assert_eq!(text(&a), text(&schedule(11, &kinds, 3, time, interval)));
    assert!(a
        .iter()
        .all(|s| matches!(s.fault.kind(), FaultKind::Kill | FaultKind::Restart)));
    let restarts: Vec<&Fault> = a
        .iter()
        .map(|s| &s.fault)
        .filter(|f| f.kind() == FaultKind::Restart)
        .collect();
    assert!(restarts.len() >= 3, "{} restarts in {} faults", restarts.len(), a.len());
    assert!(
        text(&a).contains("\"fault\":\"restart\""),
        "schedule.json names the kind"
    );

    let only_restart = schedule(11, &[FaultKind::Restart], 3, time, interval);
    assert!(only_restart.iter().all(|s| s.fault.kind() == FaultKind::Restart));
    let leader = only_restart
        .iter()
        .filter(|s| s.fault == Fault::Restart { target: Target::Leader })
        .count();
    assert!(
        leader > 0 && leader < only_restart.len(),
        "{leader} of {} on the leader",
        only_restart.len()
    );
    assert!(!text(&schedule(11, &[FaultKind::Kill], 3, time, interval)).contains("restart"));
}
