//! `txlog-chaos check` and `run` on bad input: clear errors and the
//! documented exit codes (0 valid, 1 anomalies, 2 could not check).

use std::process::Command;

use txlog_chaos::history::HistoryWriter;
use txlog_chaos::synthetic::linearizable_history;
use txlog_chaos::synthetic::SyntheticOptions;

fn chaos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_txlog-chaos"))
}

#[test]
fn check_exit_codes() {
    // A valid history exits 0, one with a lost append 1, a malformed line 2 naming the line.
    let dir = tempfile::tempdir().unwrap();
    let mut events = linearizable_history(SyntheticOptions::default());
    let valid = dir.path().join("valid.jsonl");
    let mut w = HistoryWriter::create(&valid).unwrap();
    events.iter().for_each(|e| w.write(e).unwrap());
    w.finish().unwrap();
    let out = chaos().arg("check").arg(&valid).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"valid\": true"));

    // Drop the first acknowledged value from every final log.
    let acked = events.iter().find(|e| e.seq.is_some()).and_then(|e| e.value).unwrap();
    for e in events
        .iter_mut()
        .filter(|e| e.read.is_some() && e.process == txlog_chaos::history::FINAL_PROCESS)
    {
        let read = e.read.as_mut().unwrap();
        read.values.retain(|&v| v != acked);
        read.last = read.values.len() as u64;
    }
    let invalid = dir.path().join("invalid.jsonl");
    let mut w = HistoryWriter::create(&invalid).unwrap();
    events.iter().for_each(|e| w.write(e).unwrap());
    w.finish().unwrap();
    let out = chaos().arg("check").arg(&invalid).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"lost\": 1"));

    let garbage = dir.path().join("garbage.jsonl");
    std::fs::write(
        &garbage,
        "{\"time_ns\":1,\"process\":0,\"type\":\"invoke\",\"f\":\"append\",\"value\":1}\nnot json\n",
    )
    .unwrap();
    let out = chaos().arg("check").arg(&garbage).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_refuses_bad_options() {
    // Unknown nemesis, bad duration, too many nodes, missing txlog binary, bad --node-ids: exit 2 with a reason, nothing started.
    let cases: [(&[&str], &str); 8] = [
        (&["--nemesis", "kill,flood"], "unknown nemesis"),
        (&["--time", "ten"], "not a duration"),
        (&["--nodes", "9", "--nemesis", "kill"], "--nodes must be 1 to 5"),
        (&["--txlog", "/nonexistent/txlog", "--nemesis", "kill"], "not found"),
        (&["--node-ids", "1,2"], "--node-ids lists 2 ids but --nodes is 3"),
        (&["--node-ids", "0,1,2"], "id 0 is reserved"),
        (&["--nodes", "4", "--node-ids", "8,9,8,10"], "id 8 appears twice"),
        (&["--node-ids", "1,two,3"], "\"two\" is not a node id"),
    ];
    for (args, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = chaos()
            .arg("run")
            .args(args)
            .arg("--out")
            .arg(dir.path().join("report"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !dir.path().join("report").exists(),
            "{args:?} created the report directory"
        );
    }
}
