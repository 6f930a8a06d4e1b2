//! The cluster the failover, resync and startup benches start for
//! themselves: three real `txlog node` processes on free loopback ports,
//! data in a fresh temporary directory (removed afterwards unless
//! `--keep-data`), and the load they fill it with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use txlog_client::Client;
use txlog_client::ClientOptions;
use txlog_client::ClusterStatus;
use txlog_client::ResyncSent;
use txlog_proto::Record;
use txlog_testkit::LatencyModel;
use txlog_testkit::LocalCluster;
use txlog_testkit::NodeSpec;
use txlog_testkit::RegionLinks;
use txlog_testkit::REGIONS;

pub const STOP_GRACE: Duration = Duration::from_secs(10);

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
    /// Run the nodes unsealed (no LZ4, AES-256-GCM or ed25519), to measure what sealing costs
    /// against the same command without it. A bench-only switch.
    #[arg(long)]
    pub no_seal: bool,
    /// Run the nodes --insecure (plain connections, no request tokens checked), to measure
    /// what access control (mutual TLS and tokens) costs against the same command without it.
    #[arg(long)]
    pub insecure: bool,
    /// Timing profile of the nodes: regional (txlog's default), lan or wan (see `txlog node --help`).
    #[arg(long, default_value = "regional")]
    pub timing: String,
    /// Put the region latency model on the links between the nodes (paris, frankfurt, lyon,
    /// each on its own loopback IP): `default` (one way paris-frankfurt 4.5 ms, paris-lyon
    /// 2.2 ms, frankfurt-lyon 4 ms, jitter 10 %) or items that change it, e.g.
    /// `paris-lyon=3ms,jitter=5%`. The bench's own calls are not delayed. Needs root (iptables
    /// and NFQUEUE).
    #[arg(long, num_args = 0..=1, default_missing_value = "default", value_name = "MODEL")]
    pub regions_latency: Option<String>,
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

/// `--batch` of any bench: 1 up to the server's records per append.
pub fn check_batch(batch: usize) -> anyhow::Result<()> {
    let batch_max = txlog::validate::APPEND_RECORDS_MAX;
    anyhow::ensure!(
        batch >= 1 && batch <= batch_max,
        "--batch must be 1..={batch_max} (records per append)"
    );
    Ok(())
}

impl LoadArgs {
    pub fn check(&self) -> anyhow::Result<()> {
        check_batch(self.batch)?;
        anyhow::ensure!(self.clients >= 1 && self.clients <= 1024, "--clients must be 1..=1024");
        anyhow::ensure!(self.record_bytes <= 64 * 1024, "--record-bytes must be at most 64 KiB");
        Ok(())
    }
}

/// A temporary cluster and the directory it lives in.
pub struct BenchCluster {
    pub nodes: LocalCluster,
    pub client: Client,
    dir: PathBuf,
    keep: bool,
    /// The region latency model on the nodes' links, while it lasts.
    _links: Option<RegionLinks>,
}

impl BenchCluster {
    pub fn start(name: &str, common: &ClusterBenchArgs, extra_args: Vec<String>) -> anyhow::Result<Self> {
        Self::start_with_node_args(name, common, extra_args, |_| Vec::new())
    }

    /// As [`BenchCluster::start`], node `i` (0..3) also given `node_args(i)`.
    pub fn start_with_node_args(
        name: &str,
        common: &ClusterBenchArgs,
        extra_args: Vec<String>,
        node_args: impl Fn(usize) -> Vec<String>,
    ) -> anyhow::Result<Self> {
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
        let model = common.regions_latency.as_deref().map(LatencyModel::parse).transpose()?;
        let mut specs = Vec::new();
        for (i, (&id, region)) in ids.iter().zip(REGIONS).enumerate() {
            let mut spec = NodeSpec {
                extra_args: extra_args.clone(),
                ..NodeSpec::loopback(id, region, dir.join(region))?
            };
            spec.extra_args.extend(["--timing".into(), common.timing.clone()]);
            spec.extra_args.extend(node_args(i));
            if model.is_some() {
                // Each node on an IP of its own: its links are told apart by IP.
                let ip = txlog_testkit::region_node_ip(i);
                spec.address = format!("{ip}:{}", txlog_testkit::free_port_on(ip.into())?);
            }
            specs.push(spec);
        }
        let links = match &model {
            Some(model) => {
                let nodes: Vec<_> = (0..3)
                    .map(|i| (txlog_testkit::region_node_ip(i), REGIONS[i].to_string()))
                    .collect();
                let links = RegionLinks::install(model, &nodes)?;
                eprintln!("region latency model on the peer links: {model}");
                Some(links)
            }
            None => None,
        };
        let mut nodes = LocalCluster::new(specs)?;
        if common.no_seal {
            nodes = nodes.unsealed();
        }
        if common.insecure {
            nodes = nodes.insecure();
        }
        for i in 0..3 {
            nodes.start(i)?;
        }
        let client = nodes.client(ClientOptions {
            rpc_timeout: Duration::from_millis(2000),
            attempts_max: 100_000,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            connect_timeout: Duration::from_millis(200),
        })?;
        eprintln!(
            "cluster of 3 nodes starting in {} ({})",
            dir.display(),
            match (common.no_seal, common.insecure) {
                (false, false) => "sealed, mutual TLS, tokens checked",
                (true, false) => "unsealed, mutual TLS, tokens checked",
                (false, true) => "sealed, insecure",
                (true, true) => "unsealed, insecure",
            }
        );
        Ok(BenchCluster {
            nodes,
            client,
            dir,
            keep,
            _links: links,
        })
    }

    pub async fn finish(mut self) {
        self.nodes.stop_all(STOP_GRACE).await;
        if self.keep {
            eprintln!("data kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Wait until a leader is known and every running node has applied the same last seq.
    pub async fn wait_converged(&self, timeout: Duration) -> anyhow::Result<ClusterStatus> {
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
    pub async fn resync_sent_after(&self, before: &ResyncSent) -> ResyncSent {
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
    pub async fn resync_sent(&self) -> ResyncSent {
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

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Append `count` records as `load` says: concurrent appenders, `batch` records per request.
pub async fn load(client: &Client, count: u64, load: &LoadArgs, tag: &str) -> anyhow::Result<()> {
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
pub async fn catch_up(
    cluster: &mut BenchCluster,
    i: usize,
    target: u64,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let address = cluster.nodes.nodes[i].spec.address.clone();
    let started = Instant::now();
    cluster.nodes.start(i)?;
    txlog_testkit::catch_up_with_trickle(&cluster.client, &address, target, timeout).await?;
    Ok(started.elapsed())
}
