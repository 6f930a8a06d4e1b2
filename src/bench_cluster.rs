//! Benchmarks that need to kill and restart nodes, so they start their own
//! local three-node cluster (real `txlog node` processes on free loopback
//! ports, data in a fresh temporary directory, removed afterwards unless
//! `--keep-data`):
//!
//! * `txlog bench failover --rounds N`: `kill -9` the leader, measure from the
//!   kill to the first append that commits under a new leader, restart the
//!   killed node and let it catch up; repeat.
//! * `txlog bench resync --records M`: build a history, stop a follower,
//!   append M records, snapshot and compact the others so the follower must
//!   resync past the purge point; restart it (delta path), then wipe its data
//!   dir and restart it again (full path). Reports catch-up time and snapshot
//!   bytes the cluster sent for each.
//! * `txlog bench startup --records N`: append N records, then restart a
//!   follower cleanly, `kill -9` and restart it, and restart the leader
//!   cleanly; each time measure from the process start to the node serving
//!   every record (no catch-up needed: nothing is appended meanwhile).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;

use txlog_client::Client;
use txlog_client::ClientOptions;
use txlog_client::ClusterStatus;
use txlog_client::ResyncSent;
use txlog_proto::Record;
use txlog_testkit::LocalCluster;
use txlog_testkit::NodeSpec;
use txlog_testkit::REGIONS;

use crate::bench::parse_duration;

const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Leader kills to measure.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// Timing profile of the nodes: lan or wan.
    #[arg(long, default_value = "lan")]
    pub timing: String,
    #[command(flatten)]
    pub common: ClusterBenchArgs,
}

/// Flags every cluster benchmark takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterBenchArgs {
    /// Where the nodes keep their data (default: a new temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the data directory afterwards.
    #[arg(long)]
    pub keep_data: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Node ids of the three nodes (any distinct non-zero ids).
    #[arg(long, default_value = "1,2,3", value_delimiter = ',')]
    pub node_ids: Vec<u64>,
}

/// How a cluster bench fills the cluster: `clients` appenders, each sending
/// requests of `batch` records of `record_bytes` bytes.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Payload bytes per record.
    #[arg(long, default_value_t = 256)]
    pub record_bytes: usize,
    /// Concurrent appenders filling the cluster.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Records per append request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
}

impl LoadArgs {
    fn check(&self) -> anyhow::Result<()> {
        let batch_max = crate::validate::APPEND_RECORDS_MAX;
        anyhow::ensure!(
            self.batch >= 1 && self.batch <= batch_max,
            "--batch must be 1..={batch_max} (records per append)"
        );
        anyhow::ensure!(self.clients >= 1 && self.clients <= 1024, "--clients must be 1..=1024");
        anyhow::ensure!(self.record_bytes <= 64 * 1024, "--record-bytes must be at most 64 KiB");
        Ok(())
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct StartupArgs {
    /// Records the nodes hold when they are restarted.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub common: ClusterBenchArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ResyncArgs {
    /// Records appended while the follower is down.
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Records appended before the follower goes down (its common prefix).
    #[arg(long, default_value_t = 600_000)]
    pub history_records: u64,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Give up waiting for the catch-up after this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub common: ClusterBenchArgs,
}

/// A temporary cluster and the directory it lives in.
struct BenchCluster {
    nodes: LocalCluster,
    client: Client,
    dir: PathBuf,
    keep: bool,
}

impl BenchCluster {
    fn start(name: &str, common: &ClusterBenchArgs, extra_args: Vec<String>) -> anyhow::Result<Self> {
        let keep = common.keep_data;
        let dir = match common.data_dir.clone() {
            Some(d) => d,
            None => std::env::temp_dir().join(format!("txlog-bench-{name}-{}", std::process::id())),
        };
        if dir.exists() {
            anyhow::ensure!(
                std::fs::read_dir(&dir)?.next().is_none(),
                "{} is not empty; the bench needs a fresh directory",
                dir.display()
            );
        }
        let ids = &common.node_ids;
        let mut distinct = ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        anyhow::ensure!(
            ids.len() == 3 && distinct.len() == 3 && !ids.contains(&0),
            "--node-ids needs three distinct non-zero ids, got {ids:?}"
        );
        let mut specs = Vec::new();
        for (&id, region) in ids.iter().zip(REGIONS) {
            specs.push(NodeSpec {
                extra_args: extra_args.clone(),
                ..NodeSpec::loopback(id, region, dir.join(region))?
            });
        }
        let mut nodes = LocalCluster::new(specs)?;
        for i in 0..3 {
            nodes.start(i)?;
        }
        let client = Client::new(
            &nodes.addresses(),
            ClientOptions {
                rpc_timeout: Duration::from_millis(2000),
                attempts_max: 100_000,
                backoff_initial: Duration::from_millis(1),
                backoff_max: Duration::from_millis(5),
                connect_timeout: Duration::from_millis(200),
            },
        )?;
        eprintln!("cluster of 3 nodes starting in {}", dir.display());
        Ok(BenchCluster {
            nodes,
            client,
            dir,
            keep,
        })
    }

    async fn finish(mut self) {
        self.nodes.stop_all(STOP_GRACE).await;
        if self.keep {
            eprintln!("data kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Wait until a leader is known and every running node has applied the same last seq.
    async fn wait_converged(&self, timeout: Duration) -> anyhow::Result<ClusterStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(status) = self.client.cluster_status().await {
                let up: Vec<_> = status.nodes.iter().filter(|n| n.is_up()).collect();
                if status.leader_id.is_some() && up.len() == 3 && up.iter().all(|n| n.last_seq == status.last_seq) {
                    return Ok(status);
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the cluster did not converge within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Counters once the sender has recorded a finished transfer after `before`
    /// (the follower may report its records before the sender hears back).
    async fn resync_sent_after(&self, before: &ResyncSent) -> ResyncSent {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.resync_sent().await;
            let finished = now.delta_transfers + now.full_transfers > before.delta_transfers + before.full_transfers;
            if finished || Instant::now() >= deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sum of every node's snapshot-sent counters.
    async fn resync_sent(&self) -> ResyncSent {
        let mut total = ResyncSent::default();
        for node in &self.nodes.nodes {
            if let Ok(s) = self.client.node_status(&node.spec.address).await {
                if let Some(r) = s.resync_sent {
                    total.delta_transfers += r.delta_transfers;
                    total.delta_bytes += r.delta_bytes;
                    total.full_transfers += r.full_transfers;
                    total.full_bytes += r.full_bytes;
                    total.delta_refused += r.delta_refused;
                }
            }
        }
        total
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Debug, serde::Serialize)]
struct FailoverReport {
    rounds: u32,
    timing: String,
    failover_ms: Vec<f64>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    min_ms: f64,
}

pub async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rounds >= 1 && args.rounds <= 1000, "--rounds must be 1..=1000");
    let mut cluster = BenchCluster::start("failover", &args.common, vec!["--timing".into(), args.timing.clone()])?;
    let result = failover_rounds(&mut cluster, &args).await;
    cluster.finish().await;
    let times = result?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    for t in &times {
        histogram.record(t.as_micros().max(1) as u64)?;
    }
    let report = FailoverReport {
        rounds: args.rounds,
        timing: args.timing.clone(),
        failover_ms: times.iter().map(|t| (ms(*t) * 10.0).round() / 10.0).collect(),
        p50_ms: histogram.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: histogram.max() as f64 / 1000.0,
        min_ms: histogram.min() as f64 / 1000.0,
    };
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "failover ({} timing, {} rounds): kill -9 of the leader -> first append committed by a new leader",
            report.timing, report.rounds
        );
        println!(
            "  p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   min {:.1} ms",
            report.p50_ms, report.p99_ms, report.max_ms, report.min_ms
        );
    }
    Ok(())
}

async fn failover_rounds(cluster: &mut BenchCluster, args: &FailoverArgs) -> anyhow::Result<Vec<Duration>> {
    let payload = vec![b'f'; 256];
    let run_id = txlog_client::wall_clock_ns();
    let mut times = Vec::new();
    let mut n = 0u64;
    for round in 1..=args.rounds {
        let status = cluster.wait_converged(Duration::from_secs(60)).await?;
        let leader_id = status.leader_id.expect("converged means a leader");
        let leader = cluster.nodes.index_of(leader_id).context("leader is not one of ours")?;
        // The leader serves appends right now.
        for _ in 0..10 {
            n += 1;
            cluster
                .client
                .append_one("failover", format!("fo-{run_id}-{n}").as_bytes(), &payload)
                .await?;
        }
        let killed = Instant::now();
        tracing::info!(round, leader_id, "killing the leader");
        cluster.nodes.kill(leader);
        n += 1;
        cluster
            .client
            .append_one("failover", format!("fo-{run_id}-{n}").as_bytes(), &payload)
            .await
            .context("append after the kill")?;
        let took = killed.elapsed();
        times.push(took);
        let new_leader = cluster.client.cluster_status().await.ok().and_then(|s| s.leader_id);
        eprintln!(
            "  round {round:>3}/{}: killed leader {leader_id}, new leader {}, first commit after {:.1} ms",
            args.rounds,
            new_leader.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
            ms(took)
        );
        cluster.nodes.start(leader)?;
    }
    Ok(times)
}

#[derive(Debug, serde::Serialize)]
struct ResyncPath {
    path: &'static str,
    catch_up_ms: f64,
    bytes_sent: u64,
    delta_transfers: u64,
    full_transfers: u64,
}

#[derive(Debug, serde::Serialize)]
struct ResyncReport {
    history_records: u64,
    records: u64,
    record_bytes: usize,
    last_seq: u64,
    delta: ResyncPath,
    full: ResyncPath,
    bandwidth_saved_percent: f64,
}

/// Append `count` records as `load` says: concurrent appenders, `batch` records per request.
async fn load(client: &Client, count: u64, load: &LoadArgs, tag: &str) -> anyhow::Result<()> {
    let LoadArgs {
        record_bytes,
        clients,
        batch,
    } = *load;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let run_id = txlog_client::wall_clock_ns();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, next, tag) = (client.clone(), next.clone(), tag.to_string());
        let payload = bytes::Bytes::from(vec![b'r'; record_bytes]);
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(batch as u64, std::sync::atomic::Ordering::Relaxed);
                if first >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let records = (first..(first + batch as u64).min(count))
                    .map(|i| Record {
                        txid: format!("{tag}-{run_id}-{i}").into_bytes().into(),
                        channel: "resync".into(),
                        payload: payload.clone(),
                        client_time_ns: 0,
                    })
                    .collect();
                client.append(records).await?;
            }
        }));
    }
    let progress = {
        let next = next.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            loop {
                tick.tick().await;
                let done = next.load(std::sync::atomic::Ordering::Relaxed).min(count);
                eprintln!(
                    "    {done}/{count} records ({:.0} records/s)",
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        })
    };
    for task in tasks {
        task.await??;
    }
    progress.abort();
    Ok(())
}

/// Restart node `i` and time it until its last seq reaches `target`, with
/// a trickle of appends meanwhile (see [`txlog_testkit::catch_up_with_trickle`]).
async fn catch_up(cluster: &mut BenchCluster, i: usize, target: u64, timeout: Duration) -> anyhow::Result<Duration> {
    let address = cluster.nodes.nodes[i].spec.address.clone();
    let started = Instant::now();
    cluster.nodes.start(i)?;
    txlog_testkit::catch_up_with_trickle(&cluster.client, &address, target, timeout).await?;
    Ok(started.elapsed())
}

pub async fn resync(args: ResyncArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.records >= 1, "--records must be at least 1");
    args.load.check()?;
    let mut cluster = BenchCluster::start(
        "resync",
        &args.common,
        // Snapshots and purges happen when the bench asks, not in between.
        vec![
            "--snapshot-logs-since-last".into(),
            "100000000".into(),
            "--log-entries-kept-after-snapshot".into(),
            "0".into(),
        ],
    )?;
    let result = resync_paths(&mut cluster, &args).await;
    cluster.finish().await;
    let report = result?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "resync of a follower that missed {} records of {} B (common prefix {} records, {} in all)",
            report.records, report.record_bytes, report.history_records, report.last_seq
        );
        for p in [&report.delta, &report.full] {
            println!(
                "  {:<5} catch-up {:>8.0} ms   bytes sent {:>12}   ({} delta / {} full transfers)",
                p.path, p.catch_up_ms, p.bytes_sent, p.delta_transfers, p.full_transfers
            );
        }
        println!(
            "  delta used {:.1} % less bandwidth than full",
            report.bandwidth_saved_percent
        );
    }
    Ok(())
}

async fn resync_paths(cluster: &mut BenchCluster, args: &ResyncArgs) -> anyhow::Result<ResyncReport> {
    cluster.wait_converged(Duration::from_secs(60)).await?;
    eprintln!("appending the {} record history", args.history_records);
    load(&cluster.client, args.history_records, &args.load, "history").await?;
    let status = cluster.wait_converged(Duration::from_secs(120)).await?;
    let leader_id = status.leader_id.expect("converged");
    let follower = cluster
        .nodes
        .nodes
        .iter()
        .position(|n| n.spec.id != leader_id)
        .expect("three nodes");
    let follower_id = cluster.nodes.nodes[follower].spec.id;
    eprintln!(
        "stopping node {follower_id}; appending {} records without it",
        args.records
    );
    cluster.nodes.stop(follower, STOP_GRACE).await;
    load(&cluster.client, args.records, &args.load, "missed").await?;
    let target = cluster.client.cluster_status().await?.last_seq;
    compact_live(cluster, follower).await?;

    eprintln!("restarting node {follower_id} on its data dir (delta path expected)");
    let before = cluster.resync_sent().await;
    let delta_time = catch_up(cluster, follower, target, args.timeout).await?;
    let after = cluster.resync_sent_after(&before).await;
    let delta = path_report("delta", delta_time, &before, &after);

    eprintln!("stopping node {follower_id}, wiping its data dir, restarting it (full path)");
    cluster.nodes.stop(follower, STOP_GRACE).await;
    cluster.nodes.wipe(follower)?;
    let before = cluster.resync_sent().await;
    let full_time = catch_up(cluster, follower, target, args.timeout).await?;
    let after = cluster.resync_sent_after(&before).await;
    let full = path_report("full", full_time, &before, &after);
    anyhow::ensure!(
        delta.delta_transfers >= 1 && full.full_transfers >= 1,
        "expected one delta and one full transfer, saw {delta:?} and {full:?}"
    );
    let saved = 100.0 * (1.0 - delta.bytes_sent as f64 / full.bytes_sent.max(1) as f64);
    Ok(ResyncReport {
        history_records: args.history_records,
        records: args.records,
        record_bytes: args.load.record_bytes,
        last_seq: target,
        delta,
        full,
        bandwidth_saved_percent: (saved * 10.0).round() / 10.0,
    })
}

/// Snapshot and purge the WAL on every running node except `skip`.
async fn compact_live(cluster: &BenchCluster, skip: usize) -> anyhow::Result<()> {
    for (i, node) in cluster.nodes.nodes.iter().enumerate() {
        if i == skip {
            continue;
        }
        let address = &node.spec.address;
        let snap = cluster.client.snapshot_node(address).await?;
        let compact = cluster.client.compact_node(address).await?;
        eprintln!(
            "  node {}: snapshot at index {}, WAL purged through {}",
            node.spec.id, snap.snapshot_index, compact.purged_index
        );
    }
    Ok(())
}

fn path_report(path: &'static str, took: Duration, before: &ResyncSent, after: &ResyncSent) -> ResyncPath {
    ResyncPath {
        path,
        catch_up_ms: ms(took).round(),
        bytes_sent: (after.delta_bytes + after.full_bytes) - (before.delta_bytes + before.full_bytes),
        delta_transfers: after.delta_transfers - before.delta_transfers,
        full_transfers: after.full_transfers - before.full_transfers,
    }
}

#[derive(Debug, serde::Serialize)]
struct StartupRound {
    restart: &'static str,
    node_id: u64,
    /// From the process start to the node serving every record.
    startup_ms: f64,
}

#[derive(Debug, serde::Serialize)]
struct StartupReport {
    records: u64,
    record_bytes: usize,
    node_ids: Vec<u64>,
    rounds: Vec<StartupRound>,
}

pub async fn startup(args: StartupArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.records >= 1, "--records must be at least 1");
    args.load.check()?;
    let mut cluster = BenchCluster::start("startup", &args.common, Vec::new())?;
    let result = startup_rounds(&mut cluster, &args).await;
    cluster.finish().await;
    let report = StartupReport {
        records: args.records,
        record_bytes: args.load.record_bytes,
        node_ids: args.common.node_ids.clone(),
        rounds: result?,
    };
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "startup of a node holding {} records of {} B: process start -> serving every record",
            report.records, report.record_bytes
        );
        for round in &report.rounds {
            println!(
                "  {:<18} node {:<8} {:>8.0} ms",
                round.restart, round.node_id, round.startup_ms
            );
        }
    }
    Ok(())
}

async fn startup_rounds(cluster: &mut BenchCluster, args: &StartupArgs) -> anyhow::Result<Vec<StartupRound>> {
    cluster.wait_converged(Duration::from_secs(60)).await?;
    eprintln!("appending {} records", args.records);
    load(&cluster.client, args.records, &args.load, "startup").await?;
    let mut rounds = Vec::new();
    for (restart, leader) in [
        ("follower, SIGTERM", false),
        ("follower, kill -9", false),
        ("leader, SIGTERM", true),
    ] {
        let status = cluster.wait_converged(Duration::from_secs(600)).await?;
        let leader_id = status.leader_id.expect("converged means a leader");
        let i = cluster
            .nodes
            .nodes
            .iter()
            .position(|n| (n.spec.id == leader_id) == leader)
            .expect("three nodes");
        let node_id = cluster.nodes.nodes[i].spec.id;
        let address = cluster.nodes.nodes[i].spec.address.clone();
        if restart.ends_with("kill -9") {
            cluster.nodes.kill(i);
        } else {
            cluster.nodes.stop(i, STOP_GRACE).await;
        }
        let started = Instant::now();
        cluster.nodes.start(i)?;
        txlog_testkit::wait_for_seq(&cluster.client, &address, status.last_seq, Duration::from_secs(600)).await?;
        let took = started.elapsed();
        eprintln!(
            "  {restart}: node {node_id} serves all {} records after {:.0} ms",
            status.last_seq,
            ms(took)
        );
        rounds.push(StartupRound {
            restart,
            node_id,
            startup_ms: ms(took).round(),
        });
    }
    Ok(rounds)
}
