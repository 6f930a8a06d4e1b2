//! Child `txlog node` processes: how one is described ([`NodeSpec`]), how
//! one start of it differs ([`Launch`]), and the set of them
//! ([`LocalCluster`]).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use txlog_client::Client;
use txlog_client::ClientOptions;
use txlog_client::Credentials;
use txlog_client::TlsFiles;
use txlog_client::TlsPem;

use crate::free_port;

/// Where a node keeps its log lines, under its data directory.
const NODE_LOG: &str = "node.log";
/// What a wipe removes from a data directory: the WAL and the state machine.
const WIPED_DIRS: [&str; 2] = ["wal", "state"];

/// How one node is started.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u64,
    pub region: String,
    /// The address peers and clients use (`--advertise`, and this node's `--peers` entry).
    pub address: String,
    /// Where the node listens, when not at `address` (e.g. behind a fault proxy).
    pub listen: Option<String>,
    pub metrics: Option<String>,
    pub data_dir: PathBuf,
    /// Join a running cluster through this member (`--join`) instead of
    /// founding it with the others (`--peers`).
    pub join: Option<String>,
    /// More `txlog node` flags (timing, snapshot policy, ...).
    pub extra_args: Vec<String>,
}

impl NodeSpec {
    /// A node on a free loopback port, no metrics, no extra flags.
    pub fn loopback(id: u64, region: &str, data_dir: PathBuf) -> anyhow::Result<NodeSpec> {
        Ok(NodeSpec {
            id,
            region: region.to_string(),
            address: format!("127.0.0.1:{}", free_port()?),
            listen: None,
            metrics: None,
            data_dir,
            join: None,
            extra_args: Vec::new(),
        })
    }

    /// This node's `node.log`.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join(NODE_LOG)
    }
}

pub struct LocalNode {
    pub spec: NodeSpec,
    child: Option<Child>,
    pub restarts: u32,
}

/// A set of node processes founded together through `--peers`, plus any
/// added later that join through `--join`.
pub struct LocalCluster {
    pub nodes: Vec<LocalNode>,
    peers: String,
    exe: PathBuf,
    /// Each node in a process group of its own (see the crate docs).
    own_process_group: bool,
    /// The cluster key file every node gets (`--key-file`), made with
    /// `txlog keys init` before the first start; `None` runs unsealed.
    key_file: Option<PathBuf>,
    /// The root client key every node gets (`--root-key-file`), made with
    /// `txlog token secret` before the first start; `None` runs `--insecure`.
    root_key_file: Option<PathBuf>,
    /// The CA and certificates (`txlog certs`), made before the first start
    /// of each node; `None` runs `--insecure`.
    certs_dir: Option<PathBuf>,
}

/// The key file's name, beside the nodes' data directories.
pub const KEY_FILE: &str = "cluster.key";
/// The root client key's secret file, beside the key file.
pub const ROOT_KEY_FILE: &str = "root.secret";
/// The root key's id in local clusters.
pub const ROOT_KEY_ID: &str = "root";
/// The CA and certificates' directory, beside the key file.
pub const CERTS_DIR: &str = "certs";
/// The name of the client certificate local clients use (`client-admin.pem`).
pub const CLIENT_CERT_NAME: &str = "admin";

/// The client certificate files in `certs_dir`.
pub fn client_tls_files(certs_dir: &Path) -> TlsFiles {
    TlsFiles::in_dir(certs_dir, &format!("client-{CLIENT_CERT_NAME}"))
}

/// The environment that points the `txlog` CLI at a cluster's root key
/// (`TXLOG_CREDENTIALS`) and client certificate (`TXLOG_CLIENT_TLS_*`).
pub fn cli_env(root_key_file: Option<&Path>, certs_dir: Option<&Path>) -> Vec<(&'static str, PathBuf)> {
    let mut env = Vec::new();
    if let Some(root) = root_key_file {
        env.push(("TXLOG_CREDENTIALS", root.to_path_buf()));
    }
    if let Some(dir) = certs_dir {
        let tls = client_tls_files(dir);
        env.push(("TXLOG_CLIENT_TLS_CA_FILE", tls.ca));
        env.push(("TXLOG_CLIENT_TLS_CERT_FILE", tls.cert));
        env.push(("TXLOG_CLIENT_TLS_KEY_FILE", tls.key));
    }
    env
}

/// Node `id`'s certificate files in `certs_dir` (`node-n<ID>.pem`).
pub fn node_tls_files(certs_dir: &Path, id: u64) -> TlsFiles {
    TlsFiles::in_dir(certs_dir, &format!("node-n{id}"))
}

/// How one start of a node differs from the plain command (chaos runs use
/// this for clock skew and network namespaces, tests for the log level).
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Extra environment (e.g. `LD_PRELOAD` + `FAKETIME`).
    pub env: Vec<(String, String)>,
    /// A command the node runs under, e.g. `ip netns exec NS` (it must exec,
    /// so the pid stays the node's).
    pub wrapper: Vec<String>,
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The node was not running.
    NotRunning,
    /// It exited on SIGTERM within the grace period.
    Exited(ExitStatus),
    /// It was still running after the grace period and got SIGKILL.
    Killed,
}

/// The `txlog` binary: this very program if it is `txlog` (`txlog dev`, the
/// benches), else the `txlog` next to it (`txlog-chaos`, built alongside).
pub fn txlog_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the running binary")?;
    if exe.file_name().is_some_and(|name| name == "txlog") {
        return Ok(exe);
    }
    Ok(exe.with_file_name("txlog"))
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

impl LocalCluster {
    /// Nodes run `txlog node …` with [`txlog_binary`].
    pub fn new(specs: Vec<NodeSpec>) -> anyhow::Result<Self> {
        Ok(Self::with_exe(specs, txlog_binary()?))
    }

    /// Nodes run `exe node …`; `specs` without `join` found the cluster.
    pub fn with_exe(specs: Vec<NodeSpec>, exe: PathBuf) -> Self {
        let peers = specs
            .iter()
            .filter(|n| n.join.is_none())
            .map(|n| format!("{}={}@{}", n.id, n.region, n.address))
            .collect::<Vec<_>>()
            .join(",");
        // Beside the first node's data dir: the nodes of one cluster share it.
        let dir = specs
            .first()
            .map(|n| n.data_dir.parent().unwrap_or(Path::new(".")).to_path_buf());
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            peers,
            exe,
            own_process_group: true,
            key_file: dir.as_ref().map(|d| d.join(KEY_FILE)),
            root_key_file: dir.as_ref().map(|d| d.join(ROOT_KEY_FILE)),
            certs_dir: dir.as_ref().map(|d| d.join(CERTS_DIR)),
        };
        for spec in specs {
            cluster.add(spec);
        }
        cluster
    }

    /// Keep nodes in the caller's process group, so a signal to the group
    /// (a Ctrl-C at a test run) reaches them too.
    pub fn in_caller_process_group(mut self) -> Self {
        self.own_process_group = false;
        self
    }

    /// Run the nodes unsealed (`--seal false`): only to measure what
    /// sealing costs.
    pub fn unsealed(mut self) -> Self {
        self.key_file = None;
        self
    }

    /// Run the nodes `--insecure` (plain connections, no tokens asked,
    /// every call allowed): only to measure what access control costs.
    pub fn insecure(mut self) -> Self {
        self.root_key_file = None;
        self.certs_dir = None;
        self
    }

    /// The directory of the CA and certificates, unless insecure.
    pub fn certs_dir(&self) -> Option<&Path> {
        self.certs_dir.as_deref()
    }

    /// What a client of this cluster speaks TLS with: the `admin` client
    /// certificate, unless the nodes run insecure. Made on first use.
    pub fn client_tls(&self) -> anyhow::Result<Option<TlsPem>> {
        let Some(dir) = &self.certs_dir else {
            return Ok(None);
        };
        self.ensure_certs(None)?;
        Ok(Some(client_tls_files(dir).read().map_err(anyhow::Error::msg)?))
    }

    /// Make the CA (with the client certificate) unless it exists, and
    /// node `id`'s certificate unless it exists.
    fn ensure_certs(&self, node: Option<u64>) -> anyhow::Result<()> {
        let Some(dir) = &self.certs_dir else {
            return Ok(());
        };
        let shown = dir.display().to_string();
        if !dir.join("ca.pem").exists() {
            self.run_txlog(&["certs", "init", "--dir", &shown, "--client", CLIENT_CERT_NAME])?;
        }
        if let Some(id) = node {
            if !node_tls_files(dir, id).cert.exists() {
                self.run_txlog(&["certs", "issue", "--dir", &shown, "--node", &format!("n{id}")])?;
            }
        }
        Ok(())
    }

    /// Run `txlog ARGS` to completion; its stderr is the error if it fails.
    fn run_txlog(&self, args: &[&str]) -> anyhow::Result<()> {
        let shown = format!("txlog {}", args.join(" "));
        let output = Command::new(&self.exe)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {shown}"))?;
        anyhow::ensure!(
            output.status.success(),
            "{shown} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(())
    }

    /// The root key's secret file the nodes get, unless insecure.
    pub fn root_key_file(&self) -> Option<&Path> {
        self.root_key_file.as_deref()
    }

    /// What a client of this cluster signs its calls with: the root key,
    /// unless the nodes run insecure. The file is made on first use.
    pub fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        let Some(path) = &self.root_key_file else {
            return Ok(None);
        };
        self.ensure_root_key_file()?;
        let credentials = Credentials::from_file(path, Vec::new()).map_err(anyhow::Error::msg)?;
        Ok(Some(credentials))
    }

    /// A client of every node, signing with [`Self::credentials`] and
    /// speaking TLS with [`Self::client_tls`].
    pub fn client(&self, options: ClientOptions) -> anyhow::Result<Client> {
        let mut client = Client::new(&self.addresses(), options)?;
        if let Some(credentials) = self.credentials()? {
            client = client.with_credentials(credentials);
        }
        if let Some(tls) = self.client_tls()? {
            client = client.with_tls(&tls);
        }
        Ok(client)
    }

    /// The key file the nodes get, if sealed.
    pub fn key_file(&self) -> Option<&Path> {
        self.key_file.as_deref()
    }

    /// Create the key file with `txlog keys init` unless it exists.
    fn ensure_key_file(&self) -> anyhow::Result<()> {
        self.ensure_file(self.key_file.as_deref(), &["keys", "init"])
    }

    /// Create the root key's secret file with `txlog token secret` unless it exists.
    fn ensure_root_key_file(&self) -> anyhow::Result<()> {
        self.ensure_file(
            self.root_key_file.as_deref(),
            &["token", "secret", "--key-id", ROOT_KEY_ID],
        )
    }

    /// Run `txlog COMMAND --out PATH` unless `path` exists (or is `None`).
    fn ensure_file(&self, path: Option<&Path>, command: &[&str]) -> anyhow::Result<()> {
        let Some(path) = path else {
            return Ok(());
        };
        if path.exists() {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let out = path.display().to_string();
        let mut args = command.to_vec();
        args.extend(["--out", &out]);
        self.run_txlog(&args)
    }

    /// Add a node that is not running yet (start it with [`Self::start`]);
    /// returns its index. It is not in the founders' `--peers`, so it
    /// should join through `spec.join`.
    pub fn add(&mut self, spec: NodeSpec) -> usize {
        assert!(self.index_of(spec.id).is_none(), "node {} exists already", spec.id);
        self.nodes.push(LocalNode {
            spec,
            child: None,
            restarts: 0,
        });
        self.nodes.len() - 1
    }

    /// Comma-separated client addresses of every node.
    pub fn addresses(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.spec.address.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.spec.id == id)
    }

    /// Start node `i` (appending its output to `<data_dir>/node.log`).
    pub fn start(&mut self, i: usize) -> anyhow::Result<u32> {
        self.start_with(i, &Launch::default())
    }

    /// The `txlog node` command for node `i` under `launch`.
    fn command(&self, i: usize, launch: &Launch) -> Command {
        let spec = &self.nodes[i].spec;
        let mut command = match launch.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        let membership = match &spec.join {
            Some(via) => ["--join", via.as_str()],
            None => ["--peers", self.peers.as_str()],
        };
        command
            .arg("node")
            .args(["--id", &spec.id.to_string()])
            .args(["--region", &spec.region])
            .args(["--listen", spec.listen.as_deref().unwrap_or(&spec.address)])
            .args(["--advertise", &spec.address])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(membership)
            .args(["--metrics-listen", spec.metrics.as_deref().unwrap_or("off")]);
        match &self.key_file {
            Some(path) => command.arg("--key-file").arg(path),
            None => command.args(["--seal", "false"]),
        };
        match (&self.root_key_file, &self.certs_dir) {
            (Some(path), Some(certs)) => {
                let tls = node_tls_files(certs, spec.id);
                command
                    .arg("--root-key-file")
                    .arg(path)
                    .arg("--tls-ca-file")
                    .arg(tls.ca)
                    .arg("--tls-cert-file")
                    .arg(tls.cert)
                    .arg("--tls-key-file")
                    .arg(tls.key)
            }
            _ => command.arg("--insecure"),
        };
        command
            .args(&spec.extra_args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if self.own_process_group {
            // A Ctrl-C in the terminal reaches the parent, which stops the
            // nodes itself (and a chaos run keeps its nodes up while it
            // heals and reads them).
            command.process_group(0);
        }
        command
    }

    /// Start node `i` with `launch`'s environment, wrapper and flags.
    pub fn start_with(&mut self, i: usize, launch: &Launch) -> anyhow::Result<u32> {
        let spec = &self.nodes[i].spec;
        anyhow::ensure!(self.nodes[i].child.is_none(), "node {} is already running", spec.id);
        std::fs::create_dir_all(&spec.data_dir).with_context(|| format!("create {}", spec.data_dir.display()))?;
        self.ensure_key_file()?;
        self.ensure_root_key_file()?;
        self.ensure_certs(Some(self.nodes[i].spec.id))?;
        let spec = &self.nodes[i].spec;
        let log_path = spec.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let child = self
            .command(i, launch)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start txlog node")?;
        let pid = child.id();
        let spec = &self.nodes[i].spec;
        tracing::info!(id = spec.id, region = %spec.region, pid, "node process started");
        self.nodes[i].child = Some(child);
        Ok(pid)
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(|c| c.id())
    }

    /// SIGSTOP node `i` (it keeps its sockets; peers see silence).
    pub fn pause(&self, i: usize) {
        if let Some(pid) = self.pid(i) {
            signal(pid, libc::SIGSTOP);
        }
    }

    /// SIGCONT node `i`.
    pub fn resume(&self, i: usize) {
        if let Some(pid) = self.pid(i) {
            signal(pid, libc::SIGCONT);
        }
    }

    /// `kill -9` node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM node `i` and wait for it to exit; SIGKILL after `grace`.
    pub async fn stop(&mut self, i: usize, grace: Duration) -> Stopped {
        let Some(pid) = self.pid(i) else {
            return Stopped::NotRunning;
        };
        signal(pid, libc::SIGTERM);
        self.reap_within(i, grace).await
    }

    /// Wait up to `grace` for node `i`, already signalled, to exit; SIGKILL it after.
    async fn reap_within(&mut self, i: usize, grace: Duration) -> Stopped {
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.exited(i) {
                return Stopped::Exited(status);
            }
            if self.nodes[i].child.is_none() {
                return Stopped::NotRunning;
            }
            if Instant::now() >= deadline {
                eprintln!("node {} did not stop in {grace:?}; killing it", self.nodes[i].spec.id);
                self.kill(i);
                return Stopped::Killed;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status of node `i` if it has exited since it was started
    /// (it is then reaped: `pid(i)` is `None`).
    pub fn exited(&mut self, i: usize) -> Option<ExitStatus> {
        let node = &mut self.nodes[i];
        match node.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => {
                node.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// SIGTERM every node at once, then wait for each.
    pub async fn stop_all(&mut self, grace: Duration) {
        for node in &self.nodes {
            if let Some(child) = &node.child {
                signal(child.id(), libc::SIGTERM);
            }
        }
        for i in 0..self.nodes.len() {
            self.reap_within(i, grace).await;
        }
    }

    /// Remove node `i`'s WAL and state machine, so it starts empty; its
    /// `node.log` stays. The node must not be running.
    pub fn wipe(&self, i: usize) -> anyhow::Result<()> {
        let spec = &self.nodes[i].spec;
        anyhow::ensure!(self.pid(i).is_none(), "stop node {} before wiping it", spec.id);
        for name in WIPED_DIRS {
            remove_dir_if_present(&spec.data_dir.join(name))?;
        }
        Ok(())
    }

    /// The last `lines` lines of every node's log, and the lines after a
    /// panic if one is there: for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(node.spec.log_path()).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            if let Some(at) = all.iter().position(|l| l.contains("panicked at")) {
                let end = (at + 4).min(all.len());
                out.push_str(&format!(
                    "--- node {} PANIC ---\n{}\n",
                    node.spec.id,
                    all[at..end].join("\n")
                ));
            }
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!(
                "--- node {} log tail ---\n{}\n",
                node.spec.id,
                tail.join("\n")
            ));
        }
        out
    }
}

fn remove_dir_if_present(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(command: &Command) -> Vec<String> {
        command.get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    /// Founders get `--peers` naming only the founders; a node added with
    /// `join` gets `--join` instead; every node advertises its address.
    #[test]
    fn founders_use_peers_and_added_nodes_join() {
        let spec = |id: u64, port: u16| NodeSpec {
            address: format!("127.0.0.1:{port}"),
            ..NodeSpec::loopback(id, "paris", PathBuf::from(format!("/tmp/n{id}"))).unwrap()
        };
        let mut cluster = LocalCluster::with_exe(vec![spec(7, 7001), spec(9, 7002)], PathBuf::from("txlog"));
        let joiner = cluster.add(NodeSpec {
            join: Some("127.0.0.1:7001".into()),
            ..spec(11, 7003)
        });
        let founder = args(&cluster.command(0, &Launch::default()));
        let peers = founder.iter().position(|a| a == "--peers").expect("--peers");
        assert_eq!(founder[peers + 1], "7=paris@127.0.0.1:7001,9=paris@127.0.0.1:7002");
        let advertise = founder.iter().position(|a| a == "--advertise").expect("--advertise");
        assert_eq!(founder[advertise + 1], "127.0.0.1:7001");
        let key_file = founder.iter().position(|a| a == "--key-file").expect("--key-file");
        assert_eq!(founder[key_file + 1], "/tmp/cluster.key", "beside the data dirs");
        let joining = args(&cluster.command(joiner, &Launch::default()));
        assert!(!joining.iter().any(|a| a == "--peers"), "{joining:?}");
        let join = joining.iter().position(|a| a == "--join").expect("--join");
        assert_eq!(joining[join + 1], "127.0.0.1:7001");
    }
}
