//! `txlog dev`: a local three-region cluster as three child `txlog node`
//! processes on loopback. Nodes that exit unexpectedly are restarted (so
//! `kill -9` of one shows failover and catch-up); Ctrl-C or SIGTERM stops all
//! three with SIGTERM, escalating to SIGKILL after a grace period.

use std::time::Duration;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use txlog_client::ClientOptions;
use txlog_client::ClusterStatus;
use txlog_testkit::LatencyModel;
use txlog_testkit::LocalCluster;
use txlog_testkit::NodeSpec;
use txlog_testkit::RegionLinks;
use txlog_testkit::REGIONS;

use crate::args::DevArgs;

/// Nodes of the dev cluster: ids 1, 2, 3 in the first three [`REGIONS`].
const NODES: usize = 3;
const STOP_GRACE: Duration = Duration::from_secs(10);
const UP_WAIT: Duration = Duration::from_secs(30);
/// Restarts of one node before `txlog dev` gives up on it.
const RESTARTS_MAX: u32 = 20;

pub async fn run(options: DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let model = options
        .regions_latency
        .as_deref()
        .map(LatencyModel::parse)
        .transpose()?;
    let specs = node_specs(&options);
    // Removed (rules and held packets let go) when `run` returns.
    let _links = match &model {
        Some(model) => {
            let nodes: Vec<_> = (0..NODES)
                .map(|i| (txlog_testkit::region_node_ip(i), REGIONS[i].to_string()))
                .collect();
            Some(RegionLinks::install(model, &nodes)?)
        }
        None => None,
    };
    let mut nodes = LocalCluster::new(specs)?;
    for i in 0..nodes.nodes.len() {
        nodes.start(i)?;
    }
    let client = nodes.client(ClientOptions::default())?;
    let started = Instant::now();
    let status = tokio::select! {
        _ = shutdown.cancelled() => None,
        // "Up" means every node votes and has applied what the leader committed.
        status = client.wait_for_status(UP_WAIT, "every node a caught-up voter", ClusterStatus::every_voter_caught_up) => Some(status),
    };
    match status {
        Some(Ok(status)) => print_banner(&nodes, &status, started.elapsed(), &options),
        Some(Err(err)) => {
            eprintln!(
                "txlog dev: the cluster is not up after {UP_WAIT:?}: {err}; see {}/*/node.log",
                options.data_dir.display()
            );
            nodes.stop_all(STOP_GRACE).await;
            anyhow::bail!("cluster did not come up");
        }
        None => {}
    }
    supervise(&mut nodes, &shutdown).await?;
    // The terminal may be gone by now (closed pipe): never panic on output.
    say(format_args!("stopping the dev cluster..."));
    nodes.stop_all(STOP_GRACE).await;
    say(format_args!("stopped; data kept in {}", options.data_dir.display()));
    Ok(())
}

/// Nodes 1, 2, 3 on consecutive ports from `base_port`, one region each.
fn node_specs(options: &DevArgs) -> Vec<NodeSpec> {
    (0..NODES)
        .map(|i| NodeSpec {
            id: i as u64 + 1,
            region: REGIONS[i].to_string(),
            address: match options.regions_latency {
                Some(_) => format!("{}:{}", txlog_testkit::region_node_ip(i), options.base_port + i as u16),
                None => format!("127.0.0.1:{}", options.base_port + i as u16),
            },
            listen: None,
            metrics: (options.metrics_base_port != 0)
                .then(|| format!("127.0.0.1:{}", options.metrics_base_port + i as u16)),
            data_dir: options.data_dir.join(REGIONS[i]),
            join: None,
            extra_args: {
                // Leadership returns to paris (by default) when it is healthy again.
                let mut args = vec!["--prefer-region".into(), options.prefer_region.clone()];
                if options.feed_base_port != 0 {
                    args.extend([
                        "--feed-listen".into(),
                        format!("127.0.0.1:{}", options.feed_base_port + i as u16),
                        "--feed-targets".into(),
                        txlog_client::DEV_FEED_GROUP.into(),
                        // So `txlog feed subscribe --speculative` has a stream to show.
                        "--feed-speculative".into(),
                    ]);
                }
                args
            },
        })
        .collect()
}

/// What is running where, and what to try.
fn print_banner(nodes: &LocalCluster, status: &ClusterStatus, took: Duration, options: &DevArgs) {
    println!(
        "txlog dev cluster is up ({} ms), data in {}",
        took.as_millis(),
        options.data_dir.display()
    );
    for (i, node) in nodes.nodes.iter().enumerate() {
        let node = &node.spec;
        let role = status
            .nodes
            .iter()
            .find(|n| n.id == node.id)
            .map(|n| n.role.as_str())
            .unwrap_or("?");
        let pid = nodes.pid(i).unwrap_or(0);
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
    if let Some(model) = &options.regions_latency {
        println!("  region latency model on the links between the nodes: {model}");
        println!(
            "  point the CLI at the nodes with: export TXLOG_CLUSTER={}",
            nodes.addresses()
        );
    }
    if let Some(key_file) = nodes.key_file() {
        println!(
            "  entries sealed (LZ4, AES-256-GCM, ed25519) under the cluster key file {}",
            key_file.display()
        );
    }
    if let Some(certs) = nodes.certs_dir() {
        println!(
            "  connections are mutual TLS; CA and certificates in {} (the CLI here uses client-admin)",
            certs.display()
        );
    }
    if let Some(root) = nodes.root_key_file() {
        println!(
            "  calls need request tokens; the CLI here signs them with the root key {}",
            root.display()
        );
    }
    if options.feed_base_port != 0 {
        println!(
            "  committed records (and, speculatively, appended ones) are published as a UDP feed to {} (one session per node)",
            txlog_client::DEV_FEED_GROUP
        );
    }
    println!();
    println!("try:");
    println!("  txlog append --channel order-book --txid order-1 'BUY 100 EURUSD 1.0842'");
    println!("  txlog read --from 1");
    println!("  txlog status");
    println!("  txlog tail --from 1");
    println!("  txlog keys status");
    if options.feed_base_port != 0 {
        println!("  txlog feed subscribe --from 1");
        println!("  txlog feed subscribe --speculative");
        println!("  txlog feed status");
    }
    println!();
    println!("logs: {}/<region>/node.log    stop: Ctrl-C", options.data_dir.display());
}

/// Restart nodes that exit (up to [`RESTARTS_MAX`] times each) until `shutdown`.
async fn supervise(nodes: &mut LocalCluster, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        for i in 0..nodes.nodes.len() {
            let Some(status) = nodes.exited(i) else { continue };
            let (id, region) = (nodes.nodes[i].spec.id, nodes.nodes[i].spec.region.clone());
            if nodes.nodes[i].restarts >= RESTARTS_MAX {
                eprintln!("txlog dev: node {id} ({region}) exited ({status}) too often; leaving it down");
                continue;
            }
            nodes.nodes[i].restarts += 1;
            eprintln!("txlog dev: node {id} ({region}) exited ({status}); restarting in 1s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let pid = nodes.start(i)?;
            eprintln!("txlog dev: node {id} ({region}) restarted, pid {pid}");
        }
    }
    Ok(())
}

fn say(message: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{message}");
}
