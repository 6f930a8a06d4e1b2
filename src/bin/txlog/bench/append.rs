//! `txlog bench` / `txlog bench append`: append (or linearizable read) load
//! against a running cluster, or against a three-node cluster the bench
//! starts for itself (`--local`).
//!
//! `--clients` workers each keep `--pipeline` requests in flight, sharing
//! `--connections` client handles (one append stream each); a
//! request carries `--batch` records (a new unique txid per record) or, with
//! `--op read`, reads `--batch` records linearizably. Each request's latency
//! is from send to answer — for appends, committed on a quorum of fsynced
//! disks — and goes into an HdrHistogram. Progress is printed every second;
//! the summary gives records/s, MB/s, latency percentiles, the leader changes
//! seen during the run (term before and after, and leader ids polled every
//! 100 ms), each node's RSS, with `--local` each node's data dir after a
//! snapshot and compaction against the payload it holds, and one line
//! comparing the run with the targets for its shape.
//!
//! `--payload` picks what records hold (one byte repeated, the `bench seal`
//! corpora, or random bytes), since LZ4 decides much of what sealing costs;
//! `--seal-overhead` runs the shape sealed and then unsealed, each on a
//! fresh local cluster, and prints the ratio.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;
use txlog_client::Client;
use txlog_client::ClusterStatus;
use txlog_proto::Record;

use super::cluster::check_batch;
use super::cluster::BenchCluster;
use super::cluster::ClusterBenchArgs;
use super::cluster::LoadArgs;
use super::seal::fit;
use super::seal::generate;
use super::seal::Corpus;
use super::seal::XorShift;
use crate::duration::parse_duration;

/// Requests in flight in one run, at most (`--clients` × `--pipeline`).
const IN_FLIGHT_MAX: usize = 8192;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Append `--batch` new records per request.
    Append,
    /// Read `--batch` records per request through the leader (linearizable).
    Read,
}

/// What the appended records hold.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Payload {
    /// One byte repeated (LZ4 shrinks a batch to almost nothing).
    Fill,
    /// FIX-like text order messages (the `bench seal` corpus).
    FixText,
    /// JSON market-data ticks (the `bench seal` corpus).
    JsonTicks,
    /// Packed binary ticks (the `bench seal` corpus).
    BinaryTicks,
    /// Random bytes: nothing to compress, the worst case for sealing.
    Random,
}

/// Distinct payloads the workers cycle through (each from its own offset).
const PAYLOAD_POOL: u64 = 4096;

impl Payload {
    /// The `bench seal` corpus this payload is drawn from, if any.
    fn corpus(self) -> Option<Corpus> {
        match self {
            Payload::FixText => Some(Corpus::FixText),
            Payload::JsonTicks => Some(Corpus::JsonTicks),
            Payload::BinaryTicks => Some(Corpus::BinaryTicks),
            Payload::Fill | Payload::Random => None,
        }
    }

    /// `count` payloads of `bytes` bytes, the same in every run.
    fn generate(self, bytes: usize, count: u64) -> Vec<bytes::Bytes> {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        (0..count)
            .map(|i| {
                let payload = match (self, self.corpus()) {
                    (_, Some(corpus)) => fit(generate(corpus, i, &mut rng), bytes),
                    (Payload::Fill, None) => vec![b'x'; bytes],
                    (_, None) => (0..bytes.div_ceil(8))
                        .flat_map(|_| rng.next().to_le_bytes())
                        .take(bytes)
                        .collect(),
                };
                bytes::Bytes::from(payload)
            })
            .collect()
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent clients, each with one request in flight (or --pipeline).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Connections the clients share, round robin (each a client handle
    /// of its own). 1: every client shares one handle, as threads of one
    /// application do, and their appends travel together on one stream.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Requests each client keeps in flight.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Records per request (appended, or read with --op read).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// What each request does.
    #[arg(long, value_enum, default_value_t = Op::Append)]
    pub op: Op,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 256)]
    pub record_bytes: usize,
    /// What the records hold: how much LZ4 can shrink a batch decides
    /// what sealing costs or saves.
    #[arg(long, value_enum, default_value_t = Payload::Fill)]
    pub payload: Payload,
    /// With --local: run the shape twice, sealed and then unsealed
    /// (--no-seal), on a fresh cluster each, and print what sealing costs.
    #[arg(long, requires = "local", conflicts_with = "no_seal")]
    pub seal_overhead: bool,
    /// How long to run, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Channel to append to.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Comma-separated node addresses (ignored with --local).
    #[arg(long, env = "TXLOG_CLUSTER", default_value = txlog_client::DEV_CLUSTER)]
    pub cluster: String,
    /// Start a local three-node cluster for this run (--timing, --regions-latency apply), and stop
    /// it afterwards.
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub common: ClusterBenchArgs,
}

impl BenchArgs {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.clients >= 1 && self.clients <= 4096, "--clients must be 1..=4096");
        anyhow::ensure!(
            self.connections >= 1 && self.connections <= self.clients,
            "--connections must be 1..=--clients"
        );
        anyhow::ensure!(
            self.pipeline >= 1 && self.pipeline <= 1024,
            "--pipeline must be 1..=1024"
        );
        anyhow::ensure!(
            self.clients * self.pipeline <= IN_FLIGHT_MAX,
            "--clients × --pipeline must be at most {IN_FLIGHT_MAX} requests in flight"
        );
        check_batch(self.batch)?;
        anyhow::ensure!(self.record_bytes <= 1024 * 1024, "--record-bytes must be at most 1 MiB");
        anyhow::ensure!(
            self.record_bytes * self.batch <= txlog_client::MESSAGE_BYTES_MAX / 2,
            "--record-bytes × --batch must stay under half the {} B message limit",
            txlog_client::MESSAGE_BYTES_MAX
        );
        Ok(())
    }
}

#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    pub op: Op,
    /// With `--local`: whether the nodes sealed their entries (`--no-seal` turns it off).
    pub sealed: Option<bool>,
    pub payload: Payload,
    pub clients: usize,
    pub connections: usize,
    pub pipeline: usize,
    pub batch: usize,
    pub record_bytes: usize,
    pub seconds: f64,
    pub requests: u64,
    pub records: u64,
    pub errors: u64,
    pub records_per_second: f64,
    pub megabytes_per_second: f64,
    pub latency_us_p50: u64,
    pub latency_us_p90: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub latency_us_max: u64,
    pub term_before: u64,
    pub term_after: u64,
    /// Leader ids seen to change while the run went on (polled every 100 ms).
    pub leader_changes: u64,
    /// Resident set of each node that answered with its pid on this host, in MB.
    pub node_rss_mb: Vec<(u64, f64)>,
    /// With `--local`: each node's data dir after a snapshot and compaction.
    pub node_disk: Vec<NodeDisk>,
}

#[derive(Debug, serde::Serialize)]
pub struct NodeDisk {
    pub id: u64,
    pub megabytes: f64,
    /// The data dir's bytes over the payload bytes the node holds.
    pub payload_ratio: f64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.check()?;
    if !args.local {
        let client = crate::records::client(&crate::args::ClusterArgs {
            cluster: args.cluster.clone(),
            json: false,
            credentials: std::env::var_os("TXLOG_CREDENTIALS").map(Into::into),
            claim_roles: Vec::new(),
            tls_ca_file: std::env::var_os("TXLOG_CLIENT_TLS_CA_FILE").map(Into::into),
            tls_cert_file: std::env::var_os("TXLOG_CLIENT_TLS_CERT_FILE").map(Into::into),
            tls_key_file: std::env::var_os("TXLOG_CLIENT_TLS_KEY_FILE").map(Into::into),
        })?;
        let report = load(&args, &client).await?;
        return print_report(&report, args.common.json);
    }
    if !args.seal_overhead {
        let report = run_local(&args).await?;
        return print_report(&report, args.common.json);
    }
    let sealed = run_local(&args).await?;
    let mut unsealed_args = args.clone();
    unsealed_args.common.no_seal = true;
    let unsealed = run_local(&unsealed_args).await?;
    let overhead = SealOverhead::new(sealed, unsealed);
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&overhead)?);
        return Ok(());
    }
    print_report(&overhead.sealed, false)?;
    println!();
    print_report(&overhead.unsealed, false)?;
    println!();
    println!("{}", overhead.summary());
    Ok(())
}

/// The run on a cluster of the bench's own, stopped afterwards.
async fn run_local(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let cluster = BenchCluster::start("append", &args.common, Vec::new())?;
    let outcome = async {
        let mut report = load(args, &cluster.client).await?;
        report.node_disk = disk_after_compaction(&cluster, args.record_bytes).await?;
        Ok(report)
    }
    .await;
    cluster.finish().await;
    outcome
}

/// One shape run sealed and unsealed (`--seal-overhead`).
#[derive(Debug, serde::Serialize)]
struct SealOverhead {
    sealed: BenchReport,
    unsealed: BenchReport,
    /// Sealed records/s over unsealed records/s.
    throughput_ratio: f64,
    /// Sealed p50 over unsealed p50.
    p50_ratio: f64,
}

/// Target: append throughput with sealing at least this share of without.
const SEALED_THROUGHPUT_TARGET: f64 = 0.9;

impl SealOverhead {
    fn new(sealed: BenchReport, unsealed: BenchReport) -> Self {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        SealOverhead {
            throughput_ratio: ratio(sealed.records_per_second, unsealed.records_per_second),
            p50_ratio: ratio(sealed.latency_us_p50 as f64, unsealed.latency_us_p50 as f64),
            sealed,
            unsealed,
        }
    }

    fn summary(&self) -> String {
        format!(
            "sealing: {:.0} vs {:.0} records/s unsealed ({:.0} % of unsealed; target >= {:.0} %: {}), p50 {:.2} vs {:.2} ms ({:.2}x)",
            self.sealed.records_per_second,
            self.unsealed.records_per_second,
            self.throughput_ratio * 100.0,
            SEALED_THROUGHPUT_TARGET * 100.0,
            if self.throughput_ratio >= SEALED_THROUGHPUT_TARGET { "met" } else { "NOT met" },
            self.sealed.latency_us_p50 as f64 / 1000.0,
            self.unsealed.latency_us_p50 as f64 / 1000.0,
            self.p50_ratio
        )
    }
}

/// Snapshot and compact every node of the bench's own cluster, then each
/// node's data dir in bytes (each file once, however many names it has: a
/// snapshot shares the record file) against the payload it holds.
async fn disk_after_compaction(cluster: &BenchCluster, record_bytes: usize) -> anyhow::Result<Vec<NodeDisk>> {
    let client = &cluster.client;
    for node in &cluster.nodes.nodes {
        client.snapshot_node(&node.spec.address).await.context("snapshot")?;
        client.compact_node(&node.spec.address).await.context("compact")?;
    }
    // The WAL deletes purged segments on its own thread, just after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = client.cluster_status().await.context("status after compaction")?;
    let mut disk = Vec::new();
    for node in &cluster.nodes.nodes {
        let last_seq = status
            .nodes
            .iter()
            .find(|n| n.id == node.spec.id)
            .map_or(0, |n| n.last_seq);
        let bytes = dir_bytes(&node.spec.data_dir)?;
        let payload = last_seq as f64 * record_bytes as f64;
        disk.push(NodeDisk {
            id: node.spec.id,
            megabytes: bytes as f64 / 1e6,
            payload_ratio: if payload > 0.0 { bytes as f64 / payload } else { 0.0 },
        });
    }
    Ok(disk)
}

/// Bytes of the files under `dir`, each inode counted once.
fn dir_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut pending = vec![dir.to_path_buf()];
    let mut bytes = 0;
    while let Some(dir) = pending.pop() {
        for dirent in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let dirent = dirent?;
            let meta = match dirent.metadata() {
                Ok(meta) => meta,
                // Removed while we looked (a purge or a leftover going).
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err.into()),
            };
            if meta.is_dir() {
                pending.push(dirent.path());
            } else if seen.insert((meta.dev(), meta.ino())) {
                bytes += meta.len();
            }
        }
    }
    Ok(bytes)
}

/// Run the load against the cluster `client` talks to.
async fn load(args: &BenchArgs, client: &Client) -> anyhow::Result<BenchReport> {
    let before = client
        .wait_for_status(
            Duration::from_secs(30),
            "every node a caught-up voter",
            ClusterStatus::every_voter_caught_up,
        )
        .await
        .context("the cluster is not up")?;
    if args.op == Op::Read {
        // Records to read: `--batch` of them, appended once.
        let fill = LoadArgs {
            record_bytes: args.record_bytes,
            clients: 1,
            batch: args.batch,
        };
        super::cluster::load(client, args.batch as u64, &fill, "bench-fill")
            .await
            .context("append the records to read")?;
    }
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    let run_id = txlog_client::wall_clock_ns();
    let payloads: Arc<Vec<bytes::Bytes>> = Arc::new(args.payload.generate(args.record_bytes, PAYLOAD_POOL));
    let connections = (0..args.connections).map(|_| client.separate()).collect::<Vec<_>>();
    for c in 0..args.clients {
        for p in 0..args.pipeline {
            let worker = Worker {
                client: connections[c % args.connections].clone(),
                args: args.clone(),
                tag: format!("bench-{run_id}-{c}-{p}"),
                counters: counters.clone(),
                payloads: payloads.clone(),
                first_payload: (c * args.pipeline + p) * 37,
            };
            tasks.push(tokio::spawn(worker.run(deadline)));
        }
    }
    let watcher = tokio::spawn(watch(started, client.clone(), counters.clone(), args.batch as u64));
    let mut histogram = new_histogram();
    for task in tasks {
        histogram.add(task.await?).context("merge histograms")?;
    }
    watcher.abort();
    let seconds = started.elapsed().as_secs_f64();
    let after = client.cluster_status().await.context("status after the run")?;
    let requests = counters.done.load(Ordering::Relaxed);
    let records = requests * args.batch as u64;
    let report = BenchReport {
        op: args.op,
        sealed: args.local.then_some(!args.common.no_seal),
        payload: args.payload,
        clients: args.clients,
        connections: args.connections,
        pipeline: args.pipeline,
        batch: args.batch,
        record_bytes: args.record_bytes,
        seconds,
        requests,
        records,
        errors: counters.errors.load(Ordering::Relaxed),
        records_per_second: records as f64 / seconds,
        megabytes_per_second: records as f64 * args.record_bytes as f64 / seconds / 1e6,
        latency_us_p50: histogram.value_at_quantile(0.50),
        latency_us_p90: histogram.value_at_quantile(0.90),
        latency_us_p99: histogram.value_at_quantile(0.99),
        latency_us_p999: histogram.value_at_quantile(0.999),
        latency_us_max: histogram.max(),
        term_before: before.term,
        term_after: after.term,
        leader_changes: counters.leader_changes.load(Ordering::Relaxed),
        node_rss_mb: node_rss(&after),
        node_disk: Vec::new(),
    };
    Ok(report)
}

#[derive(Default)]
struct Counters {
    done: AtomicU64,
    errors: AtomicU64,
    leader_changes: AtomicU64,
}

struct Worker {
    client: Client,
    args: BenchArgs,
    tag: String,
    counters: Arc<Counters>,
    /// The pool of payloads; this worker starts at `first_payload`.
    payloads: Arc<Vec<bytes::Bytes>>,
    first_payload: usize,
}

impl Worker {
    async fn run(self, deadline: Instant) -> Histogram<u64> {
        let mut histogram = new_histogram();
        let mut next_payload = self.first_payload;
        let mut n = 0u64;
        while Instant::now() < deadline {
            let t = Instant::now();
            let outcome = match self.args.op {
                Op::Append => {
                    let records = (0..self.args.batch)
                        .map(|i| Record {
                            txid: format!("{}-{n}-{i}", self.tag).into_bytes().into(),
                            channel: self.args.channel.clone(),
                            payload: {
                                next_payload = (next_payload + 1) % self.payloads.len();
                                self.payloads[next_payload].clone()
                            },
                            client_time_ns: 0,
                        })
                        .collect();
                    self.client.append(records).await.map(|_| ())
                }
                Op::Read => self
                    .client
                    .read(1, self.args.batch as u32, None, false)
                    .await
                    .map(|_| ()),
            };
            n += 1;
            match outcome {
                Ok(()) => {
                    let _ = histogram.record(t.elapsed().as_micros().max(1) as u64);
                    self.counters.done.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%err, "request failed");
                }
            }
        }
        histogram
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Every second: records in the last second, total, errors. Every 100 ms:
/// the leader, counting changes.
async fn watch(started: Instant, client: Client, counters: Arc<Counters>, batch: u64) {
    let mut last_done = 0;
    let mut last_print = Instant::now();
    let mut leader = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if let Ok(status) = client.cluster_status().await {
            if status.leader_id.is_some() && leader.is_some() && status.leader_id != leader {
                counters.leader_changes.fetch_add(1, Ordering::Relaxed);
            }
            leader = status.leader_id.or(leader);
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let done = counters.done.load(Ordering::Relaxed);
            eprintln!(
                "  {:>5.1}s  {:>9} records/s  total {:>10}  errors {}  leader changes {}",
                started.elapsed().as_secs_f64(),
                (done - last_done) * batch,
                done * batch,
                counters.errors.load(Ordering::Relaxed),
                counters.leader_changes.load(Ordering::Relaxed)
            );
            last_done = done;
        }
    }
}

/// RSS of every node whose process runs on this host, from `/proc/<pid>/status`.
fn node_rss(status: &ClusterStatus) -> Vec<(u64, f64)> {
    let mut out = Vec::new();
    // A pid of 0: the node did not answer the status call.
    for node in status.nodes.iter().filter(|n| n.pid != 0) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{}/status", node.pid)) else {
            continue;
        };
        let kb = text
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
        if let Some(kb) = kb {
            out.push((node.id, kb / 1024.0));
        }
    }
    out
}

/// The targets for a run of this shape (records/s, p50 ms, p99 ms).
fn target(report: &BenchReport) -> Option<(f64, Option<f64>, Option<f64>)> {
    let one_in_flight = report.pipeline == 1;
    match (report.op, report.clients, report.batch) {
        (Op::Append, 1, 1) if one_in_flight => Some((4_000.0, Some(0.35), Some(0.8))),
        (Op::Append, 16, 1) if one_in_flight => Some((40_000.0, None, None)),
        (Op::Append, 64, 1) if one_in_flight => Some((93_000.0, None, Some(5.0))),
        (Op::Append, 64, 100) if one_in_flight => Some((300_000.0, None, None)),
        (Op::Read, 1, 100) if one_in_flight => Some((0.0, Some(0.5), Some(2.0))),
        _ => None,
    }
}

fn print_report(report: &BenchReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{:?}{}: clients {} on {} connection(s), pipeline {}, batch {}, record {} B ({}), {:.1} s: requests {}, records {}, errors {}",
        report.op,
        match report.sealed {
            Some(true) => " (sealed)",
            Some(false) => " (unsealed, --no-seal)",
            None => "",
        },
        report.clients,
        report.connections,
        report.pipeline,
        report.batch,
        report.record_bytes,
        clap::ValueEnum::to_possible_value(&report.payload)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default(),
        report.seconds,
        report.requests,
        report.records,
        report.errors
    );
    println!(
        "throughput {:.0} records/s  {:.2} MB/s",
        report.records_per_second, report.megabytes_per_second
    );
    println!(
        "latency  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        ms(report.latency_us_p50),
        ms(report.latency_us_p90),
        ms(report.latency_us_p99),
        ms(report.latency_us_p999),
        ms(report.latency_us_max)
    );
    let rss: Vec<String> = report
        .node_rss_mb
        .iter()
        .map(|(id, mb)| format!("node {id} {mb:.0} MB"))
        .collect();
    println!(
        "term {} -> {}  leader changes {}  RSS {}",
        report.term_before,
        report.term_after,
        report.leader_changes,
        if rss.is_empty() {
            "(nodes not on this host)".to_string()
        } else {
            rss.join(", ")
        }
    );
    if !report.node_disk.is_empty() {
        let disk: Vec<String> = report
            .node_disk
            .iter()
            .map(|d| format!("node {} {:.0} MB ({:.2}x payload)", d.id, d.megabytes, d.payload_ratio))
            .collect();
        println!("disk after snapshot and compaction  {}", disk.join(", "));
    }
    println!("{}", comparison(report));
    Ok(())
}

/// One line: this run against the target for its shape.
fn comparison(report: &BenchReport) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    let stable = report.leader_changes == 0 && report.term_before == report.term_after;
    let Some((rate, p50, p99)) = target(report) else {
        return format!(
            "result: {:.0} records/s, p50 {:.2} ms, p99 {:.2} ms, leadership {} (no target for this shape)",
            report.records_per_second,
            ms(report.latency_us_p50),
            ms(report.latency_us_p99),
            if stable { "stable" } else { "CHANGED" }
        );
    };
    let mut misses = Vec::new();
    if report.records_per_second < rate {
        misses.push(format!("{:.0} < {rate:.0} records/s", report.records_per_second));
    }
    if let Some(p50) = p50.filter(|&t| ms(report.latency_us_p50) > t) {
        misses.push(format!("p50 {:.2} > {p50} ms", ms(report.latency_us_p50)));
    }
    if let Some(p99) = p99.filter(|&t| ms(report.latency_us_p99) > t) {
        misses.push(format!("p99 {:.2} > {p99} ms", ms(report.latency_us_p99)));
    }
    if !stable {
        misses.push("leadership changed".to_string());
    }
    if misses.is_empty() {
        format!(
            "result: target met ({:.0} records/s, p50 {:.2} ms, p99 {:.2} ms, no leader change)",
            report.records_per_second,
            ms(report.latency_us_p50),
            ms(report.latency_us_p99)
        )
    } else {
        format!("result: target NOT met: {}", misses.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every payload kind gives records of exactly the asked size, the
    /// same in every run; only `fill` repeats itself.
    #[test]
    fn payloads_have_the_asked_size_and_vary() {
        for kind in [
            Payload::Fill,
            Payload::FixText,
            Payload::JsonTicks,
            Payload::BinaryTicks,
            Payload::Random,
        ] {
            for bytes in [0usize, 1, 255, 256, 1000] {
                let payloads = kind.generate(bytes, 64);
                assert_eq!(payloads.len(), 64);
                assert!(payloads.iter().all(|p| p.len() == bytes), "{kind:?} at {bytes} B");
                assert_eq!(payloads, kind.generate(bytes, 64), "{kind:?} is deterministic");
                let distinct: std::collections::HashSet<_> = payloads.iter().collect();
                if bytes >= 255 {
                    assert_eq!(distinct.len() == 1, kind == Payload::Fill, "{kind:?} at {bytes} B");
                }
            }
        }
    }
}
