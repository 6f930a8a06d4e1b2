//! Child `txlog node` processes on loopback: the dev cluster and the
//! failover/resync benchmarks run real nodes through this.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;

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
    /// More `txlog node` flags (timing, snapshot policy, ...).
    pub extra_args: Vec<String>,
}

pub struct LocalNode {
    pub spec: NodeSpec,
    child: Option<Child>,
    pub restarts: u32,
}

/// A set of node processes founded together through `--peers`.
pub struct LocalCluster {
    pub nodes: Vec<LocalNode>,
    peers: String,
    exe: PathBuf,
}

/// How one start of a node differs from the plain command (chaos runs use
/// this for clock skew and network namespaces).
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Extra environment (e.g. `LD_PRELOAD` + `FAKETIME`).
    pub env: Vec<(String, String)>,
    /// A command the node runs under, e.g. `ip netns exec NS` (it must exec,
    /// so the pid stays the node's).
    pub wrapper: Vec<String>,
}

/// A free loopback port (bound, then released; good enough for local runs).
pub fn free_port() -> anyhow::Result<u16> {
    free_port_on(std::net::Ipv4Addr::LOCALHOST.into())
}

/// A free port on `ip` (bound, then released).
pub fn free_port_on(ip: std::net::IpAddr) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("find a free port on {ip}"))?;
    Ok(listener.local_addr()?.port())
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

impl LocalCluster {
    /// Nodes run `exe node …` with this very binary.
    pub fn new(specs: Vec<NodeSpec>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locate the txlog binary")?;
        Ok(Self::with_exe(specs, exe))
    }

    /// Nodes run `exe node …`.
    pub fn with_exe(specs: Vec<NodeSpec>, exe: PathBuf) -> Self {
        let peers = specs
            .iter()
            .map(|n| format!("{}={}@{}", n.id, n.region, n.address))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = specs
            .into_iter()
            .map(|spec| LocalNode {
                spec,
                child: None,
                restarts: 0,
            })
            .collect();
        LocalCluster { nodes, peers, exe }
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

    /// Start node `i` with `launch`'s environment, wrapper and flags.
    pub fn start_with(&mut self, i: usize, launch: &Launch) -> anyhow::Result<u32> {
        let node = &mut self.nodes[i];
        let spec = &node.spec;
        std::fs::create_dir_all(&spec.data_dir).with_context(|| format!("create {}", spec.data_dir.display()))?;
        let log_path = spec.data_dir.join("node.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let mut command = match launch.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        };
        command
            .arg("node")
            .args(["--id", &spec.id.to_string()])
            .args(["--region", &spec.region])
            .args(["--listen", spec.listen.as_deref().unwrap_or(&spec.address)])
            .args(["--advertise", &spec.address])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--peers", &self.peers])
            .args(["--metrics-listen", spec.metrics.as_deref().unwrap_or("off")])
            .args(&spec.extra_args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            // Own process group: a Ctrl-C in the terminal reaches the
            // parent, which stops the nodes itself (and a chaos run keeps
            // its nodes up while it heals and reads them).
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command.spawn().context("start txlog node")?;
        let pid = child.id();
        tracing::info!(id = spec.id, region = %spec.region, pid, "node process started");
        node.child = Some(child);
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

    /// SIGTERM node `i` and wait for it to exit (SIGKILL after `grace`).
    pub async fn stop(&mut self, i: usize, grace: Duration) {
        let Some(mut child) = self.nodes[i].child.take() else {
            return;
        };
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => {
                    eprintln!("node {} did not stop in {grace:?}; killing it", self.nodes[i].spec.id);
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    /// The exit status of node `i` if it has exited since it was started.
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
            self.stop(i, grace).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
