//! Restarts with node ids other than 1, 2, 3 (real processes).
//!
//! A restarted node once read its applied log id back with the wrong type and
//! took the leader's node id for its applied index: with ids 1000/2000/3000 a
//! clean restart of a follower dropped acknowledged records and the cluster
//! stopped accepting writes. Every scenario here restarts followers and
//! leaders, cleanly (SIGTERM) and with `kill -9`, and after each restart
//! checks that every acknowledged record is on every node at its seq, and
//! that every node in turn leads, serves a linearizable read of all of them
//! and still accepts appends.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use common::TestCluster;
use common::SERIAL;
use txlog_proto::Record;

const LEADER_WAIT: Duration = Duration::from_secs(30);
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// Transient answers tolerated per linearizable read (100 ms apart).
const READ_RETRIES_MAX: u32 = 100;

/// Acknowledged appends: seq → txid.
type Acks = BTreeMap<u64, String>;

#[derive(Debug, Clone, Copy)]
enum Restart {
    /// SIGTERM, wait for the exit, start again.
    Clean,
    /// `kill -9`, start again.
    Kill,
}

async fn restart(cluster: &mut TestCluster, id: u64, kind: Restart) {
    match kind {
        Restart::Clean => cluster.stop(id).await,
        Restart::Kill => cluster.kill(id),
    }
    cluster.start_node(id);
}

/// Append `count` records in requests of ten; remember each acknowledgement.
async fn append_acked(cluster: &TestCluster, acks: &mut Acks, prefix: &str, count: usize) {
    let client = cluster.client();
    for start in (0..count).step_by(10) {
        let records: Vec<Record> = (start..(start + 10).min(count))
            .map(|i| Record {
                txid: format!("{prefix}-{i}").into_bytes().into(),
                channel: "orders".into(),
                payload: format!("payload {prefix}-{i}").into_bytes().into(),
                client_time_ns: 0,
            })
            .collect();
        let txids: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.txid).into_owned())
            .collect();
        let results = client
            .append(records)
            .await
            .unwrap_or_else(|e| panic!("append {prefix}: {e}\n{}", cluster.logs()));
        for (txid, result) in txids.into_iter().zip(results) {
            assert!(
                acks.insert(result.seq, txid).is_none(),
                "seq {} acknowledged twice",
                result.seq
            );
        }
    }
}

/// Every node holds the same dense log, with every acknowledged txid at its seq.
async fn check_every_node(cluster: &TestCluster, acks: &Acks, after: &str) {
    let last = *acks.keys().next_back().expect("some acks");
    let mut reference: Option<Vec<(u64, Vec<u8>)>> = None;
    for id in cluster.ids() {
        cluster.wait_for_seq(id, last, CATCH_UP_WAIT).await;
        let log: Vec<(u64, Vec<u8>)> = cluster
            .read_all_from(id)
            .await
            .iter()
            .map(|r| (r.seq, r.txid.to_vec()))
            .collect();
        for (i, (seq, _)) in log.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "{after}: node {id}: sequences must be dense");
        }
        for (seq, txid) in acks {
            let found = log
                .get(*seq as usize - 1)
                .map(|(_, t)| String::from_utf8_lossy(t).into_owned());
            assert_eq!(
                found.as_deref(),
                Some(txid.as_str()),
                "{after}: node {id}: acknowledged {txid} missing at seq {seq}\n{}",
                cluster.logs()
            );
        }
        match &reference {
            None => reference = Some(log),
            // The cluster writes records of its own at any time (key
            // announcements, audit events): compare the span both hold.
            Some(r) => {
                let span = r.len().min(log.len());
                assert_eq!(&r[..span], &log[..span], "{after}: node {id}'s log differs");
            }
        }
    }
}

/// Make `id` the leader and wait until the cluster says so.
async fn lead(cluster: &TestCluster, id: u64) {
    let client = cluster.client();
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        if let Ok(status) = client.cluster_status().await {
            if status.leader_id == Some(id) {
                return;
            }
            if status.leader_id.is_some() {
                let _ = client.transfer_leader(id).await;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {id} never became leader\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Answers that mean "nothing was read, try again".
fn is_transient(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    )
}

/// With each node as leader: a linearizable read from it returns every
/// acknowledged record at its seq, and an append succeeds.
async fn check_each_as_leader(cluster: &TestCluster, acks: &mut Acks) {
    for id in cluster.ids() {
        lead(cluster, id).await;
        let client = cluster.client();
        let address = cluster.node(id).address.clone();
        let mut log = Vec::new();
        let mut from = 1;
        let mut unavailable = 0;
        loop {
            // Right after a restart or a leadership change the read index may
            // not reach a quorum yet: these answers serve nothing, so retry.
            let response = match client.read_at(&address, from, 10_000, false).await {
                Ok(response) => response,
                Err(e) if is_transient(e.code()) && unavailable < READ_RETRIES_MAX => {
                    unavailable += 1;
                    if e.to_string().contains("not the leader") {
                        // Leadership moved on (an election under load: debug
                        // builds on two cores): ask for it back, not wait.
                        lead(cluster, id).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
                Err(e) => panic!("linearizable read from leader {id}: {e}"),
            };
            if response.records.is_empty() {
                break;
            }
            from = response.next_seq;
            log.extend(response.records);
        }
        for (seq, txid) in acks.iter() {
            let found = log
                .get(*seq as usize - 1)
                .map(|r| String::from_utf8_lossy(&r.txid).into_owned());
            assert_eq!(
                found.as_deref(),
                Some(txid.as_str()),
                "leader {id}: acknowledged {txid} missing at seq {seq}"
            );
        }
        // Unique per call: a repeated txid would be answered with its first seq.
        let prefix = format!("led-by-{id}-after-{}", acks.len());
        append_acked(cluster, acks, &prefix, 5).await;
    }
}

/// The first voter that is not the current leader.
async fn a_follower(cluster: &TestCluster) -> u64 {
    let leader = cluster.wait_for_leader(LEADER_WAIT).await;
    cluster.ids().into_iter().find(|&id| id != leader).expect("a follower")
}

/// Restart a follower and then the leader, cleanly and with `kill -9`,
/// appending between restarts and checking every node after each.
async fn restarts_keep_acknowledged_records(ids: &[u64], extra_args: &[&str]) {
    let _serial = SERIAL.lock().await;
    eprintln!("node ids {ids:?}, extra flags {extra_args:?}");
    let mut cluster = TestCluster::start_with_ids(ids, extra_args);
    cluster.wait_for_leader(LEADER_WAIT).await;
    let mut acks = Acks::new();
    append_acked(&cluster, &mut acks, "before", 120).await;
    check_every_node(&cluster, &acks, "before any restart").await;
    for (round, kind) in [Restart::Clean, Restart::Kill, Restart::Clean, Restart::Kill]
        .into_iter()
        .enumerate()
    {
        let follower = a_follower(&cluster).await;
        restart(&mut cluster, follower, kind).await;
        append_acked(&cluster, &mut acks, &format!("r{round}-follower"), 30).await;
        check_every_node(&cluster, &acks, &format!("{kind:?} restart of follower {follower}")).await;
        check_each_as_leader(&cluster, &mut acks).await;

        let leader = cluster.wait_for_leader(LEADER_WAIT).await;
        restart(&mut cluster, leader, kind).await;
        append_acked(&cluster, &mut acks, &format!("r{round}-leader"), 30).await;
        check_every_node(&cluster, &acks, &format!("{kind:?} restart of leader {leader}")).await;
        check_each_as_leader(&cluster, &mut acks).await;
    }
    check_every_node(&cluster, &acks, "after every node led").await;
}

/// Ids 1000/2000/3000 with default snapshot settings (the reported case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_in_the_thousands() {
    restarts_keep_acknowledged_records(&[1000, 2000, 3000], &[]).await;
}

/// Ids 100000/200000/300000 with a snapshot every 20 entries, so restarts
/// start from a snapshot and a purged WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_in_the_hundred_thousands_with_snapshots() {
    restarts_keep_acknowledged_records(
        &[300_000, 100_000, 200_000],
        &[
            "--snapshot-logs-since-last",
            "20",
            "--log-entries-kept-after-snapshot",
            "5",
        ],
    )
    .await;
}

/// Large random ids (printed), a snapshot every 50 entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_random_ids() {
    let mut ids: Vec<u64> = Vec::new();
    while ids.len() < 3 {
        let id = rand::random_range(1..=1u64 << 48);
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    restarts_keep_acknowledged_records(
        &ids,
        &[
            "--snapshot-logs-since-last",
            "50",
            "--log-entries-kept-after-snapshot",
            "10",
        ],
    )
    .await;
}
