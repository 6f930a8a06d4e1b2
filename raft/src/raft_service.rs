//! Inbound peer RPCs: the tonic `RaftService`, handing messages to openraft.
//!
//! Every message is CRC-checked and decoded before openraft sees it; a
//! message that fails is answered `INVALID_ARGUMENT` and changes nothing.
//! In a sealed cluster every entry of an AppendEntries is checked too
//! (`Keys::check_frame`: CRC, signature, tag, or a verified key event)
//! before openraft, and so the WAL, sees any of them: a forged or damaged
//! entry is refused (`PERMISSION_DENIED` or `INVALID_ARGUMENT`) with the
//! whole request, which the leader then sends again.
//! Incoming snapshots and deltas are handled by resync (`resync/receive.rs`).
//! Every error becomes a `Status` through `From<Error> for Status`.

use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

use futures::Stream;
use futures::StreamExt;

use openraft::raft::AppendEntriesRequest;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::VoteRequest;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;
use txlog_proto::raft_service_server::RaftService;
use txlog_proto::raft_service_server::RaftServiceServer;
use txlog_proto::RaftMessage;
use txlog_proto::SnapshotChunk;

use crate::batch_frame::BatchFrame;
use crate::codec;
use crate::error::codec_status;
use crate::error::Error;
use crate::error::Result;
use crate::keys::Keys;
use crate::resync;
use crate::resync::ResyncFollower;
use crate::state_machine::Raft;
use crate::state_machine::StateMachineReader;
use crate::type_config::TypeConfig;

/// Serves openraft's peer RPCs for one node.
pub struct RaftServer {
    raft: Raft,
    /// The keyring entries are checked against, in a sealed cluster.
    keys: Option<Arc<Keys>>,
    resync: ResyncFollower,
    contact: LeaderContact,
    /// Where the quorum RTTs that peers' pings report are kept.
    latency: crate::PeerLatency,
    /// Serves full copies to nodes that ask for one (`FetchSnapshot`).
    fetch: resync::FetchServer,
    /// Votes and pre-votes are refused until then (see `RaftServer::new`).
    votes_from: std::time::Instant,
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
    /// `lease` is the leader lease (`election_timeout_ms_max`). A node
    /// refuses every vote and pre-vote for that long after it starts:
    /// openraft forgets a follower's lease on restart, so a follower that
    /// acknowledged the leader just before a crash could otherwise vote for
    /// a new leader at once, while the old leader still counts that
    /// acknowledgement and serves lease reads (`log_service::linearize`).
    pub fn new(
        raft: Raft,
        reader: StateMachineReader,
        contact: LeaderContact,
        lease: std::time::Duration,
        keys: Option<Arc<Keys>>,
        latency: crate::PeerLatency,
        stats: Arc<resync::ResyncStats>,
    ) -> Self {
        RaftServer {
            fetch: resync::FetchServer::new(raft.clone(), reader.clone(), stats),
            raft,
            keys,
            resync: ResyncFollower::new(reader),
            contact,
            latency,
            votes_from: std::time::Instant::now() + lease,
        }
    }

    fn may_vote(&self) -> Result<()> {
        let now = std::time::Instant::now();
        if now < self.votes_from {
            return Err(Error::Unavailable(format!(
                "node just started: it votes in {} ms, once a leader lease has passed",
                (self.votes_from - now).as_millis()
            )));
        }
        Ok(())
    }

    pub fn into_service(self) -> RaftServiceServer<Self> {
        RaftServiceServer::new(self)
            .max_decoding_message_size(codec::PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(codec::PEER_MESSAGE_BYTES_MAX)
    }
}

/// Answer a unary call: errors become a `Status` in one place (`From<Error>
/// for Status`, in `error.rs`).
fn reply<T: Serialize>(result: Result<T>) -> std::result::Result<Response<RaftMessage>, Status> {
    match result {
        Ok(value) => Ok(Response::new(codec::encode(&value))),
        Err(err) => Err(err.into()),
    }
}

fn raft_failed(err: impl std::fmt::Display) -> Error {
    Error::Unavailable(err.to_string())
}

fn decode<T: DeserializeOwned>(request: &Request<RaftMessage>) -> Result<T> {
    codec::decode(request.get_ref())
}

/// Check every entry of `req` against the keyring, in order (a key event
/// may announce the key a later entry is sealed under). On a refusal,
/// `req` keeps only the entries before the refused one, and the refusal is
/// returned: see [`Refused`].
fn check_entries(keys: Option<&Keys>, req: &mut AppendEntriesRequest<TypeConfig>) -> Option<Refused> {
    let keys = keys?;
    // Entries that carry no frame (blank, membership) need no check; the
    // index maps a refused frame back to its entry.
    let (entry_indexes, frames): (Vec<usize>, Vec<&BatchFrame>) = req
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| match &entry.payload {
            openraft::EntryPayload::Normal(frame) => Some((i, frame)),
            _ => None,
        })
        .unzip();
    let (refused, err) = keys.check_frames(&frames).err()?;
    let i = entry_indexes[refused];
    tracing::warn!(log_id = %req.entries[i].log_id, leader = ?req.vote, %err, "refusing an entry before it reaches the WAL");
    req.entries.truncate(i);
    Some(Refused(err))
}

/// An AppendEntries with an entry that failed its check. openraft still
/// gets the request, cut before that entry, so that it judges the request
/// as it would have: a follower whose log does not reach `prev_log_id` (one
/// that needs a snapshot, and so lacks the keys announced before it) must
/// answer `Conflict`, or the leader would never learn to send the snapshot.
/// A `Conflict` or a higher vote goes back as openraft gave it; a success
/// (of the checked entries only) becomes the refusal, so the leader never
/// counts the refused entries as replicated and sends them again.
struct Refused(Error);

impl Refused {
    fn judge(
        self,
        reply: openraft::raft::StreamAppendResult<TypeConfig>,
    ) -> Result<openraft::raft::StreamAppendResult<TypeConfig>> {
        match reply {
            Ok(_) => Err(self.0),
            refused_by_openraft => Ok(refused_by_openraft),
        }
    }
}

type RpcResult = std::result::Result<Response<RaftMessage>, Status>;
type ReplyStream = Pin<Box<dyn Stream<Item = std::result::Result<RaftMessage, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = std::result::Result<SnapshotChunk, Status>> + Send>>;

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(&self, request: Request<RaftMessage>) -> RpcResult {
        reply(
            async {
                let mut req: AppendEntriesRequest<TypeConfig> = decode(&request)?;
                let refused = check_entries(self.keys.as_deref(), &mut req);
                // Counted on receipt: a busy follower may answer after the leader's
                // short heartbeat deadline (the call is then dropped), yet it has
                // heard from a live leader. A deposed leader's message is answered
                // with a higher vote and stops at once.
                self.contact.touch();
                let prev = req.prev_log_id;
                let last = req.entries.last().map(|e| e.log_id).or(prev);
                let reply = self.raft.append_entries(req).await.map_err(raft_failed)?;
                match refused {
                    None => Ok(reply),
                    Some(refused) => refused
                        .judge(reply.into_stream_result(prev, last))
                        .map(openraft::raft::AppendEntriesResponse::from),
                }
            }
            .await,
        )
    }

    type StreamAppendStream = ReplyStream;

    /// Pipelined replication: each request is handed to openraft as it
    /// arrives and answered in order once it is on disk. A message that does
    /// not decode ends the stream with `INVALID_ARGUMENT` after the replies
    /// to the requests before it; nothing after it is appended.
    async fn stream_append(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> std::result::Result<Response<ReplyStream>, Status> {
        let refused: Arc<Mutex<Option<Status>>> = Arc::default();
        // The request cut before a refused entry: its position in the
        // stream, and the refusal its reply is judged by.
        let cut: Arc<Mutex<Option<(usize, Refused)>>> = Arc::default();
        let contact = self.contact.clone();
        let keys = self.keys.clone();
        let slot = refused.clone();
        let cut_slot = cut.clone();
        // (requests forwarded, whether one was cut)
        let requests = request
            .into_inner()
            .scan((0usize, false), move |(forwarded, stopped), message| {
                if *stopped {
                    // Nothing after a refused entry reaches openraft.
                    return futures::future::ready(None);
                }
                // A message tonic could not decode is the sender's fault, as a
                // bad body is (`codec_status`).
                let decoded = match message {
                    Ok(m) => codec::decode::<AppendEntriesRequest<TypeConfig>>(&m).map_err(Status::from),
                    Err(status) => Err(codec_status(&status).unwrap_or(status)),
                };
                match decoded {
                    Ok(mut req) => {
                        if let Some(refusal) = check_entries(keys.as_deref(), &mut req) {
                            *cut_slot.lock().expect("cut slot poisoned") = Some((*forwarded, refusal));
                            *stopped = true;
                        }
                        *forwarded += 1;
                        contact.touch();
                        futures::future::ready(Some(req))
                    }
                    Err(status) => {
                        *slot.lock().expect("refusal slot poisoned") = Some(status);
                        futures::future::ready(None)
                    }
                }
            });
        let replies = self
            .raft
            .stream_append(requests)
            .enumerate()
            .map(move |(i, reply)| {
                let reply = reply.map_err(|fatal| Status::from(raft_failed(fatal)))?;
                let mut cut = cut.lock().expect("cut slot poisoned");
                if cut.as_ref().is_some_and(|(at, _)| *at == i) {
                    let (_, refusal) = cut.take().expect("checked");
                    return refusal.judge(reply).map(|r| codec::encode(&r)).map_err(Status::from);
                }
                Ok(codec::encode(&reply))
            })
            .chain(futures::stream::iter(std::iter::from_fn(move || {
                refused.lock().expect("refusal slot poisoned").take().map(Err)
            })));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> RpcResult {
        reply(
            async {
                let req: VoteRequest<TypeConfig> = decode(&request)?;
                self.may_vote()?;
                self.raft.vote(req).await.map_err(raft_failed)
            }
            .await,
        )
    }

    async fn pre_vote(&self, request: Request<RaftMessage>) -> RpcResult {
        reply(
            async {
                let req: VoteRequest<TypeConfig> = decode(&request)?;
                self.may_vote()?;
                self.raft.pre_vote(req).await.map_err(raft_failed)
            }
            .await,
        )
    }

    async fn install_snapshot(&self, request: Request<Streaming<SnapshotChunk>>) -> RpcResult {
        reply(resync::receive_full(&self.raft, &self.resync, request.into_inner()).await)
    }

    async fn transfer_leader(&self, request: Request<RaftMessage>) -> RpcResult {
        reply(
            async {
                let req: TransferLeaderRequest<TypeConfig> = decode(&request)?;
                self.raft.handle_transfer_leader(req).await.map_err(raft_failed)
            }
            .await,
        )
    }

    async fn resync_probe(&self, request: Request<RaftMessage>) -> RpcResult {
        reply(decode(&request).and_then(|req| self.resync.answer_probe(&req)))
    }

    /// A ping has no effect beyond keeping the connection warm and telling
    /// each side the other's clock (and this node the sender's quorum RTT).
    async fn ping(&self, request: Request<RaftMessage>) -> RpcResult {
        if !request.get_ref().body.is_empty() {
            let report: crate::PingReport = decode(&request).map_err(Status::from)?;
            self.latency.receive(report);
        }
        // This node's clock, so the pinger learns its offset on its own
        // first ping round (a restarted node with a clock off knows at once).
        Ok(Response::new(codec::encode(&self.latency.clock_report())))
    }

    type FetchSnapshotStream = ChunkStream;

    async fn fetch_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> std::result::Result<Response<ChunkStream>, Status> {
        let wanted: resync::FetchRequest = decode(&request).map_err(Status::from)?;
        tracing::info!(min_index = wanted.min_index, "a node asks for a full copy");
        let chunks = self.fetch.serve(wanted).await.map_err(Status::from)?;
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn install_delta(&self, request: Request<Streaming<SnapshotChunk>>) -> RpcResult {
        reply(resync::receive_delta(&self.raft, &self.resync, request.into_inner()).await)
    }
}
