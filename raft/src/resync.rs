//! Delta resync: catching a lagging follower up without a full snapshot.
//!
//! When openraft must send a snapshot (the follower needs entries the leader
//! has purged), the leader first sends a [`ProbeRequest`]. The follower
//! answers with its last applied sequence `S`, its hash chain at `S` and any
//! partially received delta. If the leader's own chain at `S` is the same,
//! the follower's first `S` records are exactly the leader's, and only the
//! records `S+1..` of the leader's snapshot are streamed ([`DeltaHeader`] +
//! chunks of record frames). The follower stages them in a delta file (a
//! broken stream resumes from the last whole record), then writes a complete
//! local snapshot file from its own verified prefix plus the delta, and hands
//! that to openraft's `install_full_snapshot`. Anything else — no common
//! prefix, a chain mismatch, a follower whose stored records no longer match
//! its own chain — gets the full snapshot.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::Stream;
use futures::StreamExt;
use openraft::raft::SnapshotResponse;
use serde::Deserialize;
use serde::Serialize;
use tonic::Status;
use txlog_proto::SnapshotChunk;
use txlog_storage::delta_file::DeltaWriter;
use txlog_storage::snapshot_file::SnapshotWriter;
use txlog_storage::ChainHash;

use crate::state_machine::snapshot_name;
use crate::state_machine::Snapshot;
use crate::state_machine::SnapshotFile;
use crate::type_config::Raft;
use crate::type_config::SnapshotMeta;
use crate::type_config::TypeConfig;
use crate::type_config::Vote;
use crate::StateMachineReader;

/// Bytes of record frames per delta chunk (a chunk always holds whole frames).
pub const DELTA_CHUNK_BYTES: usize = 1024 * 1024;

/// A partially received delta, kept so a broken stream can resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// Name of the leader snapshot the delta belongs to.
    pub snapshot: String,
    pub base: u64,
    /// Highest sequence already staged.
    pub last_seq: u64,
}

/// Follower-side state, kept in memory (a restart starts over).
#[derive(Debug, Default)]
pub struct FollowerResync {
    /// Set when this node found its own records inconsistent with its chain
    /// during a delta: until a full snapshot is installed, ask for full ones.
    pub force_full: bool,
    pub staged: Option<Staged>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeRequest {
    /// The leader's snapshot that would be sent.
    pub snapshot: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeResponse {
    pub last_seq: u64,
    pub chain: ChainHash,
    pub delta_ok: bool,
    pub staged: Option<Staged>,
}

/// First chunk of an `InstallDelta` stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeltaHeader {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    /// The follower's records `1..=base_seq` are kept.
    pub base_seq: u64,
    pub base_chain: ChainHash,
    /// First sequence in this stream (`base_seq + 1` unless resuming).
    pub first_seq: u64,
    /// Last sequence of the snapshot.
    pub last_seq: u64,
}

/// Bytes and counts of snapshot transfers sent by this node, by path.
#[derive(Debug, Default)]
pub struct ResyncStats {
    pub delta_transfers: AtomicU64,
    pub delta_bytes: AtomicU64,
    pub full_transfers: AtomicU64,
    pub full_bytes: AtomicU64,
    /// Delta attempts the follower refused (divergence), answered with a full snapshot.
    pub delta_refused: AtomicU64,
}

/// A plain copy of [`ResyncStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ResyncCounts {
    pub delta_transfers: u64,
    pub delta_bytes: u64,
    pub full_transfers: u64,
    pub full_bytes: u64,
    pub delta_refused: u64,
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
        }
    }
}

/// The follower's answer to a probe.
pub fn answer_probe(reader: &StateMachineReader, req: &ProbeRequest) -> Result<ProbeResponse, Status> {
    let store = reader.store();
    let last_seq = store.last_seq().map_err(|e| Status::internal(e.to_string()))?;
    let chain = store
        .chain_at(last_seq)
        .map_err(|e| Status::internal(e.to_string()))?
        .ok_or_else(|| Status::internal(format!("no hash chain value at applied seq {last_seq}")))?;
    let state = reader.resync();
    let staged = state.staged.clone().filter(|s| s.snapshot == req.snapshot);
    Ok(ProbeResponse {
        last_seq,
        chain,
        delta_ok: !state.force_full,
        staged,
    })
}

/// What the leader will send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Delta {
        base_seq: u64,
        base_chain: ChainHash,
        first_seq: u64,
        last_seq: u64,
    },
    Full(String),
}

/// Decide between delta and full from the follower's probe answer and the
/// leader's own chain. `snapshot_last_seq` is the last record in the snapshot.
pub fn plan(reader: &StateMachineReader, probe: &ProbeResponse, snapshot_last_seq: u64, snapshot: &str) -> Plan {
    if !probe.delta_ok {
        return Plan::Full("the follower asked for a full snapshot".into());
    }
    if probe.last_seq == 0 {
        return Plan::Full("the follower has no records".into());
    }
    if probe.last_seq > snapshot_last_seq {
        return Plan::Full(format!(
            "the follower's seq {} is past the snapshot's {snapshot_last_seq}",
            probe.last_seq
        ));
    }
    match reader.store().chain_at(probe.last_seq) {
        Ok(Some(chain)) if chain == probe.chain => {}
        Ok(Some(_)) => return Plan::Full(format!("hash chains differ at seq {}", probe.last_seq)),
        Ok(None) => return Plan::Full(format!("no local chain value at seq {}", probe.last_seq)),
        Err(err) => return Plan::Full(format!("reading the local chain: {err}")),
    }
    let first_seq = match &probe.staged {
        Some(staged) if staged.snapshot == snapshot && staged.base == probe.last_seq => staged.last_seq + 1,
        _ => probe.last_seq + 1,
    };
    Plan::Delta {
        base_seq: probe.last_seq,
        base_chain: probe.chain,
        first_seq,
        last_seq: snapshot_last_seq,
    }
}

fn staging_path(reader: &StateMachineReader, snapshot: &str, base: u64) -> PathBuf {
    reader
        .snapshot_dir()
        .join(format!("delta-{}-{base}.partial", snapshot.trim_end_matches(".snap")))
}

/// Follower: receive a delta stream, stage it, merge it with the local
/// prefix into a snapshot file and install that through openraft.
pub async fn receive_delta<S>(
    raft: &Raft,
    reader: &StateMachineReader,
    mut chunks: S,
) -> Result<SnapshotResponse<TypeConfig>, Status>
where
    S: Stream<Item = Result<SnapshotChunk, Status>> + Unpin,
{
    let first = chunks
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument("empty delta stream"))??;
    crate::codec::check_chunk(&first)?;
    if first.header.is_empty() {
        return Err(Status::invalid_argument("first delta chunk has no header"));
    }
    let header: DeltaHeader =
        postcard::from_bytes(&first.header).map_err(|e| Status::invalid_argument(format!("delta header: {e}")))?;
    if header.first_seq <= header.base_seq || header.last_seq < header.base_seq {
        return Err(Status::invalid_argument("delta header sequences are inconsistent"));
    }
    let name = snapshot_name(&header.meta);
    let path = staging_path(reader, &name, header.base_seq);
    {
        let mut state = reader.resync();
        let resumable = state
            .staged
            .as_ref()
            .is_some_and(|s| s.snapshot == name && s.base == header.base_seq && s.last_seq + 1 == header.first_seq);
        if header.first_seq != header.base_seq + 1 && !resumable {
            return Err(Status::failed_precondition(
                "the staged delta does not match the resumed stream",
            ));
        }
        if !resumable {
            if let Some(old) = state.staged.take() {
                let _ = std::fs::remove_file(staging_path(reader, &old.snapshot, old.base));
            }
            let _ = std::fs::remove_file(&path);
        }
        state.staged = Some(Staged {
            snapshot: name.clone(),
            base: header.base_seq,
            last_seq: header.first_seq - 1,
        });
    }
    let mut writer = DeltaWriter::open(&path, header.base_seq).map_err(|e| Status::internal(e.to_string()))?;
    if writer.last_seq() + 1 != header.first_seq {
        reader.resync().staged = None;
        return Err(Status::failed_precondition(format!(
            "staged delta ends at seq {}, stream starts at {}",
            writer.last_seq(),
            header.first_seq
        )));
    }
    let mut chunk = Some(first);
    let mut done = false;
    let mut received = 0u64;
    while let Some(current) = chunk.take() {
        crate::codec::check_chunk(&current)?;
        if current.offset != writer.last_seq() + 1 && !current.data.is_empty() {
            return Err(Status::invalid_argument(format!(
                "delta chunk starts at seq {} where {} was expected",
                current.offset,
                writer.last_seq() + 1
            )));
        }
        writer
            .append_chunk(&current.data)
            .map_err(|e| Status::invalid_argument(format!("delta chunk: {e}")))?;
        received += current.data.len() as u64;
        if let Some(staged) = reader.resync().staged.as_mut() {
            staged.last_seq = writer.last_seq();
        }
        if current.done {
            done = true;
            break;
        }
        chunk = match chunks.next().await {
            Some(next) => Some(next?),
            None => None,
        };
    }
    if !done {
        writer.sync().map_err(|e| Status::internal(e.to_string()))?;
        return Err(Status::aborted(format!(
            "delta stream ended at seq {} before its last chunk; it will resume",
            writer.last_seq()
        )));
    }
    if writer.last_seq() != header.last_seq {
        return Err(Status::invalid_argument(format!(
            "delta ended at seq {}, header promised {}",
            writer.last_seq(),
            header.last_seq
        )));
    }
    writer.sync().map_err(|e| Status::internal(e.to_string()))?;
    drop(writer);
    tracing::info!(
        base = header.base_seq,
        last_seq = header.last_seq,
        bytes = received,
        "delta received; merging with the local records"
    );

    let merge_reader = reader.clone();
    let merge_header = header.clone();
    let merge_path = path.clone();
    let merged = tokio::task::spawn_blocking(move || merge(&merge_reader, &merge_header, &merge_path))
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    reader.resync().staged = None;
    let _ = std::fs::remove_file(&path);
    let target = match merged {
        Ok(target) => target,
        Err(MergeError::Diverged(detail)) => {
            reader.resync().force_full = true;
            tracing::error!(%detail, "local records diverge from the leader's; asking for a full snapshot");
            return Err(Status::data_loss(format!(
                "local records diverge from the leader's ({detail}); a full snapshot is needed"
            )));
        }
        Err(MergeError::Failed(detail)) => return Err(Status::internal(detail)),
    };
    let snapshot = Snapshot {
        meta: header.meta,
        snapshot: SnapshotFile {
            path: target,
            delta_base: Some(header.base_seq),
        },
    };
    raft.install_full_snapshot(header.vote, snapshot)
        .await
        .map_err(|e| Status::unavailable(format!("raft: {e}")))
}

enum MergeError {
    Diverged(String),
    Failed(String),
}

/// Write `1..=base` from the local store (re-verifying its chain) and then
/// the delta into a complete snapshot file named after the leader's meta.
fn merge(reader: &StateMachineReader, header: &DeltaHeader, delta: &std::path::Path) -> Result<PathBuf, MergeError> {
    let failed = |e: txlog_storage::Error| MergeError::Failed(e.to_string());
    let target = reader.snapshot_dir().join(snapshot_name(&header.meta));
    let mut writer =
        SnapshotWriter::create(&target, &crate::meta::encode_snapshot_meta(&header.meta)).map_err(failed)?;
    let verdict = reader
        .store()
        .verify_chain(header.base_seq, |record| writer.append(record))
        .map_err(failed)?;
    let mut chain = match verdict {
        Ok(chain) if chain == header.base_chain => chain,
        Ok(_) => {
            return Err(MergeError::Diverged(format!(
                "the chain at seq {} changed since the probe",
                header.base_seq
            )))
        }
        Err(detail) => return Err(MergeError::Diverged(detail)),
    };
    let mut next = header.base_seq + 1;
    txlog_storage::delta_file::for_each_record(delta, |record| {
        if record.seq != next {
            return Err(txlog_storage::Error::InvalidInput(format!(
                "delta record {} where {next} was expected",
                record.seq
            )));
        }
        chain = txlog_storage::chain_next(&chain, &record);
        next += 1;
        writer.append(&record)
    })
    .map_err(failed)?;
    if next != header.last_seq + 1 {
        return Err(MergeError::Failed(format!(
            "delta ends at seq {}, expected {}",
            next - 1,
            header.last_seq
        )));
    }
    writer.finish().map_err(failed)
}
