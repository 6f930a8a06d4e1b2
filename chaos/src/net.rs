//! Network faults: links cut and delayed with iptables.
//!
//! Every node has its own IP (127.0.0.N on loopback, or its namespace's
//! address) and binds its outgoing peer connections to it, so a rule on
//! (source IP, destination IP) cuts exactly one direction of one link.
//! Rules go in a chain of their own, hooked into INPUT: a cut drops
//! packets silently at the receiver (peers see timeouts, not resets).
//! Latency sends a link's packets through NFQUEUE to a thread here that
//! holds each packet for the delay, marks it ([`DELAYED_MARK`]) and sends
//! it through INPUT again (verdict repeat) rather than accepting it, so
//! the rules after this chain still see it: the region latency model's
//! chain (`txlog_testkit::RegionLinks`, appended to INPUT) adds its own
//! delay on top instead of being skipped.
//!
//! The chain (and its hook) is removed when the [`Firewall`] is dropped —
//! at the end of a run, on an error, and while unwinding from a panic.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;

/// Prefix of this harness's iptables chains (then the pid).
const CHAIN_PREFIX: &str = "TXLOG-CHAOS-";
/// The NFQUEUE number delayed packets go through.
const DELAY_QUEUE: u16 = 4711;
/// Packets held at once; beyond this the queue lets packets through.
const DELAY_QUEUE_PACKETS_MAX: u32 = 65_536;
/// The packet mark (one bit) of a packet this harness has delayed once:
/// its delay rule skips such packets when they come through INPUT again.
/// Only loopback traffic between the run's own node IPs is marked, on a
/// test machine; a host whose firewall uses this bit (some CNI plugins do)
/// is not one to run chaos on.
const DELAYED_MARK: u32 = 0x0040_0000;

/// Where the rules live: one chain in this namespace (loopback placement),
/// or one chain per node namespace.
#[derive(Debug, Clone)]
pub enum RulePlace {
    Loopback,
    /// `namespaces[i]` is node i's network namespace.
    Namespaces(Vec<String>),
}

pub struct Firewall {
    chain: String,
    place: RulePlace,
    ips: Vec<Ipv4Addr>,
    delayer: Option<Delayer>,
}

/// Run `program args…` (after `prefix`) to completion; a failure carries its stderr.
pub(crate) fn run_tool(prefix: &[&str], program: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut command = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    };
    let output = command
        .args(args)
        .output()
        .with_context(|| format!("run {program} (is it installed?)"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn iptables(namespace: Option<&str>, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["-w", "5"];
    all.extend_from_slice(args);
    match namespace {
        Some(ns) => run_tool(&["ip", "netns", "exec", ns], "iptables", &all),
        None => run_tool(&[], "iptables", &all),
    }
}

/// True when iptables can be used here (installed, and we may change rules).
pub fn iptables_usable() -> bool {
    Command::new("iptables")
        .args(["-w", "5", "-S", "INPUT"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

impl Firewall {
    /// Create the chain(s) and hook them into INPUT. Chains left behind by
    /// runs that were killed outright (named after a pid that is gone) are
    /// removed first.
    pub fn install(place: RulePlace, ips: Vec<Ipv4Addr>) -> anyhow::Result<Firewall> {
        let chain = format!("{CHAIN_PREFIX}{}", std::process::id());
        if matches!(place, RulePlace::Loopback) {
            txlog_testkit::remove_stale_chains(CHAIN_PREFIX);
        }
        let firewall = Firewall {
            chain,
            place,
            ips,
            delayer: None,
        };
        for ns in firewall.namespaces() {
            iptables(ns, &["-N", &firewall.chain])?;
            iptables(ns, &["-I", "INPUT", "1", "-j", &firewall.chain])?;
        }
        Ok(firewall)
    }

    fn namespaces(&self) -> Vec<Option<&str>> {
        match &self.place {
            RulePlace::Loopback => vec![None],
            RulePlace::Namespaces(names) => names.iter().map(|n| Some(n.as_str())).collect(),
        }
    }

    /// Where the rule for packets `from → to` goes, and its match arguments.
    fn rule(&self, from: usize, to: usize) -> (Option<&str>, Vec<String>) {
        let source = self.ips[from].to_string();
        match &self.place {
            RulePlace::Loopback => (None, vec!["-s".into(), source, "-d".into(), self.ips[to].to_string()]),
            RulePlace::Namespaces(names) => (Some(names[to].as_str()), vec!["-s".into(), source]),
        }
    }

    /// Drop every packet from node `from` to node `to` (one direction).
    pub fn cut(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let (ns, matches) = self.rule(from, to);
        let mut args = vec!["-A", &self.chain];
        args.extend(matches.iter().map(String::as_str));
        args.extend(["-j", "DROP"]);
        iptables(ns, &args)
    }

    /// Hold packets from `from` to `to` for `delay` (loopback placement only).
    pub fn delay(&mut self, from: usize, to: usize, delay: Duration) -> anyhow::Result<()> {
        if !matches!(self.place, RulePlace::Loopback) {
            bail!("the latency fault needs --net loopback");
        }
        match &self.delayer {
            Some(d) if d.delay == delay => {}
            _ => {
                self.delayer = None;
                self.delayer = Some(Delayer::start(delay)?);
            }
        }
        let (ns, matches) = self.rule(from, to);
        let queue = DELAY_QUEUE.to_string();
        let unmarked = format!("0/{DELAYED_MARK:#x}");
        let mut args = vec!["-A", &self.chain];
        args.extend(matches.iter().map(String::as_str));
        args.extend(["-m", "mark", "--mark", &unmarked]);
        args.extend(["-j", "NFQUEUE", "--queue-num", &queue, "--queue-bypass"]);
        iptables(ns, &args)
    }

    /// Remove every rule: all links whole again, no delay.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for ns in self.namespaces() {
            iptables(ns, &["-F", &self.chain])?;
        }
        // Packets still held are released by the delayer before it stops.
        self.delayer = None;
        Ok(())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.delayer = None;
        for ns in self.namespaces() {
            let _ = iptables(ns, &["-D", "INPUT", "-j", &self.chain]);
            let _ = iptables(ns, &["-F", &self.chain]);
            let _ = iptables(ns, &["-X", &self.chain]);
        }
    }
}

/// The NFQUEUE reader that delays packets.
struct Delayer {
    delay: Duration,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Delayer {
    fn start(delay: Duration) -> anyhow::Result<Delayer> {
        let mut queue = nfq::Queue::open().context("open an NFQUEUE socket (needs root)")?;
        queue
            .bind(DELAY_QUEUE)
            .context("bind NFQUEUE (is the nfnetlink_queue module available?)")?;
        queue.set_queue_max_len(DELAY_QUEUE, DELAY_QUEUE_PACKETS_MAX)?;
        queue.set_fail_open(DELAY_QUEUE, true)?;
        queue.set_copy_range(DELAY_QUEUE, 64)?;
        queue.set_nonblocking(true);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("nfqueue-delay".into())
            .spawn(move || {
                let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
                loop {
                    let stopping = stopping.load(Ordering::Relaxed);
                    while let Ok(message) = queue.recv() {
                        held.push_back((Instant::now() + delay, message));
                    }
                    let now = Instant::now();
                    while let Some((due, _)) = held.front() {
                        if *due > now && !stopping {
                            break;
                        }
                        let (_, mut message) = held.pop_front().expect("front exists");
                        message.set_nfmark(message.get_nfmark() | DELAYED_MARK);
                        message.set_verdict(nfq::Verdict::Repeat);
                        let _ = queue.verdict(message);
                    }
                    if stopping {
                        let _ = queue.unbind(DELAY_QUEUE);
                        return;
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
            })?;
        Ok(Delayer {
            delay,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whatever cuts and delays links in this run.
pub enum Links {
    Firewall(Firewall),
    Proxy(crate::proxy::Proxy),
}

impl Links {
    /// Cut the direction `from → to`.
    pub fn cut(&mut self, from: usize, to: usize) -> anyhow::Result<()> {
        match self {
            Links::Firewall(f) => f.cut(from, to),
            Links::Proxy(p) => {
                p.cut(from, to);
                Ok(())
            }
        }
    }

    /// Delay the direction `from → to`.
    pub fn delay(&mut self, from: usize, to: usize, delay: Duration) -> anyhow::Result<()> {
        match self {
            Links::Firewall(f) => f.delay(from, to, delay),
            Links::Proxy(p) => {
                p.delay(from, to, delay);
                Ok(())
            }
        }
    }

    pub fn heal(&mut self) -> anyhow::Result<()> {
        match self {
            Links::Firewall(f) => f.heal(),
            Links::Proxy(p) => {
                p.heal();
                Ok(())
            }
        }
    }
}
