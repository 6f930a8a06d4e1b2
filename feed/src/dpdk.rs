//! The DPDK backend (feature `dpdk`): feed packets leave as Ethernet frames
//! built here and sent in bursts from a poll-mode driver, past the kernel.
//!
//! **One data-plane thread per process.** DPDK's EAL starts once per
//! process and pins the thread that starts it; that thread
//! (`txlog-dpdk`) then owns every DPDK port the process opens: it creates
//! the virtual device, its mbuf pool and queues, builds frames, calls
//! `tx_burst`, and polls RX for ports that asked for it. The publisher
//! never touches DPDK: [`DpdkBackend`] puts its packets in a bounded
//! outbox (references to the packets the retransmit ring holds anyway,
//! not copies), and the data-plane thread takes the whole outbox in one
//! swap. So one core does all per-frame work (the one copy of each packet
//! into its frame), and what the publisher pays is a reference count per
//! packet and one lock per batch.
//!
//! **Devices.** A port is a virtual device created after EAL init
//! (`rte_vdev_init`), so one process can open and close several:
//! `net_null0` (frames are freed on TX: raw throughput), `net_ring0` (TX
//! loops back to RX: the frames can be read back and checked),
//! `net_af_packet0,iface=<if>` (a real interface, e.g. one end of a veth
//! pair, through a PACKET_MMAP socket; needs `CAP_NET_RAW`). After
//! creating it, the port must exist: af_packet without privilege can
//! "succeed" and leave none, which is an error here.
//!
//! **Idle.** A poll-mode thread spins; on a small machine a spinning core
//! is a core lost. It spins [`IDLE_SPIN`] after its last work, then parks
//! until the publisher hands it packets (or [`IDLE_PARK`] passes, when a
//! port polls RX).
//!
//! **Limits.** The outbox holds [`OUTBOX_BYTES_MAX`]; packets that do not
//! fit are dropped and counted (they stay in the retransmit ring, like a
//! kernel `ENOBUFS`). A burst the driver keeps refusing is retried
//! [`TX_RETRIES_MAX`] times, then dropped and counted. Received datagrams
//! wait in a bounded inbox. IPv4 only; unicast targets need the next hop's
//! MAC (no ARP).

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::net::SocketAddrV4;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::Thread;
use std::time::Duration;
use std::time::Instant;

use dpdk_sys as sys;

use crate::backend::Backend;
use crate::error::Error;
use crate::frame::FrameTemplate;
use crate::frame::Mac;
use crate::frame::FRAME_HEADER_BYTES;

pub use crate::EAL_ARGS_DEFAULT;
/// Frames per `tx_burst` / `rx_burst`.
const BURST_FRAMES: usize = 64;
/// Mbufs per port's pool (2^n − 1 is what the mempool likes).
const POOL_MBUFS: u32 = 8191;
/// Mbufs cached per lcore in front of the pool's ring.
const POOL_CACHE_MBUFS: u32 = 256;
/// Data room of each mbuf: an Ethernet frame of a 1500-byte MTU and more.
const MBUF_DATA_ROOM_BYTES: u16 = 2048;
/// Largest feed packet a frame can carry.
pub const PACKET_BYTES_MAX: usize = MBUF_DATA_ROOM_BYTES as usize - FRAME_HEADER_BYTES;
const PORT_DESCRIPTORS: u16 = 1024;
/// Packet bytes waiting for the data-plane thread, per port.
pub const OUTBOX_BYTES_MAX: usize = 8 << 20;
/// Received datagrams waiting to be taken, per port.
const INBOX_DATAGRAMS_MAX: usize = 65_536;
/// Bursts a full TX queue refuses before the rest is dropped.
const TX_RETRIES_MAX: u32 = 1024;
pub const IDLE_SPIN: Duration = Duration::from_micros(100);
pub const IDLE_PARK: Duration = Duration::from_millis(1);
/// How long opening or closing a port may take on the data-plane thread.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One DPDK port sending one feed.
#[derive(Debug, Clone)]
pub struct DpdkConfig {
    /// EAL arguments (after the program name); the first port opened in a
    /// process starts EAL with them, later ones must agree.
    pub eal_args: Vec<String>,
    /// A virtual device: `net_null0`, `net_ring0`,
    /// `net_af_packet0,iface=veth0` (name, then driver arguments).
    pub device: String,
    /// The feed's address: source of every frame.
    pub source: SocketAddrV4,
    pub targets: Vec<SocketAddrV4>,
    /// Ethernet address of the next hop for unicast targets.
    pub next_hop_mac: Option<Mac>,
    /// IP TTL of frames to multicast targets (unicast get 64).
    pub multicast_ttl: u8,
    /// Poll the port's RX queue and keep the UDP datagrams addressed to
    /// the feed's port (taken with [`DpdkBackend::receive`]).
    pub receive: bool,
}

impl DpdkConfig {
    pub fn eal_args_default() -> Vec<String> {
        EAL_ARGS_DEFAULT.iter().map(|s| s.to_string()).collect()
    }

    fn device_name_and_args(&self) -> (String, String) {
        match self.device.split_once(',') {
            Some((name, args)) => (name.trim().to_owned(), args.trim().to_owned()),
            None => (self.device.trim().to_owned(), String::new()),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let (name, _) = self.device_name_and_args();
        if !name.starts_with("net_") || name.contains(char::is_whitespace) {
            return Err(Error::config(format!(
                "DPDK device {:?} is not a virtual net device (want net_null0, net_ring0 or net_af_packet0,iface=IF)",
                self.device
            )));
        }
        if self.targets.is_empty() {
            return Err(Error::config("the DPDK feed backend needs at least one target"));
        }
        Ok(())
    }
}

/// What a port's data-plane side has done; read at any time.
#[derive(Debug, Default)]
pub struct DpdkCounters {
    /// Frames the driver took.
    pub frames_sent: AtomicU64,
    /// Frames dropped: outbox full, no mbufs, or the driver refused them.
    pub frames_dropped: AtomicU64,
    /// UDP datagrams to the feed's port received and kept.
    pub datagrams_received: AtomicU64,
    /// Received frames that were not for us, malformed, or found the inbox full.
    pub frames_ignored: AtomicU64,
}

/// Counters as plain numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DpdkCountersSnapshot {
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub datagrams_received: u64,
    pub frames_ignored: u64,
}

/// Packets from the publisher to the data-plane thread: shared with the
/// publisher's retransmit ring, so handing one over copies nothing.
#[derive(Default)]
struct Outbox {
    packets: Vec<Arc<Vec<u8>>>,
    bytes: usize,
}

/// What a port's backend handle and the data-plane thread share.
struct PortShared {
    outbox: Mutex<Outbox>,
    inbox: Mutex<VecDeque<(SocketAddrV4, Vec<u8>)>>,
    counters: DpdkCounters,
    /// Drops the data-plane thread counted and `send` has not yet reported.
    unreported_drops: AtomicU64,
}

/// The process's data-plane thread, once EAL is up.
struct DataPlane {
    eal_args: Vec<String>,
    commands: Mutex<Vec<Command>>,
    thread: Thread,
    parked: AtomicBool,
}

enum Command {
    Open(Box<DpdkConfig>, mpsc::SyncSender<Result<Arc<PortShared>, String>>),
    Close(String, mpsc::SyncSender<()>),
}

/// EAL is started at most once per process; a failure is final too
/// (DPDK cannot be initialised twice).
static DATA_PLANE: Mutex<Option<Result<Arc<DataPlane>, String>>> = Mutex::new(None);

impl DataPlane {
    /// The running data plane, starting EAL with `eal_args` on first use.
    fn get(eal_args: &[String]) -> Result<Arc<DataPlane>, Error> {
        let mut slot = DATA_PLANE.lock().expect("data plane lock");
        if slot.is_none() {
            *slot = Some(DataPlane::start(eal_args.to_vec()));
        }
        match slot.as_ref().expect("just set") {
            Ok(plane) if plane.eal_args != eal_args => Err(Error::config(format!(
                "DPDK's EAL already runs in this process with {:?}; a second port asked for {:?}",
                plane.eal_args, eal_args
            ))),
            Ok(plane) => Ok(plane.clone()),
            Err(err) => Err(Error::config(format!("DPDK could not start: {err}"))),
        }
    }

    fn start(eal_args: Vec<String>) -> Result<Arc<DataPlane>, String> {
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let args = eal_args.clone();
        let spawned = std::thread::Builder::new()
            .name("txlog-dpdk".into())
            .spawn(move || {
                if let Err(err) = eal_init(&args) {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
                let plane = Arc::new(DataPlane {
                    eal_args: args,
                    commands: Mutex::new(Vec::new()),
                    thread: std::thread::current(),
                    parked: AtomicBool::new(false),
                });
                let _ = ready_tx.send(Ok(plane.clone()));
                plane.run();
            })
            .map_err(|e| format!("cannot start the DPDK data-plane thread: {e}"))?;
        let result = ready_rx
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| "EAL did not start within 30 s".to_owned())
            .and_then(|r| r);
        if result.is_err() {
            let _ = spawned.join();
        }
        result
    }

    fn command(&self, command: Command) {
        self.commands.lock().expect("commands lock").push(command);
        self.thread.unpark();
    }

    fn wake(&self) {
        if self.parked.load(Ordering::Acquire) {
            self.thread.unpark();
        }
    }

    /// The poll loop: commands, then TX (and RX) of every port, forever.
    fn run(&self) {
        let mut ports: Vec<Port> = Vec::new();
        let mut last_work = Instant::now();
        loop {
            let commands = std::mem::take(&mut *self.commands.lock().expect("commands lock"));
            let mut worked = !commands.is_empty();
            for command in commands {
                match command {
                    Command::Open(config, reply) => {
                        let opened = Port::open(&config).map(|p| {
                            let shared = p.shared.clone();
                            ports.push(p);
                            shared
                        });
                        let _ = reply.send(opened);
                    }
                    Command::Close(name, reply) => {
                        if let Some(at) = ports.iter().position(|p| p.name == name) {
                            let mut port = ports.remove(at);
                            port.transmit();
                            port.close();
                        }
                        let _ = reply.send(());
                    }
                }
            }
            for port in &mut ports {
                worked |= port.transmit();
                worked |= port.poll_receive();
            }
            if worked {
                last_work = Instant::now();
            } else if last_work.elapsed() > IDLE_SPIN {
                self.parked.store(true, Ordering::Release);
                // Re-check after announcing: a packet pushed just before
                // would otherwise wait for the timeout.
                let pending = ports
                    .iter()
                    .any(|p| !p.shared.outbox.lock().expect("outbox lock").packets.is_empty());
                if !pending {
                    if ports.iter().any(|p| p.receive) {
                        std::thread::park_timeout(IDLE_PARK);
                    } else {
                        std::thread::park();
                    }
                }
                self.parked.store(false, Ordering::Release);
                last_work = Instant::now();
            }
        }
    }
}

/// Start EAL on the calling thread.
fn eal_init(args: &[String]) -> Result<(), String> {
    let mut all = vec!["txlog".to_owned()];
    all.extend(args.iter().cloned());
    if !args
        .iter()
        .any(|a| a.starts_with("-l") || a.starts_with("--lcores") || a.starts_with("-c"))
    {
        all.push(format!("--lcores=0@({})", allowed_cpus()?));
    }
    let c_args: Vec<CString> = all
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(|_| format!("EAL argument {a:?} holds a NUL byte")))
        .collect::<Result<_, _>>()?;
    // EAL keeps pointers into argv for the life of the process.
    let argv: &'static mut Vec<*mut std::os::raw::c_char> =
        Box::leak(Box::new(c_args.into_iter().map(CString::into_raw).collect()));
    // SAFETY: argv holds argc valid NUL-terminated strings that are never freed.
    let rc = unsafe { sys::txlog_dpdk_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
    if rc < 0 {
        let err = sys::errno();
        return Err(format!(
            "rte_eal_init({}) failed: {}",
            all[1..].join(" "),
            sys::strerror(err)
        ));
    }
    tracing::info!(args = %all[1..].join(" "), "DPDK EAL started");
    Ok(())
}

/// The CPUs this process may run on, as an EAL CPU list (`0,1`).
fn allowed_cpus() -> Result<String, String> {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(format!("sched_getaffinity: {}", io::Error::last_os_error()));
    }
    let cpus: Vec<String> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: i < CPU_SETSIZE.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .map(|i| i.to_string())
        .collect();
    if cpus.is_empty() {
        return Err("this process may run on no CPU".into());
    }
    Ok(cpus.join(","))
}

/// A port as the data-plane thread holds it.
struct Port {
    name: String,
    id: u16,
    pool: *mut sys::RteMempool,
    templates: Vec<FrameTemplate>,
    feed_port: u16,
    receive: bool,
    shared: Arc<PortShared>,
    /// The outbox taken from the publisher, swapped back empty.
    taken: Outbox,
    ip_id: u16,
    mbufs: Vec<*mut sys::RteMbuf>,
}

impl Port {
    fn open(config: &DpdkConfig) -> Result<Port, String> {
        let (name, args) = config.device_name_and_args();
        let c_name = CString::new(name.clone()).map_err(|_| "device name holds a NUL byte".to_owned())?;
        let c_args = CString::new(args.clone()).map_err(|_| "device arguments hold a NUL byte".to_owned())?;
        // SAFETY: both are valid C strings for the call.
        let rc = unsafe { sys::txlog_dpdk_vdev_create(c_name.as_ptr(), c_args.as_ptr()) };
        if rc > 0 {
            return Err(format!("no DPDK driver for device {name} (is its PMD installed?)"));
        }
        if rc < 0 {
            return Err(format!(
                "cannot create DPDK device {name} ({args}): {}{}",
                sys::strerror(-rc),
                if name.starts_with("net_af_packet") {
                    " (net_af_packet needs CAP_NET_RAW and an existing interface)"
                } else {
                    ""
                }
            ));
        }
        let mut id = 0u16;
        // SAFETY: c_name is a valid C string; id is written on success.
        let found = unsafe { sys::txlog_dpdk_port_by_name(c_name.as_ptr(), &mut id) };
        // SAFETY: plain query.
        let ports = unsafe { sys::txlog_dpdk_port_count() };
        if found != 0 || ports == 0 {
            // SAFETY: removes the device created above.
            unsafe { sys::txlog_dpdk_vdev_remove(c_name.as_ptr()) };
            return Err(format!(
                "DPDK device {name} was created but left no port ({ports} ports in all); \
                 net_af_packet without CAP_NET_RAW does this"
            ));
        }
        let pool_name = CString::new(format!("txlog_{id}")).expect("no NUL");
        // SAFETY: pool_name is a valid C string.
        let pool = unsafe {
            sys::txlog_dpdk_pool_create(pool_name.as_ptr(), POOL_MBUFS, POOL_CACHE_MBUFS, MBUF_DATA_ROOM_BYTES)
        };
        if pool.is_null() {
            let err = sys::errno();
            // SAFETY: removes the device created above.
            unsafe { sys::txlog_dpdk_vdev_remove(c_name.as_ptr()) };
            return Err(format!(
                "cannot create the mbuf pool for {name}: {} (is EAL's -m large enough?)",
                sys::strerror(err)
            ));
        }
        let fail = |what: String| {
            release(id, pool, &c_name);
            what
        };
        // SAFETY: id is a valid port, pool a valid mempool.
        let rc = unsafe { sys::txlog_dpdk_port_start(id, pool, PORT_DESCRIPTORS, PORT_DESCRIPTORS) };
        if rc < 0 {
            return Err(fail(format!("cannot start DPDK port {name}: {}", sys::strerror(-rc))));
        }
        let mut mac = [0u8; 6];
        // SAFETY: mac has room for six bytes.
        let rc = unsafe { sys::txlog_dpdk_port_mac(id, mac.as_mut_ptr()) };
        if rc != 0 {
            return Err(fail(format!("cannot read the MAC of {name}: {}", sys::strerror(-rc))));
        }
        let templates = config
            .targets
            .iter()
            .map(|target| {
                let ttl = if target.ip().is_multicast() {
                    config.multicast_ttl
                } else {
                    64
                };
                FrameTemplate::new(mac, config.source, *target, config.next_hop_mac, ttl)
            })
            .collect::<Result<Vec<_>, Error>>()
            .map_err(|e| fail(e.to_string()))?;
        tracing::info!(device = %config.device, port = id, mac = %crate::frame::format_mac(&mac), "DPDK port started");
        Ok(Port {
            name,
            id,
            pool,
            templates,
            feed_port: config.source.port(),
            receive: config.receive,
            shared: Arc::new(PortShared {
                outbox: Mutex::new(Outbox::default()),
                inbox: Mutex::new(VecDeque::new()),
                counters: DpdkCounters::default(),
                unreported_drops: AtomicU64::new(0),
            }),
            taken: Outbox::default(),
            ip_id: 0,
            mbufs: vec![std::ptr::null_mut(); BURST_FRAMES],
        })
    }

    /// Send everything in the outbox, each packet to every target.
    /// Whether there was anything.
    fn transmit(&mut self) -> bool {
        {
            let mut outbox = self.shared.outbox.lock().expect("outbox lock");
            if outbox.packets.is_empty() {
                return false;
            }
            std::mem::swap(&mut *outbox, &mut self.taken);
        }
        let taken = std::mem::take(&mut self.taken.packets);
        let mut frames: Vec<(usize, &[u8])> = Vec::with_capacity(BURST_FRAMES);
        let mut dropped = 0u64;
        let mut sent = 0u64;
        for packet in &taken {
            for target in 0..self.templates.len() {
                frames.push((target, packet.as_slice()));
                if frames.len() == BURST_FRAMES {
                    let (s, d) = self.send_burst(&frames);
                    sent += s;
                    dropped += d;
                    frames.clear();
                }
            }
        }
        if !frames.is_empty() {
            let (s, d) = self.send_burst(&frames);
            sent += s;
            dropped += d;
        }
        drop(frames);
        let counters = &self.shared.counters;
        counters.frames_sent.fetch_add(sent, Ordering::Relaxed);
        if dropped > 0 {
            counters.frames_dropped.fetch_add(dropped, Ordering::Relaxed);
            self.shared.unreported_drops.fetch_add(dropped, Ordering::Relaxed);
        }
        // Keep the vector's capacity for the next swap.
        let mut taken = taken;
        taken.clear();
        self.taken.packets = taken;
        self.taken.bytes = 0;
        true
    }

    /// One burst of frames `(target, packet)`: (sent, dropped).
    fn send_burst(&mut self, frames: &[(usize, &[u8])]) -> (u64, u64) {
        let n = frames.len();
        // SAFETY: self.mbufs has room for BURST_FRAMES ≥ n pointers.
        if unsafe { sys::txlog_dpdk_alloc_bulk(self.pool, self.mbufs.as_mut_ptr(), n as u32) } != 0 {
            return (0, n as u64);
        }
        for (i, &(target, packet)) in frames.iter().enumerate() {
            let len = packet.len();
            let frame_bytes = FRAME_HEADER_BYTES + len;
            // SAFETY: mbufs[i] is a fresh mbuf; put returns frame_bytes of
            // its data room (send() refused packets larger than that).
            let data = unsafe { sys::txlog_dpdk_mbuf_put(self.mbufs[i], frame_bytes as u16) };
            assert!(!data.is_null(), "a feed packet of {len} bytes fits an mbuf");
            // SAFETY: data points at frame_bytes writable bytes of the mbuf.
            let out = unsafe { std::slice::from_raw_parts_mut(data, frame_bytes) };
            self.ip_id = self.ip_id.wrapping_add(1);
            self.templates[target].write(out, packet, self.ip_id);
        }
        let mut sent = 0usize;
        let mut refused = 0u32;
        while sent < n {
            // SAFETY: mbufs[sent..n] are ours; the driver takes the first k.
            let k = unsafe { sys::txlog_dpdk_tx_burst(self.id, self.mbufs[sent..].as_mut_ptr(), (n - sent) as u16) };
            sent += usize::from(k);
            if k == 0 {
                refused += 1;
                if refused > TX_RETRIES_MAX {
                    break;
                }
                // A looped-back port frees its TX ring only when read.
                self.poll_receive();
                std::hint::spin_loop();
            }
        }
        if sent < n {
            // SAFETY: the driver did not take mbufs[sent..n]; they are ours.
            unsafe { sys::txlog_dpdk_free_bulk(self.mbufs[sent..].as_mut_ptr(), (n - sent) as u32) };
        }
        (sent as u64, (n - sent) as u64)
    }

    /// Read a burst of frames, keep the UDP datagrams for the feed's port.
    fn poll_receive(&mut self) -> bool {
        if !self.receive {
            return false;
        }
        let mut mbufs = [std::ptr::null_mut::<sys::RteMbuf>(); BURST_FRAMES];
        // SAFETY: mbufs has room for BURST_FRAMES pointers.
        let n = usize::from(unsafe { sys::txlog_dpdk_rx_burst(self.id, mbufs.as_mut_ptr(), BURST_FRAMES as u16) });
        if n == 0 {
            return false;
        }
        let counters = &self.shared.counters;
        let mut inbox = self.shared.inbox.lock().expect("inbox lock");
        for &mbuf in &mbufs[..n] {
            let mut len = 0u16;
            // SAFETY: mbuf is a received mbuf we own; data is its first
            // segment, len bytes long, alive until freed below.
            let frame = unsafe {
                let data = sys::txlog_dpdk_mbuf_data(mbuf, &mut len);
                if sys::txlog_dpdk_mbuf_segments(mbuf) != 1 {
                    counters.frames_ignored.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                std::slice::from_raw_parts(data, usize::from(len))
            };
            match crate::frame::parse_udp(frame) {
                Ok(d) if d.destination.port() == self.feed_port && inbox.len() < INBOX_DATAGRAMS_MAX => {
                    inbox.push_back((d.source, d.payload.to_vec()));
                    counters.datagrams_received.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    counters.frames_ignored.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        drop(inbox);
        // SAFETY: the n mbufs are ours and no longer read.
        unsafe { sys::txlog_dpdk_free_bulk(mbufs.as_mut_ptr(), n as u32) };
        true
    }

    fn close(self) {
        release(self.id, self.pool, &CString::new(self.name.clone()).expect("no NUL"));
        tracing::info!(device = %self.name, "DPDK port closed");
    }
}

/// Stop and close port `id`, remove its device `name`, free its `pool`:
/// the one teardown, for a port that failed half-way through opening and
/// for one that closes.
fn release(id: u16, pool: *mut sys::RteMempool, name: &std::ffi::CStr) {
    // SAFETY: the port, device and pool were made by `Port::open` and
    // nothing uses them after this; the port is closed before its pool
    // (its queues hold mbufs from it) is freed.
    unsafe {
        sys::txlog_dpdk_port_close(id);
        sys::txlog_dpdk_vdev_remove(name.as_ptr());
        sys::txlog_dpdk_pool_free(pool);
    }
}

/// The publisher's handle on a DPDK port.
pub struct DpdkBackend {
    plane: Arc<DataPlane>,
    shared: Arc<PortShared>,
    name: String,
    /// Frames per packet (one per target), for drop accounting.
    targets: u64,
}

impl DpdkBackend {
    /// Start EAL if this process has not, then create and start the port.
    pub fn open(config: DpdkConfig) -> Result<DpdkBackend, Error> {
        config.validate()?;
        let plane = DataPlane::get(&config.eal_args)?;
        let name = config.device_name_and_args().0;
        let targets = config.targets.len() as u64;
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        plane.command(Command::Open(Box::new(config), reply_tx));
        let shared = reply_rx
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| Error::config(format!("DPDK port {name} did not open within 30 s")))?
            .map_err(Error::config)?;
        Ok(DpdkBackend {
            plane,
            shared,
            name,
            targets,
        })
    }

    pub fn counters(&self) -> DpdkCountersSnapshot {
        let c = &self.shared.counters;
        DpdkCountersSnapshot {
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            frames_dropped: c.frames_dropped.load(Ordering::Relaxed),
            datagrams_received: c.datagrams_received.load(Ordering::Relaxed),
            frames_ignored: c.frames_ignored.load(Ordering::Relaxed),
        }
    }

    /// Take the datagrams received so far (only with `receive`), with
    /// their sources.
    pub fn receive(&self, out: &mut Vec<(SocketAddrV4, Vec<u8>)>) {
        out.extend(self.shared.inbox.lock().expect("inbox lock").drain(..));
    }

    /// Whether the data-plane thread has taken everything handed to it.
    pub fn is_drained(&self) -> bool {
        self.shared.outbox.lock().expect("outbox lock").packets.is_empty()
    }
}

impl DpdkBackend {
    /// Put `packets` in the outbox; those that do not fit are dropped.
    fn hand_off<'a>(
        &mut self,
        packets: impl Iterator<Item = (usize, impl FnOnce() -> Arc<Vec<u8>> + 'a)>,
    ) -> io::Result<u64> {
        let mut dropped = self.shared.unreported_drops.swap(0, Ordering::Relaxed);
        {
            let mut outbox = self.shared.outbox.lock().expect("outbox lock");
            for (len, packet) in packets {
                if len > PACKET_BYTES_MAX {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("a feed packet of {len} bytes exceeds a DPDK frame's {PACKET_BYTES_MAX}"),
                    ));
                }
                if outbox.bytes + len > OUTBOX_BYTES_MAX {
                    dropped += self.targets;
                    self.shared
                        .counters
                        .frames_dropped
                        .fetch_add(self.targets, Ordering::Relaxed);
                    continue;
                }
                outbox.bytes += len;
                outbox.packets.push(packet());
            }
        }
        self.plane.wake();
        Ok(dropped)
    }
}

impl Backend for DpdkBackend {
    fn send(&mut self, packets: &[&[u8]]) -> io::Result<u64> {
        self.hand_off(packets.iter().map(|p| (p.len(), move || Arc::new(p.to_vec()))))
    }

    fn send_shared(&mut self, packets: &[Arc<Vec<u8>>]) -> io::Result<u64> {
        self.hand_off(packets.iter().map(|p| (p.len(), move || p.clone())))
    }

    fn name(&self) -> &'static str {
        "dpdk"
    }
}

impl Drop for DpdkBackend {
    /// Sends what is still in the outbox, then stops and removes the port.
    fn drop(&mut self) {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.plane.command(Command::Close(self.name.clone(), reply_tx));
        if reply_rx.recv_timeout(COMMAND_TIMEOUT).is_err() {
            tracing::warn!(device = %self.name, "DPDK port did not close within 30 s");
        }
    }
}
