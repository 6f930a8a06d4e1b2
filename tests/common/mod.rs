//! Test harness: real `txlog node` processes on loopback, killed in `Drop`.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use txlog::client::Client;
use txlog::client::ClientOptions;

/// Clusters are heavy on a two-core machine: run one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const REGIONS: [&str; 5] = ["paris", "frankfurt", "lyon", "london", "milan"];

pub struct TestNode {
    pub id: u64,
    pub address: String,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
    /// Started with `--join <this>` instead of `--peers`.
    pub join: Option<String>,
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
    peers: String,
    extra_args: Vec<String>,
}

/// A free loopback port. The OS may hand it to someone else before the node
/// binds it; the window is small and the nodes fail loudly if it happens.
fn free_port() -> u16 {
    txlog::local_cluster::free_port().expect("free port")
}

impl TestCluster {
    /// Start `n` nodes (ids 1..=n) with extra `txlog node` flags.
    pub fn start(n: usize, extra_args: &[&str]) -> TestCluster {
        let ids: Vec<u64> = (1..=n as u64).collect();
        Self::start_with_ids(&ids, extra_args)
    }

    /// Start one node per id (regions in [`REGIONS`] order) with extra `txlog node` flags.
    pub fn start_with_ids(ids: &[u64], extra_args: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<TestNode> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| TestNode {
                id,
                address: format!("127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(REGIONS[i]),
                child: None,
                join: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{}={}@{}", n.id, REGIONS[i], n.address))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TestCluster {
            dir,
            nodes,
            peers,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        for &id in ids {
            cluster.start_node(id);
        }
        cluster
    }

    fn position(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[self.position(id)]
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Add node `id` (a new, empty node) that joins through `via` with `--join`.
    pub fn start_joining(&mut self, id: u64, region: &str, via: u64) {
        assert!(self.nodes.iter().all(|n| n.id != id), "node {id} exists already");
        let via = self.node(via).address.clone();
        self.nodes.push(TestNode {
            id,
            address: format!("127.0.0.1:{}", free_port()),
            data_dir: self.dir.path().join(format!("{region}-{id}")),
            child: None,
            join: Some(via),
        });
        self.spawn(id, Some(region));
    }

    pub fn start_node(&mut self, id: u64) {
        self.spawn(id, None);
    }

    fn spawn(&mut self, id: u64, region: Option<&str>) {
        let peers = self.peers.clone();
        let extra = self.extra_args.clone();
        let position = self.position(id);
        let node = &mut self.nodes[position];
        let region = region
            .map(str::to_string)
            .or_else(|| REGIONS.get(position).map(|r| r.to_string()))
            .expect("region");
        let membership = match &node.join {
            Some(via) => ["--join".to_string(), via.clone()],
            None => ["--peers".to_string(), peers],
        };
        assert!(node.child.is_none(), "node {id} already running");
        std::fs::create_dir_all(&node.data_dir).unwrap();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.join("node.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_txlog"))
            .arg("node")
            .args(["--id", &id.to_string()])
            .args(["--region", &region])
            .args(["--listen", &node.address])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(&membership)
            .args(["--metrics-listen", "off"])
            .args(&extra)
            .env("TXLOG_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn txlog node");
        node.child = Some(child);
    }

    /// `kill -9` one node.
    pub fn kill(&mut self, id: u64) {
        let position = self.position(id);
        let node = &mut self.nodes[position];
        if let Some(mut child) = node.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// SIGTERM one node and wait for it to exit (it flushes sled on the way out).
    pub fn stop(&mut self, id: u64) {
        let position = self.position(id);
        let node = &mut self.nodes[position];
        if let Some(mut child) = node.child.take() {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            child.wait().expect("reap");
        }
    }

    /// Wipe node `id`'s WAL and state (it must be stopped).
    pub fn wipe(&mut self, id: u64) {
        let node = self.node(id);
        assert!(node.child.is_none(), "stop node {id} before wiping it");
        for name in ["wal", "state"] {
            let _ = std::fs::remove_dir_all(node.data_dir.join(name));
        }
    }

    /// Append `count` records (100 per request) with txids `{prefix}-{i}`.
    pub async fn append_many(&self, prefix: &str, count: usize) -> Vec<u64> {
        let client = self.client();
        let mut seqs = Vec::new();
        for start in (0..count).step_by(100) {
            let records = (start..(start + 100).min(count))
                .map(|i| txlog_proto::Record {
                    txid: format!("{prefix}-{i}").into_bytes().into(),
                    channel: "load".into(),
                    payload: vec![b'p'; 200].into(),
                    client_time_ns: 0,
                })
                .collect();
            let results = client
                .append(records)
                .await
                .unwrap_or_else(|e| panic!("append: {e}\n{}", self.logs()));
            seqs.extend(results.iter().map(|r| r.seq));
        }
        seqs
    }

    /// Wait for node `id` to reach the leader's last seq, with a trickle of
    /// appends meanwhile (an idle leader has no reason to re-probe a follower).
    pub async fn catch_up_with_trickle(&self, id: u64, timeout: Duration) {
        let client = self.client();
        let target = client.cluster_status().await.expect("status").last_seq;
        let trickle = {
            let client = client.clone();
            tokio::spawn(async move {
                for n in 0u64.. {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = client
                        .append_one("trickle", format!("trickle-{n}").as_bytes(), b"t")
                        .await;
                }
            })
        };
        self.wait_for_seq(id, target, timeout).await;
        trickle.abort();
    }

    /// Voter ids in the leader's membership.
    pub async fn voters(&self) -> Vec<u64> {
        let status = self.client().cluster_status().await.expect("status");
        status
            .nodes
            .iter()
            .filter(|n| n.kind == "voter")
            .map(|n| n.id)
            .collect()
    }

    /// Wait until the voter set is `expected`.
    pub async fn wait_for_voters(&self, expected: &[u64], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(status) = self.client().cluster_status().await {
                let mut voters: Vec<u64> = status
                    .nodes
                    .iter()
                    .filter(|n| n.kind == "voter")
                    .map(|n| n.id)
                    .collect();
                voters.sort();
                if status.leader_id.is_some() && voters == expected {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("voters never became {expected:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn addresses(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.address.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client(&self) -> Client {
        Client::new(
            &self.addresses(),
            ClientOptions {
                attempts_max: 100,
                ..ClientOptions::default()
            },
        )
        .expect("client")
    }

    /// Wait for a leader; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let status = self
            .client()
            .wait_for_leader(timeout)
            .await
            .unwrap_or_else(|e| panic!("no leader: {e}\n{}", self.logs()));
        status.leader_id.expect("leader id")
    }

    /// Wait until node `id` has applied at least `seq`.
    pub async fn wait_for_seq(&self, id: u64, seq: u64, timeout: Duration) {
        let client = self.client();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(status) = client.node_status(&self.node(id).address).await {
                if status.last_seq >= seq {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("node {id} did not reach seq {seq} in {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every record on node `id`, by stale reads of its own state machine.
    pub async fn read_all_from(&self, id: u64) -> Vec<txlog_proto::CommittedRecord> {
        let client = self.client();
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let response = client
                .read_at(&self.node(id).address, from, 10_000, true)
                .await
                .unwrap_or_else(|e| panic!("read from node {id}: {e}"));
            if response.records.is_empty() {
                return out;
            }
            from = response.next_seq;
            out.extend(response.records);
        }
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(node.data_dir.join("node.log")).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
                let end = (at + 4).min(lines.len());
                out.push_str(&format!(
                    "--- node {} PANIC ---\n{}\n",
                    node.id,
                    lines[at..end].join("\n")
                ));
            }
            let tail = &lines[lines.len().saturating_sub(25)..];
            out.push_str(&format!("--- node {} log tail ---\n{}\n", node.id, tail.join("\n")));
        }
        out
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::env::var_os("TXLOG_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("test data kept in {}", dir.keep().display());
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
