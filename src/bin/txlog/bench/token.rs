//! `txlog bench token`: the CPU cost of a request token, one thread, no
//! cluster. The client side is encoding the request, digesting it and
//! issuing a token. The node side is digesting the decoded request and
//! checking the token (`txlog::token_check`): shape, time, HMAC, and the
//! replay memory, which keeps growing as it would under one busy key.

use std::time::Duration;
use std::time::Instant;

use hdrhistogram::Histogram;
use txlog::token_check::TokenChecker;
use txlog_client::token_payload_digest;
use txlog_client::ClientSecret;
use txlog_proto::AppendRequest;
use txlog_proto::Record;

/// Target: checking one token on a node, p50, on one core.
const CHECK_TARGET_US: f64 = 2.0;
const METHOD: &str = "/txlog.v1.LogService/Append";

#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// Requests (each its own token) issued and checked.
    #[arg(long, default_value_t = 200_000)]
    pub requests: u32,
    /// Records per Append request.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Bytes per record payload.
    #[arg(long, default_value_t = 256)]
    pub record_bytes: usize,
    /// Lifetime of each token, in seconds (at most 300): with the clock the
    /// bench simulates (one request per microsecond), how many nonces the
    /// replay memory holds.
    #[arg(long, default_value_t = 10)]
    pub ttl_s: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, serde::Serialize)]
struct TokenReport {
    requests: u32,
    request_bytes: usize,
    issue_p50_us: f64,
    issue_p99_us: f64,
    check_p50_us: f64,
    check_p99_us: f64,
    /// Nonces the replay memory held at the end.
    nonces_remembered: usize,
    target_met: bool,
}

pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1_000..=10_000_000).contains(&args.requests),
        "--requests must be 1000..=10000000"
    );
    anyhow::ensure!((1..=10_000).contains(&args.batch), "--batch must be 1..=10000");
    anyhow::ensure!(
        (1..=1024 * 1024).contains(&args.record_bytes),
        "--record-bytes must be 1..=1048576"
    );
    anyhow::ensure!((1..=300).contains(&args.ttl_s), "--ttl-s must be 1..=300");
    let key = ClientSecret::generate("bench")?;
    let secret = *key.secret();
    let roles = vec!["writer".to_string()];
    let request = AppendRequest {
        records: (0..args.batch)
            .map(|i| Record {
                txid: format!("bench-{i:08}").into_bytes().into(),
                channel: "orders".into(),
                payload: vec![b'x'; args.record_bytes].into(),
                client_time_ns: 0,
            })
            .collect(),
    };
    let request_bytes = prost::Message::encoded_len(&request);
    let checker = TokenChecker::default();
    let mut issue_ns = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut check_ns = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    // A simulated clock, one request per microsecond, so that expired
    // nonces leave the replay memory as they would under a steady load.
    let start_ms = txlog_client::wall_clock_ms();
    for i in 0..args.requests {
        let now_ms = start_ms + u64::from(i) / 1_000;
        let t = Instant::now();
        let token = key.issue(
            &roles,
            Duration::from_secs(args.ttl_s),
            now_ms,
            METHOD,
            &token_payload_digest(&request),
        )?;
        issue_ns.record(t.elapsed().as_nanos().max(1) as u64)?;
        let t = Instant::now();
        let digest = token_payload_digest(&request);
        checker
            .check(&token, METHOD, &digest, now_ms, |id| (id == "bench").then_some(secret))
            .map_err(|e| anyhow::anyhow!("a good token was refused: {e}"))?;
        check_ns.record(t.elapsed().as_nanos().max(1) as u64)?;
    }
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    let report = TokenReport {
        requests: args.requests,
        request_bytes,
        issue_p50_us: us(&issue_ns, 0.5),
        issue_p99_us: us(&issue_ns, 0.99),
        check_p50_us: us(&check_ns, 0.5),
        check_p99_us: us(&check_ns, 0.99),
        nonces_remembered: checker.remembered("bench"),
        target_met: us(&check_ns, 0.5) <= CHECK_TARGET_US,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "request token, one thread: {} Append requests of {} B ({} record(s) of {} B), {} s tokens",
        report.requests, report.request_bytes, args.batch, args.record_bytes, args.ttl_s
    );
    println!(
        "issue (client: encode + SHA-256 + HMAC)  p50 {:.2} us  p99 {:.2} us",
        report.issue_p50_us, report.issue_p99_us
    );
    println!(
        "check (node: encode + SHA-256 + checks + HMAC + replay memory)  p50 {:.2} us  p99 {:.2} us  ({} nonces remembered at the end)",
        report.check_p50_us, report.check_p99_us, report.nonces_remembered
    );
    if report.target_met {
        println!("result: target met (check p50 <= {CHECK_TARGET_US} us)");
    } else {
        println!(
            "result: target NOT met: check p50 {:.2} us > {CHECK_TARGET_US} us",
            report.check_p50_us
        );
    }
    Ok(())
}
