//! `txlog status` and `txlog admin status`: the leader, term, commit index and
//! one row per node; the admin form adds snapshot and purge points and the
//! snapshot bytes the leader sent.

use anyhow::Context;
use txlog_client::Client;
use txlog_client::ClusterStatus;
use txlog_client::Role;

use crate::args::ClusterArgs;
use crate::records::client;

/// The cluster's status as `client` sees it, or an error naming the nodes asked.
pub async fn cluster_status(client: &Client, cluster: &ClusterArgs) -> anyhow::Result<ClusterStatus> {
    client
        .cluster_status()
        .await
        .with_context(|| format!("no node of {} answered", cluster.cluster))
}

pub async fn print_status(cluster: &ClusterArgs, detailed: bool) -> anyhow::Result<()> {
    let status = cluster_status(&client(cluster)?, cluster).await?;
    if cluster.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    match status.leader_id {
        Some(id) => println!(
            "leader: node {id}   term: {}   commit index: {}   last seq: {}",
            status.term, status.commit_index, status.last_seq
        ),
        None => println!("leader: none (election in progress)   term: {}", status.term),
    }
    println!(
        "{:<4} {:<10} {:<22} {:<9} {:<8} {:>10} {:>7} {:>9} {:>10} {:>10}",
        "ID", "REGION", "ADDRESS", "ROLE", "KIND", "MATCH", "LAG", "HEARTBEAT", "APPLIED", "LAST_SEQ"
    );
    for n in &status.nodes {
        let heartbeat = match n.heartbeat_age_ms {
            Some(_) if n.role == Role::Leader => "-".to_string(),
            Some(ms) => format!("{ms}ms"),
            None => "never".to_string(),
        };
        println!(
            "{:<4} {:<10} {:<22} {:<9} {:<8} {:>10} {:>7} {:>9} {:>10} {:>10}",
            n.id, n.region, n.address, n.role, n.kind, n.match_index, n.lag, heartbeat, n.applied_index, n.last_seq
        );
    }
    if detailed {
        println!();
        println!(
            "{:<4} {:>8} {:>14} {:>12}",
            "ID", "PID", "SNAPSHOT_INDEX", "PURGED_INDEX"
        );
        for n in &status.nodes {
            println!(
                "{:<4} {:>8} {:>14} {:>12}",
                n.id, n.pid, n.snapshot_index, n.purged_index
            );
        }
        if let Some(r) = status.resync_sent {
            println!();
            println!(
                "snapshots sent by the leader: delta {} ({} bytes), full {} ({} bytes), deltas refused {}",
                r.delta_transfers, r.delta_bytes, r.full_transfers, r.full_bytes, r.delta_refused
            );
        }
    }
    Ok(())
}
