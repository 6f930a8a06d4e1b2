//! The follower's side: receive a full snapshot or a delta, stage it in the
//! snapshot directory, check it, and hand a complete snapshot file to
//! openraft's `install_full_snapshot`.
//!
//! A delta is merged before it is installed: the follower writes a new
//! snapshot file from its own records `1..=base` — re-verifying its hash
//! chain as it goes — followed by the leader's records, so what openraft
//! installs is always a whole, checked snapshot, and installing it only adds
//! the records after `base`.
//!
//! Every file operation runs on a blocking thread.

use std::path::Path;
use std::path::PathBuf;

use futures::Stream;
use futures::StreamExt;
use openraft::raft::SnapshotResponse;
use tonic::Status;
use txlog_proto::SnapshotChunk;
use txlog_storage::delta_file::DeltaWriter;
use txlog_storage::snapshot_file;
use txlog_storage::snapshot_file::SnapshotWriter;
use txlog_storage::IncomingSnapshot;

use super::follower::ResyncFollower;
use super::follower::Staged;
use super::messages::DeltaHeader;
use super::messages::FullHeader;
use super::messages::SNAPSHOT_BYTES_MAX;
use crate::codec;
use crate::error::Error;
use crate::error::Result;
use crate::snapshot::snapshot_name;
use crate::snapshot::Snapshot;
use crate::snapshot::SnapshotFile;
use crate::state_machine::Raft;
use crate::state_machine::StateMachineReader;
use crate::type_config::TypeConfig;

type Response = SnapshotResponse<TypeConfig>;

/// Run blocking file work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

/// The next chunk of a stream, its checksum checked; `None` at the end.
async fn next_chunk<S>(chunks: &mut S) -> Result<Option<SnapshotChunk>>
where
    S: Stream<Item = std::result::Result<SnapshotChunk, Status>> + Unpin,
{
    match chunks.next().await {
        None => Ok(None),
        Some(chunk) => {
            let chunk = chunk?;
            codec::check_chunk(&chunk)?;
            Ok(Some(chunk))
        }
    }
}

/// Receive a full snapshot into a staging file, verify it and install it.
pub(crate) async fn receive_full<S>(raft: &Raft, follower: &ResyncFollower, mut chunks: S) -> Result<Response>
where
    S: Stream<Item = std::result::Result<SnapshotChunk, Status>> + Unpin,
{
    let dir = follower.reader().snapshot_dir().clone();
    let incoming = blocking(move || Ok(dir.incoming()?)).await?;
    let staging = incoming.path().to_path_buf();
    let received = stage_full(&mut chunks, incoming).await;
    let outcome = match received {
        Ok((vote, meta)) => {
            let snapshot = Snapshot {
                meta,
                snapshot: SnapshotFile {
                    path: staging.clone(),
                    delta_base: None,
                },
            };
            raft.install_full_snapshot(vote, snapshot)
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))
        }
        Err(err) => Err(err),
    };
    // Installing copied the file under its own name; the staged one goes either way.
    let dir = follower.reader().snapshot_dir().clone();
    blocking(move || {
        dir.remove(&staging);
        Ok(())
    })
    .await?;
    outcome
}

/// Write the chunks to `incoming`, checking order, CRCs and size; verify the file.
pub(super) async fn stage_full<S>(chunks: &mut S, mut incoming: IncomingSnapshot) -> Result<FullHeader>
where
    S: Stream<Item = std::result::Result<SnapshotChunk, Status>> + Unpin,
{
    let mut header: Option<FullHeader> = None;
    let mut done = false;
    while let Some(chunk) = next_chunk(chunks).await? {
        if chunk.offset != incoming.bytes() {
            return Err(Error::InvalidInput(format!(
                "snapshot chunk offset {} where {} was expected",
                chunk.offset,
                incoming.bytes()
            )));
        }
        if header.is_none() {
            if chunk.header.is_empty() {
                return Err(Error::InvalidInput("first snapshot chunk has no header".into()));
            }
            header = Some(postcard::from_bytes(&chunk.header).map_err(|e| Error::decode("snapshot header", e))?);
        }
        if incoming.bytes() + chunk.data.len() as u64 > SNAPSHOT_BYTES_MAX {
            return Err(Error::TooLarge("snapshot larger than the limit".into()));
        }
        let (data, done_chunk) = (chunk.data, chunk.done);
        incoming = blocking(move || {
            incoming.append(&data)?;
            Ok(incoming)
        })
        .await?;
        if done_chunk {
            done = true;
            break;
        }
    }
    if !done {
        return Err(Error::Aborted("snapshot stream ended before its last chunk".into()));
    }
    let (vote, meta) = header.ok_or_else(|| Error::InvalidInput("empty snapshot stream".into()))?;
    let bytes = incoming.bytes();
    let info = blocking(move || {
        let path = incoming.finish();
        snapshot_file::verify(&path).map_err(|e| Error::Corruption(format!("received snapshot is damaged: {e}")))
    })
    .await?;
    let file_meta = crate::meta::decode_snapshot_meta(&info.meta).map_err(|e| Error::Corruption(e.to_string()))?;
    if file_meta != meta {
        return Err(Error::InvalidInput(
            "snapshot header does not match the file's metadata".into(),
        ));
    }
    tracing::info!(bytes, records = info.record_count, "snapshot received");
    Ok((vote, meta))
}

/// Receive a delta stream, stage it, merge it with the local prefix into a
/// snapshot file and install that through openraft.
pub(crate) async fn receive_delta<S>(raft: &Raft, follower: &ResyncFollower, mut chunks: S) -> Result<Response>
where
    S: Stream<Item = std::result::Result<SnapshotChunk, Status>> + Unpin,
{
    let first = next_chunk(&mut chunks)
        .await?
        .ok_or_else(|| Error::InvalidInput("empty delta stream".into()))?;
    let header = delta_header(&first)?;
    let name = snapshot_name(&header.meta);
    let path = follower.reader().snapshot_dir().delta_path(&name, header.base_seq);
    let writer = open_staging(follower, &header, &name, &path).await?;
    let (writer, received) = stage_delta(follower, writer, first, &mut chunks).await?;
    if writer.last_seq() != header.last_seq {
        return Err(Error::InvalidInput(format!(
            "delta ended at seq {}, header promised {}",
            writer.last_seq(),
            header.last_seq
        )));
    }
    blocking(move || {
        writer.sync();
        Ok(())
    })
    .await?;
    tracing::info!(
        base = header.base_seq,
        last_seq = header.last_seq,
        bytes = received,
        "delta received; merging with the local records"
    );
    let target = merge_staged(follower, &header, path).await?;
    let snapshot = Snapshot {
        meta: header.meta,
        snapshot: SnapshotFile {
            path: target,
            delta_base: Some(header.base_seq),
        },
    };
    raft.install_full_snapshot(header.vote, snapshot)
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))
}

/// Decode and check the header carried by the first chunk of a delta.
fn delta_header(first: &SnapshotChunk) -> Result<DeltaHeader> {
    if first.header.is_empty() {
        return Err(Error::InvalidInput("first delta chunk has no header".into()));
    }
    let header: DeltaHeader = postcard::from_bytes(&first.header).map_err(|e| Error::decode("delta header", e))?;
    if header.first_seq <= header.base_seq || header.last_seq < header.base_seq {
        return Err(Error::InvalidInput("delta header sequences are inconsistent".into()));
    }
    Ok(header)
}

/// Open the staging file at `path` for this stream: resume the staged delta
/// when the stream continues it, otherwise drop any older one and start over.
async fn open_staging(follower: &ResyncFollower, header: &DeltaHeader, name: &str, path: &Path) -> Result<DeltaWriter> {
    let stale = {
        let mut state = follower.state();
        let resumable = state
            .staged
            .as_ref()
            .is_some_and(|s| s.snapshot == name && s.base == header.base_seq && s.last_seq + 1 == header.first_seq);
        if header.first_seq != header.base_seq + 1 && !resumable {
            return Err(Error::FailedPrecondition(
                "the staged delta does not match the resumed stream".into(),
            ));
        }
        let stale: Vec<PathBuf> = if resumable {
            Vec::new()
        } else {
            let dir = follower.reader().snapshot_dir();
            let old = state.staged.take().map(|old| dir.delta_path(&old.snapshot, old.base));
            old.into_iter().chain([path.to_path_buf()]).collect()
        };
        state.staged = Some(Staged {
            snapshot: name.to_string(),
            base: header.base_seq,
            last_seq: header.first_seq - 1,
        });
        stale
    };
    let dir = follower.reader().snapshot_dir().clone();
    let (path, base) = (path.to_path_buf(), header.base_seq);
    let writer = blocking(move || {
        for old in &stale {
            dir.remove(old);
        }
        Ok(DeltaWriter::open(&path, base)?)
    })
    .await?;
    if writer.last_seq() + 1 != header.first_seq {
        follower.state().staged = None;
        return Err(Error::FailedPrecondition(format!(
            "staged delta ends at seq {}, stream starts at {}",
            writer.last_seq(),
            header.first_seq
        )));
    }
    Ok(writer)
}

/// Append the stream's chunks (starting with `first`) to the staging file
/// until the chunk marked done; returns the writer and the bytes received.
/// A stream cut short keeps what was staged, durably, for the next attempt.
async fn stage_delta<S>(
    follower: &ResyncFollower,
    mut writer: DeltaWriter,
    first: SnapshotChunk,
    chunks: &mut S,
) -> Result<(DeltaWriter, u64)>
where
    S: Stream<Item = std::result::Result<SnapshotChunk, Status>> + Unpin,
{
    let mut chunk = Some(first);
    let mut received = 0u64;
    while let Some(current) = chunk.take() {
        if current.offset != writer.last_seq() + 1 && !current.data.is_empty() {
            return Err(Error::InvalidInput(format!(
                "delta chunk starts at seq {} where {} was expected",
                current.offset,
                writer.last_seq() + 1
            )));
        }
        received += current.data.len() as u64;
        let done = current.done;
        writer = blocking(move || {
            writer
                .append_chunk(&current.data)
                .map_err(|e| Error::InvalidInput(format!("delta chunk: {e}")))?;
            Ok(writer)
        })
        .await?;
        if let Some(staged) = follower.state().staged.as_mut() {
            staged.last_seq = writer.last_seq();
        }
        if done {
            return Ok((writer, received));
        }
        chunk = next_chunk(chunks).await?;
    }
    let last_seq = writer.last_seq();
    blocking(move || {
        writer.sync();
        Ok(())
    })
    .await?;
    Err(Error::Aborted(format!(
        "delta stream ended at seq {last_seq} before its last chunk; it will resume"
    )))
}

/// Merge the staged delta at `path` with the local records; the staging file
/// is removed whatever the outcome. A divergence is remembered, so this
/// follower asks for a full snapshot next.
async fn merge_staged(follower: &ResyncFollower, header: &DeltaHeader, path: PathBuf) -> Result<PathBuf> {
    let reader = follower.reader().clone();
    let merge_header = header.clone();
    let merged = blocking(move || {
        let merged = merge(&reader, &merge_header, &path);
        reader.snapshot_dir().remove(&path);
        Ok(merged)
    })
    .await?;
    follower.state().staged = None;
    match merged {
        Err(Error::Diverged(detail)) => {
            follower.mark_diverged();
            tracing::error!(%detail, "local records diverge from the leader's; asking for a full snapshot");
            Err(Error::Diverged(format!(
                "local records diverge from the leader's ({detail}); a full snapshot is needed"
            )))
        }
        Err(Error::Storage(err)) => Err(Error::Internal(err.to_string())),
        other => other,
    }
}

/// Write `1..=base` from the local store (re-verifying its chain) and then
/// the delta into a complete snapshot file named after the leader's meta.
fn merge(reader: &StateMachineReader, header: &DeltaHeader, delta: &Path) -> Result<PathBuf> {
    let name = snapshot_name(&header.meta);
    if let Some(linked) = reader.snapshot_dir().linked(&name) {
        // This node built a snapshot of the same log id itself. Seen after
        // a whole cluster restarted on WALs purged to that id: the restored
        // leader can only send a snapshot, and a merge failing with EISDIR
        // kept every follower at match 0 for good.
        tracing::info!(snapshot = %linked.display(), "the leader's snapshot is one this node holds already");
        return Ok(linked);
    }
    let target = reader.snapshot_dir().snapshot_path(&name);
    let mut writer = SnapshotWriter::create(&target, &crate::meta::encode_snapshot_meta(&header.meta))?;
    let verdict = reader
        .store()
        .verify_chain(header.base_seq, |record| writer.append(record))?;
    let mut chain = match verdict {
        Ok(chain) if chain == header.base_chain => chain,
        Ok(_) => {
            return Err(Error::Diverged(format!(
                "the chain at seq {} changed since the probe",
                header.base_seq
            )))
        }
        Err(detail) => return Err(Error::Diverged(detail)),
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
    })?;
    if next != header.last_seq + 1 {
        return Err(Error::Internal(format!(
            "delta ends at seq {}, expected {}",
            next - 1,
            header.last_seq
        )));
    }
    Ok(writer.finish()?)
}
