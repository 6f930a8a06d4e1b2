//! `txlog dev`: a local three-region cluster as three child `txlog node`
//! processes on loopback. Nodes that exit unexpectedly are restarted (so
//! `kill -9` of one shows failover and catch-up); Ctrl-C or SIGTERM stops all
//! three with SIGTERM, escalating to SIGKILL after a grace period.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::client::Client;

/// The dev cluster's regions, by node id 1, 2, 3.
pub const REGIONS: [&str; 3] = ["paris", "frankfurt", "lyon"];
const STOP_GRACE: Duration = Duration::from_secs(10);
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// Restarts of one node before `txlog dev` gives up on it.
const RESTARTS_MAX: u32 = 20;

pub struct DevOptions {
    pub data_dir: PathBuf,
    pub base_port: u16,
    pub metrics_base_port: u16,
    pub shutdown: CancellationToken,
}

struct DevNode {
    id: u64,
    region: &'static str,
    address: String,
    metrics: Option<String>,
    data_dir: PathBuf,
    child: Option<Child>,
    restarts: u32,
}

impl DevNode {
    fn spawn(&mut self, peers: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.data_dir).with_context(|| format!("create {}", self.data_dir.display()))?;
        let log_path = self.data_dir.join("node.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let exe = std::env::current_exe().context("locate the txlog binary")?;
        let mut command = Command::new(exe);
        command
            .arg("node")
            .args(["--id", &self.id.to_string()])
            .args(["--region", self.region])
            .args(["--listen", &self.address])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--peers", peers])
            .args(["--metrics-listen", self.metrics.as_deref().unwrap_or("off")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command.spawn().context("start txlog node")?;
        tracing::info!(
            id = self.id,
            region = self.region,
            pid = child.id(),
            "node process started"
        );
        self.child = Some(child);
        Ok(())
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

pub async fn run(options: DevOptions) -> anyhow::Result<()> {
    let mut nodes: Vec<DevNode> = (0..3)
        .map(|i| DevNode {
            id: i as u64 + 1,
            region: REGIONS[i],
            address: format!("127.0.0.1:{}", options.base_port + i as u16),
            metrics: (options.metrics_base_port != 0)
                .then(|| format!("127.0.0.1:{}", options.metrics_base_port + i as u16)),
            data_dir: options.data_dir.join(REGIONS[i]),
            child: None,
            restarts: 0,
        })
        .collect();
    let peers = nodes
        .iter()
        .map(|n| format!("{}={}@{}", n.id, n.region, n.address))
        .collect::<Vec<_>>()
        .join(",");
    for node in &mut nodes {
        node.spawn(&peers)?;
    }
    let cluster = nodes.iter().map(|n| n.address.clone()).collect::<Vec<_>>().join(",");
    let client = Client::connect(&cluster)?;
    let started = Instant::now();
    let status = tokio::select! {
        _ = options.shutdown.cancelled() => None,
        status = client.wait_for_leader(LEADER_WAIT) => Some(status),
    };
    match status {
        Some(Ok(status)) => {
            println!(
                "txlog dev cluster is up ({} ms), data in {}",
                started.elapsed().as_millis(),
                options.data_dir.display()
            );
            for node in &nodes {
                let role = status
                    .nodes
                    .iter()
                    .find(|n| n.id == node.id)
                    .map(|n| n.role.as_str())
                    .unwrap_or("?");
                let pid = node.child.as_ref().map(|c| c.id()).unwrap_or(0);
                let metrics = node
                    .metrics
                    .as_ref()
                    .map(|m| format!("  metrics http://{m}/metrics"))
                    .unwrap_or_default();
                println!(
                    "  node {} {:<10} {}  pid {:<7} {:<8}{}",
                    node.id, node.region, node.address, pid, role, metrics
                );
            }
            println!();
            println!("try:");
            println!("  txlog append --channel order-book --txid order-1 'BUY 100 EURUSD 1.0842'");
            println!("  txlog read --from 1");
            println!("  txlog status");
            println!("  txlog tail --from 1");
            println!();
            println!("logs: {}/<region>/node.log    stop: Ctrl-C", options.data_dir.display());
        }
        Some(Err(err)) => {
            eprintln!(
                "txlog dev: no leader after {LEADER_WAIT:?}: {err}; see {}/*/node.log",
                options.data_dir.display()
            );
            stop_all(&mut nodes).await;
            anyhow::bail!("cluster did not come up");
        }
        None => {}
    }

    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while !options.shutdown.is_cancelled() {
        tokio::select! {
            _ = options.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        for node in &mut nodes {
            let exited = match node.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(status),
                _ => None,
            };
            if let Some(status) = exited {
                node.child = None;
                if node.restarts >= RESTARTS_MAX {
                    eprintln!(
                        "txlog dev: node {} ({}) exited ({status}) too often; leaving it down",
                        node.id, node.region
                    );
                    continue;
                }
                node.restarts += 1;
                eprintln!(
                    "txlog dev: node {} ({}) exited ({status}); restarting in 1s",
                    node.id, node.region
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                node.spawn(&peers)?;
                if let Some(child) = &node.child {
                    eprintln!(
                        "txlog dev: node {} ({}) restarted, pid {}",
                        node.id,
                        node.region,
                        child.id()
                    );
                }
            }
        }
    }
    // The terminal may be gone by now (closed pipe): never panic on output.
    say(format_args!("stopping the dev cluster..."));
    stop_all(&mut nodes).await;
    say(format_args!("stopped; data kept in {}", options.data_dir.display()));
    Ok(())
}

fn say(message: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{message}");
}

async fn stop_all(nodes: &mut [DevNode]) {
    for node in nodes.iter() {
        if let Some(child) = &node.child {
            signal(child, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for node in nodes.iter_mut() {
        let Some(child) = node.child.as_mut() else { continue };
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => {
                    eprintln!("txlog dev: node {} did not stop in {STOP_GRACE:?}; killing it", node.id);
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        node.child = None;
    }
}
