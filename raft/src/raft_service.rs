//! Inbound peer RPCs: the tonic `RaftService`, handing messages to openraft.
//!
//! Every message is CRC-checked and decoded before openraft sees it; a
//! message that fails is answered `INVALID_ARGUMENT` and changes nothing.
//! Incoming snapshots are written to a staging file in the snapshot
//! directory, bounded in size, verified end to end, and only then installed.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::VoteRequest;
use tokio::io::AsyncWriteExt;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;
use txlog_proto::raft_service_server::RaftService;
use txlog_proto::raft_service_server::RaftServiceServer;
use txlog_proto::RaftMessage;
use txlog_proto::SnapshotChunk;
use txlog_storage::snapshot_file;

use crate::codec;
use crate::resync;
use crate::state_machine::Snapshot;
use crate::state_machine::SnapshotFile;
use crate::type_config::Raft;
use crate::type_config::SnapshotMeta;
use crate::type_config::TypeConfig;
use crate::type_config::Vote;
use crate::StateMachineReader;

/// Names concurrent incoming snapshots apart; leftovers are removed on open.
static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Largest snapshot a peer may send us.
pub const SNAPSHOT_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;

/// Serves openraft's peer RPCs for one node.
pub struct RaftServer {
    raft: Raft,
    reader: StateMachineReader,
    snapshot_dir: PathBuf,
    contact: LeaderContact,
}

/// When this node last heard from a leader (any AppendEntries, heartbeats
/// included), for the failure detector.
#[derive(Clone, Default)]
pub struct LeaderContact {
    started: std::sync::Arc<std::sync::OnceLock<std::time::Instant>>,
    last_ns: std::sync::Arc<AtomicU64>,
}

impl LeaderContact {
    fn epoch(&self) -> std::time::Instant {
        *self.started.get_or_init(std::time::Instant::now)
    }

    pub fn touch(&self) {
        let ns = self.epoch().elapsed().as_nanos() as u64;
        self.last_ns.store(ns.max(1), Ordering::Relaxed);
    }

    /// Time since the last contact; `None` before the first one.
    pub fn silence(&self) -> Option<std::time::Duration> {
        match self.last_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(
                self.epoch()
                    .elapsed()
                    .saturating_sub(std::time::Duration::from_nanos(ns)),
            ),
        }
    }
}

impl RaftServer {
    pub fn new(raft: Raft, reader: StateMachineReader, contact: LeaderContact) -> Self {
        let snapshot_dir = reader.snapshot_dir().to_path_buf();
        RaftServer {
            raft,
            reader,
            snapshot_dir,
            contact,
        }
    }

    pub fn into_service(self) -> RaftServiceServer<Self> {
        RaftServiceServer::new(self)
            .max_decoding_message_size(codec::PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(codec::PEER_MESSAGE_BYTES_MAX)
    }
}

fn bad_message(detail: String) -> Status {
    Status::invalid_argument(detail)
}

fn raft_failed(err: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft: {err}"))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = codec::decode(request.get_ref()).map_err(bad_message)?;
        // Counted on receipt: a busy follower may answer after the leader's
        // short heartbeat deadline (the call is then dropped), yet it has
        // heard from a live leader. A deposed leader's message is answered
        // with a higher vote and stops at once.
        self.contact.touch();
        let resp = self.raft.append_entries(req).await.map_err(raft_failed)?;
        Ok(Response::new(codec::encode(&resp)))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: VoteRequest<TypeConfig> = codec::decode(request.get_ref()).map_err(bad_message)?;
        let resp = self.raft.vote(req).await.map_err(raft_failed)?;
        Ok(Response::new(codec::encode(&resp)))
    }

    async fn pre_vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: VoteRequest<TypeConfig> = codec::decode(request.get_ref()).map_err(bad_message)?;
        let resp = self.raft.pre_vote(req).await.map_err(raft_failed)?;
        Ok(Response::new(codec::encode(&resp)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let mut chunks = request.into_inner();
        let staging = self.snapshot_dir.join(format!(
            "incoming-{}.partial",
            STAGING_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = receive_snapshot(&mut chunks, &staging).await;
        let (vote, meta) = match result {
            Ok(parts) => parts,
            Err(status) => {
                let _ = tokio::fs::remove_file(&staging).await;
                return Err(status);
            }
        };
        let snapshot = Snapshot {
            meta,
            snapshot: SnapshotFile {
                path: staging.clone(),
                delta_base: None,
            },
        };
        let resp = self.raft.install_full_snapshot(vote, snapshot).await;
        let _ = tokio::fs::remove_file(&staging).await;
        let resp = resp.map_err(raft_failed)?;
        Ok(Response::new(codec::encode(&resp)))
    }

    async fn transfer_leader(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: TransferLeaderRequest<TypeConfig> = codec::decode(request.get_ref()).map_err(bad_message)?;
        let resp = self.raft.handle_transfer_leader(req).await.map_err(raft_failed)?;
        Ok(Response::new(codec::encode(&resp)))
    }

    async fn resync_probe(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: resync::ProbeRequest = codec::decode(request.get_ref()).map_err(bad_message)?;
        let resp = resync::answer_probe(&self.reader, &req)?;
        Ok(Response::new(codec::encode(&resp)))
    }

    async fn install_delta(&self, request: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftMessage>, Status> {
        let resp = resync::receive_delta(&self.raft, &self.reader, request.into_inner()).await?;
        Ok(Response::new(codec::encode(&resp)))
    }
}

/// Write the chunks to `staging`, checking order, CRCs and size; verify the file.
async fn receive_snapshot(
    chunks: &mut Streaming<SnapshotChunk>,
    staging: &std::path::Path,
) -> Result<(Vote, SnapshotMeta), Status> {
    let mut file = tokio::fs::File::create(staging)
        .await
        .map_err(|e| Status::internal(format!("create snapshot staging file: {e}")))?;
    let mut header: Option<(Vote, SnapshotMeta)> = None;
    let mut offset = 0u64;
    let mut done = false;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        codec::check_chunk(&chunk)?;
        if chunk.offset != offset {
            return Err(Status::invalid_argument(format!(
                "snapshot chunk offset {} where {offset} was expected",
                chunk.offset
            )));
        }
        if header.is_none() {
            if chunk.header.is_empty() {
                return Err(Status::invalid_argument("first snapshot chunk has no header"));
            }
            header = Some(
                postcard::from_bytes(&chunk.header)
                    .map_err(|e| Status::invalid_argument(format!("snapshot header: {e}")))?,
            );
        }
        offset += chunk.data.len() as u64;
        if offset > SNAPSHOT_BYTES_MAX {
            return Err(Status::resource_exhausted("snapshot larger than the limit"));
        }
        file.write_all(&chunk.data)
            .await
            .map_err(|e| Status::internal(format!("write snapshot: {e}")))?;
        if chunk.done {
            done = true;
            break;
        }
    }
    if !done {
        return Err(Status::aborted("snapshot stream ended before its last chunk"));
    }
    file.sync_all()
        .await
        .map_err(|e| Status::internal(format!("fsync snapshot: {e}")))?;
    drop(file);
    let (vote, meta) = header.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
    let path = staging.to_path_buf();
    let info = tokio::task::spawn_blocking(move || snapshot_file::verify(&path))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::data_loss(format!("received snapshot is damaged: {e}")))?;
    let file_meta = crate::meta::decode_snapshot_meta(&info.meta).map_err(|e| Status::data_loss(e.to_string()))?;
    if file_meta != meta {
        return Err(Status::invalid_argument(
            "snapshot header does not match the file's metadata",
        ));
    }
    tracing::info!(bytes = offset, records = info.record_count, "snapshot received");
    Ok((vote, meta))
}
