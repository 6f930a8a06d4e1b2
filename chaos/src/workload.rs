//! Client workers: each appends unique values and reads windows of the log,
//! one operation at a time, at a bounded rate, each operation under a
//! deadline, and records every invoke and completion.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;
use txlog_client::Client;
use txlog_client::ClientError;

use crate::history::Event;
use crate::history::Function;
use crate::history::HistoryWriter;
use crate::history::Kind;
use crate::history::ReadValue;

/// The channel every chaos append goes to.
pub const CHANNEL: &str = "chaos";
/// Records a read asks for.
const READ_LIMIT: u32 = 32;
/// How far behind the last log length it has seen a worker starts reading.
const READ_BACK: u64 = 8;

/// Stamps events with one monotonic clock and writes them in that order.
pub struct Recorder {
    start: Instant,
    inner: Mutex<(HistoryWriter, Vec<Event>)>,
    pub ok: AtomicU64,
    pub fail: AtomicU64,
    pub info: AtomicU64,
}

impl Recorder {
    pub fn new(writer: HistoryWriter) -> Recorder {
        Recorder {
            start: Instant::now(),
            inner: Mutex::new((writer, Vec::new())),
            ok: AtomicU64::new(0),
            fail: AtomicU64::new(0),
            info: AtomicU64::new(0),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Record `event`, stamped now. A failed write stops the run (the history would be incomplete).
    pub fn record(&self, mut event: Event) {
        let mut inner = self.inner.lock().expect("recorder lock poisoned");
        event.time_ns = self.start.elapsed().as_nanos() as u64;
        if event.f != Function::Nemesis && event.f != Function::FinalRead {
            match event.kind {
                Kind::Ok => self.ok.fetch_add(1, Ordering::Relaxed),
                Kind::Fail => self.fail.fetch_add(1, Ordering::Relaxed),
                Kind::Info => self.info.fetch_add(1, Ordering::Relaxed),
                Kind::Invoke => 0,
            };
        }
        inner.0.write(&event).expect("write to the history file");
        inner.1.push(event);
    }

    /// The events so far and the writer, for the end of the run.
    pub fn finish(self) -> anyhow::Result<Vec<Event>> {
        let (writer, events) = self.inner.into_inner().expect("recorder lock poisoned");
        writer.finish()?;
        Ok(events)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WorkloadOptions {
    pub clients: usize,
    /// Operations per second, all workers together.
    pub rate: f64,
    pub op_timeout: Duration,
    pub read_fraction: f64,
    pub seed: u64,
}

/// Run worker `w` until `stop`; values come from `next_value`.
pub async fn worker(
    w: usize,
    options: WorkloadOptions,
    client: Client,
    recorder: Arc<Recorder>,
    next_value: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(options.seed.wrapping_mul(31).wrapping_add(w as u64));
    let period = Duration::from_secs_f64(options.clients as f64 / options.rate.max(0.1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut process = w as u64;
    let mut last_seen = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let unknown = if rng.random_bool(options.read_fraction) {
            read(process, options, &client, &recorder, &mut last_seen).await
        } else {
            let value = next_value.fetch_add(1, Ordering::Relaxed);
            append(process, value, options, &client, &recorder, &mut last_seen).await
        };
        // After an unknown outcome the old process may still be "running":
        // continue as a new process, as Jepsen does.
        if unknown {
            process += options.clients as u64;
        }
    }
}

/// Returns true when the outcome is unknown (`info`).
async fn append(
    process: u64,
    value: u64,
    options: WorkloadOptions,
    client: &Client,
    recorder: &Recorder,
    last_seen: &mut u64,
) -> bool {
    let mut invoke = Event::new(0, process, Kind::Invoke, Function::Append);
    invoke.value = Some(value);
    recorder.record(invoke);
    let txid = format!("chaos-{value}");
    let payload = value.to_string();
    let outcome = tokio::time::timeout(
        options.op_timeout,
        client.append_one(CHANNEL, txid.as_bytes(), payload.as_bytes()),
    )
    .await;
    let mut done = Event::new(0, process, Kind::Ok, Function::Append);
    done.value = Some(value);
    match outcome {
        Ok(Ok(result)) => {
            done.seq = Some(result.seq);
            *last_seen = (*last_seen).max(result.seq);
        }
        Ok(Err(e)) if definitely_not_applied(&e) => {
            done.kind = Kind::Fail;
            done.error = Some(e.to_string());
        }
        Ok(Err(e)) => {
            done.kind = Kind::Info;
            done.error = Some(e.to_string());
        }
        Err(_) => {
            done.kind = Kind::Info;
            done.error = Some(format!("timed out after {:?}", options.op_timeout));
        }
    }
    let unknown = done.kind == Kind::Info;
    recorder.record(done);
    unknown
}

/// Values at and above this stand for records the cluster wrote itself (a
/// reserved channel such as `_keys`): `SYSTEM_VALUE_BASE + seq`, unique per
/// position, so nodes still agree on them, and never taken for an append.
pub const SYSTEM_VALUE_BASE: u64 = 1 << 63;

/// The value a record stands for: its payload's number, or a system value
/// for a record on a reserved channel (those start with `_`).
pub fn record_value(record: &txlog_proto::CommittedRecord) -> u64 {
    if record.channel.starts_with('_') {
        return SYSTEM_VALUE_BASE + record.seq;
    }
    payload_value(&record.payload)
}

/// The value a payload carries; 0 (never appended, so the checker reports it) if it is not one.
pub fn payload_value(payload: &[u8]) -> u64 {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Only a refusal of the input itself proves an append was not applied:
/// any other error may follow an attempt that reached the leader.
fn definitely_not_applied(e: &ClientError) -> bool {
    matches!(e, ClientError::BadCluster(_)) || e.code() == tonic::Code::InvalidArgument
}

async fn read(
    process: u64,
    options: WorkloadOptions,
    client: &Client,
    recorder: &Recorder,
    last_seen: &mut u64,
) -> bool {
    recorder.record(Event::new(0, process, Kind::Invoke, Function::Read));
    let from = last_seen.saturating_sub(READ_BACK) + 1;
    let outcome = tokio::time::timeout(options.op_timeout, client.read(from, READ_LIMIT, None, false)).await;
    let mut done = Event::new(0, process, Kind::Ok, Function::Read);
    match outcome {
        Ok(Ok(response)) => {
            // Values in sequence order; a gap or an unparsable payload becomes
            // 0, a value never appended, so the checker reports it.
            let mut values = Vec::with_capacity(response.records.len());
            for (i, record) in response.records.iter().enumerate() {
                if record.seq != from + i as u64 {
                    done.error = Some(format!(
                        "record {i} has seq {}, expected {}",
                        record.seq,
                        from + i as u64
                    ));
                    values.push(0);
                    break;
                }
                values.push(record_value(record));
            }
            let last = response.last_seq.max(from + values.len() as u64 - 1);
            *last_seen = (*last_seen).max(last);
            done.read = Some(ReadValue { from, values, last });
        }
        // A read changes nothing, so a failed one is simply `fail`.
        Ok(Err(e)) => {
            done.kind = Kind::Fail;
            done.error = Some(e.to_string());
        }
        Err(_) => {
            done.kind = Kind::Fail;
            done.error = Some(format!("timed out after {:?}", options.op_timeout));
        }
    }
    recorder.record(done);
    false
}
