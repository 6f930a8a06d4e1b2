//! Test harness: real `txlog node` processes on loopback, killed in `Drop`.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::net::TcpListener;
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
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl TestCluster {
    /// Start `n` nodes with extra `txlog node` flags.
    pub fn start(n: usize, extra_args: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<TestNode> = (0..n)
            .map(|i| TestNode {
                id: i as u64 + 1,
                address: format!("127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(REGIONS[i]),
                child: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}@{}", n.id, REGIONS[n.id as usize - 1], n.address))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TestCluster {
            dir,
            nodes,
            peers,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        for id in 1..=n as u64 {
            cluster.start_node(id);
        }
        cluster
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[id as usize - 1]
    }

    pub fn start_node(&mut self, id: u64) {
        let peers = self.peers.clone();
        let extra = self.extra_args.clone();
        let node = &mut self.nodes[id as usize - 1];
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
            .args(["--region", REGIONS[id as usize - 1]])
            .args(["--listen", &node.address])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--peers", &peers])
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
        let node = &mut self.nodes[id as usize - 1];
        if let Some(mut child) = node.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
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
            let tail = &lines[lines.len().saturating_sub(25)..];
            out.push_str(&format!("--- node {} log tail ---\n{}\n", node.id, tail.join("\n")));
        }
        out
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
