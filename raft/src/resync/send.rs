//! The leader's side: probe the follower, then stream either the records it
//! is missing (delta) or the whole snapshot file (full), counting the bytes
//! sent by path. Files are read on blocking threads; the bounded channels
//! between reader and stream let a slow follower slow the reader down.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::StreamingError;
use openraft::raft::SnapshotResponse;
use serde::Serialize;
use tonic::transport::Channel;
use txlog_proto::raft_service_client::RaftServiceClient;
use txlog_proto::SnapshotChunk;
use txlog_storage::snapshot_file;

use super::messages::DeltaHeader;
use super::messages::FullHeader;
use super::messages::ProbeRequest;
use super::messages::ProbeResponse;
use super::messages::DELTA_CHUNK_BYTES;
use super::messages::SNAPSHOT_CHUNK_BYTES;
use super::probe::Plan;
use crate::codec;
use crate::error::Error;
use crate::snapshot::snapshot_name;
use crate::snapshot::Snapshot;
use crate::state_machine::StateMachineReader;
use crate::type_config::TypeConfig;
use crate::type_config::Vote;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Chunks queued between the file reader and the stream.
const CHUNKS_IN_FLIGHT_MAX: usize = 4;

/// Bytes and counts of snapshot transfers sent by this node, by path.
#[derive(Debug, Default)]
pub struct ResyncStats {
    pub delta_transfers: AtomicU64,
    pub delta_bytes: AtomicU64,
    pub full_transfers: AtomicU64,
    pub full_bytes: AtomicU64,
    /// Delta attempts the follower refused (divergence), answered with a full snapshot.
    pub delta_refused: AtomicU64,
    /// AppendEntries a follower refused as damaged on the way (a checksum
    /// or a frame that did not check: `INVALID_ARGUMENT`); openraft sends
    /// the same entries again.
    pub appends_refused: AtomicU64,
}

/// A plain copy of [`ResyncStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ResyncCounts {
    pub delta_transfers: u64,
    pub delta_bytes: u64,
    pub full_transfers: u64,
    pub full_bytes: u64,
    pub delta_refused: u64,
    pub appends_refused: u64,
}

impl ResyncStats {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn counts(&self) -> ResyncCounts {
        ResyncCounts {
            delta_transfers: self.delta_transfers.load(Ordering::Relaxed),
            delta_bytes: self.delta_bytes.load(Ordering::Relaxed),
            full_transfers: self.full_transfers.load(Ordering::Relaxed),
            full_bytes: self.full_bytes.load(Ordering::Relaxed),
            delta_refused: self.delta_refused.load(Ordering::Relaxed),
            appends_refused: self.appends_refused.load(Ordering::Relaxed),
        }
    }
}

type Response = SnapshotResponse<TypeConfig>;

/// Why a delta was not delivered.
enum SendError {
    /// The follower found its records inconsistent: send the full snapshot now.
    Refused(String),
    Failed(Error),
}

/// Sends one snapshot to one follower.
pub(crate) struct Sender<'a> {
    pub(crate) target: u64,
    pub(crate) client: RaftServiceClient<Channel>,
    pub(crate) reader: &'a StateMachineReader,
    pub(crate) stats: Arc<ResyncStats>,
}

impl Sender<'_> {
    /// Probe, then send a delta if the plan allows and the follower takes
    /// it, else the full snapshot.
    pub(crate) async fn send(&self, vote: &Vote, snapshot: &Snapshot) -> Result<Response, StreamingError<TypeConfig>> {
        let plan = self.plan(snapshot).await.map_err(|e| e.to_streaming())?;
        if let Plan::Covered { .. } = &plan {
            // Answered as an install would be: openraft then replicates from
            // the snapshot's log id, which the follower's log already holds.
            return Ok(Response::new(*vote));
        }
        if let Plan::Delta { .. } = &plan {
            match self.send_delta(vote, snapshot, &plan).await {
                Ok(response) => return Ok(response),
                Err(SendError::Refused(detail)) => {
                    self.stats.delta_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target_node = self.target, %detail, "delta refused; sending the full snapshot");
                }
                Err(SendError::Failed(err)) => return Err(err.to_streaming()),
            }
        }
        self.send_full(vote, snapshot).await.map_err(|e| e.to_streaming())
    }

    /// Ask the follower where its records end; decide delta or full.
    /// An unreachable follower is an error (openraft retries later); any
    /// other probe failure falls back to the full snapshot.
    async fn plan(&self, snapshot: &Snapshot) -> Result<Plan, Error> {
        let name = snapshot_name(&snapshot.meta);
        let path = snapshot.snapshot.path.clone();
        let last_seq = match tokio::task::spawn_blocking(move || snapshot_file::record_count(&path)).await {
            Ok(Ok(n)) => n,
            Ok(Err(err)) => return Ok(Plan::Full(format!("reading the snapshot trailer: {err}"))),
            Err(err) => return Ok(Plan::Full(err.to_string())),
        };
        let mut request = tonic::Request::new(codec::encode(&ProbeRequest { snapshot: name.clone() }));
        request.set_timeout(PROBE_TIMEOUT);
        let probe: ProbeResponse = match self.client.clone().resync_probe(request).await {
            Ok(response) => match codec::decode(response.get_ref()) {
                Ok(probe) => probe,
                Err(err) => return Ok(Plan::Full(format!("bad probe answer: {err}"))),
            },
            Err(status) if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => {
                return Err(Error::Peer(status))
            }
            Err(status) => return Ok(Plan::Full(format!("probe failed: {}", status.message()))),
        };
        let plan = Plan::decide(self.reader, &probe, last_seq, &name);
        tracing::info!(
            target_node = self.target,
            follower_seq = probe.last_seq,
            snapshot_seq = last_seq,
            ?plan,
            "resync plan"
        );
        Ok(plan)
    }

    async fn send_delta(&self, vote: &Vote, snapshot: &Snapshot, plan: &Plan) -> Result<Response, SendError> {
        let Plan::Delta {
            base_seq,
            base_chain,
            first_seq,
            last_seq,
        } = *plan
        else {
            unreachable!("send_delta is only called with a delta plan")
        };
        let header = DeltaHeader {
            vote: *vote,
            meta: snapshot.meta.clone(),
            base_seq,
            base_chain,
            first_seq,
            last_seq,
        };
        let header = postcard::to_allocvec(&header).expect("encoding an in-memory value cannot fail");
        let path = snapshot.snapshot.path.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(CHUNKS_IN_FLIGHT_MAX);
        let sent_bytes = Arc::new(AtomicU64::new(0));
        let counter = sent_bytes.clone();
        let producer = tokio::task::spawn_blocking(move || read_delta_chunks(&path, header, first_seq, &counter, &tx));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let outcome = self.client.clone().install_delta(stream).await;
        let produced = producer
            .await
            .map_err(|e| Error::Internal(e.to_string()))
            .and_then(|r| r);
        let bytes = sent_bytes.load(Ordering::Relaxed);
        self.stats.delta_bytes.fetch_add(bytes, Ordering::Relaxed);
        match (produced, outcome) {
            (Ok(()), Ok(response)) => {
                self.stats.delta_transfers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    target_node = self.target,
                    base_seq,
                    first_seq,
                    last_seq,
                    bytes,
                    "delta snapshot sent"
                );
                codec::decode(response.get_ref()).map_err(SendError::Failed)
            }
            (_, Err(status)) if status.code() == tonic::Code::DataLoss => {
                Err(SendError::Refused(status.message().to_string()))
            }
            (Err(err), _) => Err(SendError::Failed(Error::Internal(format!("read snapshot file: {err}")))),
            (Ok(()), Err(status)) => Err(SendError::Failed(Error::Peer(status))),
        }
    }

    async fn send_full(&self, vote: &Vote, snapshot: &Snapshot) -> Result<Response, Error> {
        let path = snapshot.snapshot.path.clone();
        let header: FullHeader = (*vote, snapshot.meta.clone());
        let header = postcard::to_allocvec(&header).expect("encoding an in-memory value cannot fail");
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(CHUNKS_IN_FLIGHT_MAX);
        // Counted as sent, so a long transfer shows progress in the metrics.
        let stats = self.stats.clone();
        let producer = tokio::task::spawn_blocking(move || read_file_chunks(&path, header, &stats.full_bytes, &tx));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let outcome = self.client.clone().install_snapshot(stream).await;
        let produced = producer
            .await
            .map_err(|e| Error::Internal(e.to_string()))
            .and_then(|r| r);
        match (produced, outcome) {
            (Err(err), _) => Err(Error::Internal(format!("read snapshot file: {err}"))),
            (Ok(bytes), Ok(response)) => {
                self.stats.full_transfers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target_node = self.target, bytes, "full snapshot sent");
                codec::decode(response.get_ref())
            }
            (Ok(_), Err(status)) => Err(Error::Peer(status)),
        }
    }
}

/// Stream records `first_seq..` of the snapshot at `path` as chunks of whole
/// record frames, the first carrying `header`. Runs on a blocking thread.
fn read_delta_chunks(
    path: &std::path::Path,
    header: Vec<u8>,
    first_seq: u64,
    sent_bytes: &AtomicU64,
    tx: &tokio::sync::mpsc::Sender<SnapshotChunk>,
) -> Result<(), Error> {
    let mut first = Some(header);
    let mut data = Vec::with_capacity(DELTA_CHUNK_BYTES + 4096);
    let mut chunk_seq = first_seq;
    let mut send = |data: &mut Vec<u8>, chunk_seq: u64, done: bool| -> bool {
        let header = first.take().unwrap_or_default();
        let chunk = codec::chunk(header, chunk_seq, std::mem::take(data), done);
        sent_bytes.fetch_add((chunk.header.len() + chunk.data.len()) as u64, Ordering::Relaxed);
        tx.blocking_send(chunk).is_ok()
    };
    let mut next_seq = first_seq;
    snapshot_file::for_each_record_from(path, first_seq, |record| {
        txlog_storage::delta_file::encode_record(&mut data, &record);
        next_seq = record.seq + 1;
        if data.len() >= DELTA_CHUNK_BYTES {
            if !send(&mut data, chunk_seq, false) {
                return Err(txlog_storage::Error::InvalidInput("delta stream closed".into()));
            }
            chunk_seq = next_seq;
        }
        Ok(())
    })?;
    send(&mut data, chunk_seq, true);
    Ok(())
}

/// Stream the file at `path` in [`SNAPSHOT_CHUNK_BYTES`] chunks, the first
/// carrying `header`; returns the bytes read. Runs on a blocking thread.
pub(super) fn read_file_chunks(
    path: &std::path::Path,
    header: Vec<u8>,
    sent_bytes: &AtomicU64,
    tx: &tokio::sync::mpsc::Sender<SnapshotChunk>,
) -> Result<u64, Error> {
    let mut offset = 0u64;
    let mut first = Some(header);
    let read = snapshot_file::read_chunks(path, SNAPSHOT_CHUNK_BYTES, |data, done| {
        let len = data.len() as u64;
        let chunk = codec::chunk(first.take().unwrap_or_default(), offset, data, done);
        sent_bytes.fetch_add((chunk.header.len() + chunk.data.len()) as u64, Ordering::Relaxed);
        offset += len;
        tx.blocking_send(chunk).is_ok()
    })?;
    Ok(read)
}
