//! `txlog feed hub` and `txlog feed subscribe --ring`: one receiver of the
//! feed per host, and subscribers that read what it received from its
//! host ring in shared memory.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use txlog_client::feed::host_ring::WriterState;
use txlog_client::FeedHub;
use txlog_client::FeedSubscriber;
use txlog_client::FeedSubscriberOptions;
use txlog_client::HubWait;
use txlog_client::RingEvent;
use txlog_client::RingSubscriber;

use crate::args::FeedHubArgs;
use crate::args::FeedSubscribeArgs;
use crate::feed::feed_address;
use crate::feed::payload_opener;
use crate::feed::print_and_count;
use crate::feed::status_counters;

const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How long a ring subscriber spins after a record before it sleeps
/// between polls (a printing CLI needs no lower latency than this).
const SPIN_AFTER_RECORD: Duration = Duration::from_millis(1);
const IDLE_SLEEP: Duration = Duration::from_micros(200);

/// Where a hub for feed port `port` puts its ring unless told.
fn default_ring_path(port: u16) -> PathBuf {
    txlog_client::feed::host_ring::ring_dir().join(format!("txlog-feed-{port}.ring"))
}

/// Set once Ctrl-C or SIGTERM arrives.
fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let flag = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        flag.store(true, Ordering::Relaxed);
    });
    Ok(stop)
}

pub async fn hub(args: FeedHubArgs) -> anyhow::Result<()> {
    let (feed, listen, group) = feed_address(&args.feed, args.interface)?;
    let ring = args.ring.clone().unwrap_or_else(|| default_ring_path(feed.port()));
    let client = if args.no_log {
        None
    } else {
        Some(crate::records::client(&args.cluster)?)
    };
    let subscriber = FeedSubscriber::join(FeedSubscriberOptions::new(listen, group), client)?;
    let mut hub = FeedHub::new(subscriber, &ring, args.ring_bytes)?;
    eprintln!(
        "txlog feed hub: receiving {feed}, writing the host ring {} ({} bytes); subscribers: txlog feed subscribe --ring {}",
        ring.display(),
        args.ring_bytes,
        ring.display()
    );
    let stop = stop_on_signal()?;
    let wait = if args.spin { HubWait::Spin } else { HubWait::Block };
    let ended = tokio::task::spawn_blocking(move || {
        let mut status_at = Instant::now() + STATUS_EVERY;
        let result = hub.run(&stop, wait, |hub| {
            if Instant::now() >= status_at {
                status_at += STATUS_EVERY;
                eprintln!("{}", hub_status(hub));
            }
        });
        eprintln!("{}", hub_status(&hub));
        result
    })
    .await?;
    // The ring file stays: its readers see the hub closed, and the next
    // hub replaces it.
    Ok(ended?)
}

fn hub_status(hub: &FeedHub) -> String {
    let counters = hub.counters();
    format!(
        "hub: records {}, omitted {}; {}",
        counters.records,
        counters.omitted,
        status_counters(hub.subscriber(), counters.records)
    )
}

pub async fn subscribe_ring(args: FeedSubscribeArgs) -> anyhow::Result<()> {
    if args.from.is_some() || !args.classes.is_empty() || args.speculative {
        anyhow::bail!(
            "--ring reads what this host's hub receives from the moment it opens, all classes: \
             --from, --class and --speculative need the feed itself (drop --ring)"
        );
    }
    let (feed, _, _) = feed_address(&args.feed, args.interface)?;
    let path = args
        .ring
        .clone()
        .flatten()
        .unwrap_or_else(|| default_ring_path(feed.port()));
    let client = if args.no_log {
        None
    } else {
        Some(crate::records::client(&args.cluster)?)
    };
    let mut opener = payload_opener(&args, client.as_ref()).await?;
    let mut subscriber = RingSubscriber::open(&path, args.channel.clone(), client)
        .with_context(|| format!("is `txlog feed hub` running for {feed}?"))?;
    eprintln!("txlog feed: reading the host ring {}", path.display());
    let stop = stop_on_signal()?;
    let mut printed = 0u64;
    let mut last_record = Instant::now();
    let mut last_status = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match subscriber.poll().await? {
            Some(RingEvent::Record(delivered)) => {
                last_record = Instant::now();
                if print_and_count(&args, &delivered, opener.as_mut(), &mut printed).await {
                    break;
                }
            }
            Some(RingEvent::Lapped {
                behind_bytes,
                filled_from_log,
            }) => eprintln!(
                "txlog feed: this reader fell {behind_bytes} bytes behind the hub's ring; {}",
                if filled_from_log {
                    "the records it missed follow from the log"
                } else {
                    "the records it missed are lost to it (--no-log)"
                }
            ),
            Some(RingEvent::NewHub { filled_from_log }) => eprintln!(
                "txlog feed: a new hub took over {}; {}",
                path.display(),
                if filled_from_log {
                    "records between the two hubs follow from the log"
                } else {
                    "records between the two hubs are not in either ring (--no-log)"
                }
            ),
            Some(RingEvent::Omitted { seq, bytes }) => eprintln!(
                "txlog feed: record seq {seq} ({bytes} bytes) is too large for the hub's ring and --no-log keeps it from the log"
            ),
            None => {
                if last_record.elapsed() >= SPIN_AFTER_RECORD {
                    tokio::time::sleep(IDLE_SLEEP).await;
                }
            }
        }
        if last_status.elapsed() >= STATUS_EVERY {
            last_status = Instant::now();
            eprintln!("{}", ring_status(&subscriber, printed));
        }
        if args.idle_exit.is_some_and(|idle| last_record.elapsed() >= idle) {
            break;
        }
    }
    eprintln!("{}", ring_status(&subscriber, printed));
    Ok(())
}

fn ring_status(subscriber: &RingSubscriber, printed: u64) -> String {
    let reader = subscriber.reader();
    let c = reader.counters();
    let s = subscriber.counters();
    let hub = match reader.writer_state() {
        WriterState::Closed => "stopped".to_string(),
        WriterState::Alive { heartbeat_age_ms } if heartbeat_age_ms > txlog_client::HUB_SILENT_MS => {
            format!("silent for {:.1} s", heartbeat_age_ms as f64 / 1000.0)
        }
        WriterState::Alive { .. } => "running".to_string(),
    };
    format!(
        "ring: records {printed} ({} from the log), laps {}, lapped bytes {}, omitted {}, behind {} bytes; hub {hub}{}",
        s.from_log,
        c.laps,
        c.lapped_bytes,
        c.omitted,
        reader.behind_bytes(),
        if subscriber.filling() {
            "; filling from the log"
        } else {
            ""
        }
    )
}
