//! Group commit on the leader.
//!
//! Appends from all client connections queue here. The batcher takes what is
//! queued (up to `batch_records_max` records / `batch_bytes_max` bytes),
//! seals it into one [`BatchFrame`] and proposes it as one Raft entry. While
//! a batch is in flight the next one fills up, so under load one fsync on a
//! quorum covers many records; with one client, a batch is one record and
//! nothing waits on a timer. At most `INFLIGHT_BATCHES_MAX` batches are in
//! flight; past that, appends queue (bounded) and callers feel backpressure.

use std::sync::Arc;
use std::time::Instant;

use openraft::error::RaftError;
use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResult;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use txlog_raft::BatchBody;
use txlog_raft::BatchFrame;
use txlog_raft::Raft;
use txlog_raft::Sealer;
use txlog_raft::TypeConfig;
use txlog_storage::AppendOutcome;
use txlog_storage::NewRecord;

use crate::error::raft_error;
use crate::error::raft_stopped;
use crate::metrics::Metrics;
use crate::Error;
use crate::Result;

/// Batches proposed but not yet committed, at most.
pub const INFLIGHT_BATCHES_MAX: usize = 8;
/// How long a batch waits for sealing keys being announced (a new
/// leader's data key) before its appends are answered `UNAVAILABLE`.
pub const KEYS_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(2);
/// Append requests waiting for a batch, at most.
pub const QUEUE_REQUESTS_MAX: usize = 16 * 1024;

struct Pending {
    records: Vec<NewRecord>,
    bytes: usize,
    reply: oneshot::Sender<Result<Vec<AppendOutcome>>>,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub batch_records_max: usize,
    pub batch_bytes_max: usize,
}

/// Handle to the batching task.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// `sealer` seals every batch (a sealed cluster); without one batches
    /// are plain frames.
    pub fn start(
        raft: Raft,
        node_id: u64,
        limits: BatchLimits,
        sealer: Option<Arc<Sealer>>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_REQUESTS_MAX);
        let proposer = Proposer { raft, node_id, sealer };
        tracker.spawn(run(proposer, limits, metrics, shutdown, rx, tracker.clone()));
        Batcher { tx }
    }

    /// Propose `records`; resolves once they are committed and applied.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<AppendOutcome>> {
        self.submit(records).await?.await
    }

    /// Queue `records` for the next batch (waiting for room when the queue
    /// is full); the returned future resolves once they are committed and
    /// applied. Lets one caller have many appends in flight.
    pub async fn submit(
        &self,
        records: Vec<NewRecord>,
    ) -> Result<impl std::future::Future<Output = Result<Vec<AppendOutcome>>> + Send + 'static> {
        let bytes = records
            .iter()
            .map(|r| r.payload.len() + r.txid.len() + r.channel.len())
            .sum();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { records, bytes, reply })
            .await
            .map_err(|_| Error::Unavailable("node is shutting down".into()))?;
        Ok(async move {
            rx.await
                .map_err(|_| Error::Unavailable("node is shutting down".into()))?
        })
    }
}

/// What turns a group of appends into a Raft entry.
struct Proposer {
    raft: Raft,
    node_id: u64,
    sealer: Option<Arc<Sealer>>,
}

async fn run(
    proposer: Proposer,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    mut rx: mpsc::Receiver<Pending>,
    tracker: TaskTracker,
) {
    let inflight = Arc::new(Semaphore::new(INFLIGHT_BATCHES_MAX));
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = rx.recv() => match next {
                Some(p) => p,
                None => break,
            },
        };
        // Waiting for a slot is when the next batch fills up.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = inflight.clone().acquire_owned() => permit.expect("semaphore never closes"),
        };
        let mut records = first.records.len();
        let mut bytes = first.bytes;
        let mut group = vec![first];
        while records < limits.batch_records_max && bytes < limits.batch_bytes_max {
            match rx.try_recv() {
                Ok(p) => {
                    records += p.records.len();
                    bytes += p.bytes;
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        // Proposed here, in queue order: a client with many calls in flight
        // (an append stream) has them committed in the order it sent them.
        // Only the wait for the commit runs beside the loop.
        let proposed = tokio::select! {
            // Dropping the group drops its reply senders: each caller gets Unavailable.
            _ = shutdown.cancelled() => break,
            proposed = propose(&proposer, &metrics, group) => proposed,
        };
        let metrics = metrics.clone();
        tracker.spawn(async move {
            answer(&metrics, proposed).await;
            drop(permit);
        });
    }
    // Whatever is still queued is answered, never dropped silently.
    rx.close();
    while let Ok(p) = rx.try_recv() {
        let _ = p.reply.send(Err(Error::Unavailable("node is shutting down".into())));
    }
}

/// A batch handed to Raft, waiting for its commit.
struct Proposed {
    counts: Vec<usize>,
    replies: Vec<oneshot::Sender<Result<Vec<AppendOutcome>>>>,
    started: Instant,
    committed: Result<oneshot::Receiver<ClientWriteResult<TypeConfig>>>,
}

/// Seal `group` into one frame and hand it to Raft. Returns once Raft has
/// queued it (not committed), so batches enter the log in the order they
/// are proposed.
async fn propose(proposer: &Proposer, metrics: &Metrics, group: Vec<Pending>) -> Proposed {
    let counts: Vec<usize> = group.iter().map(|p| p.records.len()).collect();
    let mut replies = Vec::with_capacity(group.len());
    let mut records = Vec::with_capacity(counts.iter().sum());
    for p in group {
        records.extend(p.records);
        replies.push(p.reply);
    }
    metrics.append_batches.inc();
    metrics.batch_records.observe(records.len() as f64);
    let body = BatchBody {
        created_ns: txlog_raft::wall_clock_ns(),
        records,
    };
    let started = Instant::now();
    let frame = match &proposer.sealer {
        // One compression, encryption and signature for the whole batch.
        Some(sealer) => sealer.seal_when_ready(&body, KEYS_WAIT_MAX).await.map_err(Error::from),
        None => Ok(BatchFrame::encode(proposer.node_id, &body)),
    };
    let committed = match frame {
        Ok(frame) => {
            let (responder, committed) = ProgressResponder::complete_only();
            proposer
                .raft
                .client_write_ff(frame, Some(responder))
                .await
                .map(|()| committed)
                .map_err(|fatal| raft_stopped(fatal, "append"))
        }
        Err(err) => Err(err),
    };
    Proposed {
        counts,
        replies,
        started,
        committed,
    }
}

/// Wait for `proposed` to commit and answer each caller with its slice.
async fn answer(metrics: &Metrics, proposed: Proposed) {
    let Proposed {
        counts,
        replies,
        started,
        committed,
    } = proposed;
    let total: usize = counts.iter().sum();
    let result = match committed {
        Ok(committed) => committed
            .await
            .map_err(|_| Error::Unavailable("append: raft stopped before the batch committed".into())),
        Err(err) => Err(err),
    };
    let outcome: Result<Vec<AppendOutcome>> = match result {
        Ok(Ok(response)) => match response.data.error {
            None if response.data.outcomes.len() == total => Ok(response.data.outcomes),
            None => Err(Error::Internal(format!(
                "batch of {total} records produced {} outcomes",
                response.data.outcomes.len()
            ))),
            Some(err) => Err(Error::Internal(format!("batch rejected by the state machine: {err}"))),
        },
        Ok(Err(err)) => Err(raft_error(RaftError::APIError(err), "append")),
        Err(err) => Err(err),
    };
    match outcome {
        Ok(mut outcomes) => {
            metrics.commit_latency_seconds.observe(started.elapsed().as_secs_f64());
            let duplicates = outcomes.iter().filter(|o| o.duplicate).count();
            metrics.appended_records.inc_by((total - duplicates) as u64);
            metrics.duplicate_records.inc_by(duplicates as u64);
            // Hand each caller its slice, in order.
            for (reply, count) in replies.into_iter().zip(counts).rev() {
                let tail = outcomes.split_off(outcomes.len() - count);
                let _ = reply.send(Ok(tail));
            }
        }
        Err(err) => {
            // Error is not Clone (it can wrap io errors); every waiter gets the same variant and message.
            for reply in replies {
                let copy = match &err {
                    Error::NotLeader { leader } => Error::NotLeader { leader: leader.clone() },
                    Error::Unavailable(m) => Error::Unavailable(m.clone()),
                    Error::Internal(m) => Error::Internal(m.clone()),
                    other => Error::Internal(other.to_string()),
                };
                let _ = reply.send(Err(copy));
            }
        }
    }
}
