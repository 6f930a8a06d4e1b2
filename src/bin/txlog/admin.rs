//! `txlog admin …`: membership (join, remove, transfer-leader),
//! maintenance (snapshot, compact), and access (client keys, roles)
//! against a running cluster.

use txlog_client::Client;
use txlog_client::ClientError;

use crate::args::AdminAllowCommand;
use crate::args::AdminAllowResetArgs;
use crate::args::AdminAllowSetArgs;
use crate::args::AdminCommand;
use crate::args::AdminKeyAddArgs;
use crate::args::AdminKeyCommand;
use crate::args::AdminKeyRevokeArgs;
use crate::args::AdminListArgs;
use crate::args::AdminRoleCommand;
use crate::args::AdminRoleSetArgs;
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
        AdminCommand::Key(command) => key(command).await,
        AdminCommand::Role(command) => role(command).await,
        AdminCommand::Allow(command) => allow(command).await,
    }
}

async fn key(command: AdminKeyCommand) -> anyhow::Result<()> {
    match command {
        AdminKeyCommand::Add(AdminKeyAddArgs {
            key_id,
            role,
            secret_file,
            cluster,
        }) => {
            let secret = if secret_file.exists() {
                let secret = crate::token::load_secret(&secret_file)?;
                anyhow::ensure!(
                    secret.key_id() == key_id,
                    "{} holds the secret of key {:?}, not {key_id:?}",
                    secret_file.display(),
                    secret.key_id()
                );
                secret
            } else {
                let secret = txlog_client::ClientSecret::generate(&key_id)?;
                crate::token::write_secret(&secret_file, &secret)?;
                eprintln!(
                    "made a new secret for {key_id:?} in {} (mode 0600)",
                    secret_file.display()
                );
                secret
            };
            let change = client(&cluster)?
                .add_client_key(txlog_proto::AddClientKeyRequest {
                    key_id: key_id.clone(),
                    secret: secret.secret().to_vec().into(),
                    roles: role.clone(),
                })
                .await?;
            print_change(
                &cluster,
                &format!("added client key {key_id:?} with roles {role:?}"),
                change.seq,
            );
            Ok(())
        }
        AdminKeyCommand::Revoke(AdminKeyRevokeArgs { key_id, cluster }) => {
            let change = client(&cluster)?.revoke_client_key(&key_id).await?;
            print_change(&cluster, &format!("revoked client key {key_id:?}"), change.seq);
            Ok(())
        }
        AdminKeyCommand::List(args) => {
            let access = list(&args).await?;
            if args.cluster.json {
                let keys: Vec<_> = access
                    .keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "key_id": k.key_id, "roles": k.roles, "added_seq": k.added_seq,
                            "revoked_seq": (k.revoked_seq != 0).then_some(k.revoked_seq),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "keys": keys, "applied_seq": access.applied_seq })
                );
                return Ok(());
            }
            println!("{:<24} {:<32} {:>10} {:>10}", "KEY", "ROLES", "ADDED", "REVOKED");
            for k in &access.keys {
                let revoked = if k.revoked_seq == 0 {
                    "-".to_string()
                } else {
                    k.revoked_seq.to_string()
                };
                println!(
                    "{:<24} {:<32} {:>10} {:>10}",
                    k.key_id,
                    k.roles.join(","),
                    k.added_seq,
                    revoked
                );
            }
            Ok(())
        }
    }
}

async fn role(command: AdminRoleCommand) -> anyhow::Result<()> {
    match command {
        AdminRoleCommand::Set(AdminRoleSetArgs { name, allow, cluster }) => {
            let change = client(&cluster)?.set_role(&name, allow.clone()).await?;
            print_change(&cluster, &format!("role {name:?} set to {allow:?}"), change.seq);
            Ok(())
        }
        AdminRoleCommand::List(args) => {
            let access = list(&args).await?;
            if args.cluster.json {
                let roles: Vec<_> = access
                    .roles
                    .iter()
                    .map(|r| serde_json::json!({ "name": r.name, "rules": r.rules, "set_seq": r.set_seq }))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "roles": roles, "applied_seq": access.applied_seq })
                );
                return Ok(());
            }
            println!("{:<24} {:>10}  RULES", "ROLE", "SET");
            for r in &access.roles {
                println!("{:<24} {:>10}  {}", r.name, r.set_seq, r.rules.join(" "));
            }
            Ok(())
        }
    }
}

async fn allow(command: AdminAllowCommand) -> anyhow::Result<()> {
    match command {
        AdminAllowCommand::Set(AdminAllowSetArgs { list, cidrs, cluster }) => {
            let list = format!("allow_{list}");
            let change = client(&cluster)?.set_allowlist(&list, Some(cidrs.clone())).await?;
            let what = if cidrs.is_empty() {
                format!("{list} set to allow every address")
            } else {
                format!("{list} set to {}", cidrs.join(" "))
            };
            print_change(&cluster, &what, change.seq);
            Ok(())
        }
        AdminAllowCommand::Reset(AdminAllowResetArgs { list, cluster }) => {
            let list = format!("allow_{list}");
            let change = client(&cluster)?.set_allowlist(&list, None).await?;
            print_change(&cluster, &format!("{list} reset to each node's config"), change.seq);
            Ok(())
        }
        AdminAllowCommand::List(args) => {
            let access = list(&args).await?;
            if args.cluster.json {
                let lists: Vec<_> = access
                    .allowlists
                    .iter()
                    .map(|l| serde_json::json!({ "list": l.list, "cidrs": l.cidrs, "from_log": l.from_log }))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "allowlists": lists, "applied_seq": access.applied_seq })
                );
                return Ok(());
            }
            println!("{:<14} {:<7} CIDRS", "LIST", "FROM");
            for l in &access.allowlists {
                let cidrs = if l.cidrs.is_empty() {
                    "(every address)".to_string()
                } else {
                    l.cidrs.join(" ")
                };
                println!(
                    "{:<14} {:<7} {cidrs}",
                    l.list,
                    if l.from_log { "log" } else { "config" }
                );
            }
            Ok(())
        }
    }
}

/// The access policy one node (`--node`, or the first of `--cluster`) has applied.
async fn list(args: &AdminListArgs) -> anyhow::Result<txlog_proto::AccessList> {
    let client = client(&args.cluster)?;
    let node = match &args.node {
        Some(node) => node.clone(),
        None => args.cluster.cluster.split(',').next().unwrap_or_default().to_string(),
    };
    Ok(client.list_access(&node).await?)
}

fn print_change(cluster: &crate::args::ClusterArgs, what: &str, seq: u64) {
    if cluster.json {
        println!("{}", serde_json::json!({ "change": what, "seq": seq }));
    } else {
        println!("{what} (seq {seq})");
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
