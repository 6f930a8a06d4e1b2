//! `txlog bench startup --records N`: append N records, then restart a
//! follower cleanly, `kill -9` and restart it, and restart the leader
//! cleanly; each time measure from the process start to the node serving
//! every record (no catch-up needed: nothing is appended meanwhile).

use std::time::Duration;
use std::time::Instant;

use super::cluster::load;
use super::cluster::ms;
use super::cluster::BenchCluster;
use super::cluster::ClusterBenchArgs;
use super::cluster::LoadArgs;
use super::cluster::STOP_GRACE;

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

pub async fn run(args: StartupArgs) -> anyhow::Result<()> {
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
