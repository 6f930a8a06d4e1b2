//! `txlog admin …`: membership (join, remove, transfer-leader) and
//! maintenance (snapshot, compact) against a running cluster.

use txlog_client::Client;
use txlog_client::ClientError;

use crate::args::AdminCommand;
use crate::args::CompactArgs;
use crate::args::JoinArgs;
use crate::args::RemoveArgs;
use crate::args::SnapshotArgs;
use crate::args::StatusArgs;
use crate::args::TransferLeaderArgs;
use crate::records::client;
use crate::status::print_status;

pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Join(JoinArgs {
            id,
            address,
            region,
            learner,
            timeout,
            cluster,
        }) => {
            let request = txlog_proto::JoinRequest {
                node_id: id,
                address,
                region,
                learner_only: learner,
                timeout_ms: timeout.as_millis().min(u128::from(u32::MAX)) as u32,
            };
            let mut progress = client(&cluster)?.join(request).await?;
            loop {
                match progress.message().await {
                    Ok(Some(p)) if p.done => {
                        println!("{}", p.message);
                        return Ok(());
                    }
                    Ok(Some(p)) => eprintln!("[{}] {} (lag {})", p.phase, p.message, p.lag),
                    Ok(None) => anyhow::bail!("the join ended without an outcome (leader changed?); run it again"),
                    Err(status) => return Err(ClientError::Status(status).into()),
                }
            }
        }
        AdminCommand::Remove(RemoveArgs { id, cluster }) => {
            let response = client(&cluster)?.remove_node(id).await?;
            println!("{}", response.message);
            print_members(&response);
            Ok(())
        }
        AdminCommand::TransferLeader(TransferLeaderArgs { to, cluster }) => {
            let response = client(&cluster)?.transfer_leader(to).await?;
            println!("{}", response.message);
            Ok(())
        }
        AdminCommand::Status(StatusArgs { cluster }) => print_status(&cluster, true).await,
        AdminCommand::Snapshot(SnapshotArgs { node, cluster }) => {
            let client = client(&cluster)?;
            for address in target_nodes(&client, node).await? {
                let outcome = client
                    .snapshot_node(&address)
                    .await
                    .map(|r| format!("snapshot at log index {} (last seq {})", r.snapshot_index, r.last_seq));
                print_node_outcome(&address, outcome);
            }
            Ok(())
        }
        AdminCommand::Compact(CompactArgs { node, cluster }) => {
            let client = client(&cluster)?;
            for address in target_nodes(&client, node).await? {
                let outcome = client.compact_node(&address).await.map(|r| {
                    format!(
                        "WAL purged through index {} (latest snapshot {})",
                        r.purged_index, r.snapshot_index
                    )
                });
                print_node_outcome(&address, outcome);
            }
            Ok(())
        }
    }
}

/// One line per node for the per-node admin commands.
fn print_node_outcome(address: &str, outcome: Result<String, ClientError>) {
    match outcome {
        Ok(message) => println!("{address}: {message}"),
        Err(err) => println!("{address}: failed: {err}"),
    }
}

/// `--node` if given, otherwise every member that is not down.
async fn target_nodes(client: &Client, node: Option<String>) -> anyhow::Result<Vec<String>> {
    if let Some(node) = node {
        return Ok(vec![txlog_client::normalize_address(&node)?]);
    }
    let status = client.cluster_status().await?;
    Ok(status
        .nodes
        .iter()
        .filter(|n| n.is_up())
        .map(|n| n.address.clone())
        .collect())
}

fn print_members(response: &txlog_proto::MembershipResponse) {
    for m in &response.members {
        println!("  node {} {:<10} {:<22} {}", m.id, m.region, m.address, m.kind);
    }
}
