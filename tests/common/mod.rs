//! Test harness: real `txlog node` processes on loopback, started through
//! the testkit's `LocalCluster` and killed in `Drop`. What it adds: node
//! lookup by id, panics with every node's log tail, a data directory that
//! `TXLOG_TEST_KEEP` keeps.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use txlog_client::Client;
use txlog_client::ClientOptions;
use txlog_testkit::Launch;
use txlog_testkit::LocalCluster;
use txlog_testkit::NodeSpec;
use txlog_testkit::Stopped;

pub use txlog_testkit::REGIONS;

/// Clusters are heavy on a two-core machine: run one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a SIGTERM'd node may take to exit before the test fails.
const STOP_GRACE: Duration = Duration::from_secs(60);
/// Lines of each node's log in a failure message.
const LOG_TAIL_LINES: usize = 25;

pub struct TestCluster {
    /// Declared before `dir`, so its nodes are killed before their data goes.
    local: LocalCluster,
    pub dir: tempfile::TempDir,
    launch: Launch,
    extra_args: Vec<String>,
}

impl TestCluster {
    /// Start `n` nodes (ids 1..=n) with extra `txlog node` flags.
    pub fn start(n: usize, extra_args: &[&str]) -> TestCluster {
        let ids: Vec<u64> = (1..=n as u64).collect();
        Self::start_with_ids(&ids, extra_args)
    }

    /// Start one node per id (regions in [`REGIONS`] order) with extra `txlog node` flags.
    pub fn start_with_ids(ids: &[u64], extra_args: &[&str]) -> TestCluster {
        Self::launch(ids, extra_args, true)
    }

    /// [`TestCluster::start`] with sealing off (`--seal false`).
    pub fn start_unsealed(n: usize, extra_args: &[&str]) -> TestCluster {
        let ids: Vec<u64> = (1..=n as u64).collect();
        Self::launch(&ids, extra_args, false)
    }

    fn launch(ids: &[u64], extra_args: &[&str], sealed: bool) -> TestCluster {
        Self::launch_with(ids, extra_args, sealed, |_| Vec::new())
    }

    /// [`TestCluster::start_with_ids`] with each node serving `/metrics` on a
    /// free loopback port (`node(id).metrics`).
    pub fn start_with_metrics(ids: &[u64], extra_args: &[&str]) -> TestCluster {
        let ports: Vec<String> = ids
            .iter()
            .map(|_| format!("127.0.0.1:{}", txlog_testkit::free_port().expect("free port")))
            .collect();
        let mut cluster = Self::launch_specs(ids, extra_args, true, |_| Vec::new(), Some(&ports));
        for &id in ids {
            cluster.start_node(id);
        }
        cluster
    }

    /// [`TestCluster::start_with_ids`] where each node also gets `node_args(id)`.
    pub fn start_with_node_args(
        ids: &[u64],
        extra_args: &[&str],
        node_args: impl Fn(u64) -> Vec<String>,
    ) -> TestCluster {
        Self::launch_with(ids, extra_args, true, node_args)
    }

    fn launch_with(
        ids: &[u64],
        extra_args: &[&str],
        sealed: bool,
        node_args: impl Fn(u64) -> Vec<String>,
    ) -> TestCluster {
        let mut cluster = Self::launch_specs(ids, extra_args, sealed, node_args, None);
        for &id in ids {
            cluster.start_node(id);
        }
        cluster
    }

    /// The cluster's node specs (metrics on `metrics[i]` when given), no node started.
    fn launch_specs(
        ids: &[u64],
        extra_args: &[&str],
        sealed: bool,
        node_args: impl Fn(u64) -> Vec<String>,
        metrics: Option<&[String]>,
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let specs = ids
            .iter()
            .zip(REGIONS)
            .enumerate()
            .map(|(i, (&id, region))| NodeSpec {
                extra_args: extra_args.iter().cloned().chain(node_args(id)).collect(),
                metrics: metrics.map(|m| m[i].clone()),
                ..NodeSpec::loopback(id, region, dir.path().join(region)).expect("free port")
            })
            .collect();
        let mut local =
            LocalCluster::with_exe(specs, PathBuf::from(env!("CARGO_BIN_EXE_txlog"))).in_caller_process_group();
        if !sealed {
            local = local.unsealed();
        }
        TestCluster {
            local,
            dir,
            launch: Launch {
                env: vec![("TXLOG_LOG".into(), "info".into())],
                ..Launch::default()
            },
            extra_args,
        }
    }

    fn position(&self, id: u64) -> usize {
        self.local
            .index_of(id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// The key file the nodes were given (a sealed cluster).
    pub fn key_file(&self) -> Option<&std::path::Path> {
        self.local.key_file()
    }

    /// Node `id`'s spec: its `address` and `data_dir`.
    pub fn node(&self, id: u64) -> &NodeSpec {
        &self.local.nodes[self.position(id)].spec
    }

    pub fn ids(&self) -> Vec<u64> {
        self.local.nodes.iter().map(|n| n.spec.id).collect()
    }

    /// Specs of the nodes whose process is running.
    pub fn running(&self) -> Vec<&NodeSpec> {
        (0..self.local.nodes.len())
            .filter(|&i| self.local.pid(i).is_some())
            .map(|i| &self.local.nodes[i].spec)
            .collect()
    }

    /// Add node `id` (a new, empty node) that joins through `via` with `--join`.
    pub fn start_joining(&mut self, id: u64, region: &str, via: u64) {
        self.start_joining_with(id, region, via, &[]);
    }

    /// [`Self::start_joining`] with more `txlog node` flags (e.g. `--learner`).
    pub fn start_joining_with(&mut self, id: u64, region: &str, via: u64, args: &[&str]) {
        let mut extra_args = self.extra_args.clone();
        extra_args.extend(args.iter().map(|a| a.to_string()));
        let spec = NodeSpec {
            join: Some(self.node(via).address.clone()),
            extra_args,
            ..NodeSpec::loopback(id, region, self.dir.path().join(format!("{region}-{id}"))).expect("free port")
        };
        self.local.add(spec);
        self.start_node(id);
    }

    pub fn start_node(&mut self, id: u64) {
        let position = self.position(id);
        self.local
            .start_with(position, &self.launch)
            .unwrap_or_else(|e| panic!("start node {id}: {e:#}"));
    }

    /// `kill -9` one node.
    pub fn kill(&mut self, id: u64) {
        let position = self.position(id);
        self.local.kill(position);
    }

    /// SIGSTOP one node: it keeps its sockets, its peers hear nothing.
    pub fn pause(&self, id: u64) {
        self.local.pause(self.position(id));
    }

    /// SIGCONT a paused node.
    pub fn resume(&self, id: u64) {
        self.local.resume(self.position(id));
    }

    /// SIGTERM one node and wait for it to exit (it flushes sled on the way out).
    pub async fn stop(&mut self, id: u64) {
        let position = self.position(id);
        match self.local.stop(position, STOP_GRACE).await {
            Stopped::NotRunning | Stopped::Exited(_) => {}
            Stopped::Killed => panic!(
                "node {id} did not exit within {STOP_GRACE:?} of SIGTERM\n{}",
                self.logs()
            ),
        }
    }

    /// Wipe node `id`'s WAL and state (it must be stopped).
    pub fn wipe(&mut self, id: u64) {
        let position = self.position(id);
        self.local.wipe(position).expect("wipe");
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
        txlog_testkit::catch_up_with_trickle(&client, &self.node(id).address, target, timeout)
            .await
            .unwrap_or_else(|e| panic!("node {id}: {e:#}\n{}", self.logs()));
    }

    /// Voter ids in the leader's membership, ascending.
    pub async fn voters(&self) -> Vec<u64> {
        self.client().cluster_status().await.expect("status").voters()
    }

    /// Wait until the voter set is `expected` (ascending).
    pub async fn wait_for_voters(&self, expected: &[u64], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(status) = self.client().cluster_status().await {
                if status.leader_id.is_some() && status.voters() == expected {
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
        self.local.addresses()
    }

    /// A client signing with the root key.
    pub fn client(&self) -> Client {
        self.local
            .client(ClientOptions {
                attempts_max: 100,
                ..ClientOptions::default()
            })
            .expect("client")
    }

    /// Where the `txlog` CLI reaches this cluster, signing with the root key.
    pub fn cli(&self) -> Cli {
        Cli {
            cluster: self.addresses(),
            secret_file: self.local.root_key_file().map(|p| p.to_path_buf()),
            certs_dir: self.local.certs_dir().map(|p| p.to_path_buf()),
        }
    }

    pub fn root_key_file(&self) -> Option<&std::path::Path> {
        self.local.root_key_file()
    }

    /// A raw gRPC connection to `address`, over TLS with the local client
    /// certificate on a secured cluster; `None` while nothing listens there.
    pub async fn channel(&self, address: &str) -> Option<tonic::transport::Channel> {
        let tls = self.local.client_tls().expect("client certificate");
        txlog_client::endpoint(address, tls.map(|t| t.client_config()))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
            .ok()
    }

    /// The client certificate a client of this cluster speaks TLS with.
    pub fn local_client_tls(&self) -> Option<txlog_client::TlsPem> {
        self.local.client_tls().expect("client certificate")
    }

    /// The CA and certificates the nodes and clients use.
    pub fn certs_dir(&self) -> Option<&std::path::Path> {
        self.local.certs_dir()
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
        txlog_testkit::wait_for_seq(&self.client(), &self.node(id).address, seq, timeout)
            .await
            .unwrap_or_else(|e| panic!("node {id}: {e:#}\n{}", self.logs()));
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
        self.local.log_tails(LOG_TAIL_LINES)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::env::var_os("TXLOG_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("test data kept in {}", dir.keep().display());
        }
        // Dropping `local` kills every node still running.
    }
}

/// The `txlog` binary run with `args` against the cluster at `cluster`
/// (comma-separated addresses): success, stdout, stderr.
pub fn txlog(target: &(impl CliTarget + ?Sized), args: &[&str]) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_txlog"));
    command
        .args(args)
        .env("TXLOG_CLUSTER", target.cluster())
        .env_remove("TXLOG_CREDENTIALS")
        .env_remove("TXLOG_CLAIM_ROLES");
    command.envs(txlog_testkit::cli_env(target.secret_file(), target.certs_dir()));
    let out = command.output().expect("run txlog");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A cluster the `txlog` CLI talks to, the secret file it signs with and
/// the certificates it speaks TLS with.
#[derive(Clone)]
pub struct Cli {
    pub cluster: String,
    pub secret_file: Option<PathBuf>,
    pub certs_dir: Option<PathBuf>,
}

impl Cli {
    /// `txlog dev` on `base`..`base + 2`, with the root key it made in `data_dir`.
    pub fn dev(base: u16, data_dir: &std::path::Path) -> Cli {
        Cli {
            cluster: format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", base, base + 1, base + 2),
            secret_file: Some(data_dir.join(txlog_testkit::ROOT_KEY_FILE)),
            certs_dir: Some(data_dir.join(txlog_testkit::CERTS_DIR)),
        }
    }
}

/// What [`txlog`] runs against: a cluster, and a secret file or none.
pub trait CliTarget {
    fn cluster(&self) -> &str;
    fn secret_file(&self) -> Option<&std::path::Path>;
    fn certs_dir(&self) -> Option<&std::path::Path> {
        None
    }
}

/// Addresses alone: unsigned calls (commands that need no cluster, or an insecure one).
impl CliTarget for str {
    fn cluster(&self) -> &str {
        self
    }
    fn secret_file(&self) -> Option<&std::path::Path> {
        None
    }
}

impl CliTarget for String {
    fn cluster(&self) -> &str {
        self
    }
    fn secret_file(&self) -> Option<&std::path::Path> {
        None
    }
}

impl CliTarget for Cli {
    fn cluster(&self) -> &str {
        &self.cluster
    }
    fn secret_file(&self) -> Option<&std::path::Path> {
        self.secret_file.as_deref()
    }
    fn certs_dir(&self) -> Option<&std::path::Path> {
        self.certs_dir.as_deref()
    }
}

/// The value of the unlabelled metric `name` at the metrics endpoint
/// `address`, or what came back instead (a node starting up may not serve
/// metrics yet).
pub async fn scrape_metric(address: &str, name: &str) -> Result<f64, String> {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .ok_or(text)
}
