//! Membership, failover and resync with real `txlog node` processes:
//! grow 3 → 5 → 3 voters under load, replace a region node with `--join`,
//! delta / full / diverged-chain resync, and admin bad input.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::txlog;
use common::TestCluster;
use common::SERIAL;
use tonic::Code;
use txlog_client::Client;
use txlog_client::Kind;
use txlog_proto::JoinRequest;

const WAIT: Duration = Duration::from_secs(60);

/// Appenders that run until stopped; returns txid → acknowledged seq.
fn spawn_appenders(
    client: Client,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<BTreeMap<String, u64>>> {
    (0..workers)
        .map(|w| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acked = BTreeMap::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let txid = format!("w{w}-{n}");
                    n += 1;
                    // An append that errors may or may not have committed; only acks are checked.
                    if let Ok(result) = client.append_one("orders", txid.as_bytes(), txid.as_bytes()).await {
                        acked.insert(txid, result.seq);
                    }
                }
                acked
            })
        })
        .collect()
}

/// Every node in `ids` holds the same dense log, and every acknowledged
/// append is in it exactly once at its acknowledged seq.
async fn check_logs(cluster: &TestCluster, ids: &[u64], acked: &BTreeMap<String, u64>) {
    let leader_last = cluster.client().cluster_status().await.expect("status").last_seq;
    for id in ids {
        cluster.wait_for_seq(*id, leader_last, WAIT).await;
    }
    let reference = cluster.read_all_from(ids[0]).await;
    let seqs: Vec<u64> = reference.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=reference.len() as u64).collect::<Vec<_>>(),
        "dense sequences"
    );
    let mut by_txid: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for r in &reference {
        assert!(
            by_txid.insert(r.txid.to_vec(), r.seq).is_none(),
            "txid {:?} twice",
            r.txid
        );
    }
    for (txid, seq) in acked {
        assert_eq!(by_txid.get(txid.as_bytes()), Some(seq), "acked {txid} at seq {seq}");
    }
    for id in &ids[1..] {
        // A new leader announces a data key of its own, so the log may have
        // grown since the reference was read: compare the reference's span.
        let last = reference.last().map_or(0, |r| r.seq);
        cluster.wait_for_seq(*id, last, WAIT).await;
        let mut other = cluster.read_all_from(*id).await;
        other.truncate(reference.len());
        assert_eq!(other.len(), reference.len(), "node {id} log length");
        assert!(other == reference, "node {id} log differs from node {}", ids[0]);
    }
}

/// Grow 3 → 5 voters with `--join` and shrink back with Remove while clients append:
/// nothing acknowledged is lost or duplicated and every voter ends with the same log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_and_shrink_back_under_load() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_for_leader(WAIT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let appenders = spawn_appenders(cluster.client(), 4, stop.clone());

    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_joining(4, "london", 1);
    cluster.wait_for_voters(&[1, 2, 3, 4], WAIT).await;
    cluster.start_joining(5, "milan", 2);
    cluster.wait_for_voters(&[1, 2, 3, 4, 5], WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let client = cluster.client();
    for id in [5, 4] {
        let response = client
            .remove_node(id)
            .await
            .unwrap_or_else(|e| panic!("remove {id}: {e}\n{}", cluster.logs()));
        assert!(
            response.members.iter().all(|m| m.id != id),
            "node {id} still listed: {:?}",
            response.members
        );
    }
    cluster.wait_for_voters(&[1, 2, 3], WAIT).await;
    let status = client.cluster_status().await.unwrap();
    assert_eq!(
        status.nodes.len(),
        3,
        "removed nodes do not linger as learners: {:?}",
        status.nodes
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for task in appenders {
        acked.extend(task.await.unwrap());
    }
    assert!(
        acked.len() > 50,
        "appends kept succeeding during the changes ({} acked)",
        acked.len()
    );
    cluster.kill(4);
    cluster.kill(5);
    check_logs(&cluster, &[1, 2, 3], &acked).await;
}

/// Replace lyon: remove node 3 through the CLI, start an empty node 4 in lyon with
/// `--join`; it becomes a voter with the full log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_a_region_node_with_join() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_for_leader(WAIT).await;
    cluster.append_many("before", 300).await;

    let (ok, stdout, stderr) = txlog(&cluster.cli(), &["admin", "remove", "--id", "3"]);
    assert!(ok, "admin remove failed: {stderr}\n{}", cluster.logs());
    assert!(stdout.contains("node 3 removed"), "{stdout}");
    cluster.kill(3);
    cluster.wait_for_voters(&[1, 2], WAIT).await;

    cluster.start_joining(4, "lyon", 2);
    cluster.wait_for_voters(&[1, 2, 4], WAIT).await;
    cluster.append_many("after", 100).await;
    let status = cluster.client().cluster_status().await.unwrap();
    let lyon = status.nodes.iter().find(|n| n.id == 4).expect("node 4 listed");
    assert_eq!((lyon.region.as_str(), lyon.kind), ("lyon", Kind::Voter));
    assert!(
        status.nodes.iter().all(|n| n.id != 3),
        "node 3 is gone: {:?}",
        status.nodes
    );
    check_logs(&cluster, &[1, 2, 4], &BTreeMap::new()).await;

    // `txlog admin status` shows the new member with its region and role.
    let (ok, stdout, stderr) = txlog(&cluster.cli(), &["admin", "status"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with('4') && l.contains("lyon") && l.contains(Kind::Voter.as_str())),
        "{stdout}"
    );

    // Restarting the joined node on its data dir rejoins silently.
    cluster.kill(4);
    cluster.start_node(4);
    cluster.append_many("restart", 50).await;
    check_logs(&cluster, &[1, 2, 4], &BTreeMap::new()).await;
    cluster.wait_for_voters(&[1, 2, 4], WAIT).await;
}

/// Bytes of the newest snapshot of node `id` as a full transfer sends it
/// (a linked snapshot is streamed as the equivalent snapshot file).
fn snapshot_file_bytes(cluster: &TestCluster, id: u64) -> u64 {
    let dir = cluster.node(id).data_dir.join("state").join("snapshots");
    let newest = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .max()
        .expect("a snapshot");
    txlog_storage::snapshot_file::verify(&newest).unwrap().file_bytes
}

/// Stop `follower`, append, snapshot and compact the other nodes so the
/// follower is behind the purge point.
async fn fall_behind_purge_point(cluster: &mut TestCluster, follower: u64, prefix: &str, records: usize) {
    cluster.kill(follower);
    cluster.append_many(prefix, records).await;
    let client = cluster.client();
    for node in cluster.running().into_iter().filter(|n| n.id != follower) {
        client.snapshot_node(&node.address).await.expect("snapshot");
        let compact = client.compact_node(&node.address).await.expect("compact");
        assert_eq!(
            compact.purged_index, compact.snapshot_index,
            "node {} purged behind its snapshot",
            node.id
        );
    }
}

async fn resync_counts(cluster: &TestCluster) -> txlog_proto::ResyncCounters {
    let client = cluster.client();
    let mut total = txlog_proto::ResyncCounters::default();
    for node in cluster.running() {
        if let Some(r) = client.node_status(&node.address).await.ok().and_then(|s| s.resync_sent) {
            total.delta_transfers += r.delta_transfers;
            total.delta_bytes += r.delta_bytes;
            total.full_transfers += r.full_transfers;
            total.full_bytes += r.full_bytes;
        }
    }
    total
}

/// Wait until the senders have counted one more finished transfer than `before`.
async fn next_resync_counts(
    cluster: &TestCluster,
    before: &txlog_proto::ResyncCounters,
) -> txlog_proto::ResyncCounters {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = resync_counts(cluster).await;
        if now.delta_transfers + now.full_transfers > before.delta_transfers + before.full_transfers {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot transfer was counted\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A follower behind the purge point catches up by delta (far fewer bytes than the
/// snapshot); a wiped follower gets the full snapshot. (A diverged chain is covered
/// in raft/tests/state_machine.rs: a stopped node's store is rebuilt from its own
/// snapshot file on restart when sled is behind it, which erases a tamper.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_and_full_resync() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start(
        3,
        &[
            "--snapshot-logs-since-last",
            "100000000",
            "--log-entries-kept-after-snapshot",
            "0",
        ],
    );
    let leader = cluster.wait_for_leader(WAIT).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.append_many("history", 3000).await;
    cluster.wait_for_seq(follower, 3000, WAIT).await;

    // Delta: 1,000 records missed out of 4,000.
    fall_behind_purge_point(&mut cluster, follower, "missed", 1000).await;
    let before = resync_counts(&cluster).await;
    cluster.start_node(follower);
    cluster.catch_up_with_trickle(follower, WAIT).await;
    let after = next_resync_counts(&cluster, &before).await;
    let snapshot_bytes = snapshot_file_bytes(&cluster, leader);
    let delta_bytes = after.delta_bytes - before.delta_bytes;
    assert_eq!(after.delta_transfers - before.delta_transfers, 1, "{after:?}");
    assert_eq!(
        after.full_transfers, before.full_transfers,
        "no full snapshot: {after:?}"
    );
    assert!(
        delta_bytes * 100 < snapshot_bytes * 40,
        "delta sent {delta_bytes} bytes, the full snapshot is {snapshot_bytes}"
    );
    check_logs(&cluster, &[1, 2, 3], &BTreeMap::new()).await;

    // Full: a wiped follower.
    cluster.kill(follower);
    cluster.wipe(follower);
    let before = resync_counts(&cluster).await;
    cluster.start_node(follower);
    cluster.catch_up_with_trickle(follower, WAIT).await;
    let after = next_resync_counts(&cluster, &before).await;
    assert_eq!(after.full_transfers - before.full_transfers, 1, "{after:?}");
    assert_eq!(after.delta_transfers, before.delta_transfers, "{after:?}");
    check_logs(&cluster, &[1, 2, 3], &BTreeMap::new()).await;
}

/// Bad admin input gets clear errors and leaves the membership unchanged; the last
/// voter cannot be removed; removing the leader hands leadership over first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bad_input_and_last_voter() {
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start(3, &[]);
    cluster.wait_for_leader(WAIT).await;
    let client = cluster.client();

    let err = client.remove_node(9).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.to_string().contains("not a member"), "{err}");
    let err = client.transfer_leader(9).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let join = |node_id: u64, address: &str, region: &str| JoinRequest {
        node_id,
        address: address.to_string(),
        region: region.to_string(),
        learner_only: false,
        timeout_ms: 2000,
    };
    let err = client.join(join(2, "127.0.0.1:1", "frankfurt")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    assert!(err.to_string().contains("already a member"), "{err}");
    let err = client
        .join(join(7, &cluster.node(1).address, "paris"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "address reuse: {err}");
    for bad in [
        join(0, "127.0.0.1:1", "x"),
        join(7, "nonsense", "x"),
        join(7, "127.0.0.1:1", "Bad Region"),
    ] {
        let err = client.join(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }
    let mut voters = cluster.voters().await;
    voters.sort();
    assert_eq!(voters, vec![1, 2, 3], "membership unchanged");

    // Remove the leader: leadership moves first, then it leaves.
    let leader = cluster.wait_for_leader(WAIT).await;
    client
        .remove_node(leader)
        .await
        .unwrap_or_else(|e| panic!("remove leader: {e}\n{}", cluster.logs()));
    let rest: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    cluster.wait_for_voters(&rest, WAIT).await;
    client.remove_node(rest[1]).await.unwrap();
    cluster.wait_for_voters(&rest[..1], WAIT).await;
    let err = client.remove_node(rest[0]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("last voter"), "{err}");
    assert_eq!(cluster.voters().await, vec![rest[0]], "membership unchanged");
    cluster.append_many("single", 10).await;
}
