//! A full copy asked for by the node that needs it (`FetchSnapshot`).
//!
//! Resync is driven by the leader: openraft decides a follower needs a
//! snapshot. A node whose own record store failed its check at start-up
//! (damaged on disk, or a hash chain that no longer matches its records)
//! cannot wait for that: openraft believes its state machine, and its WAL
//! may be purged behind records only the damaged store held. So, before
//! its Raft starts, it asks a peer for that peer's snapshot — committed
//! state, verified end to end on arrival like any full snapshot — and
//! installs it in place of its store (see the node's `drift_repair.rs`).
//!
//! The serving side sends its current snapshot if it covers the asked
//! log index, else builds one first (bounded by [`BUILD_WAIT_MAX`]). One
//! fetch is served at a time per node ([`FETCHES_SERVED_MAX`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;
use tokio::sync::Semaphore;
use tonic::Status;
use txlog_proto::SnapshotChunk;

use super::messages::FullHeader;
use super::receive::stage_full;
use super::send::read_file_chunks;
use super::send::ResyncStats;
use crate::error::Error;
use crate::error::Result;
use crate::snapshot::Snapshot;
use crate::snapshot::SnapshotFile;
use crate::state_machine::Raft;
use crate::state_machine::StateMachineReader;
use crate::type_config::SnapshotMeta;

/// How long a peer may take to build a snapshot that covers the request.
pub const BUILD_WAIT_MAX: Duration = Duration::from_secs(60);
/// Fetches one node serves at once; more are refused (`UNAVAILABLE`: ask another).
pub const FETCHES_SERVED_MAX: usize = 1;
/// Chunks read ahead of the network.
const CHUNKS_IN_FLIGHT_MAX: usize = 4;
/// Longest one fetch is served; past it the stream is cut and the permit
/// freed (a stalled reader cannot keep this node from serving others).
const SERVE_TIME_MAX: Duration = Duration::from_secs(600);

/// What the asking node needs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The copy must cover the log up to at least this index (the asking
    /// node's WAL is purged up to it).
    pub min_index: u64,
}

/// The serving side, held by the Raft service.
#[derive(Clone)]
pub struct FetchServer {
    raft: Raft,
    reader: StateMachineReader,
    stats: Arc<ResyncStats>,
    serving: Arc<Semaphore>,
}

impl FetchServer {
    pub fn new(raft: Raft, reader: StateMachineReader, stats: Arc<ResyncStats>) -> Self {
        FetchServer {
            raft,
            reader,
            stats,
            serving: Arc::new(Semaphore::new(FETCHES_SERVED_MAX)),
        }
    }

    /// Stream this node's snapshot (built first if it does not cover
    /// `request.min_index`) as full-snapshot chunks.
    pub async fn serve(
        &self,
        request: FetchRequest,
    ) -> Result<tokio_stream::wrappers::ReceiverStream<std::result::Result<SnapshotChunk, Status>>> {
        let permit = self
            .serving
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Unavailable("this node is already serving a full copy; ask another".into()))?;
        let snapshot = self.covering_snapshot(request.min_index).await?;
        let vote = {
            use openraft::type_config::async_runtime::WatchReceiver;
            self.raft.metrics().borrow_watched().vote
        };
        let header: FullHeader = (vote, snapshot.meta.clone());
        let header = postcard::to_allocvec(&header).expect("encoding an in-memory value cannot fail");
        let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(CHUNKS_IN_FLIGHT_MAX);
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT_MAX);
        let stats = self.stats.clone();
        let path = snapshot.snapshot.path.clone();
        let meta = snapshot.meta.clone();
        let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        tokio::spawn(async move {
            let _permit = permit;
            let counted = stats.clone();
            let producer =
                tokio::task::spawn_blocking(move || read_file_chunks(&path, header, &stats.full_bytes, &chunks_tx));
            let mut chunks_rx = chunks_rx;
            let forwarded = tokio::time::timeout(SERVE_TIME_MAX, async {
                while let Some(chunk) = chunks_rx.recv().await {
                    if tx.send(Ok(chunk)).await.is_err() {
                        return false; // the asking node went away
                    }
                }
                true
            })
            .await
            .unwrap_or(false);
            // Closing our end stops a producer blocked on a full channel.
            drop(chunks_rx);
            match producer.await {
                Ok(Ok(bytes)) if forwarded && bytes == file_bytes => {
                    counted.full_transfers.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(last_log_id = ?meta.last_log_id, bytes, "full copy served");
                }
                Ok(Ok(bytes)) => tracing::warn!(
                    bytes,
                    file_bytes,
                    "full copy cut short: the asking node went away or took too long"
                ),
                Ok(Err(err)) => {
                    tracing::warn!(%err, "full copy not served");
                    let _ = tx.send(Err(Status::from(err))).await;
                }
                Err(err) => tracing::warn!(%err, "full copy reader failed"),
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// The current snapshot if it covers `min_index`; else one built now.
    async fn covering_snapshot(&self, min_index: u64) -> Result<Snapshot> {
        let covers = |s: &Option<(SnapshotMeta, std::path::PathBuf)>| {
            s.as_ref()
                .is_some_and(|(meta, _)| meta.last_log_id.map_or(0, |l| l.index) >= min_index)
        };
        let mut current = self.reader.current_snapshot();
        let applied = self.reader.last_applied().map_or(0, |l| l.index);
        if !covers(&current) && applied < min_index {
            return Err(Error::Unavailable(format!(
                "this node has applied up to log index {applied}, short of {min_index}: ask another"
            )));
        }
        if !covers(&current) {
            tracing::info!(min_index, "building a snapshot for a node that asked for a full copy");
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?;
            let deadline = tokio::time::Instant::now() + BUILD_WAIT_MAX;
            while !covers(&current) {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Unavailable(format!(
                        "no snapshot covering log index {min_index} within {BUILD_WAIT_MAX:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                current = self.reader.current_snapshot();
            }
        }
        let (meta, path) = current.expect("checked above");
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFile { path, delta_base: None },
        })
    }
}

/// Ask the peer behind `client` for a full copy covering `min_index`; stage
/// it in `reader`'s snapshot directory and verify it. Returns its metadata
/// and the staged file (the caller installs it, then removes the file).
pub async fn fetch_full(
    mut client: txlog_proto::raft_service_client::RaftServiceClient<tonic::transport::Channel>,
    reader: &StateMachineReader,
    min_index: u64,
) -> Result<(SnapshotMeta, std::path::PathBuf)> {
    let request = crate::codec::encode(&FetchRequest { min_index });
    let mut chunks = client.fetch_snapshot(request).await.map_err(Error::Peer)?.into_inner();
    let dir = reader.snapshot_dir().clone();
    let incoming = tokio::task::spawn_blocking(move || dir.incoming())
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))??;
    let staging = incoming.path().to_path_buf();
    let discard = |staging: std::path::PathBuf| {
        let dir = reader.snapshot_dir().clone();
        tokio::task::spawn_blocking(move || dir.remove(&staging))
    };
    match stage_full(&mut chunks, incoming).await {
        Ok((_, meta)) if meta.last_log_id.map_or(0, |l| l.index) < min_index => {
            let _ = discard(staging).await;
            Err(Error::InvalidInput(format!(
                "the copy ends at {:?}, before log index {min_index}",
                meta.last_log_id
            )))
        }
        Ok((_, meta)) => Ok((meta, staging)),
        Err(err) => {
            let _ = discard(staging).await;
            Err(err)
        }
    }
}
