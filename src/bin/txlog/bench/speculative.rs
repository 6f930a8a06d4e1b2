//! `txlog bench speculative`: what the speculative stream saves a feed
//! subscriber. A local three-node cluster publishes its feed with the
//! speculative stream on; one subscriber of both streams, in this process,
//! follows the leader's feed; one client appends one record at a time at
//! `--rate`. For each record, from the moment its append is sent: the
//! client's ack, the record's speculative copy at the subscriber, and its
//! committed copy. The speculative copy leaves the leader when its log
//! appends the entry, before a quorum has it; with `--regions-latency` the
//! commit waits for the nearest region and the speculative copy does not.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;
use txlog_client::feed::packet::Outcome;
use txlog_client::feed::ReceiverConfig;
use txlog_client::feed::SpeculativeConfig;
use txlog_client::feed::SpeculativeEvent;
use txlog_client::FeedEvent;
use txlog_client::FeedSubscriber;
use txlog_client::FeedSubscriberOptions;

use super::cluster::BenchCluster;
use super::cluster::ClusterBenchArgs;

/// How long the subscriber may trail the last ack before missing records
/// are reported as missing.
const DRAIN_WAIT: Duration = Duration::from_secs(5);
const CHANNEL: &str = "market-data";

#[derive(clap::Args, Debug, Clone)]
pub struct SpeculativeArgs {
    /// Records to append, one per call, one call in flight.
    #[arg(long, default_value_t = 2000)]
    pub records: u64,
    /// Appends per second (fewer when an append takes longer than 1/rate).
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 256)]
    pub record_bytes: usize,
    #[command(flatten)]
    pub common: ClusterBenchArgs,
}

/// When the subscriber first saw each txid, on each stream.
#[derive(Default)]
struct Seen {
    speculative: HashMap<Vec<u8>, Instant>,
    committed: HashMap<Vec<u8>, Instant>,
    rolled_back: u64,
}

pub async fn run(args: SpeculativeArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=1_000_000).contains(&args.records), "--records must be 1..=1000000");
    anyhow::ensure!((1..=100_000).contains(&args.rate), "--rate must be 1..=100000");
    anyhow::ensure!(args.record_bytes <= 64 * 1024, "--record-bytes must be at most 64 KiB");
    let feed_ports = [
        txlog_testkit::free_port()?,
        txlog_testkit::free_port()?,
        txlog_testkit::free_port()?,
    ];
    let target_ports = [
        txlog_testkit::free_port()?,
        txlog_testkit::free_port()?,
        txlog_testkit::free_port()?,
    ];
    let cluster =
        BenchCluster::start_with_node_args("speculative", &args.common, vec!["--feed-speculative".into()], |i| {
            vec![
                "--feed-listen".into(),
                format!("127.0.0.1:{}", feed_ports[i]),
                "--feed-targets".into(),
                format!("127.0.0.1:{}", target_ports[i]),
            ]
        })?;
    let result = measure(&cluster, &args, &target_ports).await;
    cluster.finish().await;
    result
}

async fn measure(cluster: &BenchCluster, args: &SpeculativeArgs, target_ports: &[u16; 3]) -> anyhow::Result<()> {
    let status = cluster.wait_converged(Duration::from_secs(60)).await?;
    let leader = status.leader_id.expect("converged means a leader");
    let leader_index = cluster
        .nodes
        .index_of(leader)
        .context("the leader is not one of ours")?;
    let term_before = status.term;
    let options = FeedSubscriberOptions {
        receiver: ReceiverConfig::default(),
        speculative: Some(SpeculativeConfig::default()),
        ..FeedSubscriberOptions::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], target_ports[leader_index])),
            None,
        )
    };
    let mut subscriber = FeedSubscriber::join(options, Some(cluster.client.clone()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Seen::default();
            while !stop.load(Ordering::Relaxed) {
                let Some(event) = subscriber.next_event(Duration::from_millis(50)).await? else {
                    continue;
                };
                let now = Instant::now();
                match event {
                    FeedEvent::Speculative(SpeculativeEvent::Record(r)) => {
                        seen.speculative.entry(r.txid).or_insert(now);
                    }
                    FeedEvent::Speculative(SpeculativeEvent::Resolved(r)) => {
                        if r.outcome == Outcome::RolledBack {
                            seen.rolled_back += 1;
                        }
                    }
                    FeedEvent::Committed(d) => {
                        seen.committed.entry(d.record.txid).or_insert(now);
                    }
                }
            }
            Ok::<Seen, txlog_client::ClientError>(seen)
        })
    };
    // Let the subscriber hear the leader's sessions before the first record.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!(
        "txlog bench speculative: {} records of {} B, one append in flight at {}/s; subscriber on leader {leader}'s feed{}",
        args.records,
        args.record_bytes,
        args.rate,
        match &args.common.regions_latency {
            Some(model) => format!("; region latency {model}"),
            None => String::new(),
        }
    );
    let payload = vec![b's'; args.record_bytes];
    let run_id = txlog_client::wall_clock_ns();
    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    let started = Instant::now();
    let mut sent: Vec<(Vec<u8>, Instant)> = Vec::with_capacity(args.records as usize);
    let mut ack = histogram();
    for i in 0..args.records {
        let due = started + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let txid = format!("spec-{run_id}-{i}").into_bytes();
        let t0 = Instant::now();
        cluster.client.append_one(CHANNEL, &txid, &payload).await?;
        ack.record(micros(t0.elapsed()))?;
        sent.push((txid, t0));
        if (i + 1) % 1000 == 0 {
            eprintln!("    {}/{} records", i + 1, args.records);
        }
    }
    tokio::time::sleep(DRAIN_WAIT).await;
    stop.store(true, Ordering::Relaxed);
    let seen = collector.await??;
    let term_after = cluster.client.cluster_status().await.ok().map(|s| s.term);

    let (mut speculative, mut committed, mut lead) = (histogram(), histogram(), histogram());
    let (mut no_speculative, mut no_committed, mut committed_first) = (0u64, 0u64, 0u64);
    for (txid, t0) in &sent {
        let s = seen.speculative.get(txid);
        let c = seen.committed.get(txid);
        match s {
            Some(s) => speculative.record(micros(s.saturating_duration_since(*t0)))?,
            None => no_speculative += 1,
        }
        match c {
            Some(c) => committed.record(micros(c.saturating_duration_since(*t0)))?,
            None => no_committed += 1,
        }
        if let (Some(s), Some(c)) = (s, c) {
            if c < s {
                committed_first += 1;
            } else {
                lead.record(micros(c.duration_since(*s)))?;
            }
        }
    }
    println!("  from the append's send, per record (p50 / p99 / max):");
    println!("    client ack            {}", line(&ack));
    println!("    speculative copy      {}", line(&speculative));
    println!("    committed copy        {}", line(&committed));
    println!("    speculative ahead by  {}", line(&lead));
    println!(
        "  records without a speculative copy {no_speculative}, without a committed copy {no_committed}, committed copy first {committed_first}, rolled back {}; term {term_before} -> {}",
        seen.rolled_back,
        term_after.map(|t| t.to_string()).unwrap_or_else(|| "?".into())
    );
    if term_after != Some(term_before) {
        println!("  the leader changed during the run: records after it came from another node's feed");
    }
    anyhow::ensure!(
        no_committed == 0,
        "{no_committed} appended records never reached the subscriber's committed stream"
    );
    Ok(())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

fn line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no records".into();
    }
    let ms = |v: u64| v as f64 / 1000.0;
    format!(
        "{:>7.3} / {:>7.3} / {:>7.3} ms",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}
