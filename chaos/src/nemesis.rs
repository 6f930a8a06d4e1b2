//! The nemesis: a schedule of faults drawn from a seed, and the code that
//! injects and heals each one. One fault at a time; each is healed before
//! the next begins and before the final reads.

use std::fmt;
use std::time::Duration;

use anyhow::bail;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use rand::SeedableRng;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::net::Links;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    Kill,
    Restart,
    Pause,
    Partition,
    Clock,
    Latency,
    Membership,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Restart,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Clock,
        FaultKind::Latency,
        FaultKind::Membership,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Restart => "restart",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Clock => "clock",
            FaultKind::Latency => "latency",
            FaultKind::Membership => "membership",
        }
    }

    pub fn parse_list(text: &str) -> anyhow::Result<Vec<FaultKind>> {
        let mut kinds = Vec::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "all" => kinds.extend(FaultKind::ALL),
                "none" => {}
                name => match FaultKind::ALL.into_iter().find(|k| k.name() == name) {
                    Some(kind) => kinds.push(kind),
                    None => bail!(
                        "unknown nemesis {name:?}; choose from {}, all, none",
                        FaultKind::names()
                    ),
                },
            }
        }
        kinds.sort_by_key(|k| *k as u8);
        kinds.dedup();
        Ok(kinds)
    }

    /// Every kind's name, comma-separated, for help and error messages.
    pub fn names() -> String {
        FaultKind::ALL.map(FaultKind::name).join(", ")
    }

    pub fn needs_firewall(self) -> bool {
        matches!(self, FaultKind::Partition | FaultKind::Latency)
    }
}

/// Which node a fault hits: the leader at that moment, or a fixed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Leader,
    Node(usize),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "fault")]
pub enum Fault {
    Kill {
        target: Target,
    },
    /// `kill -9` a majority at once (acknowledged records must survive on disk).
    KillMajority {
        nodes: Vec<usize>,
    },
    /// SIGTERM (a clean shutdown, SIGKILL past a grace period), then start
    /// again on the same data when healed.
    Restart {
        target: Target,
    },
    Pause {
        target: Target,
    },
    /// The target alone on one side.
    IsolateNode {
        target: Target,
    },
    /// A random minority (listed) against the rest.
    Halves {
        minority: Vec<usize>,
    },
    /// Packets from `from` reach nobody; everything else flows.
    OneWay {
        from: usize,
    },
    /// `bridge` talks to everyone; the others are split in two halves that do not talk.
    Bridge {
        bridge: usize,
        left: Vec<usize>,
    },
    /// Restart under libfaketime: wall clock moved by `offset_s`, clocks running at `rate`.
    Clock {
        target: usize,
        offset_s: i64,
        rate: f64,
    },
    /// Every packet to and from `target` held for `delay_ms`.
    Latency {
        target: usize,
        delay_ms: u64,
    },
    /// Remove the node from the membership, then add it back.
    Membership {
        target: Target,
    },
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Kill { .. } | Fault::KillMajority { .. } => FaultKind::Kill,
            Fault::Restart { .. } => FaultKind::Restart,
            Fault::Pause { .. } => FaultKind::Pause,
            Fault::IsolateNode { .. } | Fault::Halves { .. } | Fault::OneWay { .. } | Fault::Bridge { .. } => {
                FaultKind::Partition
            }
            Fault::Clock { .. } => FaultKind::Clock,
            Fault::Latency { .. } => FaultKind::Latency,
            Fault::Membership { .. } => FaultKind::Membership,
        }
    }
}

/// One scheduled fault: injected at `at_ms` (from the start of the run), healed `duration_ms` later.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub at_ms: u64,
    pub duration_ms: u64,
    #[serde(flatten)]
    pub fault: Fault,
}

/// Draw a schedule for `time`, starting after a quiet warm-up and ending
/// with a quiet stretch, so the first and last operations run fault-free.
pub fn schedule(seed: u64, kinds: &[FaultKind], nodes: usize, time: Duration, interval: Duration) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut steps = Vec::new();
    if kinds.is_empty() || nodes == 0 {
        return steps;
    }
    let interval_ms = interval.as_millis().max(1_000) as u64;
    let end_ms = (time.as_millis() as u64).saturating_sub(interval_ms / 2);
    let mut at_ms = interval_ms / 2;
    loop {
        // Faults last 40–75 % of the interval; the rest is quiet.
        let duration_ms = rng.random_range(interval_ms * 2 / 5..=interval_ms * 3 / 4);
        if at_ms + duration_ms > end_ms {
            break;
        }
        let kind = kinds[rng.random_range(0..kinds.len())];
        let fault = draw(&mut rng, kind, nodes);
        steps.push(Step {
            at_ms,
            duration_ms,
            fault,
        });
        at_ms += interval_ms + rng.random_range(0..interval_ms / 4);
    }
    steps
}

fn draw(rng: &mut StdRng, kind: FaultKind, nodes: usize) -> Fault {
    let any = |rng: &mut StdRng| rng.random_range(0..nodes);
    let target = |rng: &mut StdRng| {
        if rng.random_bool(0.5) {
            Target::Leader
        } else {
            Target::Node(rng.random_range(0..nodes))
        }
    };
    match kind {
        FaultKind::Kill if nodes >= 3 && rng.random_bool(0.2) => {
            let mut all: Vec<usize> = (0..nodes).collect();
            all.shuffle(rng);
            let mut majority = all[..nodes / 2 + 1].to_vec();
            majority.sort();
            Fault::KillMajority { nodes: majority }
        }
        FaultKind::Kill => Fault::Kill { target: target(rng) },
        FaultKind::Restart => Fault::Restart { target: target(rng) },
        FaultKind::Pause => Fault::Pause { target: target(rng) },
        FaultKind::Partition => match rng.random_range(0..4) {
            0 => Fault::IsolateNode { target: target(rng) },
            1 => {
                let mut all: Vec<usize> = (0..nodes).collect();
                all.shuffle(rng);
                let size = rng.random_range(1..=(nodes - 1) / 2).max(1);
                let mut minority = all[..size].to_vec();
                minority.sort();
                Fault::Halves { minority }
            }
            2 => Fault::OneWay { from: any(rng) },
            _ => {
                let mut all: Vec<usize> = (0..nodes).collect();
                all.shuffle(rng);
                let bridge = all[0];
                let mut left = all[1..].iter().copied().step_by(2).collect::<Vec<_>>();
                left.sort();
                Fault::Bridge { bridge, left }
            }
        },
        FaultKind::Clock => {
            let offset_s = rng.random_range(-600..=600);
            let rate = [0.5, 0.8, 1.0, 1.25, 2.0][rng.random_range(0..5)];
            Fault::Clock {
                target: any(rng),
                offset_s,
                rate,
            }
        }
        FaultKind::Latency => Fault::Latency {
            target: any(rng),
            delay_ms: rng.random_range(20..=150),
        },
        FaultKind::Membership => Fault::Membership { target: target(rng) },
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = |t: &Target| match t {
            Target::Leader => "the leader".to_string(),
            Target::Node(i) => format!("n{}", i + 1),
        };
        let list = |v: &[usize]| v.iter().map(|i| format!("n{}", i + 1)).collect::<Vec<_>>().join("+");
        match self {
            Fault::Kill { target: t } => write!(f, "kill -9 {}", target(t)),
            Fault::KillMajority { nodes } => write!(f, "kill -9 {}", list(nodes)),
            Fault::Restart { target: t } => write!(f, "restart {}", target(t)),
            Fault::Pause { target: t } => write!(f, "pause {}", target(t)),
            Fault::IsolateNode { target: t } => write!(f, "isolate {}", target(t)),
            Fault::Halves { minority } => write!(f, "partition {} | rest", list(minority)),
            Fault::OneWay { from } => write!(f, "one-way: n{} unheard", from + 1),
            Fault::Bridge { bridge, left } => write!(f, "bridge n{} between {} | rest", bridge + 1, list(left)),
            Fault::Clock { target, offset_s, rate } => write!(f, "clock n{}: {offset_s:+} s, rate x{rate}", target + 1),
            Fault::Latency { target, delay_ms } => write!(f, "latency n{} +{delay_ms} ms", target + 1),
            Fault::Membership { target: t } => write!(f, "remove and re-add {}", target(t)),
        }
    }
}

fn need(firewall: Option<&mut Links>) -> anyhow::Result<&mut Links> {
    firewall.ok_or_else(|| anyhow::anyhow!("this fault needs a way to cut links (iptables or the fault proxy)"))
}

/// How long a clean restart waits for the node to exit after SIGTERM
/// before it uses SIGKILL (and reports the fault as an error). txlog stops
/// in well under a second; 10 s leaves room for a loaded 2-core machine.
pub const RESTART_GRACE: Duration = Duration::from_secs(10);

/// What was done, so it can be undone.
pub enum Injected {
    Nothing,
    /// Nodes stopped (`kill -9` or a clean shutdown); healing starts them
    /// again on the same data.
    Down(Vec<usize>),
    Paused(usize),
    Firewall,
    Clocked(usize),
    Removed(usize),
}

/// The result of injecting one fault.
pub struct Injection {
    pub injected: Injected,
    /// The node(s) hit when the schedule did not name them (e.g. "the
    /// leader"); empty otherwise.
    pub detail: String,
    /// Something that went wrong while the fault still took effect (it is
    /// healed as usual and recorded as a fault error).
    pub error: Option<String>,
}

impl Injection {
    fn new(injected: Injected, detail: String) -> Injection {
        Injection {
            injected,
            detail,
            error: None,
        }
    }
}

async fn resolve(cluster: &Cluster, target: Target, rng: &mut StdRng) -> usize {
    match target {
        Target::Node(i) => i,
        Target::Leader => match cluster.leader().await {
            Some(i) => i,
            None => rng.random_range(0..cluster.len()),
        },
    }
}

/// Inject `fault`: what to heal, which node(s) it hit, and any error that
/// did not stop it.
pub async fn inject(
    cluster: &mut Cluster,
    firewall: Option<&mut Links>,
    fault: &Fault,
    rng: &mut StdRng,
) -> anyhow::Result<Injection> {
    match fault {
        Fault::Kill { target } => {
            let i = resolve(cluster, *target, rng).await;
            cluster.local.kill(i);
            Ok(Injection::new(Injected::Down(vec![i]), format!("killed n{}", i + 1)))
        }
        Fault::KillMajority { nodes } => {
            for &i in nodes {
                cluster.local.kill(i);
            }
            Ok(Injection::new(Injected::Down(nodes.clone()), String::new()))
        }
        Fault::Restart { target } => {
            let i = resolve(cluster, *target, rng).await;
            // Even when the node had to be killed it is down: heal starts it.
            let error = cluster.stop_clean(i, RESTART_GRACE).await.err();
            Ok(Injection {
                injected: Injected::Down(vec![i]),
                detail: format!("stopped n{}", i + 1),
                error: error.map(|e| format!("{e:#}")),
            })
        }
        Fault::Pause { target } => {
            let i = resolve(cluster, *target, rng).await;
            cluster.local.pause(i);
            Ok(Injection::new(Injected::Paused(i), format!("paused n{}", i + 1)))
        }
        Fault::Clock { target, offset_s, rate } => {
            cluster.local.kill(*target);
            cluster.start(*target, Some(format!("{offset_s:+}s x{rate}")))?;
            Ok(Injection::new(Injected::Clocked(*target), String::new()))
        }
        Fault::Membership { target } => {
            let i = resolve(cluster, *target, rng).await;
            let id = cluster.id(i);
            let (injected, detail) =
                match tokio::time::timeout(Duration::from_secs(10), cluster.client.remove_node(id)).await {
                    Ok(Ok(_)) => (Injected::Removed(i), format!("removed n{}", i + 1)),
                    Ok(Err(e)) => (Injected::Nothing, format!("removing n{} refused: {e}", i + 1)),
                    Err(_) => (Injected::Removed(i), format!("removing n{} timed out", i + 1)),
                };
            Ok(Injection::new(injected, detail))
        }
        Fault::IsolateNode { .. }
        | Fault::Halves { .. }
        | Fault::OneWay { .. }
        | Fault::Bridge { .. }
        | Fault::Latency { .. } => {
            let detail = cut_links(cluster, need(firewall)?, fault, rng).await?;
            Ok(Injection::new(Injected::Firewall, detail))
        }
    }
}

/// Inject a link fault (partitions and latency); returns the node isolated
/// when the schedule said "the leader".
async fn cut_links(cluster: &Cluster, fw: &mut Links, fault: &Fault, rng: &mut StdRng) -> anyhow::Result<String> {
    let n = cluster.len();
    let others = |i: usize| (0..n).filter(move |&j| j != i);
    match fault {
        Fault::IsolateNode { target } => {
            let i = resolve(cluster, *target, rng).await;
            for j in others(i) {
                fw.cut(i, j)?;
                fw.cut(j, i)?;
            }
            return Ok(format!("isolated n{}", i + 1));
        }
        Fault::Halves { minority } => {
            for &i in minority {
                for j in (0..n).filter(|j| !minority.contains(j)) {
                    fw.cut(i, j)?;
                    fw.cut(j, i)?;
                }
            }
        }
        Fault::OneWay { from } => {
            for j in others(*from) {
                fw.cut(*from, j)?;
            }
        }
        Fault::Bridge { bridge, left } => {
            let right: Vec<usize> = (0..n).filter(|j| j != bridge && !left.contains(j)).collect();
            for &i in left {
                for &j in &right {
                    fw.cut(i, j)?;
                    fw.cut(j, i)?;
                }
            }
        }
        Fault::Latency { target, delay_ms } => {
            let delay = Duration::from_millis(*delay_ms);
            for j in others(*target) {
                fw.delay(*target, j, delay)?;
                fw.delay(j, *target, delay)?;
            }
        }
        other => unreachable!("{other} is not a link fault"),
    }
    Ok(String::new())
}

/// Undo one injected fault. Errors are returned so the caller can retry.
pub async fn heal(cluster: &mut Cluster, firewall: Option<&mut Links>, injected: &Injected) -> anyhow::Result<()> {
    match injected {
        Injected::Nothing => Ok(()),
        Injected::Down(nodes) => {
            for &i in nodes {
                if !cluster.running(i) {
                    cluster.start(i, None)?;
                }
            }
            Ok(())
        }
        Injected::Paused(i) => {
            cluster.local.resume(*i);
            Ok(())
        }
        Injected::Firewall => match firewall {
            Some(fw) => fw.heal(),
            None => Ok(()),
        },
        Injected::Clocked(i) => {
            cluster.local.kill(*i);
            cluster.start(*i, None)
        }
        Injected::Removed(i) => readd(cluster, *i).await,
    }
}

/// Add node `i` back as a voter (it kept running with its data).
pub async fn readd(cluster: &Cluster, i: usize) -> anyhow::Result<()> {
    let request = txlog_proto::JoinRequest {
        node_id: cluster.id(i),
        address: cluster.address(i),
        region: cluster.region(i),
        learner_only: false,
        timeout_ms: 20_000,
    };
    let join = async {
        let mut stream = cluster.client.join(request).await?;
        while let Some(progress) = stream.message().await.map_err(txlog_client::ClientError::Status)? {
            if progress.done {
                return Ok(());
            }
        }
        Err(txlog_client::ClientError::Status(tonic::Status::unavailable(
            "join stream ended before done",
        )))
    };
    match tokio::time::timeout(Duration::from_secs(25), join).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!("re-adding n{} failed: {e}", i + 1),
        Err(_) => bail!("re-adding n{} timed out", i + 1),
    }
}
