//! The region latency model: a fixed one-way delay per pair of regions,
//! with jitter, on peer traffic between local nodes.
//!
//! Each node of a local cluster has its own loopback IP (127.0.0.N) and
//! binds its outgoing peer connections to it, so a packet's (source IP,
//! destination IP) names the link it crosses. An iptables chain of this
//! process's own, hooked into INPUT, sends the packets of every link
//! between two regions to an NFQUEUE; a thread here holds each one for its
//! link's delay (± jitter, drawn per packet) and then accepts it. A link's
//! packets leave in the order they came (a later packet never overtakes an
//! earlier one whose jitter was larger), as on a real path, so TCP sees no
//! reordering. Client traffic (from 127.0.0.1) matches no rule and is
//! never delayed.
//!
//! No `tc netem` here: the kernels these run on do not have it. NFQUEUE
//! needs root and the `nfnetlink_queue` module; [`RegionLinks::install`]
//! says so when either is missing. The chain and its hook are removed when
//! the [`RegionLinks`] is dropped; chains left by a process that was
//! killed outright are removed by the next install.

use std::collections::BTreeMap;
use std::collections::HashMap;
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

/// The NFQUEUE the model's packets go through (the chaos harness's latency
/// fault uses another).
const QUEUE: u16 = 4712;
/// Packets held at once; beyond this the kernel lets packets through.
const QUEUE_PACKETS_MAX: u32 = 65_536;
/// Longest the delaying thread sleeps between looks at the queue: the
/// error a packet's delay can have.
const POLL_MAX: Duration = Duration::from_micros(100);
/// Longest one-way delay a model accepts.
const DELAY_MAX: Duration = Duration::from_secs(1);
/// Prefix of the iptables chains this module creates (then the pid).
const CHAIN_PREFIX: &str = "TXLOG-REGIONS-";

/// One-way delays between regions, with a jitter of ± `jitter_percent` of
/// each delay, drawn per packet.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    /// By region pair, names in order (`a < b`): the same both ways.
    one_way: BTreeMap<(String, String), Duration>,
    jitter_percent: u32,
}

impl Default for LatencyModel {
    /// Paris–Frankfurt 4.5 ms, Paris–Lyon 2.2 ms, Frankfurt–Lyon 4 ms one
    /// way (RTTs of about 9, 4.4 and 8 ms), ± 10 %.
    fn default() -> Self {
        let mut model = LatencyModel {
            one_way: BTreeMap::new(),
            jitter_percent: 10,
        };
        model.set("paris", "frankfurt", Duration::from_micros(4_500));
        model.set("paris", "lyon", Duration::from_micros(2_200));
        model.set("frankfurt", "lyon", Duration::from_micros(4_000));
        model
    }
}

impl LatencyModel {
    /// `default`, or the defaults changed by comma-separated items:
    /// `REGION-REGION=DELAY` (one way; `4.5ms`, `800us`) and `jitter=P%`.
    /// Pairs not named and not among the defaults have no delay.
    pub fn parse(spec: &str) -> anyhow::Result<LatencyModel> {
        let mut model = LatencyModel::default();
        let spec = spec.trim();
        if spec.is_empty() || spec == "default" {
            return Ok(model);
        }
        for item in spec.split(',').map(str::trim) {
            let (name, value) = item
                .split_once('=')
                .with_context(|| format!("latency model item {item:?} is not NAME=VALUE"))?;
            if name == "jitter" {
                let percent = value
                    .strip_suffix('%')
                    .and_then(|p| p.parse::<u32>().ok())
                    .filter(|&p| p <= 100)
                    .with_context(|| format!("jitter {value:?} is not a percentage 0%..100%"))?;
                model.jitter_percent = percent;
                continue;
            }
            let (a, b) = name
                .split_once('-')
                .filter(|(a, b)| !a.is_empty() && !b.is_empty() && a != b)
                .with_context(|| format!("{name:?} is not two regions, REGION-REGION"))?;
            let delay = parse_delay(value).with_context(|| format!("delay of {name}"))?;
            model.set(a, b, delay);
        }
        Ok(model)
    }

    fn set(&mut self, a: &str, b: &str, delay: Duration) {
        self.one_way.insert(pair(a, b), delay);
    }

    /// The one-way delay between two regions (`None`: none, or the same region).
    pub fn one_way(&self, a: &str, b: &str) -> Option<Duration> {
        self.one_way.get(&pair(a, b)).copied().filter(|d| !d.is_zero())
    }

    pub fn jitter_percent(&self) -> u32 {
        self.jitter_percent
    }
}

impl std::fmt::Display for LatencyModel {
    /// The form [`LatencyModel::parse`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for ((a, b), delay) in &self.one_way {
            write!(f, "{a}-{b}={}ms,", delay.as_secs_f64() * 1e3)?;
        }
        write!(f, "jitter={}%", self.jitter_percent)
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

fn parse_delay(value: &str) -> anyhow::Result<Duration> {
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1e-3)
    } else {
        bail!("{value:?} has no unit (ms or us)")
    };
    let seconds = number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .with_context(|| format!("{value:?} is not a delay"))?
        * scale;
    let delay = Duration::from_secs_f64(seconds);
    if delay > DELAY_MAX {
        bail!("{value} is over the longest one-way delay, {DELAY_MAX:?}");
    }
    Ok(delay)
}

/// The model applied to a set of local nodes; removed on drop.
pub struct RegionLinks {
    chain: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RegionLinks {
    /// Delay every link between `nodes` (each its IP and region) by the
    /// model. Needs root (iptables, NFQUEUE).
    pub fn install(model: &LatencyModel, nodes: &[(Ipv4Addr, String)]) -> anyhow::Result<RegionLinks> {
        let mut links = HashMap::new();
        for (from_ip, from_region) in nodes {
            for (to_ip, to_region) in nodes {
                if let Some(delay) = model.one_way(from_region, to_region) {
                    links.insert((*from_ip, *to_ip), delay);
                }
            }
        }
        remove_stale_chains(CHAIN_PREFIX);
        let mut queue = nfq::Queue::open().context("region latency: open an NFQUEUE socket (needs root)")?;
        queue.bind(QUEUE).with_context(|| {
            format!("region latency: bind NFQUEUE {QUEUE} (needs the nfnetlink_queue module; is another run using it?)")
        })?;
        queue.set_queue_max_len(QUEUE, QUEUE_PACKETS_MAX)?;
        queue.set_fail_open(QUEUE, true)?;
        // The IPv4 header is all the thread reads.
        queue.set_copy_range(QUEUE, 20)?;
        queue.set_nonblocking(true);
        let chain = format!("{CHAIN_PREFIX}{}", std::process::id());
        iptables(&["-N", &chain])?;
        // From here on, dropping `installed` removes the chain again.
        let stop = Arc::new(AtomicBool::new(false));
        let mut installed = RegionLinks {
            chain,
            stop: stop.clone(),
            thread: None,
        };
        let queue_num = QUEUE.to_string();
        for (from, to) in links.keys() {
            iptables(&[
                "-A",
                &installed.chain,
                "-s",
                &from.to_string(),
                "-d",
                &to.to_string(),
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue_num,
                "--queue-bypass",
            ])?;
        }
        // Appended, so link faults inserted at the top of INPUT (the chaos
        // harness's cuts) act before the delay.
        iptables(&["-A", "INPUT", "-j", &installed.chain])?;
        let jitter = f64::from(model.jitter_percent) / 100.0;
        installed.thread = Some(
            std::thread::Builder::new()
                .name("region-latency".into())
                .spawn(move || delay_packets(queue, links, jitter, stop))
                .context("start the region latency thread")?,
        );
        Ok(installed)
    }
}

impl Drop for RegionLinks {
    fn drop(&mut self) {
        // Rules first, so no new packet is queued; then the thread lets
        // every held packet go.
        remove_chain(&self.chain);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One link's held packets, in arrival order, each with when it is due.
#[derive(Default)]
struct Held {
    packets: VecDeque<(Instant, nfq::Message)>,
}

fn delay_packets(
    mut queue: nfq::Queue,
    links: HashMap<(Ipv4Addr, Ipv4Addr), Duration>,
    jitter: f64,
    stop: Arc<AtomicBool>,
) {
    let mut held: HashMap<(Ipv4Addr, Ipv4Addr), Held> = HashMap::new();
    let mut random = seed();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while let Ok(mut message) = queue.recv() {
            let now = Instant::now();
            let link = endpoints(message.get_payload());
            let Some((link, &delay)) = link.and_then(|l| links.get(&l).map(|d| (l, d))) else {
                message.set_verdict(nfq::Verdict::Accept);
                let _ = queue.verdict(message);
                continue;
            };
            random = xorshift(random);
            // Uniform in [-1, 1).
            let spread = (random >> 11) as f64 / (1u64 << 52) as f64 - 1.0;
            let due = now + delay.mul_f64(1.0 + jitter * spread);
            let held = held.entry(link).or_default();
            // Never ahead of the packet before it on the same link.
            let due = held.packets.back().map_or(due, |(before, _)| due.max(*before));
            held.packets.push_back((due, message));
        }
        let now = Instant::now();
        let mut next_due: Option<Instant> = None;
        for link in held.values_mut() {
            while let Some((due, _)) = link.packets.front() {
                if *due > now && !stopping {
                    next_due = Some(next_due.map_or(*due, |n| n.min(*due)));
                    break;
                }
                let (_, mut message) = link.packets.pop_front().expect("front exists");
                message.set_verdict(nfq::Verdict::Accept);
                let _ = queue.verdict(message);
            }
        }
        if stopping {
            let _ = queue.unbind(QUEUE);
            return;
        }
        let wait = next_due.map_or(POLL_MAX, |due| due.saturating_duration_since(now).min(POLL_MAX));
        std::thread::sleep(wait);
    }
}

/// Source and destination of an IPv4 packet.
fn endpoints(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let ip = |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    Some((ip(12), ip(16)))
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Run `iptables -w 5 ARGS…`; a failure carries its stderr.
fn iptables(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .context("run iptables (is it installed?)")?;
    if !output.status.success() {
        bail!(
            "iptables {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn remove_chain(chain: &str) {
    let _ = iptables(&["-D", "INPUT", "-j", chain]);
    let _ = iptables(&["-F", chain]);
    let _ = iptables(&["-X", chain]);
}

/// Remove the INPUT-hooked chains named `prefix` + pid whose process is
/// gone (killed outright before it could remove them).
pub fn remove_stale_chains(prefix: &str) {
    let Ok(output) = Command::new("iptables").args(["-w", "5", "-S"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(chain) = line.strip_prefix("-N ") else {
            continue;
        };
        let Some(pid) = chain.strip_prefix(prefix).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the pid exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            remove_chain(chain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are the three regions' one-way delays; items override
    /// them; bad items are refused with what is wrong.
    #[test]
    fn models_parse() {
        let model = LatencyModel::parse("default").unwrap();
        assert_eq!(model.one_way("lyon", "paris"), Some(Duration::from_micros(2_200)));
        assert_eq!(model.one_way("frankfurt", "paris"), Some(Duration::from_micros(4_500)));
        assert_eq!(model.one_way("paris", "paris"), None);
        assert_eq!(model.one_way("paris", "london"), None);
        let changed = LatencyModel::parse("paris-lyon=800us, london-paris=10ms, jitter=0%").unwrap();
        assert_eq!(changed.one_way("paris", "lyon"), Some(Duration::from_micros(800)));
        assert_eq!(changed.one_way("london", "paris"), Some(Duration::from_millis(10)));
        assert_eq!(changed.one_way("frankfurt", "lyon"), Some(Duration::from_millis(4)));
        assert_eq!(changed.jitter_percent(), 0);
        assert_eq!(LatencyModel::parse(&changed.to_string()).unwrap(), changed);
        for bad in [
            "paris-lyon",
            "paris-lyon=4",
            "paris=4ms",
            "paris-paris=1ms",
            "jitter=150%",
            "a-b=2s",
            "a-b=-1ms",
        ] {
            assert!(LatencyModel::parse(bad).is_err(), "{bad} refused");
        }
    }

    #[test]
    fn endpoints_read_the_ipv4_header() {
        let mut header = [0u8; 20];
        header[0] = 0x45;
        header[12..16].copy_from_slice(&[127, 0, 0, 10]);
        header[16..20].copy_from_slice(&[127, 0, 0, 11]);
        assert_eq!(
            endpoints(&header),
            Some((Ipv4Addr::new(127, 0, 0, 10), Ipv4Addr::new(127, 0, 0, 11)))
        );
        header[0] = 0x60;
        assert_eq!(endpoints(&header), None);
        assert_eq!(endpoints(&[0x45; 10]), None);
    }
}
