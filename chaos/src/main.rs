//! `txlog-chaos`: run Jepsen-style chaos tests against real txlog nodes,
//! or check a recorded history.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::Subcommand;
use tokio_util::sync::CancellationToken;
use txlog_chaos::checker::check;
use txlog_chaos::history;
use txlog_chaos::nemesis::FaultKind;
use txlog_chaos::netns;
use txlog_chaos::node_ids;
use txlog_chaos::report;
use txlog_chaos::run::LinkFaults;
use txlog_chaos::run::Net;
use txlog_chaos::run::RunOptions;
use txlog_chaos::synthetic;

/// Exit code for a run or check that found anomalies.
const EXIT_INVALID: u8 = 1;
/// Exit code when the harness itself failed (nothing was checked).
const EXIT_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "txlog-chaos",
    version,
    about = "Jepsen-style chaos tests for txlog: real nodes, faults, a recorded history and a checker",
    long_about = "Starts real `txlog node` processes with node ids drawn from the seed, runs client workers \
                  that append unique values and read the log, injects faults on a seeded schedule (kill -9, \
                  clean restarts, SIGSTOP, partitions, clock skew, latency, membership changes), heals them, \
                  reads every node's log and checks the history for lost, duplicated, unexpected, \
                  aborted-read, incompatible-order, stale-read and future-read anomalies.\n\nExit code: 0 \
                  valid, 1 anomalies found, 2 the run itself failed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a cluster under faults and check the history.
    Run(Box<RunArgs>),
    /// Check a recorded history (history.jsonl) and print the verdict as JSON.
    Check { history: PathBuf },
    /// Write a synthetic valid history (to time the checker on big histories).
    Synth {
        #[arg(long, default_value_t = 100_000)]
        operations: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 20)]
        processes: u64,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Faults to inject, comma-separated: kill, restart, pause, partition, clock, latency, membership, all, none.
    #[arg(long, default_value = "kill,pause,partition")]
    nemesis: String,
    /// How long clients run (e.g. 60s, 5m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    time: Duration,
    /// Seed for the fault schedule and the workload; random when not given (printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Mean time between the starts of two faults.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    interval: Duration,
    /// Number of txlog nodes (1-5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Node ids, comma-separated, one per node (e.g. 1,2,3); default: drawn from the seed (large, sparse, printed).
    #[arg(long)]
    node_ids: Option<String>,
    /// Concurrent client workers.
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// Client operations per second, all workers together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Deadline of one client operation; past it the outcome is unknown (info).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    op_timeout: Duration,
    /// Share of operations that are reads.
    #[arg(long, default_value_t = 0.25)]
    read_fraction: f64,
    /// Node placement: loopback (127.0.0.N per node) or netns (a network namespace per node; root).
    #[arg(long, default_value = "loopback", value_parser = ["loopback", "netns"])]
    net: String,
    /// How partitions and latency are made on loopback: iptables (root), a user-space proxy in front of each node, or auto (iptables when usable).
    #[arg(long, default_value = "auto", value_parser = ["auto", "iptables", "proxy"])]
    link_faults: String,
    /// The nodes' timing profile: regional (10 ms heartbeat, 25-50 ms elections, no heartbeat or
    /// vote deadline under 40 ms; txlog's default), lan (the same without the floor) or wan
    /// (100 ms, 500-1000 ms).
    #[arg(long, default_value = "regional", value_parser = ["regional", "lan", "wan"])]
    timing: String,
    /// Delay the links between nodes by the region latency model for the whole run, under the
    /// faults: without a value the defaults (paris-frankfurt 4.5 ms, paris-lyon 2.2 ms,
    /// frankfurt-lyon 4 ms one way, jitter 10 %), or items that change them, e.g.
    /// `paris-lyon=3ms,jitter=5%`. Loopback only; needs root (iptables and NFQUEUE).
    #[arg(long, num_args = 0..=1, default_missing_value = "default", value_name = "MODEL")]
    regions_latency: Option<String>,
    /// The txlog binary to run; default: `txlog` next to this program.
    #[arg(long)]
    txlog: Option<PathBuf>,
    /// Report directory; default: chaos-runs/seed-<SEED>-<UNIX TIME>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the nodes' data directories even when the run is valid.
    #[arg(long)]
    keep_data: bool,
    /// Internal: set by the process that created the namespaces.
    #[arg(long = "inside-netns", hide = true)]
    inside_netns: Option<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 60s, 2m, 500ms"))?;
    let seconds = match unit {
        "ms" => value / 1e3,
        "s" | "" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}; use ms, s, m or h")),
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 7.0 * 24.0 * 3600.0 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Check { history } => check_file(&history),
        Command::Synth {
            operations,
            seed,
            processes,
            out,
        } => synth(operations, seed, processes, &out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("txlog-chaos: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn check_file(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let events = history::load(path)?;
    let started = std::time::Instant::now();
    let verdict = check(&events)?;
    eprintln!("checked {} events in {:?}", events.len(), started.elapsed());
    println!("{}", serde_json::to_string_pretty(&verdict)?);
    Ok(if verdict.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    })
}

fn synth(operations: usize, seed: u64, processes: u64, out: &std::path::Path) -> anyhow::Result<ExitCode> {
    let events = synthetic::linearizable_history(synthetic::SyntheticOptions {
        seed,
        processes: processes.max(1),
        operations,
        ..Default::default()
    });
    let mut writer = history::HistoryWriter::create(out)?;
    for e in &events {
        writer.write(e)?;
    }
    writer.finish()?;
    eprintln!("wrote {} events to {}", events.len(), out.display());
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let nemesis = FaultKind::parse_list(&args.nemesis)?;
    let node_ids = match &args.node_ids {
        Some(text) => node_ids::parse(text, args.nodes)?,
        None => node_ids::draw(seed, args.nodes),
    };
    let txlog = match &args.txlog {
        Some(path) => path.clone(),
        None => txlog_testkit::txlog_binary()?,
    };
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from("chaos-runs").join(format!("seed-{seed}-{now}"))
        }
    };
    // `--net netns` as started by the user: the namespaces do not exist yet.
    let outer = args.net == "netns" && args.inside_netns.is_none();
    let net = match (args.net.as_str(), &args.inside_netns) {
        ("netns", Some(names)) => Net::Netns(names.split(',').map(str::to_string).collect()),
        ("netns", None) => Net::Netns(Vec::new()),
        _ => Net::Loopback,
    };
    let options = RunOptions {
        txlog: std::path::absolute(&txlog)?,
        out: std::path::absolute(&out)?,
        seed,
        nemesis,
        time: args.time,
        interval: args.interval,
        nodes: args.nodes,
        node_ids,
        clients: args.clients,
        rate: args.rate,
        op_timeout: args.op_timeout,
        read_fraction: args.read_fraction,
        net,
        link_faults: match args.link_faults.as_str() {
            "iptables" => LinkFaults::Iptables,
            "proxy" => LinkFaults::Proxy,
            _ => LinkFaults::Auto,
        },
        timing: args.timing.clone(),
        regions_latency: args
            .regions_latency
            .as_deref()
            .map(txlog_testkit::LatencyModel::parse)
            .transpose()?,
        keep_data: args.keep_data,
    };
    if outer {
        // Refuse bad options before creating any namespace.
        txlog_chaos::run::preflight(&options)?;
        return outer_netns(options.nodes, seed, &out);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        let interrupt = CancellationToken::new();
        let on_signal = interrupt.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            eprintln!("interrupted: healing, stopping the nodes and checking what was recorded");
            on_signal.cancel();
        });
        txlog_chaos::run::run(options.clone(), interrupt).await
    })?;
    println!();
    print!("{}", report::summary(&outcome.facts, &outcome.verdict, &options.out));
    Ok(if outcome.verdict.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    })
}

/// `--net netns` as started by the user: create the namespaces, run inside, clean up.
fn outer_netns(nodes: usize, seed: u64, out: &std::path::Path) -> anyhow::Result<ExitCode> {
    let namespaces = netns::Namespaces::create(nodes)?;
    // Pass the resolved seed and report directory so both processes agree.
    let given: Vec<String> = std::env::args().skip(1).collect();
    let forwarded = strip_flag_values(&given, &["--seed", "--out"]);
    let mut args_out = forwarded;
    args_out.extend([
        "--seed".into(),
        seed.to_string(),
        "--out".into(),
        out.display().to_string(),
    ]);
    let code = netns::run_inside(&namespaces, &args_out)?;
    drop(namespaces);
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// `args` without the given flags and their values (both `--f v` and `--f=v`).
fn strip_flag_values(args: &[String], flags: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_next = false;
    for a in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        if flags.contains(&a.as_str()) {
            skip_next = true;
            continue;
        }
        if flags.iter().any(|f| a.starts_with(&format!("{f}="))) {
            continue;
        }
        out.push(a.clone());
    }
    out
}
