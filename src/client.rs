//! The txlog client library, used by the CLI, the bench and the tests.
//!
//! A [`Client`] knows a list of node addresses. Calls that need the leader go
//! to the last leader seen; an `UNAVAILABLE` answer carrying the leader's
//! address (metadata `txlog-leader`) redirects at once — also to a leader
//! that is not in the list, whose channel is then cached like the others.
//! Any other transient failure, including one from a hinted leader, moves to
//! the next listed node after a bounded, growing backoff. Every unary call
//! has a deadline and every retry loop a maximum.
//!
//! Retrying an append is safe: records carry txids, and a txid that already
//! committed returns its original sequence instead of writing again.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tonic::Code;
use tonic::Status;
use txlog_proto::admin_service_client::AdminServiceClient;
use txlog_proto::log_service_client::LogServiceClient;
use txlog_proto::AppendRequest;
use txlog_proto::AppendResult;
use txlog_proto::CommittedRecord;
use txlog_proto::CompactRequest;
use txlog_proto::CompactResponse;
use txlog_proto::JoinProgress;
use txlog_proto::JoinRequest;
use txlog_proto::LookupRequest;
use txlog_proto::MembershipResponse;
use txlog_proto::NodeStatus;
use txlog_proto::ReadRequest;
use txlog_proto::ReadResponse;
use txlog_proto::Record;
use txlog_proto::RemoveRequest;
use txlog_proto::SnapshotRequest;
use txlog_proto::SnapshotResponse;
use txlog_proto::StatusRequest;
use txlog_proto::SubscribeRequest;
use txlog_proto::TransferLeaderRequest;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad cluster address list: {0}")]
    BadCluster(String),
    /// The server answered with a non-retryable status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Status),
    /// Every attempt failed with a retryable error.
    #[error("gave up after {attempts} attempts; last error: {}: {}", last.code(), last.message())]
    Exhausted { attempts: u32, last: Status },
}

impl ClientError {
    pub fn code(&self) -> Code {
        match self {
            ClientError::BadCluster(_) => Code::InvalidArgument,
            ClientError::Status(s) => s.code(),
            ClientError::Exhausted { last, .. } => last.code(),
        }
    }
}

/// Retry and deadline settings.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    pub rpc_timeout: Duration,
    pub attempts_max: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            rpc_timeout: Duration::from_secs(5),
            attempts_max: 40,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
        }
    }
}

/// Redirects one call follows at once; further hints wait the backoff first,
/// so leaders that name each other (stale views during an election) cannot
/// spin a call through its attempts without pausing.
pub const LEADER_REDIRECTS_MAX: u32 = 4;

struct State {
    /// Index into `endpoints` of the node to try first.
    preferred: usize,
    /// A leader named by a `txlog-leader` hint that is not in `endpoints`;
    /// tried before `preferred` until it fails. Its channel is kept here, so
    /// at most one such channel exists at a time.
    hinted: Option<(String, Channel)>,
}

/// A connection to a txlog cluster.
#[derive(Clone)]
pub struct Client {
    endpoints: Arc<Vec<String>>,
    channels: Arc<Mutex<Vec<(String, Channel)>>>,
    state: Arc<Mutex<State>>,
    options: ClientOptions,
}

/// Normalise one address: strip `http://`, require `host:port`.
pub fn normalize_address(address: &str) -> Result<String, ClientError> {
    let trimmed = address.trim();
    let bare = trimmed.strip_prefix("http://").unwrap_or(trimmed).trim_end_matches('/');
    match bare.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(bare.to_string()),
        _ => Err(ClientError::BadCluster(format!("{address:?} is not HOST:PORT"))),
    }
}

/// `RESOURCE_EXHAUSTED` is not here: txlog answers it only for a message
/// over the size limit, and sending it again cannot help.
fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted
    )
}

fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(crate::LEADER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string())
}

impl Client {
    /// `cluster` is a comma-separated list of `HOST:PORT`, `http://` optional.
    pub fn new(cluster: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let endpoints = cluster
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(normalize_address)
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(ClientError::BadCluster("no addresses given".into()));
        }
        Ok(Client {
            endpoints: Arc::new(endpoints),
            channels: Arc::new(Mutex::new(Vec::new())),
            state: Arc::new(Mutex::new(State {
                preferred: 0,
                hinted: None,
            })),
            options,
        })
    }

    pub fn connect(cluster: &str) -> Result<Client, ClientError> {
        Self::new(cluster, ClientOptions::default())
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        let mut channels = self.channels.lock().expect("client lock poisoned");
        if let Some((_, c)) = channels.iter().find(|(a, _)| a == address) {
            return Ok(c.clone());
        }
        let channel = self.new_channel(address)?;
        channels.push((address.to_string(), channel.clone()));
        Ok(channel)
    }

    fn new_channel(&self, address: &str) -> Result<Channel, ClientError> {
        Ok(Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| ClientError::BadCluster(format!("{address}: {e}")))?
            .connect_timeout(self.options.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy())
    }

    fn log_client(&self, address: &str) -> Result<LogServiceClient<Channel>, ClientError> {
        Ok(log_service_client(self.channel(address)?))
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.options.rpc_timeout);
        request
    }

    /// Where a leader-bound call goes next: the hinted leader if there is
    /// one, else the preferred listed node (`Some(index)`).
    fn leader_target(&self) -> (String, Option<usize>, Option<Channel>) {
        let state = self.state.lock().expect("client lock poisoned");
        match &state.hinted {
            Some((address, channel)) => (address.clone(), None, Some(channel.clone())),
            None => {
                let index = state.preferred % self.endpoints.len();
                (self.endpoints[index].clone(), Some(index), None)
            }
        }
    }

    /// Make `leader` (a normalised hint) the next target; a listed node
    /// becomes `preferred`, any other address the cached hinted leader.
    /// False if no channel can be made for it.
    fn follow_hint(&self, leader: &str) -> bool {
        let mut state = self.state.lock().expect("client lock poisoned");
        if let Some(index) = self.endpoints.iter().position(|e| e == leader) {
            state.preferred = index;
            state.hinted = None;
        } else if state.hinted.as_ref().is_none_or(|(a, _)| a != leader) {
            match self.new_channel(leader) {
                Ok(channel) => state.hinted = Some((leader.to_string(), channel)),
                Err(_) => return false,
            }
        }
        true
    }

    /// After a transient failure without a usable hint: drop a failed hinted
    /// leader (back to the listed nodes), or move on from a listed one.
    fn move_on(&self, failed: Option<usize>) {
        let mut state = self.state.lock().expect("client lock poisoned");
        match failed {
            None => state.hinted = None,
            Some(index) => state.preferred = (index + 1) % self.endpoints.len(),
        }
    }

    /// Run `call` against the leader, following redirects and retrying with backoff.
    async fn with_leader<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(LogServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut backoff = self.options.backoff_initial;
        let mut last = Status::unavailable("no attempt made");
        let mut redirects = 0;
        for attempt in 1..=self.options.attempts_max {
            let (address, index, hinted) = self.leader_target();
            let client = match hinted {
                Some(channel) => log_service_client(channel),
                None => self.log_client(&address)?,
            };
            let status = match call(client).await {
                Ok(value) => return Ok(value),
                Err(status) if !is_retryable(&status) => return Err(ClientError::Status(status)),
                Err(status) => status,
            };
            let hint = leader_hint(&status)
                .and_then(|h| normalize_address(&h).ok())
                .filter(|h| *h != address);
            tracing::debug!(attempt, %address, code = ?status.code(), msg = status.message(), hint = ?hint, "retrying");
            last = status;
            if hint.is_some_and(|leader| self.follow_hint(&leader)) {
                redirects += 1;
                if redirects <= LEADER_REDIRECTS_MAX {
                    continue;
                }
            } else {
                self.move_on(index);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.options.backoff_max);
        }
        Err(ClientError::Exhausted {
            attempts: self.options.attempts_max,
            last,
        })
    }

    /// Append records; one result per record, in order.
    pub async fn append(&self, records: Vec<Record>) -> Result<Vec<AppendResult>, ClientError> {
        let request = AppendRequest { records };
        // Refused here with the status a node would give: tonic's own send
        // limit fails mid-stream and surfaces as an opaque h2 INTERNAL error.
        let bytes = prost::Message::encoded_len(&request);
        if bytes > crate::validate::MESSAGE_BYTES_MAX {
            return Err(ClientError::Status(Status::resource_exhausted(format!(
                "request message too large: found {bytes} bytes, the limit is: {} bytes",
                crate::validate::MESSAGE_BYTES_MAX
            ))));
        }
        self.with_leader(|mut client| {
            let request = self.request(request.clone());
            async move { client.append(request).await.map(|r| r.into_inner().results) }
        })
        .await
    }

    /// Append one record.
    pub async fn append_one(&self, channel: &str, txid: &[u8], payload: &[u8]) -> Result<AppendResult, ClientError> {
        let record = Record {
            txid: txid.to_vec().into(),
            channel: channel.to_string(),
            payload: payload.to_vec().into(),
            client_time_ns: txlog_raft::wall_clock_ns(),
        };
        let mut results = self.append(vec![record]).await?;
        results
            .pop()
            .ok_or_else(|| ClientError::Status(Status::internal("append returned no result")))
    }

    /// Read from the leader (linearizable) or, with `stale`, from any node.
    pub async fn read(
        &self,
        from_seq: u64,
        limit: u32,
        channel: Option<&str>,
        stale: bool,
    ) -> Result<ReadResponse, ClientError> {
        let request = ReadRequest {
            from_seq,
            limit,
            channel: channel.map(str::to_string),
            stale,
        };
        self.with_leader(|mut client| {
            let request = self.request(request.clone());
            async move { client.read(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// Read from one specific node without retries (stale reads per node).
    pub async fn read_at(
        &self,
        address: &str,
        from_seq: u64,
        limit: u32,
        stale: bool,
    ) -> Result<ReadResponse, ClientError> {
        let mut client = self.log_client(&normalize_address(address)?)?;
        let request = self.request(ReadRequest {
            from_seq,
            limit,
            channel: None,
            stale,
        });
        client
            .read(request)
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Status)
    }

    pub async fn lookup(&self, txid: &[u8], stale: bool) -> Result<Option<CommittedRecord>, ClientError> {
        let request = LookupRequest {
            txid: txid.to_vec().into(),
            stale,
        };
        let result = self
            .with_leader(|mut client| {
                let request = self.request(request.clone());
                async move { client.lookup(request).await.map(|r| r.into_inner().record) }
            })
            .await;
        match result {
            Err(ClientError::Status(s)) if s.code() == Code::NotFound => Ok(None),
            other => other,
        }
    }

    /// Stream committed records from `from_seq`, then live ones, from the first reachable node.
    pub async fn subscribe(
        &self,
        from_seq: u64,
        channel: Option<&str>,
    ) -> Result<tonic::Streaming<CommittedRecord>, ClientError> {
        let request = SubscribeRequest {
            from_seq,
            channel: channel.map(str::to_string),
        };
        self.with_leader(|mut client| {
            let request = request.clone();
            async move { client.subscribe(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// One node's own status, no retries.
    pub async fn node_status(&self, address: &str) -> Result<NodeStatus, ClientError> {
        let channel = self.channel(&normalize_address(address)?)?;
        let mut client = AdminServiceClient::new(channel);
        let mut request = tonic::Request::new(StatusRequest {});
        request.set_timeout(Duration::from_millis(1000));
        client
            .status(request)
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Status)
    }

    fn admin_client(&self, address: &str) -> Result<AdminServiceClient<Channel>, ClientError> {
        Ok(AdminServiceClient::new(self.channel(&normalize_address(address)?)?))
    }

    /// Run an admin call on any node that answers (members forward
    /// membership calls to the leader), retrying transient failures.
    async fn with_any_node<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(AdminServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let mut backoff = self.options.backoff_initial;
        let mut last = Status::unavailable("no attempt made");
        for attempt in 0..self.options.attempts_max {
            let address = self.endpoints[attempt as usize % self.endpoints.len()].clone();
            match call(self.admin_client(&address)?).await {
                Ok(value) => return Ok(value),
                Err(status) if status.code() != Code::Unavailable => return Err(ClientError::Status(status)),
                Err(status) => last = status,
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.options.backoff_max);
        }
        Err(ClientError::Exhausted {
            attempts: self.options.attempts_max,
            last,
        })
    }

    /// Start a join; progress messages follow, the last one has `done`.
    pub async fn join(&self, request: JoinRequest) -> Result<tonic::Streaming<JoinProgress>, ClientError> {
        self.with_any_node(|mut client| {
            let request = request.clone();
            async move { client.join(request).await.map(|r| r.into_inner()) }
        })
        .await
    }

    pub async fn remove_node(&self, node_id: u64) -> Result<MembershipResponse, ClientError> {
        self.with_any_node(|mut client| async move {
            client.remove(RemoveRequest { node_id }).await.map(|r| r.into_inner())
        })
        .await
    }

    pub async fn transfer_leader(&self, node_id: u64) -> Result<MembershipResponse, ClientError> {
        self.with_any_node(|mut client| async move {
            client
                .transfer_leader(TransferLeaderRequest { node_id })
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Build a snapshot on the node at `address` now.
    pub async fn snapshot_node(&self, address: &str) -> Result<SnapshotResponse, ClientError> {
        let mut client = self.admin_client(address)?;
        client
            .snapshot(SnapshotRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Status)
    }

    /// Purge the WAL of the node at `address` behind its latest snapshot.
    pub async fn compact_node(&self, address: &str) -> Result<CompactResponse, ClientError> {
        let mut client = self.admin_client(address)?;
        client
            .compact(CompactRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Status)
    }

    /// Status of every node: asks each known address (plus every member the
    /// cluster reports) and marks the ones that do not answer as down.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        let mut addresses: Vec<String> = self.endpoints.to_vec();
        let mut answers: Vec<(String, Result<NodeStatus, ClientError>)> = Vec::new();
        let mut i = 0;
        while i < addresses.len() {
            let address = addresses[i].clone();
            let answer = self.node_status(&address).await;
            if let Ok(status) = &answer {
                for member in &status.members {
                    if !addresses.contains(&member.address) {
                        addresses.push(member.address.clone());
                    }
                }
            }
            answers.push((address, answer));
            i += 1;
        }
        let reachable: Vec<&NodeStatus> = answers.iter().filter_map(|(_, a)| a.as_ref().ok()).collect();
        if reachable.is_empty() {
            let last = answers.into_iter().last().and_then(|(_, a)| a.err());
            return Err(last.unwrap_or_else(|| ClientError::BadCluster("no nodes".into())));
        }
        // Prefer the leader's own view of membership and progress.
        let view = reachable
            .iter()
            .find(|s| s.role == "leader")
            .or_else(|| reachable.iter().max_by_key(|s| s.term))
            .copied()
            .expect("non-empty");
        let mut nodes = Vec::new();
        for member in &view.members {
            let answer = answers
                .iter()
                .find(|(a, _)| *a == member.address)
                .and_then(|(_, a)| a.as_ref().ok());
            let role = match answer {
                None => "down".to_string(),
                Some(_) if !member.role.is_empty() => member.role.clone(),
                Some(s) if s.role == "leader" => "leader".to_string(),
                Some(_) if member.kind == "learner" => "learner".to_string(),
                Some(s) if s.role == "candidate" || s.role == "shutdown" => s.role.clone(),
                Some(_) => "follower".to_string(),
            };
            nodes.push(NodeView {
                id: member.id,
                region: member.region.clone(),
                address: member.address.clone(),
                role,
                kind: member.kind.clone(),
                match_index: member.match_index,
                lag: member.lag,
                heartbeat_age_ms: (member.heartbeat_age_ms >= 0).then_some(member.heartbeat_age_ms as u64),
                pid: answer.map(|s| s.pid).unwrap_or(0),
                snapshot_index: answer.map(|s| s.snapshot_index).unwrap_or(0),
                purged_index: answer.map(|s| s.purged_index).unwrap_or(0),
                applied_index: answer.map(|s| s.applied_index).unwrap_or(0),
                last_seq: answer.map(|s| s.last_seq).unwrap_or(0),
                term: answer.map(|s| s.term).unwrap_or(0),
            });
        }
        Ok(ClusterStatus {
            leader_id: if view.leader_id == 0 {
                None
            } else {
                Some(view.leader_id)
            },
            term: view.term,
            commit_index: view.commit_index,
            last_seq: view.last_seq,
            resync_sent: view.resync_sent.map(|r| ResyncSent {
                delta_transfers: r.delta_transfers,
                delta_bytes: r.delta_bytes,
                full_transfers: r.full_transfers,
                full_bytes: r.full_bytes,
                delta_refused: r.delta_refused,
            }),
            nodes,
        })
    }

    /// Wait until some node reports a leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<ClusterStatus, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.cluster_status().await {
                Ok(status) if status.leader_id.is_some() && status.nodes.iter().any(|n| n.role == "leader") => {
                    return Ok(status)
                }
                Ok(_) | Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(ClientError::Exhausted {
                        attempts: 0,
                        last: Status::unavailable(format!("no leader elected within {timeout:?}")),
                    })
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

fn log_service_client(channel: Channel) -> LogServiceClient<Channel> {
    LogServiceClient::new(channel)
        .max_decoding_message_size(crate::validate::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(crate::validate::MESSAGE_BYTES_MAX)
}

/// The cluster as `txlog status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStatus {
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub last_seq: u64,
    /// Snapshot transfers sent by the node whose view this is (the leader).
    pub resync_sent: Option<ResyncSent>,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ResyncSent {
    pub delta_transfers: u64,
    pub delta_bytes: u64,
    pub full_transfers: u64,
    pub full_bytes: u64,
    pub delta_refused: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeView {
    pub id: u64,
    pub region: String,
    pub address: String,
    /// leader | follower | learner | candidate | down
    pub role: String,
    /// voter | learner
    pub kind: String,
    pub match_index: u64,
    /// Entries behind the leader's last log index (leader's view).
    pub lag: u64,
    /// Milliseconds since the node last acknowledged the leader (None: never / unknown).
    pub heartbeat_age_ms: Option<u64>,
    pub pid: u32,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub applied_index: u64,
    pub last_seq: u64,
    pub term: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses with or without http:// are accepted; garbage is a clear error.
    #[test]
    fn cluster_address_parsing() {
        let c = Client::connect("http://127.0.0.1:7401, 127.0.0.1:7402/").unwrap();
        assert_eq!(
            c.endpoints(),
            &["127.0.0.1:7401".to_string(), "127.0.0.1:7402".to_string()]
        );
        assert!(Client::connect("").is_err());
        assert!(Client::connect("localhost").is_err());
        assert!(Client::connect("host:notaport").is_err());
    }

    /// An append over the message limit fails at once with the status a
    /// node would give, without a connection (nothing listens on port 1).
    #[tokio::test]
    async fn oversize_append_is_refused_locally() {
        let client = Client::connect("127.0.0.1:1").unwrap();
        let payload = vec![0u8; crate::validate::MESSAGE_BYTES_MAX];
        let err = client.append_one("orders", b"big", &payload).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
        assert!(
            err.to_string()
                .contains(&crate::validate::MESSAGE_BYTES_MAX.to_string()),
            "{err}"
        );
    }
}
