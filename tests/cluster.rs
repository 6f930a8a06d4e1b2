//! End-to-end tests against real `txlog node` processes on loopback.

mod common;

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use common::txlog;
use common::TestCluster;
use common::SERIAL;
use tonic::Code;
use txlog_client::Client;
use txlog_proto::Record;

const LEADER_WAIT: Duration = Duration::from_secs(30);
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);

/// Acknowledged appends: txid → seq.
type Acks = Arc<Mutex<BTreeMap<String, u64>>>;

async fn append_many(client: Client, prefix: String, count: usize, acks: Acks) {
    for i in 0..count {
        let txid = format!("{prefix}-{i}");
        let result = client
            .append_one("orders", txid.as_bytes(), format!("payload {txid}").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("append {txid}: {e}"));
        acks.lock().unwrap().insert(txid, result.seq);
    }
}

/// Append until `stop`, tolerating failures (the cluster may be mid-failover); record only acks.
async fn append_until(client: Client, prefix: String, stop: Instant, acks: Acks) -> usize {
    let mut failures = 0;
    let mut i = 0;
    while Instant::now() < stop {
        let txid = format!("{prefix}-{i}");
        i += 1;
        match client.append_one("orders", txid.as_bytes(), b"during failover").await {
            Ok(result) => {
                acks.lock().unwrap().insert(txid, result.seq);
            }
            Err(_) => failures += 1,
        }
    }
    failures
}

/// Start `workers` appenders (txids `<prefix><worker>-<n>`) that append
/// for `seconds`, each ack recorded in `acks`; each task returns its
/// failure count.
fn spawn_appenders(
    cluster: &TestCluster,
    prefix: &str,
    workers: usize,
    seconds: u64,
    acks: &Acks,
) -> Vec<tokio::task::JoinHandle<usize>> {
    let stop = Instant::now() + Duration::from_secs(seconds);
    (0..workers)
        .map(|w| {
            tokio::spawn(append_until(
                cluster.client(),
                format!("{prefix}{w}"),
                stop,
                acks.clone(),
            ))
        })
        .collect()
}

/// Check that every node holds the same dense log and every acknowledged txid exactly once at its acked seq.
async fn check_logs(cluster: &TestCluster, ids: &[u64], acks: &BTreeMap<String, u64>) -> u64 {
    check_logs_upto(cluster, ids, acks, u64::MAX).await
}

/// [`check_logs`] on the records up to `upto` (the log may grow meanwhile:
/// key rotations append records of their own).
async fn check_logs_upto(cluster: &TestCluster, ids: &[u64], acks: &BTreeMap<String, u64>, upto: u64) -> u64 {
    let mut reference: Option<Vec<(u64, Vec<u8>)>> = None;
    for &id in ids {
        let mut records = cluster.read_all_from(id).await;
        records.retain(|r| r.seq <= upto);
        let log: Vec<(u64, Vec<u8>)> = records.iter().map(|r| (r.seq, r.txid.to_vec())).collect();
        for (i, (seq, _)) in log.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "node {id}: sequences must be dense");
        }
        let mut seen = HashSet::new();
        for (_, txid) in &log {
            assert!(
                seen.insert(txid.clone()),
                "node {id}: txid {:?} appears twice",
                String::from_utf8_lossy(txid)
            );
        }
        for (txid, seq) in acks {
            let found = log.get(*seq as usize - 1).map(|(_, t)| t.as_slice());
            assert_eq!(
                found,
                Some(txid.as_bytes()),
                "node {id}: acknowledged {txid} missing at seq {seq}"
            );
        }
        match &reference {
            None => reference = Some(log),
            Some(r) => assert_eq!(r, &log, "node {id} differs from node {}", ids[0]),
        }
    }
    // Client records only: the cluster's key announcements (txids `_keys/…`) are not counted.
    reference
        .map(|r| r.iter().filter(|(_, txid)| !txid.starts_with(b"_")).count() as u64)
        .unwrap_or(0)
}

/// `kill -9` every node at once and restart them all; once there is a
/// leader, append `txid` (acknowledged into `acks`) and wait until every
/// node has it. Returns its seq.
async fn kill_all_then_append(cluster: &mut TestCluster, txid: &str, acks: &Acks) -> u64 {
    for id in cluster.ids() {
        cluster.kill(id);
    }
    for id in cluster.ids() {
        cluster.start_node(id);
    }
    cluster.wait_for_leader(LEADER_WAIT).await;
    let seq = cluster
        .client()
        .append_one("orders", txid.as_bytes(), b"after a full kill")
        .await
        .unwrap_or_else(|e| panic!("append {txid} after a full kill: {e}"))
        .seq;
    acks.lock().unwrap().insert(txid.into(), seq);
    for id in cluster.ids() {
        cluster.wait_for_seq(id, seq, CATCH_UP_WAIT).await;
    }
    seq
}

/// How many of the first `upto` seqs hold the cluster's own records (key announcements).
async fn system_records(cluster: &TestCluster, upto: u64) -> u64 {
    let keys = cluster
        .client()
        .read(1, 10_000, Some("_keys"), false)
        .await
        .expect("read _keys");
    keys.records.iter().filter(|r| r.seq <= upto).count() as u64
}

/// 1,000 concurrent appends read back identically from every node; kill -9 of the leader
/// elects a new one and appends continue; the killed node catches up (through a snapshot,
/// as its log was purged); killing every node at once loses nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicated_appends_survive_leader_kill_and_full_restart() {
    let _serial = SERIAL.lock().await;
    // Frequent snapshots with nothing kept behind them, so a node that was down needs a snapshot.
    let mut cluster = TestCluster::start(
        3,
        &[
            "--snapshot-logs-since-last",
            "50",
            "--log-entries-kept-after-snapshot",
            "0",
        ],
    );
    let first_leader = cluster.wait_for_leader(LEADER_WAIT).await;

    // Phase 1: 1,000 records from 8 concurrent clients.
    let acks: Acks = Arc::default();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        tasks.push(tokio::spawn(append_many(
            cluster.client(),
            format!("w{worker}"),
            125,
            acks.clone(),
        )));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let snapshot = acks.lock().unwrap().clone();
    assert_eq!(snapshot.len(), 1000);
    let seqs: HashSet<u64> = snapshot.values().copied().collect();
    assert_eq!(seqs.len(), 1000, "every append got its own seq");
    let max = *seqs.iter().max().unwrap();
    assert_eq!(max, 1000 + system_records(&cluster, max).await, "sequences are dense");
    for id in 1..=3 {
        cluster.wait_for_seq(id, max, CATCH_UP_WAIT).await;
    }
    assert_eq!(check_logs(&cluster, &[1, 2, 3], &snapshot).await, 1000);

    // A retried txid returns the original seq and writes nothing.
    let retried = cluster.client().append_one("orders", b"w3-7", b"again").await.unwrap();
    assert!(retried.duplicate);
    assert_eq!(retried.seq, snapshot["w3-7"]);

    // Phase 2: kill -9 the leader while clients keep appending.
    let writers = spawn_appenders(&cluster, "f", 4, 4, &acks);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill(first_leader);
    let killed_at = Instant::now();
    for writer in writers {
        writer.await.unwrap();
    }
    let new_leader = cluster.wait_for_leader(LEADER_WAIT).await;
    assert_ne!(new_leader, first_leader, "a new leader is elected");
    let after = cluster
        .client()
        .append_one("orders", b"after-failover", b"x")
        .await
        .unwrap();
    acks.lock().unwrap().insert("after-failover".into(), after.seq);
    eprintln!(
        "failover: first append after kill acknowledged {:?} after the kill",
        killed_at.elapsed()
    );

    // More entries while the killed node is down, so snapshots purge the log it would need.
    let mut tasks = Vec::new();
    for worker in 0..4 {
        tasks.push(tokio::spawn(append_many(
            cluster.client(),
            format!("down{worker}"),
            50,
            acks.clone(),
        )));
    }
    for task in tasks {
        task.await.unwrap();
    }

    // Phase 3: restart the killed node; it catches up.
    cluster.start_node(first_leader);
    let acked = acks.lock().unwrap().clone();
    let last = *acked.values().max().unwrap();
    for id in 1..=3 {
        cluster.wait_for_seq(id, last, CATCH_UP_WAIT).await;
    }
    let total = check_logs(&cluster, &[1, 2, 3], &acked).await;
    assert!(total >= acked.len() as u64);
    let restarted_log = std::fs::read_to_string(cluster.node(first_leader).data_dir.join("node.log")).unwrap();
    assert!(
        restarted_log.contains("snapshot installed"),
        "the restarted node should have caught up through a snapshot\n{}",
        cluster.logs()
    );

    // Phase 4: kill -9 every node at once, restart all: nothing acknowledged is lost.
    kill_all_then_append(&mut cluster, "after-full-restart", &acks).await;
    let acked = acks.lock().unwrap().clone();
    check_logs(&cluster, &[1, 2, 3], &acked).await;
}

/// Keys rotate through the log under load (a data key every second, a
/// signing key every two), the leader is killed with -9 while rotating and
/// the whole cluster is killed at the end: every acknowledged record reads
/// back, identically, on every node, under whichever key sealed it, and
/// the log lists the rotated keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_rotate_under_load_and_kill() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start_with_ids(
        &[11, 2_000, 4_000_000_000],
        &["--data-key-rotate-s", "1", "--signing-key-rotate-s", "2"],
    );
    let first_leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let acks: Acks = Arc::default();
    async fn load(cluster: &TestCluster, prefix: &str, seconds: u64, acks: &Acks) {
        for task in spawn_appenders(cluster, prefix, 4, seconds, acks) {
            task.await.unwrap();
        }
    }
    load(&cluster, "a", 3, &acks).await;
    // Mid-rotation: a data key is due every second.
    cluster.kill(first_leader);
    load(&cluster, "b", 3, &acks).await;
    cluster.start_node(first_leader);
    load(&cluster, "c", 2, &acks).await;
    let last = kill_all_then_append(&mut cluster, "after-restart", &acks).await;
    let acked = acks.lock().unwrap().clone();
    assert!(acked.len() > 20, "appends went through: {}", acked.len());
    // Keys keep rotating every second: compare what was committed by the last ack.
    assert_eq!(
        check_logs_upto(&cluster, &cluster.ids(), &acked, last).await,
        acked.len() as u64
    );

    let keys = cluster
        .client()
        .read(1, 10_000, Some("_keys"), false)
        .await
        .expect("read the keys");
    let data_keys = keys
        .records
        .iter()
        .filter(|r| r.txid.starts_with(b"_keys/data/"))
        .count();
    let signing_keys = keys
        .records
        .iter()
        .filter(|r| r.txid.starts_with(b"_keys/signing/"))
        .count();
    assert!(data_keys >= 4, "data keys rotated: {data_keys}\n{}", cluster.logs());
    assert!(signing_keys >= 2, "signing keys rotated: {signing_keys}");

    // Offline, after the kills: each node's WAL holds every sealed batch
    // since the start (no snapshot yet), each nonce once under its data key
    // (a nonce counter reused after a kill -9 would seal two batches under
    // one), and every seal, signature and chain checks.
    for id in cluster.ids() {
        cluster.stop(id).await;
    }
    for id in cluster.ids() {
        let (code, out, err) = verify(&cluster.node(id).data_dir, cluster.key_file());
        assert_eq!(code, 0, "node {id}: {out}{err}");
        let sealed = out
            .split(';')
            .find_map(|part| part.trim().strip_suffix(" sealed batches (CRC, signature, tag"))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("node {id}: no count of sealed batches in {out}"));
        assert!(
            sealed >= 10,
            "node {id}: the WAL still holds the run's batches: {sealed}\n{out}"
        );
    }
}

/// Data keys made before the KEK rotation in
/// `kek_rotation_survives_a_leader_kill`: more than two rewrap batches.
const KEK_ROTATION_DATA_KEYS: usize = 600;

/// A KEK rotation with the leader killed (-9) once the first of its
/// rewrap batches is committed, while data keys rotate every second under
/// load: rerun with `--resume`, it rewraps every key; the old KEK retires;
/// the cluster, killed and restarted with only the new KEK, reads back
/// every acknowledged record, identically on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kek_rotation_survives_a_leader_kill() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start_with_ids(&[7, 300, 65_000], &["--data-key-rotate-s", "1"]);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let key_file = cluster.key_file().expect("a sealed cluster").to_path_buf();
    let key_arg = key_file.to_str().unwrap().to_string();
    let addresses = cluster.cli();
    let acks: Acks = Arc::default();
    let load = |cluster: &TestCluster, prefix: &str, seconds: u64| spawn_appenders(cluster, prefix, 2, seconds, &acks);
    for task in load(&cluster, "a", 3) {
        task.await.unwrap();
    }

    // Enough data keys that the rewrap takes several batches of 256.
    let client = cluster.client();
    for _ in 0..KEK_ROTATION_DATA_KEYS {
        client.rotate_keys(true, false).await.expect("rotate a data key");
    }

    // Rotate under load; kill the leader as soon as the first rewrap is
    // committed: in the middle of proposing the rest.
    let during = load(&cluster, "b", 4);
    let rotate = {
        let (addresses, key_arg) = (addresses.clone(), key_arg.clone());
        tokio::task::spawn_blocking(move || {
            txlog(
                &addresses,
                &["keys", "rotate-kek", "--key-file", &key_arg, "--wait", "20s"],
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut from, mut rewrapped) = (1, 0);
    while rewrapped == 0 {
        // A read returns a bounded page: walk `_keys` forward from the last one seen.
        if let Ok(page) = client.read(from, 1_000, Some("_keys"), false).await {
            rewrapped += page.records.iter().filter(|r| r.txid.ends_with(b"/kek/2")).count();
            from = page.records.last().map_or(from, |r| r.seq + 1);
        }
        assert!(Instant::now() < deadline, "no rewrap committed\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Leadership may have moved during the 600 rotations: kill whoever leads now.
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    cluster.kill(leader);
    let (ok, out, err) = rotate.await.unwrap();
    assert!(
        ok || err.contains("did not finish") && err.contains("--resume"),
        "a rotation cut short says how to finish it: {err}"
    );
    eprintln!(
        "leader {leader} killed with {rewrapped} of {KEK_ROTATION_DATA_KEYS}+ keys rewrapped; rotate-kek: ok {ok}\n{out}{err}"
    );
    for task in during {
        task.await.unwrap();
    }
    cluster.start_node(leader);
    cluster.wait_for_leader(LEADER_WAIT).await;

    let (ok, out, err) = txlog(&addresses, &["keys", "rotate-kek", "--resume", "--key-file", &key_arg]);
    assert!(ok, "rotate-kek --resume: {out}{err}");
    let (ok, out, err) = txlog(&addresses, &["keys", "status", "--json"]);
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert!(rows.len() >= 4, "keys rotated under load: {out}");
    for row in rows {
        let keks: Vec<u64> = row["keks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_u64().unwrap())
            .collect();
        assert!(
            keks.is_empty() || keks.contains(&2),
            "every key under KEK 2 after the resume (a chained signing key needs none): {row}"
        );
    }
    for task in load(&cluster, "c", 2) {
        task.await.unwrap();
    }

    // KEK 1 retires once every WAL is compacted past its announcements.
    for step in ["snapshot", "compact"] {
        let (ok, out, err) = txlog(&addresses, &["admin", step]);
        assert!(ok, "admin {step}: {out}{err}");
    }
    let (ok, out, err) = txlog(&addresses, &["keys", "retire-kek", "--key-file", &key_arg, "--id", "1"]);
    assert!(ok && out.contains("removed KEK 1"), "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .cluster_status()
        .await
        .is_ok_and(|s| s.nodes.iter().all(|n| n.kek_ids == [2]))
    {
        assert!(
            Instant::now() < deadline,
            "nodes never dropped KEK 1\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Killed and restarted with only KEK 2: every node rebuilds its keyring
    // and serves every acknowledged record.
    let last = kill_all_then_append(&mut cluster, "after-kek", &acks).await;
    let acked = acks.lock().unwrap().clone();
    assert!(acked.len() > 20, "appends went through: {}", acked.len());
    assert_eq!(
        check_logs_upto(&cluster, &cluster.ids(), &acked, last).await,
        acked.len() as u64
    );
}

/// Malformed requests are INVALID_ARGUMENT with a clear message and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inputs_are_rejected_and_change_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(3, &["--payload-bytes-max", "1024"]);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let client = cluster.client();
    let ok = client.append_one("orders", b"good-1", b"fine").await.unwrap();
    // Seqs before it are the cluster's key announcements (channel `_keys`).
    let base = ok.seq;

    let record = |txid: &[u8], channel: &str, payload: usize| Record {
        txid: txid.to_vec().into(),
        channel: channel.to_string(),
        payload: vec![b'p'; payload].into(),
        client_time_ns: 0,
    };
    let long_txid = vec![b't'; 65];
    let cases: Vec<(&str, Vec<Record>)> = vec![
        ("empty txid", vec![record(b"", "orders", 1)]),
        ("65-byte txid", vec![record(&long_txid, "orders", 1)]),
        ("bad channel", vec![record(b"x1", "Order Book!", 1)]),
        ("empty channel", vec![record(b"x2", "", 1)]),
        ("payload over limit", vec![record(b"x3", "orders", 1025)]),
        ("no records", vec![]),
        (
            "one bad record among good ones",
            vec![record(b"x4", "orders", 1), record(b"", "orders", 1)],
        ),
    ];
    for (name, records) in cases {
        let err = client.append(records).await.expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err}");
    }
    let err = client.read(1, 10_001, None, false).await.expect_err("limit");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .read(1, 10, Some("BAD CHANNEL"), false)
        .await
        .expect_err("channel");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client.lookup(b"", false).await.expect_err("empty txid lookup");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(client.lookup(b"never-written", false).await.unwrap().is_none());

    // Nothing changed: the log still holds exactly the one good record, and the next append follows it.
    let all = client.read(1, 100, None, false).await.unwrap();
    let clients: Vec<_> = all.records.iter().filter(|r| !r.channel.starts_with('_')).collect();
    assert_eq!(clients.len(), 1);
    assert_eq!(all.last_seq, base);
    assert_eq!(
        client.append_one("orders", b"good-2", b"fine").await.unwrap().seq,
        base + 1
    );
    let found = client.lookup(b"good-2", false).await.unwrap().unwrap();
    assert_eq!(found.seq, base + 1);
    assert_eq!(&found.payload[..], b"fine");
}

/// Subscribe delivers history, then live records, in order, filtered by channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_streams_history_then_live() {
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let client = cluster.client();
    for i in 0..5 {
        let channel = if i % 2 == 0 { "fills" } else { "orders" };
        client
            .append_one(channel, format!("h{i}").as_bytes(), b"history")
            .await
            .unwrap();
    }
    let mut all = client.subscribe(1, None).await.unwrap();
    let mut fills = client.subscribe(1, Some("fills")).await.unwrap();
    for i in 5..10 {
        let channel = if i % 2 == 0 { "fills" } else { "orders" };
        client
            .append_one(channel, format!("h{i}").as_bytes(), b"live")
            .await
            .unwrap();
    }
    for expected in 1..=10u64 {
        let record = tokio::time::timeout(Duration::from_secs(10), all.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(record.seq, expected);
    }
    let mut fill_seqs = Vec::new();
    for _ in 0..5 {
        let record = tokio::time::timeout(Duration::from_secs(10), fills.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(record.channel, "fills");
        fill_seqs.push(record.channel_seq);
    }
    assert_eq!(fill_seqs, vec![1, 2, 3, 4, 5]);
}

/// Bytes of the WAL segment files in `dir`.
fn wal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "wal"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The WAL is bounded in bytes, not only in entries: with snapshots by entry
/// count off and fewer entries than the kept window, appending ~1.6 MB makes
/// every node snapshot and purge until its WAL is back near its 256 KiB limit,
/// and every record is still read back from every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wal_is_bounded_by_bytes() {
    let _serial = SERIAL.lock().await;
    const LIMIT: u64 = 256 * 1024;
    const SEGMENT: u64 = 64 * 1024;
    let cluster = TestCluster::start(
        3,
        &[
            "--snapshot-logs-since-last",
            "0",
            "--segment-bytes-max",
            &SEGMENT.to_string(),
            "--snapshot-wal-bytes-max",
            &LIMIT.to_string(),
        ],
    );
    cluster.wait_for_leader(LEADER_WAIT).await;
    let client = cluster.client();
    let mut acks = BTreeMap::new();
    // Incompressible, so sealed batches (LZ4 first) are as large as the payload.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut payload = || -> Vec<u8> {
        (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let mut last = 0;
    for i in 0..400 {
        let txid = format!("big-{i}");
        let result = client.append_one("orders", txid.as_bytes(), &payload()).await.unwrap();
        last = result.seq;
        acks.insert(txid, result.seq);
    }
    // Staggered limits reach 1.5 × LIMIT; the active segment and one more
    // being filled may come on top.
    let bound = LIMIT * 3 / 2 + 2 * SEGMENT;
    let deadline = Instant::now() + CATCH_UP_WAIT;
    for id in cluster.ids() {
        let wal = cluster.node(id).data_dir.join("wal");
        while wal_bytes(&wal) > bound {
            assert!(
                Instant::now() < deadline,
                "node {id}: wal holds {} bytes, bound {bound}\n{}",
                wal_bytes(&wal),
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let status = client.cluster_status().await.unwrap();
    for node in &status.nodes {
        assert!(node.snapshot_index > 0, "node {} built no snapshot", node.id);
        assert!(node.purged_index > 0, "node {} purged nothing", node.id);
    }
    for id in cluster.ids() {
        cluster.wait_for_seq(id, last, CATCH_UP_WAIT).await;
    }
    assert_eq!(check_logs(&cluster, &[1, 2, 3], &acks).await, 400);
}

/// Payload sizes the at-rest tests cycle through: the 16-byte piece the
/// scan looks for, small records, and records larger than the batches'
/// usual few KiB.
const PAYLOAD_SIZES: [usize; 6] = [16, 64, 256, 1024, 3000, 20_000];

/// Bytes that appear in no file of an unsealed node unless it holds the
/// payload in clear: random, so LZ4 cannot change them; sizes cycle
/// through [`PAYLOAD_SIZES`].
fn random_payloads(count: usize) -> Vec<Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    (0..count)
        .map(|i| {
            (0..PAYLOAD_SIZES[i % PAYLOAD_SIZES.len()])
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        })
        .collect()
}

/// Records on `orders` holding `payloads`, txids `<prefix>-<first + i>`.
fn orders(prefix: &str, first: usize, payloads: &[Vec<u8>]) -> Vec<Record> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| Record {
            txid: format!("{prefix}-{}", first + i).into_bytes().into(),
            channel: "orders".into(),
            payload: payload.clone().into(),
            client_time_ns: 0,
        })
        .collect()
}

/// Files under `dir` holding any 16-byte piece of any of `payloads`.
fn files_with_payloads(dir: &std::path::Path, payloads: &[Vec<u8>]) -> Vec<String> {
    const PIECE: usize = 16;
    let pieces: HashSet<&[u8]> = payloads.iter().flat_map(|p| p.chunks_exact(PIECE)).collect();
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            if bytes.windows(PIECE).any(|w| pieces.contains(w)) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Append `payloads` (txid `at-rest-<i>`): the first half in requests of
/// ten, the second one by one (an entry each) with a follower down, so it
/// catches up from a snapshot; every node then serves every payload as
/// appended. Returns the files, on any node, that hold a payload in clear
/// once the nodes have stopped.
async fn payloads_on_disk(mut cluster: TestCluster, payloads: &[Vec<u8>]) -> Vec<String> {
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    let lagging = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let client = cluster.client();
    let mut by_seq = BTreeMap::new();
    let (first, second) = payloads.split_at(payloads.len() / 2);
    let requests = first.chunks(10).chain(second.chunks(1));
    let mut appended = 0;
    for chunk in requests {
        if appended == first.len() {
            cluster.stop(lagging).await;
        }
        let results = client.append(orders("at-rest", appended, chunk)).await.unwrap();
        for (result, payload) in results.iter().zip(chunk) {
            by_seq.insert(result.seq, payload.clone());
        }
        appended += chunk.len();
    }
    cluster.start_node(lagging);
    let last = *by_seq.keys().next_back().unwrap();
    for id in cluster.ids() {
        cluster.wait_for_seq(id, last, CATCH_UP_WAIT).await;
        let served: BTreeMap<u64, Vec<u8>> = cluster
            .read_all_from(id)
            .await
            .into_iter()
            .filter(|r| r.channel == "orders")
            .map(|r| (r.seq, r.payload.to_vec()))
            .collect();
        assert!(served == by_seq, "node {id} does not serve the payloads as appended");
    }
    let log = std::fs::read_to_string(cluster.node(lagging).data_dir.join("node.log")).unwrap();
    assert!(
        log.contains("snapshot installed"),
        "node {lagging} should have caught up from a snapshot\n{}",
        cluster.logs()
    );
    for id in cluster.ids() {
        cluster.stop(id).await;
    }
    files_with_payloads(cluster.dir.path(), payloads)
}

/// Sealed, no payload is on disk in clear — not in the WAL, the record
/// file, sled, the snapshots, what a lagging node received nor the logs —
/// and every node serves every payload as appended. The same run unsealed
/// finds them in the WAL and the record file, so the scan can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_never_on_disk_in_clear() {
    let _serial = SERIAL.lock().await;
    let args = [
        "--snapshot-logs-since-last",
        "5",
        "--log-entries-kept-after-snapshot",
        "0",
    ];
    let payloads = random_payloads(400);
    let sealed = payloads_on_disk(TestCluster::start(3, &args), &payloads).await;
    assert!(sealed.is_empty(), "payloads in clear on disk: {sealed:?}");
    let unsealed = payloads_on_disk(TestCluster::start_unsealed(3, &args), &payloads).await;
    for part in ["wal", "segments"] {
        assert!(
            unsealed.iter().any(|f| f.contains(&format!("/{part}/"))),
            "an unsealed cluster keeps payloads in its {part} files: {unsealed:?}"
        );
    }
}

/// `txlog verify` on `dir`: exit code, stdout, stderr.
fn verify(dir: &std::path::Path, key_file: Option<&std::path::Path>) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_txlog"));
    command.arg("verify").arg("--data-dir").arg(dir);
    if let Some(key_file) = key_file {
        command.arg("--key-file").arg(key_file);
    }
    let out = command.output().expect("run txlog verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The files in `dir` ending in `suffix`, by name (segments: oldest first).
fn files_ending(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *{suffix} in {}", dir.display());
    files
}

/// Offset of frame `n` (0-based) of a segment: frames are `len u32 |
/// crc32 u32 | body` after a 28-byte header.
fn frame_at(bytes: &[u8], n: usize) -> usize {
    let mut at = 28;
    for _ in 0..n {
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    at
}

/// Run `check` with `path` changed by `damage`, then put the file back.
fn with_damage(path: &std::path::Path, damage: impl FnOnce(&mut Vec<u8>), check: impl FnOnce()) {
    let original = std::fs::read(path).unwrap();
    let mut damaged = original.clone();
    damage(&mut damaged);
    std::fs::write(path, &damaged).unwrap();
    check();
    std::fs::write(path, &original).unwrap();
}

/// `txlog verify` passes every node of a stopped sealed cluster (WAL,
/// record file with payloads sealed at rest, snapshots); it finds a flipped
/// byte in the WAL and in the record file, and a record changed under a
/// valid CRC (the hash chain), each with its file and position (exit 1);
/// it reports a torn WAL tail without failing; and it says what it needs
/// when the key file or the directory is missing (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_a_stopped_node_offline() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(
        3,
        &[
            "--snapshot-logs-since-last",
            "5",
            "--log-entries-kept-after-snapshot",
            "20",
        ],
    );
    cluster.wait_for_leader(LEADER_WAIT).await;
    let client = cluster.client();
    let payloads = random_payloads(300);
    for (round, chunk) in payloads.chunks(10).enumerate() {
        client.append(orders("verify", round * 10, chunk)).await.unwrap();
    }
    let last = client.cluster_status().await.unwrap().last_seq;
    for id in cluster.ids() {
        cluster.wait_for_seq(id, last, CATCH_UP_WAIT).await;
    }
    for id in cluster.ids() {
        cluster.stop(id).await;
    }
    let key_file = cluster.key_file().expect("a sealed cluster").to_path_buf();
    for id in cluster.ids() {
        let dir = cluster.node(id).data_dir.clone();
        let (code, out, err) = verify(&dir, Some(&key_file));
        assert_eq!(code, 0, "node {id}: {out}\n{err}");
        assert!(out.contains("verify: ok"), "{out}");
        assert!(out.contains("300 payloads sealed at rest opened"), "node {id}: {out}");
        assert!(out.contains("snapshot 0"), "node {id} has a snapshot: {out}");
    }

    let dir = cluster.node(1).data_dir.clone();
    let (code, _, err) = verify(&dir, None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--key-file"), "{err}");
    let (code, _, err) = verify(&dir.join("nonexistent"), Some(&key_file));
    assert_eq!(code, 2, "{err}");

    let wals = files_ending(&dir.join("wal"), ".wal");
    let wal = &wals[0];
    with_damage(
        wal,
        |bytes| {
            let at = frame_at(bytes, 5);
            bytes[at + 12] ^= 0x10;
        },
        || {
            let (code, out, err) = verify(&dir, Some(&key_file));
            assert_eq!(code, 1, "{out}\n{err}");
            assert!(err.contains("FAILED") && err.contains(&*wal.to_string_lossy()), "{err}");
        },
    );
    with_damage(
        wals.last().unwrap(),
        |bytes| bytes.extend_from_slice(&[7; 10]),
        || {
            let (code, out, err) = verify(&dir, Some(&key_file));
            assert_eq!(code, 0, "{out}\n{err}");
            assert!(out.contains("torn tail"), "{out}");
        },
    );

    // A plain client batch appended to the WAL as the next entry, whole and
    // with a valid CRC: a sealed node's followers would refuse it, so
    // verify does.
    with_damage(
        wals.last().unwrap(),
        |bytes| {
            let mut at = 28;
            let mut last = None;
            while at < bytes.len() {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                last = Some(postcard::from_bytes::<txlog_raft::Entry>(&bytes[at + 8..at + 8 + len]).unwrap());
                at += 8 + len;
            }
            let last = last.expect("the WAL holds entries").log_id;
            let body = txlog_raft::BatchBody {
                created_ns: 1,
                records: vec![txlog_storage::NewRecord {
                    txid: "injected".into(),
                    channel: "orders".into(),
                    payload: "in clear".into(),
                    client_time_ns: 0,
                }],
            };
            let entry = txlog_raft::Entry {
                log_id: txlog_raft::openraft::testing::log_id::<txlog_raft::TypeConfig>(
                    last.leader_id.term,
                    last.leader_id.node_id,
                    last.index + 1,
                ),
                payload: txlog_raft::openraft::EntryPayload::Normal(txlog_raft::BatchFrame::encode(1, &body)),
            };
            let encoded = postcard::to_allocvec(&entry).unwrap();
            bytes.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&encoded).to_le_bytes());
            bytes.extend_from_slice(&encoded);
        },
        || {
            let (code, out, err) = verify(&dir, Some(&key_file));
            assert_eq!(code, 1, "{out}\n{err}");
            assert!(err.contains("accepts only sealed batches"), "{err}");
        },
    );

    let segment = files_ending(&dir.join("state/records/segments"), ".rec").remove(0);
    with_damage(
        &segment,
        |bytes| {
            let at = frame_at(bytes, 50);
            bytes[at + 60] ^= 0x10;
        },
        || {
            let (code, out, err) = verify(&dir, Some(&key_file));
            assert_eq!(code, 1, "{out}\n{err}");
            assert!(
                err.contains("FAILED") && err.contains(&*segment.to_string_lossy()),
                "{out}\n{err}"
            );
        },
    );
    // Record 100's txid changed under a CRC made to match: the record
    // still decodes, and the chain recomputed from it no longer matches.
    with_damage(
        &segment,
        |bytes| {
            let at = frame_at(bytes, 99);
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let body = at + 8..at + 8 + len;
            let txid = bytes[body.clone()]
                .windows(7)
                .position(|w| w == b"verify-")
                .expect("record 100 has a verify- txid");
            bytes[body.start + txid] ^= 0x01;
            let crc = crc32fast::hash(&bytes[body]);
            bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        },
        || {
            let (code, out, err) = verify(&dir, Some(&key_file));
            assert_eq!(code, 1, "{out}\n{err}");
            assert!(err.contains("hash chain differs from the records at seq 100"), "{err}");
        },
    );
    let (code, out, err) = verify(&dir, Some(&key_file));
    assert_eq!(code, 0, "undamaged again: {out}\n{err}");
}
