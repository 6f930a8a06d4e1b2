//! `txlog bench failover --rounds N`: `kill -9` the leader of a local
//! three-node cluster, measure from the kill to the first append that commits
//! under a new leader, restart the killed node and let it catch up; repeat.

use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;

use super::cluster::ms;
use super::cluster::BenchCluster;
use super::cluster::ClusterBenchArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Leader kills to measure.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    #[command(flatten)]
    pub common: ClusterBenchArgs,
}

#[derive(Debug, serde::Serialize)]
struct FailoverReport {
    rounds: u32,
    timing: String,
    regions_latency: Option<String>,
    failover_ms: Vec<f64>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    min_ms: f64,
}

pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rounds >= 1 && args.rounds <= 1000, "--rounds must be 1..=1000");
    let mut cluster = BenchCluster::start("failover", &args.common, Vec::new())?;
    let result = failover_rounds(&mut cluster, &args).await;
    cluster.finish().await;
    let times = result?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    for t in &times {
        histogram.record(t.as_micros().max(1) as u64)?;
    }
    let report = FailoverReport {
        rounds: args.rounds,
        timing: args.common.timing.clone(),
        regions_latency: args.common.regions_latency.clone(),
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
            "failover ({} timing, {} rounds{}): kill -9 of the leader -> first append committed by a new leader",
            report.timing,
            report.rounds,
            match &report.regions_latency {
                Some(model) => format!(", region latency {model}"),
                None => String::new(),
            }
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
