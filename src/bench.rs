//! `txlog bench`: an append load generator against a running cluster
//! (`txlog bench` / `txlog bench append`); `failover` and `resync` are in
//! [`crate::bench_cluster`].
//!
//! N concurrent clients each append one record at a time (a new unique txid
//! per record) for a fixed duration. Each append's latency is from send to
//! acknowledgement — i.e. committed on a quorum of fsynced disks — and goes
//! into an HdrHistogram. Progress is printed every second; the summary gives
//! records/s, MB/s and latency percentiles.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;
use txlog_client::Client;

/// `txlog bench [append] …`, `txlog bench failover …`, `txlog bench resync …`.
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchCommand {
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    #[command(flatten)]
    pub append: BenchArgs,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchMode {
    /// Append load against a running cluster (the default).
    Append(BenchArgs),
    /// Kill -9 the leader of a local 3-node cluster N times; time until an append commits under a new leader.
    Failover(crate::bench_cluster::FailoverArgs),
    /// Catch-up time and bytes for a node that missed M records: delta path vs wiped (full) path.
    Resync(crate::bench_cluster::ResyncArgs),
    /// Restart a node holding N records (clean and kill -9); time until it serves all of them.
    Startup(crate::bench_cluster::StartupArgs),
}

pub async fn run_command(command: BenchCommand) -> anyhow::Result<()> {
    match command.mode {
        None => run(command.append).await,
        Some(BenchMode::Append(args)) => run(args).await,
        Some(BenchMode::Failover(args)) => crate::bench_cluster::failover(args).await,
        Some(BenchMode::Resync(args)) => crate::bench_cluster::resync(args).await,
        Some(BenchMode::Startup(args)) => crate::bench_cluster::startup(args).await,
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent clients, each with one append in flight.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 256)]
    pub record_bytes: usize,
    /// How long to run, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Channel to append to.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Comma-separated node addresses.
    #[arg(long, env = "TXLOG_CLUSTER", default_value = txlog_client::DEV_CLUSTER)]
    pub cluster: String,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parse `10s`, `250ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("bad duration {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("bad duration unit in {text:?}; use ms, s or m")),
    };
    if !(seconds > 0.0 && seconds <= 24.0 * 3600.0) {
        return Err(format!("duration {text:?} out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    pub clients: usize,
    pub record_bytes: usize,
    pub seconds: f64,
    pub records: u64,
    pub errors: u64,
    pub records_per_second: f64,
    pub megabytes_per_second: f64,
    pub latency_us_p50: u64,
    pub latency_us_p90: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub latency_us_max: u64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0 && args.clients <= 4096, "--clients must be 1..=4096");
    anyhow::ensure!(args.record_bytes <= 1024 * 1024, "--record-bytes must be at most 1 MiB");
    let client = Client::connect(&args.cluster)?;
    client
        .wait_for_leader(Duration::from_secs(10))
        .await
        .context("no leader in the cluster")?;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let run_id = txlog_client::wall_clock_ns();
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    for worker in 0..args.clients {
        let client = client.clone();
        let done = done.clone();
        let errors = errors.clone();
        let channel = args.channel.clone();
        let payload = vec![b'x'; args.record_bytes];
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut n = 0u64;
            while Instant::now() < deadline {
                let txid = format!("bench-{run_id}-{worker}-{n}");
                n += 1;
                let t = Instant::now();
                match client.append_one(&channel, txid.as_bytes(), &payload).await {
                    Ok(_) => {
                        let _ = histogram.record(t.elapsed().as_micros().max(1) as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%err, "append failed");
                    }
                }
            }
            histogram
        }));
    }
    let progress = {
        let done = done.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = done.load(Ordering::Relaxed);
                eprintln!(
                    "  {:>5.1}s  {:>8} records/s  total {:>9}  errors {}",
                    started.elapsed().as_secs_f64(),
                    now - last,
                    now,
                    errors.load(Ordering::Relaxed)
                );
                last = now;
            }
        })
    };
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for task in tasks {
        histogram.add(task.await?).context("merge histograms")?;
    }
    progress.abort();
    let seconds = started.elapsed().as_secs_f64();
    let records = done.load(Ordering::Relaxed);
    let report = BenchReport {
        clients: args.clients,
        record_bytes: args.record_bytes,
        seconds,
        records,
        errors: errors.load(Ordering::Relaxed),
        records_per_second: records as f64 / seconds,
        megabytes_per_second: records as f64 * args.record_bytes as f64 / seconds / 1e6,
        latency_us_p50: histogram.value_at_quantile(0.50),
        latency_us_p90: histogram.value_at_quantile(0.90),
        latency_us_p99: histogram.value_at_quantile(0.99),
        latency_us_p999: histogram.value_at_quantile(0.999),
        latency_us_max: histogram.max(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "clients {}  record {} B  {:.1} s  records {}  errors {}",
            report.clients, report.record_bytes, report.seconds, report.records, report.errors
        );
        println!(
            "throughput {:.0} records/s  {:.2} MB/s",
            report.records_per_second, report.megabytes_per_second
        );
        println!(
            "commit latency  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            report.latency_us_p50 as f64 / 1000.0,
            report.latency_us_p90 as f64 / 1000.0,
            report.latency_us_p99 as f64 / 1000.0,
            report.latency_us_p999 as f64 / 1000.0,
            report.latency_us_max as f64 / 1000.0
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations parse with units and reject junk.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
