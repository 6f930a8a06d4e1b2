//! `txlog bench resync --records M`: build a history, stop a follower,
//! append M records, snapshot and compact the others so the follower must
//! resync past the purge point; restart it (delta path), then wipe its data
//! dir and restart it again (full path). Reports catch-up time and snapshot
//! bytes the cluster sent for each.

use std::time::Duration;

use txlog_client::ResyncSent;

use super::cluster::catch_up;
use super::cluster::load;
use super::cluster::ms;
use super::cluster::BenchCluster;
use super::cluster::ClusterBenchArgs;
use super::cluster::LoadArgs;
use super::cluster::STOP_GRACE;
use crate::duration::parse_duration;

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

#[derive(Debug, serde::Serialize)]
struct ResyncPath {
    path: &'static str,
    catch_up_ms: f64,
    bytes_sent: u64,
    /// Of `bytes_sent`, the bytes of full snapshots.
    full_bytes_sent: u64,
    delta_transfers: u64,
    /// Full transfers whose answer reached the leader. A transfer whose
    /// answer was lost after the follower installed it is not counted: the
    /// retry finds the follower covered and sends nothing.
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

pub async fn run(args: ResyncArgs) -> anyhow::Result<()> {
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
    // The wiped follower caught up; it took the full path if no delta was
    // sent and full-snapshot bytes were.
    anyhow::ensure!(
        delta.delta_transfers >= 1 && full.delta_transfers == 0 && full.full_bytes_sent > 0,
        "expected a delta, then a full snapshot and no delta, saw {delta:?} and {full:?}"
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
        full_bytes_sent: after.full_bytes - before.full_bytes,
        delta_transfers: after.delta_transfers - before.delta_transfers,
        full_transfers: after.full_transfers - before.full_transfers,
    }
}
