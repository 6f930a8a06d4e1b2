//! The `txlog` command: run nodes, a local dev cluster, and talk to a cluster.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use clap::Parser;
use clap::Subcommand;
use tokio_util::sync::CancellationToken;
use txlog::config::NodeSettings;
use txlog_client::Client;
use txlog_client::ClientError;
use txlog_client::Role;
use txlog_proto::CommittedRecord;

#[derive(Parser)]
#[command(
    name = "txlog",
    version,
    about = "A replicated, durable, append-only transaction log",
    long_about = "txlog keeps one totally ordered log on a Raft group. Every append is fsynced on a \
                  quorum of nodes before it is acknowledged; every record gets a dense global \
                  sequence number; a retried txid returns its original sequence.\n\n\
                  Start a local three-region cluster with `txlog dev`, then use `txlog append`, \
                  `read`, `lookup`, `tail` and `status` against it (they default to that cluster)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ClusterArgs {
    /// Comma-separated node addresses (HOST:PORT, `http://` optional).
    #[arg(long, env = "TXLOG_CLUSTER", default_value = txlog_client::DEV_CLUSTER)]
    cluster: String,
    /// Print JSON instead of human-readable text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local three-region cluster (paris, frankfurt, lyon) on loopback.
    Dev {
        /// Where the three nodes keep their data (one subdirectory per region).
        #[arg(long, env = "TXLOG_DEV_DATA_DIR", default_value = "txlog-dev-data")]
        data_dir: PathBuf,
        /// Client port of node 1; nodes 2 and 3 use the next two ports.
        #[arg(long, default_value_t = 7401)]
        base_port: u16,
        /// Metrics port of node 1; nodes 2 and 3 use the next two ports (0 = off).
        #[arg(long, default_value_t = 9401)]
        metrics_base_port: u16,
    },
    /// Run one node.
    Node(Box<NodeSettings>),
    /// Append one record and print its sequence number.
    Append {
        /// Channel name, e.g. order-book ([a-z0-9][a-z0-9._-]*).
        #[arg(long, short)]
        channel: String,
        /// Client transaction id (1-64 bytes); retrying with it never duplicates.
        #[arg(long, short)]
        txid: String,
        /// Record payload (UTF-8 text); use --payload-file for bytes.
        #[arg(required_unless_present = "payload_file")]
        payload: Option<String>,
        /// Read the payload from this file instead.
        #[arg(long, conflicts_with = "payload")]
        payload_file: Option<PathBuf>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Read committed records by sequence number.
    Read {
        /// First sequence number to read.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most records to return (server maximum 10000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only this channel.
        #[arg(long)]
        channel: Option<String>,
        /// Read from any node without confirming leadership (may lag).
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Find a committed record by transaction id.
    Lookup {
        #[arg(long, short)]
        txid: String,
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print committed records as they arrive (history first, then live).
    Tail {
        #[arg(long)]
        channel: Option<String>,
        /// Start at this sequence (default: only new records).
        #[arg(long)]
        from: Option<u64>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Show the leader, term, commit index and every node's role and region.
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Membership and maintenance: join, remove, transfer-leader, status, snapshot, compact.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Benchmarks: append load (default), failover time, resync bandwidth.
    Bench(txlog::bench::BenchCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Add a node: it becomes a learner, catches up, then a voter (unless --learner).
    /// The node must be running (e.g. `txlog node --id 4 --region lyon ...`); prefer
    /// `txlog node --join`, which does this by itself.
    Join {
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// HOST:PORT the cluster reaches it at.
        #[arg(long)]
        address: String,
        /// Its region, e.g. lyon.
        #[arg(long)]
        region: String,
        /// Keep it a learner (replicated to, no vote).
        #[arg(long)]
        learner: bool,
        /// Give up waiting for it to catch up after this long (it stays a learner).
        #[arg(long, default_value = "120s", value_parser = txlog::bench::parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Take a node out of the cluster (voter or learner). Removing the leader first hands
    /// leadership to another voter.
    Remove {
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Make another voter the leader.
    TransferLeader {
        /// Id of the voter to lead.
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Every node with role, match index, lag, heartbeat age, snapshot and WAL purge point,
    /// and the snapshot bytes the leader sent (delta vs full).
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Build a snapshot now on one node (--node) or on every member.
    Snapshot {
        /// HOST:PORT of one node (default: every member).
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Purge the WAL behind the latest durable snapshot on one node (--node) or every member.
    Compact {
        /// HOST:PORT of one node (default: every member).
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TXLOG_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{default_level},openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn"
        ))
    });
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .finish()
        .with(txlog::log_throttle::OpenraftWarnings::new())
        .try_init();
}

/// Cancel `token` on SIGTERM or SIGINT.
fn cancel_on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::signal;
    use tokio::signal::unix::SignalKind;
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("txlog: cannot start the async runtime: {err}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("txlog: error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn client(args: &ClusterArgs) -> anyhow::Result<Client> {
    Ok(Client::connect(&args.cluster)?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev {
            data_dir,
            base_port,
            metrics_base_port,
        } => {
            init_tracing("info");
            let token = CancellationToken::new();
            cancel_on_signals(token.clone())?;
            txlog::dev::run(txlog::dev::DevOptions {
                data_dir,
                base_port,
                metrics_base_port,
                shutdown: token,
            })
            .await
        }
        Command::Node(args) => {
            init_tracing("info");
            let config = args.resolve()?;
            let token = CancellationToken::new();
            cancel_on_signals(token.clone())?;
            let node = txlog::node::Node::start(config, token).await?;
            node.run_until_shutdown().await?;
            Ok(())
        }
        Command::Append {
            channel,
            txid,
            payload,
            payload_file,
            cluster,
        } => {
            init_tracing("warn");
            let payload = match (payload, payload_file) {
                (Some(p), _) => p.into_bytes(),
                (None, Some(path)) => std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
                (None, None) => unreachable!("clap requires one"),
            };
            let result = client(&cluster)?
                .append_one(&channel, txid.as_bytes(), &payload)
                .await?;
            if cluster.json {
                let value = serde_json::json!({"records": [{"txid": txid, "channel": channel, "seq": result.seq, "channel_seq": result.channel_seq, "duplicate": result.duplicate}]});
                println!("{value}");
            } else if result.duplicate {
                println!(
                    "seq {} (txid {txid:?} was already committed; nothing new written)",
                    result.seq
                );
            } else {
                println!("seq {}", result.seq);
            }
            Ok(())
        }
        Command::Read {
            from,
            limit,
            channel,
            stale,
            cluster,
        } => {
            init_tracing("warn");
            let response = client(&cluster)?.read(from, limit, channel.as_deref(), stale).await?;
            if cluster.json {
                let records: Vec<_> = response.records.iter().map(record_json).collect();
                println!(
                    "{}",
                    serde_json::json!({"records": records, "next_seq": response.next_seq, "last_seq": response.last_seq})
                );
            } else {
                for record in &response.records {
                    println!("{}", record_line(record));
                }
                if response.records.is_empty() {
                    println!(
                        "(no records from seq {from}; last committed seq is {})",
                        response.last_seq
                    );
                }
            }
            Ok(())
        }
        Command::Lookup { txid, stale, cluster } => {
            init_tracing("warn");
            match client(&cluster)?.lookup(txid.as_bytes(), stale).await? {
                Some(record) if cluster.json => println!("{}", record_json(&record)),
                Some(record) => println!("{}", record_line(&record)),
                None => {
                    anyhow::bail!("no committed record with txid {txid:?}");
                }
            }
            Ok(())
        }
        Command::Tail { channel, from, cluster } => {
            init_tracing("warn");
            let client = client(&cluster)?;
            let from = match from {
                Some(f) => f,
                None => client.read(1, 1, None, false).await?.last_seq + 1,
            };
            let mut stream = client.subscribe(from, channel.as_deref()).await?;
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    next = stream.message() => match next {
                        Ok(Some(record)) if cluster.json => println!("{}", record_json(&record)),
                        Ok(Some(record)) => println!("{}", record_line(&record)),
                        Ok(None) => anyhow::bail!("the node closed the stream"),
                        Err(status) => return Err(ClientError::Status(status).into()),
                    }
                }
            }
        }
        Command::Status { cluster } => {
            init_tracing("warn");
            print_status(&cluster, false).await
        }
        Command::Admin { command } => {
            init_tracing("warn");
            admin(command).await
        }
        Command::Bench(command) => {
            init_tracing("warn");
            txlog::bench::run_command(command).await
        }
    }
}

async fn print_status(cluster: &ClusterArgs, detailed: bool) -> anyhow::Result<()> {
    let status = client(cluster)?
        .cluster_status()
        .await
        .with_context(|| format!("no node of {} answered", cluster.cluster))?;
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

async fn admin(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Join {
            id,
            address,
            region,
            learner,
            timeout,
            cluster,
        } => {
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
        AdminCommand::Remove { id, cluster } => {
            let response = client(&cluster)?.remove_node(id).await?;
            println!("{}", response.message);
            print_members(&response);
            Ok(())
        }
        AdminCommand::TransferLeader { to, cluster } => {
            let response = client(&cluster)?.transfer_leader(to).await?;
            println!("{}", response.message);
            Ok(())
        }
        AdminCommand::Status { cluster } => print_status(&cluster, true).await,
        AdminCommand::Snapshot { node, cluster } => {
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
        AdminCommand::Compact { node, cluster } => {
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

fn record_line(r: &CommittedRecord) -> String {
    format!(
        "seq={} channel={} channel_seq={} txid={} payload={}",
        r.seq,
        r.channel,
        r.channel_seq,
        String::from_utf8_lossy(&r.txid),
        String::from_utf8_lossy(&r.payload)
    )
}

fn record_json(r: &CommittedRecord) -> serde_json::Value {
    serde_json::json!({
        "seq": r.seq,
        "channel": r.channel,
        "channel_seq": r.channel_seq,
        "txid": String::from_utf8_lossy(&r.txid),
        "payload": String::from_utf8_lossy(&r.payload),
        "commit_time_ns": r.commit_time_ns,
        "log_index": r.log_index,
        "log_term": r.log_term,
        "origin_node": r.origin_node,
    })
}
