//! `txlog bench seal`: the cost of sealing and opening one batch (LZ4,
//! AES-256-GCM, ed25519, CRC; see `raft/src/seal.rs`) per batch size, and
//! LZ4's ratio, on three corpora the bench generates: FIX-like text order
//! messages, JSON market-data ticks and packed binary ticks. One thread, no
//! cluster: it measures the CPU a batch costs, not a commit.

use std::time::Instant;

use hdrhistogram::Histogram;
use txlog_raft::BatchBody;
use txlog_raft::BatchFrame;
use txlog_raft::DataKey;
use txlog_raft::Keyring;
use txlog_raft::SealWith;
use txlog_raft::Signer;
use txlog_storage::NewRecord;

/// Batch sizes measured, in records.
const BATCH_SIZES: [usize; 4] = [1, 16, 64, 256];
/// Target: seal + open of a 64-record batch, p99, on one core.
const SEAL_OPEN_P99_TARGET_US: f64 = 60.0;
/// Target: LZ4 ratio on the text corpora at batches of ≥ 64 records.
const TEXT_RATIO_TARGET: f64 = 3.0;

#[derive(clap::Args, Debug, Clone)]
pub struct SealArgs {
    /// Bytes per record (payload), padded or cut to this size.
    #[arg(long, default_value_t = 256)]
    pub record_bytes: usize,
    /// Batches sealed and opened per corpus and size.
    #[arg(long, default_value_t = 2_000)]
    pub iterations: u32,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Corpus {
    /// FIX 4.4 new-order-single messages, `|` for SOH.
    FixText,
    /// JSON top-of-book ticks with a few depth levels.
    JsonTicks,
    /// Packed little-endian ticks: timestamps, ids, prices and sizes.
    BinaryTicks,
}

#[derive(Debug, serde::Serialize)]
struct SealRow {
    corpus: Corpus,
    records: usize,
    plain_bytes: usize,
    frame_bytes: usize,
    /// Body bytes over LZ4 block bytes (whether or not the seal kept the LZ4 block).
    lz4_ratio: f64,
    /// Whether the sealed frame holds the LZ4 block (it saved >= 10 %).
    compressed: bool,
    seal_p50_us: f64,
    seal_p99_us: f64,
    open_p50_us: f64,
    open_p99_us: f64,
    seal_open_p99_us: f64,
    /// Body bytes sealed per second (mean).
    seal_mb_s: f64,
    open_mb_s: f64,
}

pub async fn run(args: SealArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (16..=1024 * 1024).contains(&args.record_bytes),
        "--record-bytes must be 16..=1048576"
    );
    anyhow::ensure!(
        (10..=1_000_000).contains(&args.iterations),
        "--iterations must be 10..=1000000"
    );
    let data_key = DataKey::new(1, &txlog_raft::random_key()?);
    let signer = Signer::new(1, &txlog_raft::random_key()?);
    let mut keyring = Keyring::default();
    keyring.add_data_key(data_key.clone());
    keyring.add_verifying_key(signer.id(), 1, signer.verifying_key());
    let with = SealWith {
        node_id: 1,
        data_key: &data_key,
        signer: &signer,
    };
    let mut rows = Vec::new();
    // One counter across every row: a nonce is never reused under the key.
    let mut counter = 0u32;
    for corpus in [Corpus::FixText, Corpus::JsonTicks, Corpus::BinaryTicks] {
        for &records in &BATCH_SIZES {
            rows.push(measure(corpus, records, &args, &with, &keyring, &mut counter)?);
            if !args.json {
                eprint!(".");
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    eprintln!();
    println!(
        "seal = LZ4 (kept when it saves >= 10 %) + AES-256-GCM + ed25519 + CRC32 per batch; {} B records, {} batches per row, one thread",
        args.record_bytes, args.iterations
    );
    println!(
        "{:<13} {:>7} {:>9} {:>9} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "corpus",
        "records",
        "plain B",
        "frame B",
        "lz4",
        "seal p50",
        "seal p99",
        "open p50",
        "open p99",
        "seal MB/s",
        "open MB/s"
    );
    for r in &rows {
        println!(
            "{:<13} {:>7} {:>9} {:>9} {:>5.2}x {:>7.1}us {:>7.1}us {:>7.1}us {:>7.1}us {:>9.0} {:>9.0}",
            corpus_name(r.corpus),
            r.records,
            r.plain_bytes,
            r.frame_bytes,
            r.lz4_ratio,
            r.seal_p50_us,
            r.seal_p99_us,
            r.open_p50_us,
            r.open_p99_us,
            r.seal_mb_s,
            r.open_mb_s
        );
    }
    let mut missed = Vec::new();
    for r in rows.iter().filter(|r| r.records == 64) {
        if r.seal_open_p99_us > SEAL_OPEN_P99_TARGET_US {
            missed.push(format!(
                "{}: seal + open p99 {:.1} us > {SEAL_OPEN_P99_TARGET_US} us",
                corpus_name(r.corpus),
                r.seal_open_p99_us
            ));
        }
    }
    for r in rows
        .iter()
        .filter(|r| r.records >= 64 && !matches!(r.corpus, Corpus::BinaryTicks))
    {
        if r.lz4_ratio < TEXT_RATIO_TARGET {
            missed.push(format!(
                "{} x {}: lz4 {:.2}x < {TEXT_RATIO_TARGET}x",
                corpus_name(r.corpus),
                r.records,
                r.lz4_ratio
            ));
        }
    }
    if missed.is_empty() {
        println!("result: targets met (64-record seal + open p99 <= {SEAL_OPEN_P99_TARGET_US} us; lz4 >= {TEXT_RATIO_TARGET}x on text at >= 64 records)");
    } else {
        println!("result: target NOT met: {}", missed.join("; "));
    }
    Ok(())
}

fn corpus_name(corpus: Corpus) -> &'static str {
    match corpus {
        Corpus::FixText => "fix-text",
        Corpus::JsonTicks => "json-ticks",
        Corpus::BinaryTicks => "binary-ticks",
    }
}

fn measure(
    corpus: Corpus,
    records: usize,
    args: &SealArgs,
    with: &SealWith<'_>,
    keyring: &Keyring,
    counter: &mut u32,
) -> anyhow::Result<SealRow> {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d ^ records as u64);
    let body = BatchBody {
        created_ns: 1,
        records: (0..records)
            .map(|i| NewRecord {
                txid: format!("bench-{i:08}").into_bytes().into(),
                channel: "orders".into(),
                payload: fit(generate(corpus, i as u64, &mut rng), args.record_bytes).into(),
                client_time_ns: i as u64,
            })
            .collect(),
    };
    let plain = body.to_bytes();
    let plain_bytes = plain.len();
    let lz4_bytes = txlog_raft::lz4_bytes(&plain);
    let mut seal_ns = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut open_ns = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut both_ns = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut seal_total, mut open_total) = (0f64, 0f64);
    let mut frame_bytes = 0;
    let mut compressed = false;
    for _ in 0..args.iterations {
        *counter = counter.checked_add(1).expect("fewer than 2^32 batches per run");
        let start = Instant::now();
        let frame = BatchFrame::seal(1, &body, with, *counter);
        let sealed = start.elapsed();
        let opened = frame.open(keyring)?;
        let n = opened.body()?.records.len();
        let total = start.elapsed();
        anyhow::ensure!(n == records, "opened {n} records, sealed {records}");
        frame_bytes = frame.0.len();
        compressed = opened.compressed();
        seal_ns.record(sealed.as_nanos().max(1) as u64)?;
        open_ns.record((total - sealed).as_nanos().max(1) as u64)?;
        both_ns.record(total.as_nanos().max(1) as u64)?;
        seal_total += sealed.as_secs_f64();
        open_total += (total - sealed).as_secs_f64();
    }
    // µs with one decimal.
    let us = |h: &Histogram<u64>, q: f64| (h.value_at_quantile(q) as f64 / 100.0).round() / 10.0;
    let mb = (plain_bytes as f64 * f64::from(args.iterations)) / 1e6;
    Ok(SealRow {
        corpus,
        records,
        plain_bytes,
        frame_bytes,
        compressed,
        lz4_ratio: (plain_bytes as f64 / lz4_bytes as f64 * 100.0).round() / 100.0,
        seal_p50_us: us(&seal_ns, 0.5),
        seal_p99_us: us(&seal_ns, 0.99),
        open_p50_us: us(&open_ns, 0.5),
        open_p99_us: us(&open_ns, 0.99),
        seal_open_p99_us: us(&both_ns, 0.99),
        seal_mb_s: (mb / seal_total).round(),
        open_mb_s: (mb / open_total).round(),
    })
}

/// Cut a message to `len` bytes, or pad it with zeros (the generated
/// messages are 230–330 bytes, so at 256 B only a few are padded).
pub(super) fn fit(mut message: Vec<u8>, len: usize) -> Vec<u8> {
    message.resize(len, 0);
    message
}

const SYMBOLS: [&str; 8] = [
    "EURUSD", "USDJPY", "GBPUSD", "AAPL", "MSFT", "SIE.DE", "AIR.PA", "BNP.PA",
];
const VENUES: [&str; 4] = ["XPAR", "XETR", "EBS", "CBOE"];

pub(super) fn generate(corpus: Corpus, i: u64, rng: &mut XorShift) -> Vec<u8> {
    let symbol = SYMBOLS[(rng.next() % SYMBOLS.len() as u64) as usize];
    let venue = VENUES[(rng.next() % VENUES.len() as u64) as usize];
    let price = 100_000 + rng.next() % 5_000;
    let qty = 100 * (1 + rng.next() % 500);
    let ts = 1_763_805_600_000_000_000u64 + i * 1_713 + rng.next() % 1_000;
    match corpus {
        Corpus::FixText => {
            let side = 1 + rng.next() % 2;
            let body = format!(
                "35=D|34={seq}|49=TXLOG-PARIS|56={venue}|52=20261122-09:{m:02}:{s:02}.{ms:03}|11=ORD{id:010}|1=ACC{acct:04}|55={symbol}|54={side}|60=20261122-09:{m:02}:{s:02}.{ms:03}|38={qty}|40=2|44={p}.{f:04}|59=0|",
                seq = 1000 + i,
                m = (i / 60) % 60,
                s = i % 60,
                ms = rng.next() % 1000,
                id = rng.next() % 10_000_000_000,
                acct = rng.next() % 50,
                p = price / 10_000,
                f = price % 10_000,
            );
            let parties = format!(
                "453=2|448=DESK{d:02}|447=D|452=1|448=TRADER{t:03}|447=D|452=11|21=1|15=EUR|207={venue}|",
                d = rng.next() % 12,
                t = rng.next() % 300,
            );
            let body = body + &parties;
            let mut message = format!("8=FIX.4.4|9={}|{body}", body.len());
            let checksum = message.bytes().map(u64::from).sum::<u64>() % 256;
            message.push_str(&format!("10={checksum:03}|"));
            message.into_bytes()
        }
        Corpus::JsonTicks => {
            let levels: Vec<String> = (0..3)
                .map(|l| {
                    format!(
                        "[{}.{:04},{}]",
                        (price - l * 3) / 10_000,
                        (price - l * 3) % 10_000,
                        qty * (l + 1)
                    )
                })
                .collect();
            format!(
                r#"{{"type":"book","venue":"{venue}","sym":"{symbol}","seq":{seq},"ts":{ts},"bid":{b}.{bf:04},"ask":{a}.{af:04},"bsz":{qty},"asz":{asz},"bids":[{levels}],"asks":[{levels}]}}"#,
                seq = 5_000_000 + i,
                b = price / 10_000,
                bf = price % 10_000,
                a = (price + 2) / 10_000,
                af = (price + 2) % 10_000,
                asz = qty + 100,
                levels = levels.join(","),
            )
            .into_bytes()
        }
        Corpus::BinaryTicks => {
            let mut out = Vec::with_capacity(256);
            out.extend_from_slice(&ts.to_le_bytes());
            out.extend_from_slice(&(5_000_000 + i).to_le_bytes());
            out.extend_from_slice(&((symbol.len() as u32) << 8 | venue.len() as u32).to_le_bytes());
            // Up to 14 levels of (price i64, size u32, orders u16) per side.
            while out.len() + 14 <= 256 {
                let level_price = price as i64 * 10_000 + (rng.next() % 50) as i64;
                out.extend_from_slice(&level_price.to_le_bytes());
                out.extend_from_slice(&((qty + rng.next() % 1000) as u32).to_le_bytes());
                out.extend_from_slice(&((1 + rng.next() % 40) as u16).to_le_bytes());
            }
            out
        }
    }
}

/// A small deterministic generator: the corpora are the same in every run.
pub(super) struct XorShift(pub u64);

impl XorShift {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
