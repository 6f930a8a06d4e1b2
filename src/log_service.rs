//! `LogService`: the client API.
//!
//! * `Append` validates every record, then (on the leader) hands them to the
//!   [`Batcher`]; the reply carries one committed `seq` per record. A
//!   follower answers `UNAVAILABLE` with the leader's address in the
//!   `txlog-leader` metadata; the client library retries there. While the
//!   leader is in doubt (gone quiet, or an election on) the follower holds
//!   the call until one is known (`leader_wait.rs`).
//! * `AppendStream` does the same per call over one long-lived stream
//!   (`append_stream.rs`); the client library sends every append that way.
//! * `Read` / `Lookup` confirm leadership through a read index first
//!   (linearizable) unless `stale` is set, in which case this node's state
//!   machine answers and the response's `last_seq` says how far it has got.
//! * `Subscribe` streams history from this node's state machine, then waits
//!   on the applied sequence and streams new records as they are applied.
//!   The stream is bounded: a slow subscriber slows only itself.

use std::pin::Pin;
use std::sync::Arc;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;
use txlog_proto::log_service_server::LogService;
use txlog_proto::AppendRequest;
use txlog_proto::AppendResponse;
use txlog_proto::AppendResult;
use txlog_proto::AppendStreamRequest;
use txlog_proto::AppendStreamResponse;
use txlog_proto::CommittedRecord;
use txlog_proto::LookupRequest;
use txlog_proto::LookupResponse;
use txlog_proto::ReadRequest;
use txlog_proto::ReadResponse;
use txlog_proto::SubscribeRequest;
use txlog_raft::openraft::LinearizerOption;
use txlog_raft::openraft::ReadPolicy;
use txlog_raft::Raft;
use txlog_raft::StateMachineReader;
use txlog_storage::AppendOutcome;
use txlog_storage::NewRecord;
use txlog_storage::StoredRecord;

use txlog_client::methods;

use crate::access_guard::Guard;
use crate::access_policy::Operation;
use crate::append_stream::STREAM_REPLY_MESSAGES_MAX;
use crate::batcher::Batcher;
use crate::error::raft_error;
use crate::leader_wait::LeaderWait;
use crate::metrics::Metrics;
use crate::validate;
use crate::Error;
use crate::Result;

/// Records buffered per subscriber before the stream pushes back.
pub const SUBSCRIBE_BUFFER_RECORDS: usize = 1024;
/// Records read from the store per step of a subscription.
const SUBSCRIBE_READ_RECORDS: usize = 512;

#[derive(Clone)]
pub struct LogServer {
    pub node_id: u64,
    pub raft: Raft,
    pub reader: StateMachineReader,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    pub payload_bytes_max: usize,
    pub shutdown: CancellationToken,
    /// Admits every call (`access_guard.rs`).
    pub guard: Arc<Guard>,
    /// Where appends go; holds them while an election settles.
    pub leader: LeaderWait,
}

/// A record as clients are served it. An access record's payload (it holds
/// a client secret) is never served: readers see its seq, txid and channel
/// with an empty payload, so seqs stay dense.
pub fn to_proto(r: StoredRecord) -> CommittedRecord {
    let payload = if r.channel == crate::access_policy::ACCESS_CHANNEL {
        Default::default()
    } else {
        r.payload.into()
    };
    CommittedRecord {
        seq: r.seq,
        channel_seq: r.channel_seq,
        txid: r.txid.into(),
        channel: r.channel,
        payload,
        client_time_ns: r.client_time_ns,
        commit_time_ns: r.commit_time_ns,
        log_index: r.log_index,
        log_term: r.log_term,
        origin_node: r.origin_node,
    }
}

/// What the client is told of its committed records, one per record.
pub fn append_results(outcomes: Vec<AppendOutcome>) -> Vec<AppendResult> {
    outcomes
        .into_iter()
        .map(|o| AppendResult {
            seq: o.seq,
            channel_seq: o.channel_seq,
            duplicate: o.duplicate,
        })
        .collect()
}

/// The leader as this node currently knows it: `(id, address)`.
pub fn known_leader(raft: &Raft) -> Option<(u64, String)> {
    let receiver = raft.metrics();
    let metrics = receiver.borrow_watched();
    let leader = metrics.current_leader?;
    let address = metrics
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.address.clone())
        .unwrap_or_default();
    Some((leader, address))
}

impl LogServer {
    pub(crate) fn reject(&self, err: Error) -> Status {
        if matches!(err, Error::InvalidInput(_)) {
            self.metrics.rejected_requests.inc();
        }
        err.to_status()
    }

    /// Wait until this node may serve a linearizable read.
    ///
    /// First by the leader lease, which needs no network round: a quorum
    /// acknowledged this leader less than half of `election_timeout_ms_max` ago
    /// (timed from when the acknowledged message was sent), and until that
    /// long after hearing from it no follower votes for another node nor
    /// starts an election (the failure detector waits at least as long; a
    /// node that restarted, and so forgot when it last heard from the
    /// leader, refuses votes for one lease after it starts), so no other
    /// leader can have committed anything. This assumes the nodes'
    /// clocks run at the same rate, not that they agree. When the lease has
    /// run out (the leader has not heard from a quorum lately), the read
    /// falls back to ReadIndex: a heartbeat round to a quorum.
    async fn linearize(&self) -> Result<()> {
        // Half the lease: the lease argument needs the nodes' clocks to run
        // at the same rate; half of it still holds when one runs up to
        // twice as fast as another (the chaos clock nemesis runs a node at
        // 0.5-2x), at the cost of more reads falling back to ReadIndex.
        let lease = std::time::Duration::from_millis(self.raft.config().election_timeout_max);
        let option = LinearizerOption::new(Some(lease / 2), false).with_wait_timeout(std::time::Duration::ZERO);
        if self.raft.ensure_linearizable(option).await.is_ok() {
            return Ok(());
        }
        match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(err) => Err(raft_error(err, "linearizable read")),
        }
    }

    /// Whether `caller` may append to every channel of `records`.
    pub(crate) fn authorize_append(
        &self,
        caller: Option<&crate::token_check::Caller>,
        records: &[NewRecord],
    ) -> std::result::Result<(), Status> {
        if !self.guard.is_enforced() {
            return Ok(());
        }
        let mut checked = std::collections::BTreeSet::new();
        for record in records {
            if checked.insert(record.channel.as_str()) {
                self.guard.authorize(caller, Operation::Append, Some(&record.channel))?;
            }
        }
        Ok(())
    }

    pub(crate) fn validate_append(&self, request: AppendRequest) -> Result<Vec<NewRecord>> {
        if request.records.is_empty() {
            return Err(Error::InvalidInput("append needs at least one record".into()));
        }
        if request.records.len() > validate::APPEND_RECORDS_MAX {
            return Err(Error::InvalidInput(format!(
                "{} records in one append; the maximum is {}",
                request.records.len(),
                validate::APPEND_RECORDS_MAX
            )));
        }
        let mut out = Vec::with_capacity(request.records.len());
        for (i, r) in request.records.into_iter().enumerate() {
            let wrap = |e: Error| match e {
                Error::InvalidInput(m) => Error::InvalidInput(format!("record {i}: {m}")),
                other => other,
            };
            validate::txid(&r.txid).map_err(wrap)?;
            validate::channel(&r.channel).map_err(wrap)?;
            validate::payload(&r.payload, self.payload_bytes_max).map_err(wrap)?;
            out.push(NewRecord {
                txid: r.txid,
                channel: r.channel,
                payload: r.payload,
                client_time_ns: r.client_time_ns,
            });
        }
        Ok(out)
    }
}

/// Why a subscription was closed under its caller: `ABORTED` (retryable:
/// subscribe again, with a key that may, from `next`), with the reason.
fn subscription_ended(status: &Status, next: u64) -> Status {
    Status::aborted(format!(
        "subscription closed: {}; subscribe again from seq {next} with a key that may",
        status.message()
    ))
}

type AppendStream = Pin<Box<dyn Stream<Item = std::result::Result<AppendStreamResponse, Status>> + Send + 'static>>;
type SubscribeStream = Pin<Box<dyn Stream<Item = std::result::Result<CommittedRecord, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl LogService for LogServer {
    async fn append(&self, request: Request<AppendRequest>) -> std::result::Result<Response<AppendResponse>, Status> {
        let caller = self
            .guard
            .authenticate_metadata(request.metadata(), request.get_ref(), methods::APPEND)?;
        let records = self.validate_append(request.into_inner()).map_err(|e| self.reject(e))?;
        self.authorize_append(caller.as_ref(), &records)?;
        self.leader.leader().await.map_err(|e| self.reject(e))?;
        let outcomes = self.batcher.append(records).await.map_err(|e| self.reject(e))?;
        Ok(Response::new(AppendResponse {
            results: append_results(outcomes),
        }))
    }

    type AppendStreamStream = AppendStream;

    async fn append_stream(
        &self,
        request: Request<Streaming<AppendStreamRequest>>,
    ) -> std::result::Result<Response<AppendStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_REPLY_MESSAGES_MAX);
        tokio::spawn(self.clone().serve_append_stream(request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn read(&self, request: Request<ReadRequest>) -> std::result::Result<Response<ReadResponse>, Status> {
        self.guard.admit(
            request.metadata(),
            request.get_ref(),
            methods::READ,
            Operation::Read,
            request.get_ref().channel.as_deref(),
        )?;
        let request = request.into_inner();
        let limit = validate::read_limit(request.limit).map_err(|e| self.reject(e))?;
        if let Some(channel) = &request.channel {
            validate::channel_to_read(channel).map_err(|e| self.reject(e))?;
        }
        if !request.stale {
            self.linearize().await.map_err(|e| self.reject(e))?;
        }
        let last_seq = self.reader.last_seq();
        let from = request.from_seq.max(1);
        let records = self
            .reader
            .read(from, limit, validate::READ_BYTES_MAX, request.channel.as_deref())
            .map_err(|e| self.reject(e.into()))?;
        let next_seq = records.last().map(|r| r.seq + 1).unwrap_or(from);
        Ok(Response::new(ReadResponse {
            records: records.into_iter().map(to_proto).collect(),
            next_seq,
            last_seq,
        }))
    }

    async fn lookup(&self, request: Request<LookupRequest>) -> std::result::Result<Response<LookupResponse>, Status> {
        let caller = self
            .guard
            .authenticate_metadata(request.metadata(), request.get_ref(), methods::LOOKUP)?;
        let request = request.into_inner();
        validate::txid(&request.txid).map_err(|e| self.reject(e))?;
        if !request.stale {
            self.linearize().await.map_err(|e| self.reject(e))?;
        }
        match self
            .reader
            .lookup_txid(&request.txid)
            .map_err(|e| self.reject(e.into()))?
        {
            Some(record) => {
                // The channel is known only now: the caller must be allowed to read it.
                self.guard
                    .authorize(caller.as_ref(), Operation::Read, Some(&record.channel))?;
                Ok(Response::new(LookupResponse {
                    record: Some(to_proto(record)),
                }))
            }
            None => Err(Error::NotFound(format!(
                "no committed record with txid {:?}",
                String::from_utf8_lossy(&request.txid)
            ))
            .to_status()),
        }
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> std::result::Result<Response<SubscribeStream>, Status> {
        let caller = self.guard.admit(
            request.metadata(),
            request.get_ref(),
            methods::SUBSCRIBE,
            Operation::Subscribe,
            request.get_ref().channel.as_deref(),
        )?;
        let request = request.into_inner();
        if let Some(channel) = &request.channel {
            validate::channel_to_read(channel).map_err(|e| self.reject(e))?;
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBE_BUFFER_RECORDS);
        let reader = self.reader.clone();
        let shutdown = self.shutdown.clone();
        let channel = request.channel;
        let mut next = request.from_seq.max(1);
        let guard = self.guard.clone();
        tokio::spawn(async move {
            let mut applied = reader.watch_last_seq();
            let mut policy = guard.policy.watch();
            let mut recheck = false;
            loop {
                // Checked again at every policy change: a revoked key or a
                // role that lost the right ends the stream.
                if std::mem::take(&mut recheck) || policy.has_changed().unwrap_or(false) {
                    policy.borrow_and_update();
                    if let Err(status) = guard.authorize(caller.as_ref(), Operation::Subscribe, channel.as_deref()) {
                        let _ = tx.send(Err(subscription_ended(&status, next))).await;
                        return;
                    }
                }
                // Mark the current applied sequence as seen *before* reading,
                // so an apply that lands after the read still wakes us.
                applied.borrow_and_update();
                let records = match reader.read(
                    next,
                    SUBSCRIBE_READ_RECORDS,
                    validate::READ_BYTES_MAX,
                    channel.as_deref(),
                ) {
                    Ok(r) => r,
                    Err(err) => {
                        let _ = tx.send(Err(Error::from(err).to_status())).await;
                        return;
                    }
                };
                if records.is_empty() {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tx.closed() => return,
                        changed = applied.changed() => if changed.is_err() { return },
                        _ = policy.changed() => recheck = true,
                    }
                    continue;
                }
                for record in records {
                    next = record.seq + 1;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        sent = tx.send(Ok(to_proto(record))) => if sent.is_err() { return },
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
