//! Outbound peer network: openraft's `RaftNetworkV2` over tonic.
//!
//! Two lazily-connected tonic channels per peer address are cached: one
//! (*data*) carries entries and snapshots, the other (*control*) heartbeats,
//! votes and leader transfers, so that a heartbeat never waits behind
//! megabytes of entries in one TCP connection, one h2 flow-control window or
//! one connection task. The control lane's connection tasks run where
//! openraft runs (a runtime of its own, see `txlog::raft_runtime`); the data
//! lane's, which encode and copy the entries of a replication stream (a
//! lone request with entries is encoded in openraft's task), on the runtime
//! given by [`Network::with_data_runtime`]. Every unary RPC runs under the deadline
//! openraft passes in `RPCOption`, or [`Network::with_deadline_min`]'s
//! floor when that is longer: openraft gives a heartbeat the heartbeat
//! interval and a vote the shortest election timeout, less than a few
//! round trips between regions.
//!
//! [`Network::ping`] keeps a peer's two connections open (the node pings
//! every other member each second), so a vote after a leader dies, and the
//! new leader's first replication, cost one round trip, not a TCP, TLS and
//! h2 handshake first.
//!
//! Replication is pipelined: openraft's `stream_append` runs over one
//! bidirectional `StreamAppend` call per replication session, so the leader
//! sends the next batch while the follower is still writing the previous
//! one. Heartbeats (one request each) go as unary `AppendEntries`.
//!
//! On a secured cluster every peer connection is mutual TLS under the
//! node's certificate ([`Network::with_tls`]); when the certificates in
//! force change, the cache is emptied and the next call dials with the new
//! ones (calls in flight finish on the old connections).
//!
//! Snapshots go through resync (`resync/send.rs`): a probe, then either only
//! the records the follower is missing (delta) or the whole snapshot file
//! (full), both as bounded streams of CRC'd chunks. Bytes sent are counted
//! by path.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use futures::stream::AbortHandle;
use futures::Stream;
use futures::StreamExt;
use openraft::base::BoxFuture;
use openraft::base::BoxStream;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Timeout;
use openraft::network::RPCOption;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::OptionalSend;
use openraft::RPCTypes;
use openraft::RaftNetworkV2;
use tonic::transport::Channel;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Endpoint;
use txlog_proto::raft_service_client::RaftServiceClient;

use crate::codec;
use crate::error::Error;
use crate::resync;
use crate::resync::ResyncStats;
use crate::snapshot::Snapshot;
use crate::snapshot::SnapshotFile;
use crate::state_machine::StateMachineReader;
use crate::type_config::NodeInfo;
use crate::type_config::TypeConfig;
use crate::type_config::Vote;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Deadline for an AppendEntries that carries entries (see `append_entries`).
const APPEND_ENTRIES_TTL_MIN: Duration = Duration::from_secs(2);
/// Snapshot transfers get at least this long, whatever openraft's deadline.
const SNAPSHOT_TTL_MIN: Duration = Duration::from_secs(120);

/// Creates per-peer clients; holds the channel cache.
#[derive(Clone)]
pub struct Network {
    channels: Arc<Mutex<Channels>>,
    /// Where the data lane's connection tasks run (`None`: the caller's runtime).
    data_runtime: Option<tokio::runtime::Handle>,
    reader: StateMachineReader,
    stats: Arc<ResyncStats>,
    /// Local address outgoing peer connections are bound to (see `with_source_address`).
    source_address: Option<IpAddr>,
    /// No unary RPC gets a shorter deadline than this (see `with_deadline_min`).
    deadline_min: Duration,
}

impl Network {
    /// `reader` gives the leader's own hash chain for delta resync; `stats`
    /// counts snapshot bytes sent.
    pub fn new(reader: StateMachineReader, stats: Arc<ResyncStats>) -> Self {
        Network {
            channels: Arc::new(Mutex::new(Channels {
                cached: HashMap::new(),
                tls: tokio::sync::watch::Sender::new(None).subscribe(),
            })),
            data_runtime: None,
            reader,
            stats,
            source_address: None,
            deadline_min: Duration::ZERO,
        }
    }

    /// Give every unary RPC (heartbeats, votes) at least `deadline` to be
    /// answered, whatever openraft asks (`Timing::rpc_deadline_ms_min`).
    pub fn with_deadline_min(mut self, deadline: Duration) -> Self {
        self.deadline_min = deadline;
        self
    }

    /// Ping the peer at `address` on both its connections (control and
    /// data), connecting either if it is not: a node that becomes leader
    /// replicates at once, without a handshake first. The control
    /// connection's round trip and what the peer said of itself, or why
    /// there was none within `timeout`.
    pub async fn ping(
        &self,
        address: &str,
        report: &crate::PingReport,
        timeout: Duration,
    ) -> Result<(Duration, Option<crate::PingReport>), Error> {
        let message = crate::codec::encode(report);
        let ping = |lane| {
            let message = message.clone();
            async move {
                let mut client = self.client(address, lane)?;
                let started = std::time::Instant::now();
                match tokio::time::timeout(timeout, client.ping(message)).await {
                    Ok(Ok(answer)) => Ok((started.elapsed(), answer.into_inner())),
                    Ok(Err(status)) => Err(Error::Peer(status)),
                    Err(_) => Err(Error::Unavailable(format!("no answer to a ping within {timeout:?}"))),
                }
            }
        };
        let (control, data) = tokio::join!(ping(Lane::Control), ping(Lane::Data));
        data?;
        let (rtt, answer) = control?;
        // The answer carries the peer's wall clock (empty from older nodes).
        let peer = (!answer.body.is_empty())
            .then(|| crate::codec::decode::<crate::PingReport>(&answer).ok())
            .flatten();
        Ok((rtt, peer))
    }

    /// Ask the node at `address` for a full copy covering log index
    /// `min_index` (`FetchSnapshot`); it is staged in this node's snapshot
    /// directory and verified. Returns its metadata and the staged file.
    pub async fn fetch_snapshot(
        &self,
        address: &str,
        min_index: u64,
    ) -> Result<(crate::type_config::SnapshotMeta, std::path::PathBuf), Error> {
        let client = self.client(address, Lane::Data)?;
        crate::resync::fetch_full(client, &self.reader, min_index).await
    }

    /// Bind outgoing peer connections to `address` (the node's listen IP), so
    /// peers — and firewall rules — see this node's traffic come from the
    /// address it listens on, also when several nodes share a host.
    pub fn with_source_address(mut self, address: Option<IpAddr>) -> Self {
        self.source_address = address;
        self
    }

    /// Dial peers with mutual TLS under the client settings in `tls` (the
    /// node certificate in force; `None`: plain connections).
    pub fn with_tls(self, tls: tokio::sync::watch::Receiver<Option<ClientTlsConfig>>) -> Self {
        self.channels.lock().expect("channel cache poisoned").tls = tls;
        self
    }

    /// Run the data lane's connection tasks (request encoding, h2 framing of
    /// entries and snapshot chunks) on `runtime` rather than openraft's.
    pub fn with_data_runtime(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.data_runtime = Some(runtime);
        self
    }

    fn channel(&self, address: &str, lane: Lane) -> Result<Channel, Error> {
        let mut channels = self.channels.lock().expect("channel cache poisoned");
        let channels = &mut *channels;
        if channels.tls.has_changed().unwrap_or(false) {
            channels.cached.clear();
            channels.tls.mark_unchanged();
        }
        let key = (address.to_string(), lane);
        if let Some(channel) = channels.cached.get(&key) {
            return Ok(channel.clone());
        }
        let tls = channels.tls.borrow().clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| Error::InvalidInput(format!("bad peer address {address:?}: {e}")))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::InvalidInput(format!("TLS to peer {address:?}: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .local_address(self.source_address)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        // tonic spawns the channel's tasks on the runtime current here.
        let _entered = match (lane, &self.data_runtime) {
            (Lane::Data, Some(runtime)) => Some(runtime.enter()),
            _ => None,
        };
        let channel = endpoint.connect_lazy();
        channels.cached.insert(key, channel.clone());
        Ok(channel)
    }

    fn client(&self, address: &str, lane: Lane) -> Result<RaftServiceClient<Channel>, Error> {
        self.channel(address, lane).map(|channel| {
            RaftServiceClient::new(channel)
                .max_decoding_message_size(codec::PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(codec::PEER_MESSAGE_BYTES_MAX)
        })
    }
}

/// The channel cache, and the TLS settings it was dialled with.
struct Channels {
    cached: HashMap<(String, Lane), Channel>,
    tls: tokio::sync::watch::Receiver<Option<ClientTlsConfig>>,
}

/// Which of a peer's two connections a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Lane {
    /// Heartbeats, votes, leader transfers: small and latency-bound.
    Control,
    /// Entries and snapshots.
    Data,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> PeerClient {
        PeerClient {
            target,
            control: self.client(&node.address, Lane::Control),
            data: self.client(&node.address, Lane::Data),
            deadline_min: self.deadline_min,
            reader: self.reader.clone(),
            stats: self.stats.clone(),
        }
    }
}

/// The client side of one replication target.
pub struct PeerClient {
    target: u64,
    /// Each lane's client, or the error when the peer's address is unusable
    /// (reported on every call).
    control: Result<RaftServiceClient<Channel>, Error>,
    data: Result<RaftServiceClient<Channel>, Error>,
    deadline_min: Duration,
    reader: StateMachineReader,
    stats: Arc<ResyncStats>,
}

/// Count a peer's refusal of entries as damaged on the way (see
/// `ResyncStats::appends_refused`): `INVALID_ARGUMENT`, but not a message
/// version the peer does not speak (a mixed-version cluster), which no
/// resend mends.
fn count_damage_refusal(stats: &ResyncStats, status: &tonic::Status) {
    if status.code() == tonic::Code::InvalidArgument && !status.message().contains("unsupported version") {
        stats.appends_refused.fetch_add(1, Ordering::Relaxed);
    }
}

impl PeerClient {
    fn client(&self, lane: Lane) -> Result<RaftServiceClient<Channel>, Error> {
        let client = match lane {
            Lane::Control => &self.control,
            Lane::Data => &self.data,
        };
        match client {
            Ok(client) => Ok(client.clone()),
            Err(e) => Err(Error::Unavailable(format!("peer {}: {e}", self.target))),
        }
    }

    /// `count_damage`: count a refusal as damage (an append that carried entries).
    #[allow(clippy::too_many_arguments)]
    async fn unary<Req, Resp, F, Fut>(
        &self,
        action: RPCTypes,
        count_damage: bool,
        lane: Lane,
        req: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, txlog_proto::RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<txlog_proto::RaftMessage>, tonic::Status>>,
    {
        let client = self.client(lane).map_err(|e| e.to_rpc())?;
        let ttl = option.hard_ttl().max(self.deadline_min);
        let message = codec::encode(req);
        match tokio::time::timeout(ttl, call(client, message)).await {
            Ok(Ok(response)) => codec::decode(response.get_ref()).map_err(|e| e.to_rpc()),
            Ok(Err(status)) => {
                if count_damage {
                    count_damage_refusal(&self.stats, &status);
                }
                Err(Error::Peer(status).to_rpc())
            }
            Err(_) => Err(RPCError::Timeout(timeout_error(action, self.target, ttl))),
        }
    }
}

/// Ends a replication stream's request side when its reply side is done
/// with (ended, failed, or dropped by openraft). hyper keeps polling a
/// request stream until the server resets it, and openraft's request stream
/// holds the session state the next session needs: left running, it would
/// keep taking entries and sending them where no one reads the replies.
struct StopRequests(AbortHandle);

impl Drop for StopRequests {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Replies a replication stream owes, and since when it has owed one
/// without hearing any (from the request that made it owe, or the last
/// reply).
struct Owed(Mutex<(u64, Instant)>);

impl Default for Owed {
    fn default() -> Self {
        Owed(Mutex::new((0, Instant::now())))
    }
}

impl Owed {
    fn sent(&self) {
        let mut owed = self.0.lock().expect("owed lock poisoned");
        if owed.0 == 0 {
            owed.1 = Instant::now();
        }
        owed.0 += 1;
    }

    fn replied(&self) {
        let mut owed = self.0.lock().expect("owed lock poisoned");
        owed.0 = owed.0.saturating_sub(1);
        owed.1 = Instant::now();
    }

    /// How long a reply has been owed without one arriving; `None` when
    /// none is owed.
    fn waited(&self) -> Option<Duration> {
        let owed = self.0.lock().expect("owed lock poisoned");
        (owed.0 > 0).then(|| owed.1.elapsed())
    }

    /// A reply is owed and none came for `ttl`.
    fn overdue(&self, ttl: Duration) -> bool {
        self.waited().is_some_and(|waited| waited >= ttl)
    }

    /// How long to wait for the next reply before checking [`Owed::overdue`].
    fn wait(&self, ttl: Duration) -> Duration {
        match self.waited() {
            None => ttl,
            Some(waited) => ttl.saturating_sub(waited).max(Duration::from_millis(1)),
        }
    }
}

fn timeout_error(action: RPCTypes, target: u64, ttl: Duration) -> Timeout<TypeConfig> {
    Timeout {
        action,
        id: 0,
        target,
        timeout: ttl,
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft gives every AppendEntries the heartbeat interval (10 ms on
        // LAN) as its deadline. That suits heartbeats, but a batch of entries
        // on a busy follower (fsync, apply) can take longer, and timing it out
        // only makes the leader resend it: the follower would never catch up.
        let (lane, option) = if rpc.entries.is_empty() {
            (Lane::Control, option)
        } else {
            (
                Lane::Data,
                RPCOption::new(option.hard_ttl().max(APPEND_ENTRIES_TTL_MIN)),
            )
        };
        let count_damage = !rpc.entries.is_empty();
        self.unary(
            RPCTypes::AppendEntries,
            count_damage,
            lane,
            &rpc,
            &option,
            |mut c, m| async move { c.append_entries(m).await },
        )
        .await
    }

    /// Pipelined replication over one `StreamAppend` call: requests go out as
    /// openraft produces them, without waiting for the previous reply, and
    /// replies come back in order. A one-request stream (a heartbeat) goes
    /// as a unary `AppendEntries` instead, which costs less than opening a
    /// stream.
    ///
    /// A reply is owed for every request sent; when one is owed and none
    /// arrives within `APPEND_ENTRIES_TTL_MIN` of the request or of the last
    /// reply, the stream fails with a timeout (a stalled or cut-off
    /// follower), and openraft opens a new one. Once the replies are done
    /// with, the request side stops too (see `StopRequests`).
    ///
    /// The one-request case relies on openraft's heartbeat worker passing
    /// `stream::once`, whose size hint is `(0, Some(0))` once its item is
    /// taken; a replication session's stream is open-ended (`(0, None)`).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, _>);
            };
            if input.size_hint().1 == Some(0) {
                let prev = first.prev_log_id;
                let last = first.entries.last().map(|entry| entry.log_id).or(prev);
                let reply = self.append_entries(first, option).await?;
                let result = reply.into_stream_result(prev, last);
                return Ok(Box::pin(futures::stream::once(async move { Ok(result) })) as BoxStream<'s, _>);
            }

            let mut client = self.client(Lane::Data).map_err(|e| e.to_rpc())?;
            let owed = Arc::new(Owed::default());
            let sent = owed.clone();
            let requests = futures::stream::once(async move { first })
                .chain(input)
                .map(move |req| {
                    sent.sent();
                    codec::encode(&req)
                });
            let (requests, abort) = futures::stream::abortable(requests);
            let stop = StopRequests(abort);
            let ttl = option.hard_ttl().max(APPEND_ENTRIES_TTL_MIN);
            let target = self.target;
            let replies = match tokio::time::timeout(ttl, client.stream_append(requests)).await {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => {
                    count_damage_refusal(&self.stats, &status);
                    return Err(Error::Peer(status).to_rpc());
                }
                Err(_) => return Err(RPCError::Timeout(timeout_error(RPCTypes::AppendEntries, target, ttl))),
            };
            let stats = self.stats.clone();
            let replies = futures::stream::unfold(Some((replies, stop)), move |state| {
                let owed = owed.clone();
                let stats = stats.clone();
                async move {
                    let (mut replies, stop) = state?;
                    let item = loop {
                        match tokio::time::timeout(owed.wait(ttl), replies.message()).await {
                            Ok(Ok(Some(message))) => {
                                owed.replied();
                                break codec::decode::<StreamAppendResult<TypeConfig>>(&message)
                                    .map_err(|e| e.to_rpc());
                            }
                            Ok(Ok(None)) => return None,
                            Ok(Err(status)) => {
                                count_damage_refusal(&stats, &status);
                                break Err(Error::Peer(status).to_rpc());
                            }
                            Err(_) if owed.overdue(ttl) => {
                                break Err(RPCError::Timeout(timeout_error(RPCTypes::AppendEntries, target, ttl)));
                            }
                            Err(_) => continue,
                        }
                    };
                    let more = matches!(item, Ok(Ok(_)));
                    Some((item, more.then_some((replies, stop))))
                }
            });
            Ok(Box::pin(replies) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(
            RPCTypes::Vote,
            false,
            Lane::Control,
            &rpc,
            &option,
            |mut c, m| async move { c.vote(m).await },
        )
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(
            RPCTypes::Vote,
            false,
            Lane::Control,
            &rpc,
            &option,
            |mut c, m| async move { c.pre_vote(m).await },
        )
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(
            RPCTypes::TransferLeader,
            false,
            Lane::Control,
            &req,
            &option,
            |mut c, m| async move { c.transfer_leader(m).await },
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let ttl = option.hard_ttl().max(SNAPSHOT_TTL_MIN);
        let work = async {
            let client = self.client(Lane::Data).map_err(|e| e.to_streaming())?;
            let sender = resync::Sender {
                target: self.target,
                client,
                reader: &self.reader,
                stats: self.stats.clone(),
            };
            sender.send(&vote, &snapshot).await
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            outcome = tokio::time::timeout(ttl, work) => match outcome {
                Err(_) => Err(StreamingError::Timeout(timeout_error(RPCTypes::InstallSnapshot, self.target, ttl))),
                Ok(result) => result,
            }
        }
    }
}
