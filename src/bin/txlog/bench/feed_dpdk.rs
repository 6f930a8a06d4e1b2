//! `txlog bench feed` phases for the DPDK backend (built with `--features
//! dpdk`):
//!
//! * **dpdk-null** / **dpdk-ring**: the backend alone. One thread hands
//!   real feed packets (made by a publisher beforehand) to the backend in
//!   batches of 256; the data-plane thread builds the frames and bursts
//!   them into `net_null` (freed at once) or `net_ring` (looped back,
//!   received, parsed and counted on the same core). Packets/s are the
//!   frames the driver took; the data-plane thread's CPU time is read
//!   from /proc, so "one core" is measured.
//! * **dpdk-veth** (root): a veth pair into a network namespace made for
//!   the run; a kernel UDP subscriber in the namespace. The kernel backend
//!   (socket on the outer end) and the DPDK backend (`net_af_packet` on
//!   the outer end) in turn, each at 1×, 10× and 25× the latency rate:
//!   hand-off-to-delivery latency and records/s delivered.

use std::net::SocketAddr;
use std::net::SocketAddrV4;
use std::net::UdpSocket;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use hdrhistogram::Histogram;
use txlog_feed::dpdk::DpdkConfig;
use txlog_feed::publisher::wall_clock_ns;
use txlog_feed::veth::VethNamespace;
use txlog_feed::veth::INNER_ADDRESS;
use txlog_feed::veth::OUTER_ADDRESS;
use txlog_feed::Action;
use txlog_feed::Backend;
use txlog_feed::DpdkBackend;
use txlog_feed::FeedRecord;
use txlog_feed::KernelBackend;
use txlog_feed::Publisher;
use txlog_feed::Receiver;
use txlog_feed::ReceiverConfig;
use txlog_feed::RetransmitLimits;
use txlog_feed::RetransmitService;
use txlog_feed::Via;

use super::feed::config;
use super::feed::record;
use super::feed::summary;
use super::feed::FeedBenchArgs;

const PACKETS_PER_S_TARGET: f64 = 5_000_000.0;
const HAND_OFF_PACKETS: usize = 256;

/// A capture backend: what a publisher would send.
struct Capture(Vec<Vec<u8>>);

impl Backend for Capture {
    fn send(&mut self, packets: &[&[u8]]) -> std::io::Result<u64> {
        self.0.extend(packets.iter().map(|p| p.to_vec()));
        Ok(0)
    }

    fn name(&self) -> &'static str {
        "capture"
    }
}

/// Feed packets as a publisher packs them, `records_per_packet` records of
/// `args.record_bytes` each (a partial packet is sent when no more records
/// wait, so 1 gives the smallest packets).
fn packets(args: &FeedBenchArgs, records_per_packet: usize, count: usize) -> anyhow::Result<Vec<Arc<Vec<u8>>>> {
    let mut publisher = Publisher::new(config(args, 1, 0))?;
    let mut capture = Capture(Vec::new());
    let mut seq = 0;
    while capture.0.len() < count {
        let batch: Vec<FeedRecord> = (0..records_per_packet)
            .map(|_| {
                seq += 1;
                record(seq, "market-data", args.record_bytes)
            })
            .collect();
        publisher.publish(batch.iter().map(FeedRecord::borrowed), Instant::now());
        publisher.send(&mut capture, Instant::now())?;
    }
    capture.0.truncate(count);
    Ok(capture.0.into_iter().map(Arc::new).collect())
}

/// CPU time of the thread named `name` in this process.
fn thread_cpu_named(name: &str) -> Option<Duration> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields after the command's closing parenthesis; utime, stime are 14, 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        return Some(Duration::from_millis(ticks * 1000 / ticks_per_s.max(1)));
    }
    None
}

/// The backend alone on a `driver` device, for packets of one record and
/// for full packets.
pub fn raw(args: &FeedBenchArgs, driver: &str, receive: bool) -> anyhow::Result<()> {
    for records_per_packet in [1usize, 64] {
        let packets = packets(args, records_per_packet, 4096)?;
        let packet_bytes = packets.iter().map(|p| p.len()).sum::<usize>() / packets.len();
        let mut backend = DpdkBackend::open(DpdkConfig {
            eal_args: DpdkConfig::eal_args_default(),
            // A fresh name per round: net_ring keeps its rings by name.
            device: format!("{driver}_bench{records_per_packet}"),
            source: SocketAddrV4::new(OUTER_ADDRESS, 7411),
            targets: vec![SocketAddrV4::new(OUTER_ADDRESS, 7411)],
            next_hop_mac: Some([2, 0, 0, 0, 0, 2]),
            multicast_ttl: 1,
            receive,
        })?;
        let mut received = Vec::new();
        let before = backend.counters();
        let cpu_before = thread_cpu_named("txlog-dpdk").unwrap_or_default();
        let started = Instant::now();
        let mut next = 0;
        while started.elapsed() < Duration::from_secs(args.seconds) {
            let start = next % (packets.len() - HAND_OFF_PACKETS);
            next += HAND_OFF_PACKETS;
            backend.send_shared(&packets[start..start + HAND_OFF_PACKETS])?;
            if receive {
                backend.receive(&mut received);
                received.clear();
            }
            // Hand off no faster than the data plane drains: a full outbox
            // only measures drops.
            while !backend.is_drained() {
                std::hint::spin_loop();
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = thread_cpu_named("txlog-dpdk").unwrap_or_default() - cpu_before;
        let after = backend.counters();
        let frames = (after.frames_sent - before.frames_sent) as f64;
        let pps = frames / wall;
        println!(
            "{:<11} {:>4}-B packets: {:>10.0} packets/s  {:>6.2} Gbit/s  data-plane core {:.0} %  dropped {}{}  target ≥ {PACKETS_PER_S_TARGET:.0} packets/s: {}",
            if receive { "dpdk-ring" } else { "dpdk-null" },
            packet_bytes,
            pps,
            pps * (packet_bytes + txlog_feed::frame::FRAME_HEADER_BYTES) as f64 * 8.0 / 1e9,
            cpu.as_secs_f64() / wall * 100.0,
            after.frames_dropped - before.frames_dropped,
            if receive {
                format!(", read back {}", after.datagrams_received - before.datagrams_received)
            } else {
                String::new()
            },
            if pps >= PACKETS_PER_S_TARGET { "met" } else { "MISSED" },
        );
        drop(backend);
    }
    Ok(())
}

/// Kernel and DPDK backends over the same veth to a kernel subscriber.
pub fn veth(args: &FeedBenchArgs) -> anyhow::Result<()> {
    // SAFETY: plain query.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the dpdk-veth phase makes a network namespace and needs root");
    }
    let veth = VethNamespace::create("bench", true)?;
    let inner_mac = veth.inner_mac()?;
    let port = 7420;
    // Paced: kernel bypass has no back-pressure (a kernel socket blocks
    // its sender when the link is full; af_packet just drops), so both
    // are compared at the same offered rates.
    for backend_name in ["kernel", "dpdk"] {
        for rate in [args.rate, args.rate * 10, args.rate * 25] {
            let socket = veth.socket(SocketAddr::from((INNER_ADDRESS, port)), None)?;
            let backend: Box<dyn Backend> = if backend_name == "kernel" {
                let socket = UdpSocket::bind(SocketAddr::from((OUTER_ADDRESS, 0)))?;
                Box::new(KernelBackend::new(
                    socket,
                    &[SocketAddr::from((INNER_ADDRESS, port))],
                    1,
                )?)
            } else {
                Box::new(DpdkBackend::open(DpdkConfig {
                    eal_args: DpdkConfig::eal_args_default(),
                    device: format!("net_af_packet_bench,iface={}", veth.outer),
                    source: SocketAddrV4::new(OUTER_ADDRESS, 7411),
                    targets: vec![SocketAddrV4::new(INNER_ADDRESS, port)],
                    next_hop_mac: Some(inner_mac),
                    multicast_ttl: 1,
                    receive: false,
                })?)
            };
            let (delivered, live, h, published, wall) = run_over_veth(args, backend, socket, rate)?;
            println!(
                "dpdk-veth   {backend_name:<6} {:>7}/s offered: {:>9.0} records/s delivered ({live} of {published} live, {} in all)  {}",
                rate,
                delivered as f64 / wall,
                delivered,
                summary(&h)
            );
        }
    }
    Ok(())
}

/// Publish for `args.seconds` at `rate` records/s through `backend`; a subscriber thread on `socket`.
/// Returns (delivered, delivered live, latency of live records, published, seconds).
fn run_over_veth(
    args: &FeedBenchArgs,
    mut backend: Box<dyn Backend>,
    socket: UdpSocket,
    rate: u64,
) -> anyhow::Result<(u64, u64, Histogram<u64>, u64, f64)> {
    let mut publisher = Publisher::new(config(args, rand::random::<u64>() | 1, 0))?;
    let service = RetransmitService::new(
        UdpSocket::bind("127.0.0.1:0")?,
        publisher.shared(),
        RetransmitLimits::default(),
        Box::new(|_| true),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let subscriber_stop = stop.clone();
    let subscriber = std::thread::spawn(move || subscribe(socket, service, &subscriber_stop));
    let started = Instant::now();
    let mut seq = 0u64;
    let mut tick = started;
    let per_ms = (rate / 1000).max(1);
    while started.elapsed() < Duration::from_secs(args.seconds) {
        let batch: Vec<FeedRecord> = (0..per_ms)
            .map(|_| {
                seq += 1;
                let mut r = record(seq, "market-data", args.record_bytes);
                r.payload[..8].copy_from_slice(&wall_clock_ns().to_le_bytes());
                r
            })
            .collect();
        let now = Instant::now();
        publisher.publish(batch.iter().map(FeedRecord::borrowed), now);
        publisher.send(backend.as_mut(), now)?;
        tick += Duration::from_millis(1);
        while Instant::now() < tick {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    publisher.end(backend.as_mut(), Instant::now() + Duration::from_secs(1))?;
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (delivered, live, h) = subscriber.join().map_err(|_| anyhow::anyhow!("subscriber panicked"))?;
    Ok((delivered, live, h, seq, wall))
}

/// A kernel subscriber: live records' latency; gaps it cannot recover are
/// counted, not filled (no log here).
fn subscribe(socket: UdpSocket, mut service: RetransmitService, stop: &AtomicBool) -> (u64, u64, Histogram<u64>) {
    let mut receiver = Receiver::new(ReceiverConfig::default());
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let mut out = Vec::new();
    let mut actions = Vec::new();
    let mut buffer = vec![0u8; 2048];
    let (mut delivered, mut live) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = socket.recv_from(&mut buffer) {
            receiver.on_datagram(&buffer[..n], from, Instant::now(), &mut out, &mut actions);
        }
        receiver.tick(Instant::now(), &mut actions);
        while let Some(action) = actions.pop() {
            if let Action::Send { to, packet } = action {
                let mut replies = Vec::new();
                service.handle(
                    &packet,
                    "127.0.0.1:9".parse().expect("addr"),
                    Instant::now(),
                    &mut replies,
                );
                for reply in replies {
                    receiver.on_datagram(&reply, to, Instant::now(), &mut out, &mut actions);
                }
            }
        }
        for d in out.drain(..) {
            delivered += 1;
            if d.via == Via::Live {
                live += 1;
                let sent = u64::from_le_bytes(d.record.payload[..8].try_into().expect("8 bytes"));
                let _ = h.record(wall_clock_ns().saturating_sub(sent));
            }
        }
    }
    (delivered, live, h)
}
