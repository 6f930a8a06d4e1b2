//! One chaos run from start to verdict: start the cluster, run the clients
//! and the nemesis for the given time, heal everything, wait for the nodes
//! to converge, read every node's log, check, report.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use anyhow::Context;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use txlog_client::Client;
use txlog_client::ClientOptions;
use txlog_testkit::RegionLinks;

use crate::checker::check;
use crate::checker::Verdict;
use crate::cluster::Cluster;
use crate::cluster::Placement;
use crate::cluster::FAKETIME_LIBRARY;
use crate::history::Event;
use crate::history::Function;
use crate::history::HistoryWriter;
use crate::history::Kind;
use crate::history::ReadValue;
use crate::history::FINAL_PROCESS;
use crate::history::NEMESIS_PROCESS;
use crate::nemesis;
use crate::nemesis::FaultKind;
use crate::net::Firewall;
use crate::net::Links;
use crate::net::RulePlace;
use crate::netns;
use crate::node_ids;
use crate::proxy::Proxy;
use crate::report;
use crate::report::RunFacts;
use crate::workload;
use crate::workload::Recorder;
use crate::workload::WorkloadOptions;

/// How long the cluster gets to elect a leader at start and to converge after healing.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Records per page of a final read.
const FINAL_READ_PAGE: u32 = 1_000;

/// How partitions and latency are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFaults {
    /// iptables when usable (root), else the proxy.
    Auto,
    Iptables,
    Proxy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Net {
    Loopback,
    /// Running inside the control namespace; node i lives in `names[i]`.
    Netns(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub txlog: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    pub nemesis: Vec<FaultKind>,
    pub time: Duration,
    pub interval: Duration,
    pub nodes: usize,
    /// Node `i`'s id (see [`crate::node_ids`]): drawn from the seed or given.
    pub node_ids: Vec<u64>,
    pub clients: usize,
    pub rate: f64,
    pub op_timeout: Duration,
    pub read_fraction: f64,
    pub net: Net,
    pub link_faults: LinkFaults,
    /// The nodes' timing profile: regional, lan or wan.
    pub timing: String,
    /// The region latency model under the whole run (loopback only).
    pub regions_latency: Option<txlog_testkit::LatencyModel>,
    pub keep_data: bool,
}

impl RunOptions {
    /// The link-fault mechanism this run uses, if any fault needs one.
    pub fn resolved_link_faults(&self) -> Option<LinkFaults> {
        if !self.nemesis.iter().any(|k| k.needs_firewall()) {
            return None;
        }
        Some(match (&self.net, self.link_faults) {
            (Net::Netns(_), _) => LinkFaults::Iptables,
            (Net::Loopback, LinkFaults::Auto) if crate::net::iptables_usable() => LinkFaults::Iptables,
            (Net::Loopback, LinkFaults::Auto) => LinkFaults::Proxy,
            (Net::Loopback, explicit) => explicit,
        })
    }
}

/// `schedule.json`: the faults a seed drew and the node ids they hit
/// (fault labels name nodes by index, `n1` being `node_ids[0]`).
#[derive(Serialize)]
struct ScheduleFile<'a> {
    seed: u64,
    node_ids: &'a [u64],
    steps: &'a [nemesis::Step],
}

pub struct Outcome {
    pub verdict: Verdict,
    pub facts: RunFacts,
}

fn nemesis_event(kind: Kind, fault: String) -> Event {
    let mut e = Event::new(0, NEMESIS_PROCESS, kind, Function::Nemesis);
    e.fault = Some(fault);
    e
}

fn progress(line: &str) {
    eprintln!("{line}");
}

/// Check the options against this machine before starting anything.
pub fn preflight(options: &RunOptions) -> anyhow::Result<()> {
    if !(1..=5).contains(&options.nodes) {
        bail!("--nodes must be 1 to 5, not {}", options.nodes);
    }
    node_ids::validate(&options.node_ids, options.nodes)?;
    if options.clients == 0 || options.clients > 100 {
        bail!("--clients must be 1 to 100, not {}", options.clients);
    }
    if !(options.rate > 0.0 && options.rate <= 10_000.0) {
        bail!("--rate must be above 0 and at most 10000 operations per second");
    }
    if !(0.0..=1.0).contains(&options.read_fraction) {
        bail!("--read-fraction must be between 0 and 1");
    }
    if !options.txlog.is_file() {
        bail!(
            "txlog binary {} not found; build it (cargo build --release) or pass --txlog PATH",
            options.txlog.display()
        );
    }
    let iptables = options.resolved_link_faults() == Some(LinkFaults::Iptables);
    if (iptables || options.net != Net::Loopback) && !crate::net::iptables_usable() {
        bail!("iptables is not usable here (needs root and the iptables package); --net netns needs it, and on loopback --link-faults proxy needs neither");
    }
    if options.nemesis.contains(&FaultKind::Latency) && options.net != Net::Loopback {
        bail!("the latency fault works with --net loopback only");
    }
    if options.regions_latency.is_some() && options.net != Net::Loopback {
        bail!("--regions-latency works with --net loopback only");
    }
    if options.regions_latency.is_some() && !crate::net::iptables_usable() {
        bail!("--regions-latency needs iptables and NFQUEUE (root and the iptables package)");
    }
    if options.link_faults == LinkFaults::Proxy && options.net != Net::Loopback {
        bail!("--link-faults proxy works with --net loopback only");
    }
    if options.nemesis.contains(&FaultKind::Clock) && !std::path::Path::new(FAKETIME_LIBRARY).exists() {
        bail!("the clock fault needs libfaketime ({FAKETIME_LIBRARY}); install the faketime package");
    }
    if options.nemesis.contains(&FaultKind::Membership) && options.nodes < 3 {
        bail!("the membership fault needs at least 3 nodes");
    }
    Ok(())
}

pub async fn run(options: RunOptions, interrupt: CancellationToken) -> anyhow::Result<Outcome> {
    preflight(&options)?;
    let steps = prepare_report_dir(&options)?;
    let link_faults = options.resolved_link_faults();
    // `_regions` delays the links until the run is over (dropped at the end).
    let (mut cluster, mut firewall, _regions) = start_cluster(&options, link_faults).await?;

    let recorder = Arc::new(Recorder::new(HistoryWriter::create(
        &options.out.join("history.jsonl"),
    )?));
    let stop = CancellationToken::new();
    let mut workers = spawn_workers(&options, &cluster, &recorder, &stop)?;
    let mut facts = run_facts(&options, link_faults);
    let mut nemesis = Nemesis {
        steps: steps.into_iter().peekable(),
        current: None,
        rng: StdRng::seed_from_u64(options.seed ^ 0x5eed),
    };
    nemesis
        .run_until(&options, &interrupt, &recorder, &mut cluster, &mut firewall, &mut facts)
        .await;

    // Stop the clients (each finishes or times out its operation in flight).
    stop.cancel();
    while workers.join_next().await.is_some() {}
    nemesis
        .heal_current(&recorder, &mut cluster, &mut firewall, &mut facts)
        .await;
    progress(&format!(
        "[{:>5.1}s] clients stopped; healing everything and waiting for the nodes to converge",
        recorder.elapsed().as_secs_f64()
    ));
    heal_all(&mut cluster, firewall.as_mut(), &mut facts).await;
    let converged = converge(&cluster).await;
    if let Err(e) = &converged {
        progress(&format!("nodes did not converge: {e:#}; reading what they have"));
        facts.fault_errors.push(format!("convergence: {e:#}"));
    }
    final_reads(&cluster, &recorder).await;
    let audit_breaks = audit_checks(&cluster);
    cluster.local.stop_all(Duration::from_secs(10)).await;
    drop(firewall);

    let recorder = Arc::try_unwrap(recorder).map_err(|_| anyhow::anyhow!("a worker still holds the recorder"))?;
    let events = recorder.finish()?;
    let mut verdict = check(&events)?;
    // Each node's copy of the audit trail must chain (`txlog audit verify`).
    verdict
        .anomaly_counts
        .insert("audit-chain".into(), audit_breaks.len() as u64);
    if !audit_breaks.is_empty() {
        verdict.valid = false;
        facts.fault_errors.extend(audit_breaks);
    }
    write_report(&options, &facts, &verdict, &events)?;
    Ok(Outcome { verdict, facts })
}

/// Say what this run is, refuse a report directory that is in use, and
/// write the fault schedule (so a run can be read before it ends).
fn prepare_report_dir(options: &RunOptions) -> anyhow::Result<Vec<nemesis::Step>> {
    progress(&format!(
        "txlog-chaos: seed {}, {} s, nemesis {}, node ids {}, report in {}",
        options.seed,
        options.time.as_secs_f64(),
        if options.nemesis.is_empty() {
            "none".to_string()
        } else {
            options.nemesis.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
        },
        node_ids::describe(&options.node_ids),
        options.out.display()
    ));
    // Old node data in the report directory would be mixed into this run.
    if std::fs::read_dir(&options.out).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "report directory {} already exists and is not empty; pick another --out or remove it",
            options.out.display()
        );
    }
    std::fs::create_dir_all(&options.out).with_context(|| format!("create {}", options.out.display()))?;
    let steps = nemesis::schedule(
        options.seed,
        &options.nemesis,
        options.nodes,
        options.time,
        options.interval,
    );
    let schedule_file = ScheduleFile {
        seed: options.seed,
        node_ids: &options.node_ids,
        steps: &steps,
    };
    std::fs::write(
        options.out.join("schedule.json"),
        serde_json::to_vec_pretty(&schedule_file)?,
    )?;
    Ok(steps)
}

/// Place the nodes, install the link-fault machinery (iptables or the
/// proxy), start every node and wait for a leader.
async fn start_cluster(
    options: &RunOptions,
    link_faults: Option<LinkFaults>,
) -> anyhow::Result<(Cluster, Option<Links>, Option<RegionLinks>)> {
    let (placement, place) = match &options.net {
        Net::Netns(names) => (netns::placement(names), RulePlace::Namespaces(names.clone())),
        Net::Loopback => (
            Placement::loopback(options.nodes, link_faults == Some(LinkFaults::Proxy))?,
            RulePlace::Loopback,
        ),
    };
    let firewall = match (link_faults, placement.backend_addresses()) {
        (Some(LinkFaults::Proxy), Some(backend)) => Some(Links::Proxy(
            Proxy::start(&placement.public_addresses(), &backend, &placement.ips).await?,
        )),
        (Some(_), _) => Some(Links::Firewall(Firewall::install(place, placement.ips.clone())?)),
        (None, _) => None,
    };
    if let Some(mode) = link_faults {
        progress(&format!(
            "link faults through {}",
            if mode == LinkFaults::Proxy {
                "the user-space proxy"
            } else {
                "iptables"
            }
        ));
    }
    // Installed after the fault chain (which sits at the top of INPUT): a
    // packet is cut or delayed by a fault first, then delayed by the model.
    let regions = match &options.regions_latency {
        Some(model) => {
            let nodes: Vec<(std::net::Ipv4Addr, String)> = placement
                .ips
                .iter()
                .enumerate()
                .map(|(i, ip)| (*ip, crate::cluster::region_of(i).to_string()))
                .collect();
            progress(&format!("region latency model under the run: {model}"));
            Some(RegionLinks::install(model, &nodes)?)
        }
        None => None,
    };
    let mut cluster = Cluster::new(
        options.txlog.clone(),
        placement,
        &options.node_ids,
        &options.out.join("nodes"),
        &options.timing,
    )?;
    for i in 0..cluster.len() {
        cluster.start(i, None)?;
    }
    progress(&format!(
        "started {} nodes ({}); waiting for a leader",
        cluster.len(),
        cluster.local.addresses()
    ));
    cluster
        .client
        .wait_for_leader(SETTLE_TIMEOUT)
        .await
        .context("the cluster elected no leader")?;
    Ok((cluster, firewall, regions))
}

/// One workload task per client, each with its own connection.
fn spawn_workers(
    options: &RunOptions,
    cluster: &Cluster,
    recorder: &Arc<Recorder>,
    stop: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let workload_options = WorkloadOptions {
        clients: options.clients,
        rate: options.rate,
        op_timeout: options.op_timeout,
        read_fraction: options.read_fraction,
        seed: options.seed,
    };
    let next_value = Arc::new(AtomicU64::new(1));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..options.clients {
        let client = worker_client(&cluster.local)?;
        workers.spawn(workload::worker(
            w,
            workload_options,
            client,
            recorder.clone(),
            next_value.clone(),
            stop.clone(),
        ));
    }
    Ok(workers)
}

/// The run's facts as the report states them; fault counts fill in as it goes.
fn run_facts(options: &RunOptions, link_faults: Option<LinkFaults>) -> RunFacts {
    RunFacts {
        seed: options.seed,
        nemesis: options.nemesis.iter().map(|k| k.name().to_string()).collect(),
        time_s: options.time.as_secs_f64(),
        nodes: options.nodes,
        node_ids: options.node_ids.clone(),
        clients: options.clients,
        rate: options.rate,
        net: match options.net {
            Net::Loopback => "loopback".into(),
            Net::Netns(_) => "netns".into(),
        },
        link_faults: match link_faults {
            Some(LinkFaults::Proxy) => "proxy".into(),
            Some(_) => "iptables".into(),
            None => "none".into(),
        },
        timing: options.timing.clone(),
        regions_latency: options.regions_latency.as_ref().map(ToString::to_string),
        faults_injected: 0,
        fault_errors: Vec::new(),
        interrupted: false,
    }
}

/// Results, the latency plot, and (for a valid run) the node data removed.
fn write_report(options: &RunOptions, facts: &RunFacts, verdict: &Verdict, events: &[Event]) -> anyhow::Result<()> {
    report::write_results(&options.out, facts, verdict)?;
    let title = format!(
        "txlog chaos: seed {}, nemesis {}, {} nodes — operation latency",
        options.seed,
        facts.nemesis.join(","),
        options.nodes
    );
    report::plot_latency(
        &options.out.join("latency.svg"),
        events,
        options.op_timeout.as_secs_f64() * 1e3,
        &title,
    )?;
    if verdict.valid && !options.keep_data {
        remove_node_data(&options.out.join("nodes"));
    }
    Ok(())
}

/// The nemesis: injects the scheduled faults one at a time and heals each
/// when its time is up, while the clients run on their own.
struct Nemesis {
    steps: std::iter::Peekable<std::vec::IntoIter<nemesis::Step>>,
    /// The fault in force: what to undo, its label, when to heal it.
    current: Option<(nemesis::Injected, String, Duration)>,
    rng: StdRng,
}

impl Nemesis {
    async fn run_until(
        &mut self,
        options: &RunOptions,
        interrupt: &CancellationToken,
        recorder: &Recorder,
        cluster: &mut Cluster,
        firewall: &mut Option<Links>,
        facts: &mut RunFacts,
    ) {
        let mut last_progress = Duration::ZERO;
        loop {
            let now = recorder.elapsed();
            if now >= options.time {
                break;
            }
            if interrupt.is_cancelled() {
                facts.interrupted = true;
                break;
            }
            if self.current.as_ref().is_some_and(|(_, _, heal_at)| now >= *heal_at) {
                self.heal_current(recorder, cluster, firewall, facts).await;
            }
            let due = self.steps.peek().is_some_and(|s| now >= Duration::from_millis(s.at_ms));
            if self.current.is_none() && due {
                let step = self.steps.next().expect("peeked");
                self.inject(now, step, recorder, cluster, firewall, facts).await;
            }
            if now >= last_progress + Duration::from_secs(5) {
                last_progress = now;
                progress(&format!(
                    "[{:>5.1}s / {:.0}s] ok {}  info {}  fail {}{}",
                    now.as_secs_f64(),
                    options.time.as_secs_f64(),
                    recorder.ok.load(Ordering::Relaxed),
                    recorder.info.load(Ordering::Relaxed),
                    recorder.fail.load(Ordering::Relaxed),
                    self.current
                        .as_ref()
                        .map(|(_, l, _)| format!("  · under: {l}"))
                        .unwrap_or_default()
                ));
            }
            tokio::select! {
                _ = interrupt.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    async fn inject(
        &mut self,
        now: Duration,
        step: nemesis::Step,
        recorder: &Recorder,
        cluster: &mut Cluster,
        firewall: &mut Option<Links>,
        facts: &mut RunFacts,
    ) {
        let mut label = step.fault.to_string();
        recorder.record(nemesis_event(Kind::Invoke, label.clone()));
        match nemesis::inject(cluster, firewall.as_mut(), &step.fault, &mut self.rng).await {
            Ok(injection) => {
                if !injection.detail.is_empty() {
                    label = format!("{label} ({})", injection.detail);
                }
                facts.faults_injected += 1;
                progress(&format!("[{:>5.1}s] fault: {label}", now.as_secs_f64()));
                if let Some(e) = injection.error {
                    progress(&format!("[{:>5.1}s] fault {label}: {e}", now.as_secs_f64()));
                    facts.fault_errors.push(format!("{label}: {e}"));
                }
                let heal_at = now + Duration::from_millis(step.duration_ms);
                self.current = Some((injection.injected, label, heal_at));
            }
            Err(e) => {
                facts.fault_errors.push(format!("{label}: {e:#}"));
                progress(&format!(
                    "[{:>5.1}s] fault {label} could not be injected: {e:#}",
                    now.as_secs_f64()
                ));
                recorder.record(nemesis_event(Kind::Ok, label));
            }
        }
    }

    /// Undo the fault in force, if any.
    async fn heal_current(
        &mut self,
        recorder: &Recorder,
        cluster: &mut Cluster,
        firewall: &mut Option<Links>,
        facts: &mut RunFacts,
    ) {
        if let Some((injected, label, _)) = self.current.take() {
            heal_with_retries(cluster, firewall.as_mut(), &injected, &label, facts).await;
            recorder.record(nemesis_event(Kind::Ok, label));
        }
    }
}

/// A worker's own client (own connections), signing with the cluster's root key.
fn worker_client(local: &txlog_testkit::LocalCluster) -> anyhow::Result<Client> {
    local.client(ClientOptions {
        rpc_timeout: Duration::from_secs(1),
        attempts_max: 6,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(300),
    })
}

async fn heal_with_retries(
    cluster: &mut Cluster,
    mut firewall: Option<&mut Links>,
    injected: &nemesis::Injected,
    label: &str,
    facts: &mut RunFacts,
) {
    for attempt in 1..=5 {
        match nemesis::heal(cluster, firewall.as_deref_mut(), injected).await {
            Ok(()) => return,
            Err(e) if attempt == 5 => {
                facts.fault_errors.push(format!("healing {label}: {e:#}"));
                progress(&format!("healing {label} failed: {e:#}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Undo anything that may still be wrong: rules, paused or dead nodes,
/// skewed clocks, nodes missing from the membership.
async fn heal_all(cluster: &mut Cluster, firewall: Option<&mut Links>, facts: &mut RunFacts) {
    if let Some(fw) = firewall {
        if let Err(e) = fw.heal() {
            facts.fault_errors.push(format!("final heal of the firewall: {e:#}"));
        }
    }
    for i in 0..cluster.len() {
        cluster.local.resume(i);
        let exited = cluster.local.exited(i);
        if let Some(status) = exited {
            facts
                .fault_errors
                .push(format!("n{} had exited on its own ({status})", i + 1));
        }
        if !cluster.running(i) || cluster.clock[i].is_some() {
            cluster.local.kill(i);
            if let Err(e) = cluster.start(i, None) {
                facts.fault_errors.push(format!("restarting n{}: {e:#}", i + 1));
            }
        }
    }
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let missing: Vec<usize> = match cluster.client.cluster_status().await {
            Ok(status) => (0..cluster.len())
                .filter(|&i| !status.voters().contains(&cluster.id(i)))
                .collect(),
            Err(_) => (0..cluster.len()).collect(),
        };
        if missing.is_empty() {
            return;
        }
        for i in missing {
            let _ = nemesis::readd(cluster, i).await;
        }
        if tokio::time::Instant::now() >= deadline {
            facts
                .fault_errors
                .push("some nodes could not be made voters again before the final read".into());
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Wait until every node reports the same last sequence, twice in a row.
async fn converge(cluster: &Cluster) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    let mut previous: Option<u64> = None;
    loop {
        let mut seqs = Vec::new();
        for i in 0..cluster.len() {
            let status = tokio::time::timeout(Duration::from_secs(2), cluster.client.node_status(&cluster.address(i)))
                .await
                .ok()
                .and_then(Result::ok);
            seqs.push(status.map(|s| s.last_seq));
        }
        let agreed = seqs.iter().all(|s| s.is_some() && *s == seqs[0]);
        if agreed && previous == seqs[0] {
            return Ok(());
        }
        previous = if agreed { seqs[0] } else { None };
        if tokio::time::Instant::now() >= deadline {
            bail!("last sequences still differ after {SETTLE_TIMEOUT:?}: {seqs:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Read each node's whole log from that node (stale read: the node's own state).
async fn final_reads(cluster: &Cluster, recorder: &Recorder) {
    for i in 0..cluster.len() {
        let mut invoke = Event::new(0, FINAL_PROCESS, Kind::Invoke, Function::FinalRead);
        invoke.node = Some(cluster.id(i));
        recorder.record(invoke);
        let mut done = Event::new(0, FINAL_PROCESS, Kind::Ok, Function::FinalRead);
        done.node = Some(cluster.id(i));
        match read_whole_log(cluster, i).await {
            Ok(values) => {
                let last = values.len() as u64;
                done.read = Some(ReadValue { from: 1, values, last });
            }
            Err(e) => {
                done.kind = Kind::Fail;
                done.error = Some(format!("{e:#}"));
                progress(&format!("final read of n{} failed: {e:#}", i + 1));
            }
        }
        recorder.record(done);
    }
}

/// `txlog audit verify --stale` against each node's own copy: the failures.
fn audit_checks(cluster: &Cluster) -> Vec<String> {
    let Ok(exe) = txlog_testkit::txlog_binary() else {
        return vec!["audit check: no txlog binary".into()];
    };
    let mut breaks = Vec::new();
    for i in 0..cluster.len() {
        let mut command = std::process::Command::new(&exe);
        command
            .args(["audit", "verify", "--stale", "--cluster", &cluster.address(i)])
            .env_remove("TXLOG_CREDENTIALS")
            .envs(txlog_testkit::cli_env(
                cluster.local.root_key_file(),
                cluster.local.certs_dir(),
            ))
            .stdin(std::process::Stdio::null());
        match command.output() {
            Ok(out) if out.status.success() => {
                let line = String::from_utf8_lossy(&out.stdout);
                progress(&format!("n{}: {}", i + 1, line.trim()));
            }
            Ok(out) => {
                let why = format!(
                    "n{} audit chain: {}{}",
                    i + 1,
                    String::from_utf8_lossy(&out.stderr).trim(),
                    String::from_utf8_lossy(&out.stdout).trim()
                );
                progress(&why);
                breaks.push(why);
            }
            Err(e) => breaks.push(format!("n{} audit check: {e}", i + 1)),
        }
    }
    breaks
}

async fn read_whole_log(cluster: &Cluster, i: usize) -> anyhow::Result<Vec<u64>> {
    let address = cluster.address(i);
    let mut values = Vec::new();
    let mut next = 1;
    let mut failures = 0;
    loop {
        let response = match cluster.client.read_at(&address, next, FINAL_READ_PAGE, true).await {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                if failures >= 20 {
                    return Err(e.into());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        for record in &response.records {
            if record.seq != next {
                bail!("n{} returned seq {} where {next} was expected", i + 1, record.seq);
            }
            values.push(workload::record_value(record));
            next += 1;
        }
        if response.records.is_empty() || next > response.last_seq {
            return Ok(values);
        }
    }
}

/// Keep the logs, drop the data files of a valid run.
fn remove_node_data(nodes_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(nodes_dir) else {
        return;
    };
    for node in entries.flatten() {
        let Ok(files) = std::fs::read_dir(node.path()) else {
            continue;
        };
        for file in files.flatten() {
            if file.file_name() != "node.log" {
                let path = file.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
    }
}
