//! Self-healing of a damaged record store, with real processes.
//!
//! Two stopped followers get their record store damaged, not their WAL,
//! after snapshots have purged the WAL behind the damaged records: one by
//! bytes flipped in its record segment file (bit rot; after `kill -9`), one
//! by a hash chain value rewritten so the chain no longer matches the
//! records (after a clean stop). Each must notice on restart, fetch a full
//! copy from the cluster, say so in one log line, count it in
//! `txlog_drift_repairs_total`, and then serve exactly the cluster's
//! records, with no operator step. Node ids are not 1–3.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use common::scrape_metric;
use common::TestCluster;
use common::SERIAL;

const IDS: [u64; 3] = [1000, 2000, 3000];
const WAIT: Duration = Duration::from_secs(60);
/// The line a node logs when it finds its store damaged.
const DETECTED: &str = "record store does not match what this node applied";

struct Metrics(BTreeMap<u64, String>);

impl Metrics {
    async fn value(&self, id: u64, name: &str) -> f64 {
        let address = &self.0[&id];
        let deadline = Instant::now() + WAIT;
        loop {
            match scrape_metric(address, name).await {
                Ok(value) => return value,
                Err(text) if Instant::now() > deadline => panic!("no {name} on node {id}: {text}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Wait until `name` on node `id` is at least `least`.
    async fn wait_at_least(&self, id: u64, name: &str, least: f64, cluster: &TestCluster) {
        let deadline = Instant::now() + WAIT;
        while self.value(id, name).await < least {
            assert!(
                Instant::now() < deadline,
                "node {id}: {name} stayed below {least}\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The record segment files of a node's store.
fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("state").join("records").join("segments");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rec"))
        .collect();
    files.sort();
    files
}

/// Flip a run of bytes in the middle of the first record segment.
fn flip_bytes(data_dir: &Path) {
    let file = segments(data_dir).into_iter().next().expect("a record segment");
    let mut bytes = std::fs::read(&file).expect("read segment");
    assert!(bytes.len() > 4096, "segment too small to damage: {} bytes", bytes.len());
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&file, bytes).expect("write segment");
}

/// Rewrite the stored hash chain at `seq` (frame checksum kept valid): the
/// records no longer match their chain.
fn rewrite_chain(data_dir: &Path, seq: u64) {
    let store = txlog_storage::RecordStore::open(data_dir.join("state").join("records")).expect("open store");
    store.set_chain_at(seq, [7u8; 32]).expect("rewrite chain");
}

fn log_lines_with(data_dir: &Path, needle: &str) -> usize {
    std::fs::read_to_string(data_dir.join("node.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Every record on `id` equals `reference`'s, field by field.
async fn same_records(cluster: &TestCluster, id: u64, reference: u64, last_seq: u64) {
    cluster.wait_for_seq(id, last_seq, WAIT).await;
    let expected = cluster.read_all_from(reference).await;
    let got = cluster.read_all_from(id).await;
    assert!(got.len() as u64 >= last_seq, "node {id} holds {} records", got.len());
    let span = expected.len().min(got.len());
    for (e, g) in expected[..span].iter().zip(&got[..span]) {
        assert_eq!(
            (e.seq, &e.txid, &e.channel, &e.payload),
            (g.seq, &g.txid, &g.channel, &g.payload),
            "node {id} serves a record that differs from node {reference}'s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_record_stores_are_replaced_from_the_cluster() {
    let _serial = SERIAL.lock().await;
    // Snapshots every 50 entries, 10 kept after each: the WAL is purged
    // well behind the records the damage hits.
    let mut cluster = TestCluster::start_with_metrics(
        &IDS,
        &[
            "--snapshot-logs-since-last",
            "50",
            "--log-entries-kept-after-snapshot",
            "10",
        ],
    );
    let metrics = Metrics(
        IDS.iter()
            .map(|&id| (id, cluster.node(id).metrics.clone().expect("a metrics address")))
            .collect(),
    );
    // The node never damaged: the reference for every comparison.
    let healthy = cluster.wait_for_leader(WAIT).await;
    // One Raft entry per call: enough entries for several snapshots.
    for i in 0..150 {
        cluster.append_many(&format!("before-{i}"), 4).await;
    }
    let followers: Vec<u64> = IDS.iter().copied().filter(|&id| id != healthy).collect();
    let (bitrot, rechained) = (followers[0], followers[1]);
    for &id in &followers {
        metrics
            .wait_at_least(id, "txlog_raft_purged_index", 1.0, &cluster)
            .await;
    }
    let last_seq = cluster.read_all_from(healthy).await.len() as u64;
    for &id in &followers {
        cluster.wait_for_seq(id, last_seq, WAIT).await;
    }

    cluster.kill(bitrot);
    flip_bytes(&cluster.node(bitrot).data_dir);
    cluster.stop(rechained).await;
    rewrite_chain(&cluster.node(rechained).data_dir, 100);
    cluster.start_node(bitrot);
    cluster.start_node(rechained);
    // Writes resume once one of them is back: the repaired nodes must also
    // catch up past the copy they fetched.
    cluster.append_many("during", 20).await;

    let acked = cluster.append_many("after", 20).await;
    let last_seq = *acked.last().expect("acknowledged");
    cluster.wait_for_seq(healthy, last_seq, WAIT).await;
    for &id in &followers {
        same_records(&cluster, id, healthy, last_seq).await;
        assert_eq!(
            metrics.value(id, "txlog_drift_repairs_total").await,
            1.0,
            "node {id} repaired its store once"
        );
        let data_dir = &cluster.node(id).data_dir;
        assert_eq!(log_lines_with(data_dir, DETECTED), 1, "node {id}: one clear line");
        assert!(
            !data_dir.join(txlog::drift_repair::REPAIR_MARKER).exists(),
            "node {id}: repair finished"
        );
        let kept_aside = std::fs::read_dir(data_dir)
            .expect("data dir")
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("state.damaged-"));
        assert!(kept_aside, "node {id}: the damaged store is kept aside");
    }
    assert_eq!(metrics.value(healthy, "txlog_drift_repairs_total").await, 0.0);

    // The repaired nodes carry the cluster alone: with the healthy node
    // stopped, one of them leads, and both hold every record.
    cluster.stop(healthy).await;
    let now = cluster.wait_for_leader(WAIT).await;
    assert!(followers.contains(&now), "a repaired node leads");
    let acked = cluster.append_many("repaired-only", 20).await;
    let last_seq = *acked.last().expect("acknowledged");
    for &id in &followers {
        same_records(&cluster, id, now, last_seq).await;
    }
    cluster.start_node(healthy);
    same_records(&cluster, healthy, now, last_seq).await;
}
