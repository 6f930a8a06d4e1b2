//! `txlog bench feed`: the UDP feed's publisher and subscribers in one
//! process on loopback, no cluster. Four phases:
//!
//! * **throughput**: one publisher thread packs and sends 256-B records as
//!   fast as it can to a bound socket; records/s, packets/s and the
//!   thread's CPU time (so "one core" is measured, not assumed);
//! * **latency**: N subscribers (`FeedSubscriber`, multicast on loopback)
//!   at a steady rate; latency from the publisher's hand-off (the moment
//!   a node's applied records reach it) to each subscriber's delivery,
//!   with subscribers busy-polled (`poll_event`) and then waiting in tokio,
//!   and then with one hub receiving for the host and the subscribers
//!   reading its host ring;
//! * **priority**: egress paced to a link's packets/s; the highest class's
//!   latency with the link at half load and at 2× overload;
//! * **loss**: 1 % of datagrams dropped at a subscriber; every record must
//!   arrive once, in order; recovery time of records re-sent from the ring.

use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use hdrhistogram::Histogram;
use txlog_client::feed::publisher::wall_clock_ns;
use txlog_client::feed::Classes;
use txlog_client::feed::FeedRecord;
use txlog_client::feed::KernelBackend;
use txlog_client::feed::Publisher;
use txlog_client::feed::PublisherConfig;
use txlog_client::feed::RetransmitLimits;
use txlog_client::feed::RetransmitService;
use txlog_client::feed::Via;
use txlog_client::FeedSubscriber;
use txlog_client::FeedSubscriberOptions;

/// Targets from the feed issue.
const RECORDS_PER_S_TARGET: f64 = 1_000_000.0;
const PACKETS_PER_S_TARGET: f64 = 200_000.0;
const LATENCY_P50_TARGET_US: f64 = 50.0;
const LATENCY_P99_TARGET_US: f64 = 200.0;
const RECOVERY_P99_TARGET_MS: f64 = 5.0;

#[derive(clap::Args, Debug, Clone)]
pub struct FeedBenchArgs {
    /// Seconds per phase.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 256)]
    pub record_bytes: usize,
    /// IP packet size.
    #[arg(long, default_value_t = txlog_client::feed::MTU_BYTES_DEFAULT)]
    pub mtu_bytes: usize,
    /// Subscribers in the latency phase.
    #[arg(long, default_value_t = 64)]
    pub subscribers: usize,
    /// How latency-phase subscribers wait: `busy` (polled without waiting,
    /// `FeedSubscriber::poll_event`, by --poll-threads threads over an
    /// epoll set), `async` (each a tokio task in `next`), or `both`, one
    /// run each.
    #[arg(long, default_value = "both", value_parser = ["busy", "async", "both"])]
    pub wait: String,
    /// Threads polling the latency phase's subscribers with --wait busy
    /// (each spins on a core).
    #[arg(long, default_value_t = 1)]
    pub poll_threads: usize,
    /// How latency-phase subscribers get the feed: `socket` (each its own
    /// socket, as --wait says), `ring` (one hub receives for the host and
    /// subscribers read its host ring in shared memory, busy-polled by
    /// --poll-threads threads), or `both`.
    #[arg(long, default_value = "both", value_parser = ["socket", "ring", "both"])]
    pub fanout: String,
    /// How the ring run's hub waits for datagrams: `block` (poll(2)) or
    /// `spin` (a core of its own).
    #[arg(long, default_value = "block", value_parser = ["block", "spin"])]
    pub hub_wait: String,
    /// Records per second in the latency and loss phases.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// The paced link of the priority phase, packets per second.
    #[arg(long, default_value_t = 20_000)]
    pub link_packets_per_s: u64,
    /// Run only these phases, comma-separated [default: all]: throughput,
    /// latency, priority, loss; and with a build with `--features dpdk`,
    /// dpdk-null, dpdk-ring, dpdk-veth (root: a veth pair into a network
    /// namespace, kernel and DPDK backends compared).
    #[arg(long, value_delimiter = ',')]
    pub phases: Vec<String>,
}

const PHASES: [&str; 4] = ["throughput", "latency", "priority", "loss"];
const DPDK_PHASES: [&str; 3] = ["dpdk-null", "dpdk-ring", "dpdk-veth"];

pub async fn run(args: FeedBenchArgs) -> anyhow::Result<()> {
    for phase in &args.phases {
        if DPDK_PHASES.contains(&phase.as_str()) && !cfg!(feature = "dpdk") {
            anyhow::bail!(
                "phase {phase} needs the DPDK backend: build with `cargo build --release --features dpdk` (and libdpdk-dev installed)"
            );
        }
        if !PHASES.contains(&phase.as_str()) && !DPDK_PHASES.contains(&phase.as_str()) {
            anyhow::bail!(
                "unknown phase {phase:?}: choose from {}, {}",
                PHASES.join(", "),
                DPDK_PHASES.join(", ")
            );
        }
    }
    let all = args.phases.is_empty();
    let wants = |phase: &str| all || args.phases.iter().any(|p| p == phase);
    println!(
        "txlog bench feed: {} s per phase, {}-B records, MTU {}",
        args.seconds, args.record_bytes, args.mtu_bytes
    );
    if wants("throughput") {
        let a = args.clone();
        tokio::task::spawn_blocking(move || throughput(&a)).await??;
    }
    if wants("latency") {
        if args.fanout != "ring" {
            for wait in ["busy", "async"] {
                if args.wait == wait || args.wait == "both" {
                    latency(&args, wait == "busy").await?;
                }
            }
        }
        if args.fanout != "socket" {
            latency_ring(&args).await?;
        }
    }
    if wants("priority") {
        priority(&args).await?;
    }
    if wants("loss") {
        loss(&args).await?;
    }
    #[cfg(feature = "dpdk")]
    {
        if wants("dpdk-null") {
            let a = args.clone();
            tokio::task::spawn_blocking(move || super::feed_dpdk::raw(&a, "net_null", false)).await??;
        }
        if wants("dpdk-ring") {
            let a = args.clone();
            tokio::task::spawn_blocking(move || super::feed_dpdk::raw(&a, "net_ring", true)).await??;
        }
        if wants("dpdk-veth") {
            let a = args.clone();
            tokio::task::spawn_blocking(move || super::feed_dpdk::veth(&a)).await??;
        }
    }
    Ok(())
}

pub(super) fn config(args: &FeedBenchArgs, session: u64, egress_packets_per_s: u64) -> PublisherConfig {
    PublisherConfig {
        session,
        mtu_bytes: args.mtu_bytes,
        classes: Classes::default(),
        ring_bytes: txlog_client::feed::RING_BYTES_DEFAULT,
        heartbeat: Duration::from_millis(100),
        egress_packets_per_s,
        queue_packets_max: txlog_client::feed::QUEUE_PACKETS_MAX_DEFAULT,
        speculative: false,
    }
}

pub(super) fn record(seq: u64, channel: &str, bytes: usize) -> FeedRecord {
    FeedRecord {
        seq,
        channel_seq: seq,
        channel: channel.into(),
        txid: format!("tx-{seq:012}").into_bytes(),
        payload: vec![0x5A; bytes.max(8)],
        sealed: false,
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn throughput(args: &FeedBenchArgs) -> anyhow::Result<()> {
    let sink = UdpSocket::bind("127.0.0.1:0")?;
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let mut backend = KernelBackend::new(socket, &[sink.local_addr()?], 1)?;
    let mut publisher = Publisher::new(config(args, 1, 0))?;
    let counters = publisher.shared().counters;
    let mut batch: Vec<FeedRecord> = (1..=256).map(|s| record(s, "market-data", args.record_bytes)).collect();
    let started = Instant::now();
    let cpu_started = thread_cpu();
    let mut seq = 0u64;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        for r in &mut batch {
            seq += 1;
            r.seq = seq;
        }
        let now = Instant::now();
        publisher.publish(batch.iter().map(FeedRecord::borrowed), now);
        publisher.send(&mut backend, now)?;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = (thread_cpu() - cpu_started).as_secs_f64();
    let packets = counters.packets_sent.load(Ordering::Relaxed) as f64;
    let dropped = counters.datagrams_dropped.load(Ordering::Relaxed);
    let records_per_s = seq as f64 / wall;
    println!(
        "throughput  {:>10.0} records/s  {:>9.0} packets/s  {:>6.0} MB/s  {:.1} records/packet  cpu {:.0} % of one core  ({} datagrams dropped for buffer)  targets ≥ {RECORDS_PER_S_TARGET:.0} records/s, ≥ {PACKETS_PER_S_TARGET:.0} packets/s: {}",
        records_per_s,
        packets / wall,
        counters.bytes_sent.load(Ordering::Relaxed) as f64 / wall / 1e6,
        seq as f64 / packets.max(1.0),
        cpu / wall * 100.0,
        dropped,
        if records_per_s >= RECORDS_PER_S_TARGET && packets / wall >= PACKETS_PER_S_TARGET { "met" } else { "MISSED" },
    );
    Ok(())
}

/// A publisher thread sending `per_ms` records of `bytes` each millisecond
/// for `args.seconds`, record `seq` on `channel_of(seq)`, with a retransmit
/// service on its socket until it ends. Each record's payload starts with
/// its hand-off time. The thread returns the last seq it published.
fn start_publisher(
    args: &FeedBenchArgs,
    targets: Vec<SocketAddr>,
    egress_packets_per_s: u64,
    per_ms: u64,
    bytes: usize,
    channel_of: impl Fn(u64) -> &'static str + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<u64>>> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let backend_socket = socket.try_clone()?;
    let mut backend = KernelBackend::new(backend_socket, &targets, 1)?;
    let mut publisher = Publisher::new(config(args, rand::random::<u64>() | 1, egress_packets_per_s))?;
    let stop = Arc::new(AtomicBool::new(false));
    let service = RetransmitService::new(
        socket,
        publisher.shared(),
        RetransmitLimits::default(),
        Box::new(|_| true),
    );
    let service_stop = stop.clone();
    std::thread::spawn(move || service.run(&service_stop));
    let seconds = args.seconds;
    let handle = std::thread::Builder::new()
        .name("bench-publisher".into())
        .spawn(move || -> anyhow::Result<u64> {
            // The retransmit service stops when this thread ends, however it ends.
            struct StopOnDrop(Arc<AtomicBool>);
            impl Drop for StopOnDrop {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _stop_service = StopOnDrop(stop);
            let started = Instant::now();
            let mut seq = 0u64;
            let mut tick = started;
            while started.elapsed() < Duration::from_secs(seconds) {
                tick += Duration::from_millis(1);
                let mut batch = Vec::new();
                for _ in 0..per_ms {
                    seq += 1;
                    let mut r = record(seq, channel_of(seq), bytes);
                    r.payload[..8].copy_from_slice(&wall_clock_ns().to_le_bytes());
                    batch.push(r);
                }
                let now = Instant::now();
                publisher.publish(batch.iter().map(FeedRecord::borrowed), now);
                publisher.heartbeats(now);
                publisher.send(&mut backend, now)?;
                // Paced egress: keep sending what waits until the next batch is due.
                while Instant::now() < tick {
                    if publisher.backlog() > 0 {
                        publisher.send(&mut backend, Instant::now())?;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
            // Heartbeats so subscribers see the end of every stream.
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(110));
                let now = Instant::now();
                publisher.heartbeats(now);
                publisher.send(&mut backend, now)?;
            }
            Ok(seq)
        })?;
    Ok(handle)
}

fn latency_of(delivered: &txlog_client::feed::Delivered) -> u64 {
    let sent = u64::from_le_bytes(delivered.record.payload[..8].try_into().expect("8 bytes"));
    wall_clock_ns().saturating_sub(sent)
}

pub(super) fn summary(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:>6.1} µs  p99 {:>7.1} µs  p99.9 {:>7.1} µs  max {:>8.1} µs  ({} samples)",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    )
}

/// One latency-phase subscriber's latencies and the records it got.
type Followed = (Histogram<u64>, u64);

async fn latency(args: &FeedBenchArgs, busy: bool) -> anyhow::Result<()> {
    let port = txlog_testkit::free_port()?;
    let group = Ipv4Addr::new(239, 192, 77, 1);
    let mut subscribers = Vec::new();
    for _ in 0..args.subscribers {
        subscribers.push(FeedSubscriber::join(
            FeedSubscriberOptions::new(
                SocketAddr::from(([0, 0, 0, 0], port)),
                Some((group, Ipv4Addr::LOCALHOST)),
            ),
            None,
        )?);
    }
    // Each subscriber is followed until this deadline and yields its
    // latencies (the first 100 records warm up: joins, describes) and count.
    let deadline = Instant::now() + Duration::from_secs(args.seconds + 2);
    let threads = args.poll_threads.clamp(1, args.subscribers.max(1));
    let followed: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Followed>>>> = if busy {
        let mut shares: Vec<Vec<FeedSubscriber>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, subscriber) in subscribers.into_iter().enumerate() {
            shares[i % threads].push(subscriber);
        }
        shares
            .into_iter()
            .map(|share| tokio::task::spawn_blocking(move || busy_poll(share, deadline)))
            .collect()
    } else {
        subscribers
            .into_iter()
            .map(|mut subscriber| {
                tokio::spawn(async move {
                    let mut h = Histogram::<u64>::new(3)?;
                    let mut count = 0u64;
                    while Instant::now() < deadline {
                        if let Some(d) = subscriber.next(Duration::from_millis(100)).await? {
                            count += 1;
                            if count > 100 {
                                h.record(latency_of(&d))?;
                            }
                        }
                    }
                    Ok(vec![(h, count)])
                })
            })
            .collect()
    };
    let (all, short, published) = publish_and_collect(args, SocketAddr::from((group, port)), followed).await?;
    let waiting = if busy {
        format!("busy-polled by {threads} thread(s)")
    } else {
        "async".to_string()
    };
    println!(
        "latency     {} subscribers ({waiting}), {} records/s: {}",
        args.subscribers,
        args.rate,
        latency_verdict(&all, short, published, "")
    );
    Ok(())
}

/// The latency phase with one hub per host: a `FeedHub` receives the feed
/// once and writes a host ring; `args.subscribers` readers of that ring are
/// busy-polled by `args.poll_threads` threads.
async fn latency_ring(args: &FeedBenchArgs) -> anyhow::Result<()> {
    use txlog_client::feed::HostRingReader;
    let port = txlog_testkit::free_port()?;
    let group = Ipv4Addr::new(239, 192, 77, 2);
    let ring_path =
        txlog_client::feed::host_ring::ring_dir().join(format!("txlog-bench-feed-{}.ring", std::process::id()));
    // The ring file goes with the phase, however it ends.
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _ring_file = RemoveOnDrop(ring_path.clone());
    let subscriber = FeedSubscriber::join(
        FeedSubscriberOptions::new(
            SocketAddr::from(([0, 0, 0, 0], port)),
            Some((group, Ipv4Addr::LOCALHOST)),
        ),
        None,
    )?;
    let mut hub = txlog_client::FeedHub::new(
        subscriber,
        &ring_path,
        txlog_client::feed::host_ring::HOST_RING_BYTES_DEFAULT,
    )?;
    let mut readers = Vec::new();
    for _ in 0..args.subscribers {
        readers.push(HostRingReader::open(&ring_path, None)?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let hub_stop = stop.clone();
    let wait = if args.hub_wait == "spin" {
        txlog_client::HubWait::Spin
    } else {
        txlog_client::HubWait::Block
    };
    let hub_thread = std::thread::Builder::new()
        .name("bench-hub".into())
        .spawn(move || hub.run(&hub_stop, wait, |_| {}).map(|()| hub.counters()))?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds + 2);
    let threads = args.poll_threads.clamp(1, args.subscribers.max(1));
    let mut shares: Vec<Vec<HostRingReader>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, reader) in readers.into_iter().enumerate() {
        shares[i % threads].push(reader);
    }
    let followed: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Followed>>>> = shares
        .into_iter()
        .map(|share| tokio::task::spawn_blocking(move || busy_poll_ring(share, deadline)))
        .collect();
    let (all, short, published) = publish_and_collect(args, SocketAddr::from((group, port)), followed).await?;
    stop.store(true, Ordering::Relaxed);
    let hub_counters = hub_thread.join().map_err(|_| anyhow::anyhow!("hub panicked"))??;
    println!(
        "latency     {} subscribers (host ring, hub {}, readers busy-polled by {threads} thread(s)), {} records/s: {}",
        args.subscribers,
        args.hub_wait,
        args.rate,
        latency_verdict(
            &all,
            short,
            published,
            &format!("; hub moved {} records", hub_counters.records)
        )
    );
    Ok(())
}

/// A latency run's figures against the targets, then `extra`, then how
/// many followers got fewer than all `published` records, if any.
fn latency_verdict(all: &Histogram<u64>, short: usize, published: u64, extra: &str) -> String {
    let p50 = all.value_at_quantile(0.5) as f64 / 1000.0;
    let p99 = all.value_at_quantile(0.99) as f64 / 1000.0;
    format!(
        "{}  targets p50 ≤ {LATENCY_P50_TARGET_US} µs, p99 ≤ {LATENCY_P99_TARGET_US} µs: {}{extra}{}",
        summary(all),
        if p50 <= LATENCY_P50_TARGET_US && p99 <= LATENCY_P99_TARGET_US {
            "met"
        } else {
            "MISSED"
        },
        if short > 0 {
            format!("; {short} subscribers got fewer than all {published} records")
        } else {
            String::new()
        }
    )
}

/// Publish at `args.rate` to `target` once the followers have had 200 ms
/// to start, then gather their latencies: all of them, how many followers
/// got fewer records than were published, and how many were.
async fn publish_and_collect(
    args: &FeedBenchArgs,
    target: SocketAddr,
    followed: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Followed>>>>,
) -> anyhow::Result<(Histogram<u64>, usize, u64)> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per_ms = (args.rate / 1000).max(1);
    let publisher = start_publisher(args, vec![target], 0, per_ms, args.record_bytes, |_| "market-data")?;
    let published = tokio::task::spawn_blocking(move || publisher.join())
        .await?
        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    let mut all = Histogram::<u64>::new(3)?;
    let mut short = 0;
    for task in followed {
        for (h, count) in task.await?? {
            all.add(&h)?;
            if count < published {
                short += 1;
            }
        }
    }
    Ok((all, short, published))
}

/// Poll host-ring `readers` on this thread until `deadline`, spinning.
fn busy_poll_ring(
    mut readers: Vec<txlog_client::feed::HostRingReader>,
    deadline: Instant,
) -> anyhow::Result<Vec<Followed>> {
    let mut followed = Vec::new();
    for _ in &readers {
        followed.push((Histogram::<u64>::new(3)?, 0u64));
    }
    let mut polls = 0u32;
    let mut sent = Vec::new();
    loop {
        for (reader, (h, count)) in readers.iter_mut().zip(followed.iter_mut()) {
            // One clock read per reader per pass, taken once the pass has
            // read everything: each record is charged at least its latency.
            sent.clear();
            while let Some(r) = reader.poll_ref()? {
                *count += 1;
                if *count > 100 {
                    sent.push(u64::from_le_bytes(r.record.payload[..8].try_into().expect("8 bytes")));
                }
            }
            if !sent.is_empty() {
                let now = wall_clock_ns();
                for at in &sent {
                    h.record(now.saturating_sub(*at))?;
                }
            }
        }
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(1024) && Instant::now() >= deadline {
            return Ok(followed);
        }
        std::hint::spin_loop();
    }
}

/// Poll `subscribers` on this thread until `deadline` without waiting: an
/// epoll set (never blocked on) says whose socket holds datagrams, and
/// every subscriber is polled each `TIMERS_EVERY` for its timers.
fn busy_poll(mut subscribers: Vec<FeedSubscriber>, deadline: Instant) -> anyhow::Result<Vec<Followed>> {
    use std::os::fd::AsRawFd;
    use std::os::fd::FromRawFd;
    use std::os::fd::OwnedFd;
    const TIMERS_EVERY: Duration = Duration::from_millis(5);
    let mut followed = Vec::new();
    for _ in &subscribers {
        followed.push((Histogram::<u64>::new(3)?, 0u64));
    }
    // SAFETY: epoll_create1 makes a new fd.
    let created = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    anyhow::ensure!(created >= 0, "epoll_create1: {}", std::io::Error::last_os_error());
    // SAFETY: the fd is open and owned by nothing else; it closes on drop.
    let epoll_fd = unsafe { OwnedFd::from_raw_fd(created) };
    let epoll = epoll_fd.as_raw_fd();
    for (i, subscriber) in subscribers.iter().enumerate() {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: both fds are open; the event is read during the call.
        let added = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, subscriber.as_raw_fd(), &mut event) };
        anyhow::ensure!(added == 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; subscribers.len()];
    let mut timers_at = Instant::now();
    let mut poll = |i: usize, subscribers: &mut Vec<FeedSubscriber>| -> anyhow::Result<()> {
        while let Some(event) = subscribers[i].poll_event()? {
            if let txlog_client::FeedEvent::Committed(d) = event {
                let (h, count) = &mut followed[i];
                *count += 1;
                if *count > 100 {
                    h.record(latency_of(&d))?;
                }
            }
        }
        Ok(())
    };
    loop {
        // SAFETY: `events` has room for `events.len()` entries.
        let ready = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 0) };
        if ready < 0 {
            let err = std::io::Error::last_os_error();
            anyhow::ensure!(err.kind() == std::io::ErrorKind::Interrupted, "epoll_wait: {err}");
            continue;
        }
        for event in &events[..ready as usize] {
            poll(event.u64 as usize, &mut subscribers)?;
        }
        if ready == 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if now >= timers_at {
                timers_at = now + TIMERS_EVERY;
                for i in 0..subscribers.len() {
                    poll(i, &mut subscribers)?;
                }
            }
            std::hint::spin_loop();
        }
    }
    Ok(followed)
}

async fn priority(args: &FeedBenchArgs) -> anyhow::Result<()> {
    // One record per packet: a record that fills the packet.
    let bytes = args.mtu_bytes - 28 - 36 - 64;
    let link = args.link_packets_per_s;
    let high_per_ms = (link / 20 / 1000).max(1);
    for load in [0.5f64, 2.0] {
        let total_per_ms = ((link as f64 * load) / 1000.0) as u64;
        let low_per_ms = total_per_ms.saturating_sub(high_per_ms);
        let port = txlog_testkit::free_port()?;
        let mut subscriber = FeedSubscriber::join(
            FeedSubscriberOptions::new(SocketAddr::from(([127, 0, 0, 1], port)), None),
            None,
        )?;
        let per_ms = high_per_ms + low_per_ms;
        let publisher = start_publisher(
            args,
            vec![SocketAddr::from(([127, 0, 0, 1], port))],
            link,
            per_ms,
            bytes,
            move |seq| {
                // Market data every (per_ms / high_per_ms)th record, the rest "other".
                if seq % (per_ms / high_per_ms).max(1) == 0 {
                    "market-data"
                } else {
                    "orders"
                }
            },
        )?;
        let mut high = Histogram::<u64>::new(3)?;
        let mut low = Histogram::<u64>::new(3)?;
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        while Instant::now() < deadline {
            if let Some(d) = subscriber.next(Duration::from_millis(100)).await? {
                if d.via == Via::Live {
                    let h = if d.class == 0 { &mut high } else { &mut low };
                    let _ = h.record(latency_of(&d));
                }
            }
        }
        let _ = tokio::task::spawn_blocking(move || publisher.join()).await;
        println!(
            "priority    link {link} packets/s at {:.1}× load: market-data {}\n            other {}",
            load,
            summary(&high),
            summary(&low)
        );
    }
    Ok(())
}

async fn loss(args: &FeedBenchArgs) -> anyhow::Result<()> {
    let port = txlog_testkit::free_port()?;
    let mut options = FeedSubscriberOptions::new(SocketAddr::from(([127, 0, 0, 1], port)), None);
    options.receiver.from_seq = None;
    options.drop_datagram = Some(Arc::new(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 100 == 0));
    let mut subscriber = FeedSubscriber::join(options, None)?;
    let per_ms = (args.rate / 1000).max(1);
    let publisher = start_publisher(
        args,
        vec![SocketAddr::from(([127, 0, 0, 1], port))],
        0,
        per_ms,
        args.record_bytes,
        |_| "market-data",
    )?;
    let mut recovery = Histogram::<u64>::new(3)?;
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(args.seconds + 2);
    while Instant::now() < deadline {
        if let Some(d) = subscriber.next(Duration::from_millis(100)).await? {
            if d.via == Via::Retransmit {
                let _ = recovery.record(latency_of(&d));
            }
            seqs.push(d.record.seq);
        }
    }
    let published = tokio::task::spawn_blocking(move || publisher.join())
        .await?
        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    let first = seqs.first().copied().unwrap_or(1);
    let in_order_once = seqs.windows(2).all(|w| w[1] == w[0] + 1) && seqs.last() == Some(&published);
    let c = subscriber.counters();
    println!(
        "loss        1 % dropped ({} datagrams): {} records from seq {first} to {published}, each once in order: {}; re-requests {}, recovered {}, unfilled {}",
        subscriber.dropped(),
        seqs.len(),
        if in_order_once { "yes" } else { "NO" },
        c.rerequests,
        c.recovered,
        c.unfilled
    );
    println!(
        "            recovery (loss to delivery) {}  target p99 ≤ {RECOVERY_P99_TARGET_MS} ms: {}",
        summary(&recovery),
        if !recovery.is_empty() && (recovery.value_at_quantile(0.99) as f64 / 1e6) <= RECOVERY_P99_TARGET_MS {
            "met"
        } else {
            "MISSED"
        }
    );
    if !in_order_once {
        anyhow::bail!("the loss phase did not deliver every record once in order");
    }
    Ok(())
}
