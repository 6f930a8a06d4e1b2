//! `AdminService`: membership, leadership, snapshots, status, key
//! rotation, and access changes (client keys and roles, `access_policy.rs`).
//!
//! Membership changes run on the leader; any other node forwards the call
//! to the leader it knows. One change at a time: a second one while a join
//! or removal is running gets `FAILED_PRECONDITION`, as does anything that
//! would leave the cluster without a voter. Removed nodes leave the
//! membership entirely (openraft's `retain = false`), so they do not linger
//! as learners that the leader keeps replicating to.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use txlog_client::methods;
use txlog_client::Kind;
use txlog_client::Role;
use txlog_proto::admin_service_server::AdminService;
use txlog_proto::AccessChange;
use txlog_proto::AccessList;
use txlog_proto::AddClientKeyRequest;
use txlog_proto::AllowlistView;
use txlog_proto::AuditAck;
use txlog_proto::AuditReport;
use txlog_proto::ClientKeyView;
use txlog_proto::CompactRequest;
use txlog_proto::CompactResponse;
use txlog_proto::JoinProgress;
use txlog_proto::JoinRequest;
use txlog_proto::ListAccessRequest;
use txlog_proto::Member;
use txlog_proto::MembershipResponse;
use txlog_proto::NodeStatus;
use txlog_proto::RemoveRequest;
use txlog_proto::ResyncCounters;
use txlog_proto::RevokeClientKeyRequest;
use txlog_proto::RoleView;
use txlog_proto::RotateKekRequest;
use txlog_proto::RotateKeysRequest;
use txlog_proto::RotateKeysResponse;
use txlog_proto::SetAllowlistRequest;
use txlog_proto::SetRoleRequest;
use txlog_proto::SnapshotRequest;
use txlog_proto::SnapshotResponse;
use txlog_proto::StatusRequest;
use txlog_proto::TransferLeaderRequest;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::openraft::ChangeMembers;
use txlog_raft::openraft::Instant as _;
use txlog_raft::openraft::Precondition;
use txlog_raft::openraft::RaftMetrics;
use txlog_raft::openraft::ServerState;
use txlog_raft::timing::Timing;
use txlog_raft::NodeInfo;
use txlog_raft::Raft;
use txlog_raft::ResyncStats;
use txlog_raft::StateMachineReader;
use txlog_raft::TypeConfig;

use crate::access_policy::AccessEvent;
use crate::access_policy::AccessPolicy;
use crate::access_policy::Operation;
use crate::access_policy::RoleRule;
use crate::access_policy::ACCESS_CHANNEL;
use crate::access_policy::ROLE_RULES_MAX;
use crate::allowlist::Allowlist;
use crate::allowlist::ServiceClass;
use crate::error::raft_error;
use crate::error::raft_stopped;
use crate::log_service::known_leader;
use crate::Error;
use crate::Result;

const LEADER_CHANGE_WAIT: Duration = Duration::from_secs(3);
const SNAPSHOT_WAIT: Duration = Duration::from_secs(120);
const PURGE_WAIT: Duration = Duration::from_secs(10);

pub struct AdminServer {
    pub node_id: u64,
    pub region: String,
    pub address: String,
    pub raft: Raft,
    pub reader: StateMachineReader,
    pub timing: Timing,
    pub resync: Arc<ResyncStats>,
    /// How forwarded requests reach the leader.
    pub dial: crate::peer_dial::PeerDial,
    /// Held for the whole of a join or removal on the leader.
    pub membership_lock: Arc<tokio::sync::Mutex<()>>,
    /// Asks this node's key-rotation task for keys now; `None` when sealing is off.
    pub(crate) rotations: Option<crate::key_rotation::Rotations>,
    /// The keyring and KEKs; `None` when sealing is off.
    pub keys: Option<Arc<txlog_raft::Keys>>,
    /// The log service's batcher, through which access changes are proposed.
    pub batcher: Option<crate::batcher::Batcher>,
    /// Held from checking an access change against the policy until it is
    /// applied, so that two changes of one key cannot both pass the check.
    pub access_lock: Arc<tokio::sync::Mutex<()>>,
    /// Admits every call; signs this node's calls to others.
    pub guard: Arc<crate::access_guard::Guard>,
    /// Where admin calls are recorded (the `_audit` channel).
    pub audit: Arc<crate::audit::Auditor>,
    /// This node's configured allowlists (the log may replace them).
    pub allowlist: Allowlist,
    /// Appends reported audit events on the leader; `None` until serving.
    pub audit_writer: Option<Arc<crate::audit::AuditWriter>>,
}

/// How long an access change's answer waits for this node to enforce it.
const ACCESS_ENFORCED_WAIT: Duration = Duration::from_secs(5);

/// The role a node reports for itself; the names are the client crate's
/// [`Role`], so server and client cannot drift apart.
pub fn role_name(state: ServerState, is_learner: bool) -> &'static str {
    let role = match state {
        ServerState::Leader => Role::Leader,
        ServerState::Candidate => Role::Candidate,
        ServerState::Shutdown => Role::Shutdown,
        ServerState::Learner => Role::Learner,
        ServerState::Follower if is_learner => Role::Learner,
        ServerState::Follower => Role::Follower,
    };
    role.as_str()
}

type Metrics = RaftMetrics<TypeConfig>;
pub(crate) type JoinStream = Pin<Box<dyn Stream<Item = std::result::Result<JoinProgress, Status>> + Send>>;

/// A member is shown `down` when it has not acknowledged the leader for this long.
pub fn down_after(timing: &Timing) -> Duration {
    Duration::from_millis((timing.election_timeout_ms_max * 3).max(300))
}

/// Per-member view; roles, lag and heartbeat ages only when `metrics` is a leader's.
fn members(metrics: &Metrics, self_id: u64, timing: &Timing) -> Vec<Member> {
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let leading = metrics.state == ServerState::Leader;
    let replication = metrics.replication.clone().unwrap_or_default();
    let heartbeat = metrics.heartbeat.clone().unwrap_or_default();
    let last_log_index = metrics.last_log_index.unwrap_or(0);
    membership
        .nodes()
        .map(|(id, node)| {
            let match_index = if *id == self_id && leading {
                last_log_index
            } else {
                replication.get(id).and_then(|m| m.map(|l| l.index)).unwrap_or(0)
            };
            let age = heartbeat.get(id).and_then(|t| *t).map(|t| t.into_inner().elapsed());
            // Only a leader knows its members' roles; others leave it empty.
            let role = match () {
                _ if !leading => None,
                _ if *id == self_id => Some(Role::Leader),
                _ if age.is_none_or(|a| a > down_after(timing)) => Some(Role::Down),
                _ if !voters.contains(id) => Some(Role::Learner),
                _ => Some(Role::Follower),
            };
            let kind = if voters.contains(id) {
                Kind::Voter
            } else {
                Kind::Learner
            };
            Member {
                id: *id,
                region: node.region.clone(),
                address: node.address.clone(),
                kind: kind.as_str().to_string(),
                match_index,
                role: role.map(Role::as_str).unwrap_or_default().to_string(),
                lag: if leading {
                    last_log_index.saturating_sub(match_index)
                } else {
                    0
                },
                heartbeat_age_ms: match (leading, age) {
                    (true, _) if *id == self_id => 0,
                    (true, Some(a)) => a.as_millis() as i64,
                    _ => -1,
                },
            }
        })
        .collect()
}

pub(crate) fn validate_id(id: u64) -> Result<()> {
    if id == 0 {
        return Err(Error::InvalidInput("node id 0 is reserved; use 1 or more".into()));
    }
    Ok(())
}

impl AdminServer {
    pub(crate) fn metrics(&self) -> Metrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// `None` when this node leads; otherwise the leader's address to forward to.
    pub(crate) fn leader_elsewhere(&self) -> Result<Option<String>> {
        match known_leader(&self.raft) {
            Some((id, _)) if id == self.node_id => Ok(None),
            Some((_, address)) if !address.is_empty() => Ok(Some(address)),
            _ => Err(Error::Unavailable(
                "no leader is known yet (election in progress); retry".into(),
            )),
        }
    }

    pub(crate) fn lock(&self, what: &str) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        self.membership_lock.clone().try_lock_owned().map_err(|_| {
            Error::FailedPrecondition(format!(
                "{what}: another membership change is in progress on the leader; retry when it has finished"
            ))
        })
    }

    fn membership_response(&self, message: String) -> MembershipResponse {
        let metrics = self.metrics();
        MembershipResponse {
            leader_id: metrics.current_leader.unwrap_or(0),
            members: members(&metrics, self.node_id, &self.timing),
            message,
        }
    }

    /// Wait until `done(metrics)` holds or `timeout` passes.
    async fn wait_for(&self, timeout: Duration, done: impl Fn(&Metrics) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.metrics()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The handlers; each returns a txlog [`Error`], turned into a `Status` in
/// one place by the thin `AdminService` impl below.
impl AdminServer {
    fn node_status(&self) -> NodeStatus {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let is_learner = !membership.voter_ids().any(|v| v == self.node_id);
        let resync = self.resync.counts();
        NodeStatus {
            id: self.node_id,
            region: self.region.clone(),
            address: self.address.clone(),
            role: role_name(metrics.state, is_learner).to_string(),
            term: metrics.current_term,
            leader_id: metrics.current_leader.unwrap_or(0),
            commit_index: metrics.local_committed.map(|l| l.index).unwrap_or(0),
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_seq: self.reader.last_seq(),
            members: members(&metrics, self.node_id, &self.timing),
            pid: std::process::id(),
            snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: metrics.purged.map(|l| l.index).unwrap_or(0),
            resync_sent: Some(ResyncCounters {
                delta_transfers: resync.delta_transfers,
                delta_bytes: resync.delta_bytes,
                full_transfers: resync.full_transfers,
                full_bytes: resync.full_bytes,
                delta_refused: resync.delta_refused,
            }),
            kek_ids: self.keys.as_ref().map(|k| k.kek_ids()).unwrap_or_default(),
            kek_current: self.keys.as_ref().map(|k| k.current_kek()).unwrap_or(0),
        }
    }

    async fn remove_node(&self, req: RemoveRequest) -> Result<MembershipResponse> {
        validate_id(req.node_id)?;
        if let Some(leader) = self.leader_elsewhere()? {
            return self.forward_remove(&leader, req).await;
        }
        let id = req.node_id;
        let guard = self.lock(&format!("removal of node {id}"))?;
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_none() {
            let known: Vec<String> = membership.nodes().map(|(i, n)| format!("{i} ({})", n.region)).collect();
            return Err(Error::NotFound(format!(
                "node {id} is not a member; members are {}",
                known.join(", ")
            )));
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&id) && voters.len() == 1 {
            return Err(Error::FailedPrecondition(format!(
                "node {id} is the last voter; removing it would leave no one to commit"
            )));
        }
        if id == self.node_id {
            // Hand leadership to the most caught-up other voter, then let the
            // new leader remove this node.
            drop(guard);
            let replication = metrics.replication.clone().unwrap_or_default();
            let target = voters
                .iter()
                .filter(|v| **v != id)
                .max_by_key(|v| replication.get(v).and_then(|m| m.map(|l| l.index)))
                .copied()
                .ok_or_else(|| Error::FailedPrecondition("no other voter to hand leadership to".into()))?;
            tracing::info!(target, "removing the leader: transferring leadership first");
            self.raft
                .trigger()
                .transfer_leader(target)
                .await
                .map_err(|e| raft_stopped(e, "transfer leadership"))?;
            if !self
                .wait_for(LEADER_CHANGE_WAIT, |m| m.current_leader.is_some_and(|l| l != id))
                .await
            {
                return Err(Error::Unavailable(format!(
                    "node {id} is the leader and could not hand leadership to node {target} within {LEADER_CHANGE_WAIT:?}; retry"
                )));
            }
            let leader = self
                .leader_elsewhere()?
                .ok_or_else(|| Error::Unavailable("leadership came back to the node being removed; retry".into()))?;
            return self.forward_remove(&leader, req).await;
        }
        let what = format!("remove node {id}");
        if voters.contains(&id) {
            change_membership_guarded(
                &self.raft,
                self.node_id,
                ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                &what,
            )
            .await?;
        }
        let still_listed = self.metrics().membership_config.membership().get_node(&id).is_some();
        if still_listed {
            change_membership_guarded(
                &self.raft,
                self.node_id,
                ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                &what,
            )
            .await?;
        }
        tracing::info!(node = id, "node removed from the cluster");
        Ok(self.membership_response(format!("node {id} removed")))
    }

    async fn forward_remove(&self, leader: &str, req: RemoveRequest) -> Result<MembershipResponse> {
        let response = self
            .dial
            .admin_client(leader)?
            .remove(self.guard.node_request(methods::REMOVE, req))
            .await?;
        Ok(response.into_inner())
    }

    async fn transfer_leadership(&self, req: TransferLeaderRequest) -> Result<MembershipResponse> {
        validate_id(req.node_id)?;
        let id = req.node_id;
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        if !membership.voter_ids().any(|v| v == id) {
            return Err(if membership.get_node(&id).is_some() {
                Error::FailedPrecondition(format!("node {id} is a learner; only voters can lead"))
            } else {
                Error::NotFound(format!("node {id} is not a member"))
            });
        }
        if let Some(leader) = self.leader_elsewhere()? {
            if metrics.current_leader == Some(id) {
                return Ok(self.membership_response(format!("node {id} already leads")));
            }
            let response = self
                .dial
                .admin_client(&leader)?
                .transfer_leader(self.guard.node_request(methods::TRANSFER_LEADER, req))
                .await?;
            return Ok(response.into_inner());
        }
        if id == self.node_id {
            return Ok(self.membership_response(format!("node {id} already leads")));
        }
        // openraft hands over only if the target has flushed the leader's
        // last log within election_timeout_min of the request, and a target
        // even one entry behind (an audit record in flight) lets the
        // transfer lapse in silence: wait until it has the log first.
        let has_leader_log = |m: &Metrics| {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id))
                .and_then(|l| l.map(|l| l.index));
            matched.is_some() && matched >= m.last_log_index
        };
        if !self.wait_for(LEADER_CHANGE_WAIT, has_leader_log).await {
            return Err(Error::DeadlineExceeded(format!(
                "node {id} has not caught up with the leader's log within {LEADER_CHANGE_WAIT:?}; is it reachable?"
            )));
        }
        self.raft
            .trigger()
            .transfer_leader(id)
            .await
            .map_err(|e| raft_stopped(e, "transfer leadership"))?;
        if !self
            .wait_for(LEADER_CHANGE_WAIT, |m| m.current_leader == Some(id))
            .await
        {
            return Err(Error::DeadlineExceeded(format!(
                "node {id} did not take over within {LEADER_CHANGE_WAIT:?}; is it caught up and reachable?"
            )));
        }
        Ok(self.membership_response(format!("node {id} now leads")))
    }

    async fn take_snapshot(&self) -> Result<SnapshotResponse> {
        let applied = self.metrics().last_applied.map(|l| l.index).unwrap_or(0);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| raft_stopped(e, "snapshot"))?;
        let built = self
            .wait_for(SNAPSHOT_WAIT, |m| m.snapshot.map(|l| l.index).unwrap_or(0) >= applied)
            .await;
        if !built {
            return Err(Error::DeadlineExceeded(format!(
                "no snapshot covering index {applied} after {SNAPSHOT_WAIT:?}"
            )));
        }
        Ok(SnapshotResponse {
            snapshot_index: self.metrics().snapshot.map(|l| l.index).unwrap_or(0),
            last_seq: self.reader.last_seq(),
        })
    }

    async fn compact_log(&self) -> Result<CompactResponse> {
        let Some(snapshot) = self.metrics().snapshot else {
            return Err(Error::FailedPrecondition(
                "no snapshot yet: nothing to compact behind (run `txlog admin snapshot` first)".into(),
            ));
        };
        self.raft
            .trigger()
            .purge_log(snapshot.index)
            .await
            .map_err(|e| raft_stopped(e, "compact"))?;
        self.wait_for(PURGE_WAIT, |m| m.purged.map(|l| l.index).unwrap_or(0) >= snapshot.index)
            .await;
        Ok(CompactResponse {
            purged_index: self.metrics().purged.map(|l| l.index).unwrap_or(0),
            snapshot_index: snapshot.index,
        })
    }

    /// Announce new keys now, on the leader (`txlog keys rotate`).
    async fn rotate_keys_now(&self, req: RotateKeysRequest) -> Result<RotateKeysResponse> {
        let Some(rotations) = &self.rotations else {
            return Err(Error::FailedPrecondition(
                "sealing is off on this cluster (started with --no-seal): there are no keys to rotate".into(),
            ));
        };
        if let Some(leader) = self.leader_elsewhere()? {
            return Err(Error::NotLeader { leader: Some(leader) });
        }
        let both = !req.data && !req.signing;
        let rotate = crate::key_rotation::Rotate {
            data: req.data || both,
            signing: req.signing || both,
        };
        let announced = rotations.rotate(rotate).await?;
        Ok(RotateKeysResponse {
            announced: announced.keys,
            log_index: announced.log_index,
            leader_id: self.node_id,
        })
    }
}

impl AdminServer {
    /// Rewrap the keyring under KEK `kek_id`, on the leader (`txlog keys rotate-kek`).
    async fn rotate_kek_now(&self, req: RotateKekRequest) -> Result<RotateKeysResponse> {
        let Some(rotations) = &self.rotations else {
            return Err(Error::FailedPrecondition(
                "sealing is off on this cluster (started with --no-seal): there are no keys to rewrap".into(),
            ));
        };
        if let Some(leader) = self.leader_elsewhere()? {
            return Err(Error::NotLeader { leader: Some(leader) });
        }
        let announced = rotations.rewrap(req.kek_id).await?;
        Ok(RotateKeysResponse {
            announced: announced.keys,
            log_index: announced.log_index,
            leader_id: self.node_id,
        })
    }
}

impl AdminServer {
    /// Every admin call needs the `admin` operation on every channel. The
    /// caller's key id ("-" when access is not enforced).
    fn admit<M: prost::Message>(&self, request: &Request<M>, method: &str) -> std::result::Result<String, Status> {
        let caller = self
            .guard
            .admit(request.metadata(), request.get_ref(), method, Operation::Admin, None)?;
        Ok(caller.map_or_else(|| "-".to_string(), |c| c.key_id))
    }

    /// Record a changing call in the audit trail, then answer it.
    fn audited<T>(
        &self,
        method: &str,
        caller: &str,
        detail: &str,
        result: Result<T>,
    ) -> std::result::Result<Response<T>, Status> {
        let outcome = result.as_ref().map(drop).map_err(|e| e.to_string());
        let method = method.rsplit('/').next().unwrap_or(method);
        self.audit.admin(method, caller, detail, outcome);
        Ok(Response::new(result?))
    }
}

/// Every error leaves through `Status::from` (`Error::to_status`).
#[tonic::async_trait]
impl AdminService for AdminServer {
    async fn status(&self, request: Request<StatusRequest>) -> std::result::Result<Response<NodeStatus>, Status> {
        self.admit(&request, methods::STATUS)?;
        Ok(Response::new(self.node_status()))
    }

    type JoinStream = JoinStream;

    async fn join(&self, request: Request<JoinRequest>) -> std::result::Result<Response<JoinStream>, Status> {
        let caller = self.admit(&request, methods::JOIN)?;
        let req = request.into_inner();
        let detail = format!(
            "node {} at {} in {}{}",
            req.node_id,
            req.address,
            req.region,
            if req.learner_only { " as a learner" } else { "" }
        );
        self.audited(methods::JOIN, &caller, &detail, self.join_node(req).await)
    }

    async fn remove(
        &self,
        request: Request<RemoveRequest>,
    ) -> std::result::Result<Response<MembershipResponse>, Status> {
        let caller = self.admit(&request, methods::REMOVE)?;
        let req = request.into_inner();
        let detail = format!("node {}", req.node_id);
        self.audited(methods::REMOVE, &caller, &detail, self.remove_node(req).await)
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> std::result::Result<Response<MembershipResponse>, Status> {
        let caller = self.admit(&request, methods::TRANSFER_LEADER)?;
        let req = request.into_inner();
        let detail = format!("to node {}", req.node_id);
        self.audited(
            methods::TRANSFER_LEADER,
            &caller,
            &detail,
            self.transfer_leadership(req).await,
        )
    }

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> std::result::Result<Response<SnapshotResponse>, Status> {
        let caller = self.admit(&request, methods::SNAPSHOT)?;
        self.audited(methods::SNAPSHOT, &caller, "", self.take_snapshot().await)
    }

    async fn compact(
        &self,
        request: Request<CompactRequest>,
    ) -> std::result::Result<Response<CompactResponse>, Status> {
        let caller = self.admit(&request, methods::COMPACT)?;
        self.audited(methods::COMPACT, &caller, "", self.compact_log().await)
    }

    async fn rotate_keys(
        &self,
        request: Request<RotateKeysRequest>,
    ) -> std::result::Result<Response<RotateKeysResponse>, Status> {
        let caller = self.admit(&request, methods::ROTATE_KEYS)?;
        let req = request.into_inner();
        let detail = format!("{req:?}");
        self.audited(methods::ROTATE_KEYS, &caller, &detail, self.rotate_keys_now(req).await)
    }

    async fn rotate_kek(
        &self,
        request: Request<RotateKekRequest>,
    ) -> std::result::Result<Response<RotateKeysResponse>, Status> {
        let caller = self.admit(&request, methods::ROTATE_KEK)?;
        let req = request.into_inner();
        let detail = format!("to KEK {}", req.kek_id);
        self.audited(methods::ROTATE_KEK, &caller, &detail, self.rotate_kek_now(req).await)
    }

    async fn add_client_key(
        &self,
        request: Request<AddClientKeyRequest>,
    ) -> std::result::Result<Response<AccessChange>, Status> {
        let caller = self.admit(&request, methods::ADD_CLIENT_KEY)?;
        let req = request.into_inner();
        // Never the secret.
        let detail = format!("key {:?} with roles {:?}", req.key_id, req.roles);
        self.audited(
            methods::ADD_CLIENT_KEY,
            &caller,
            &detail,
            self.add_client_key_now(req).await,
        )
    }

    async fn revoke_client_key(
        &self,
        request: Request<RevokeClientKeyRequest>,
    ) -> std::result::Result<Response<AccessChange>, Status> {
        let caller = self.admit(&request, methods::REVOKE_CLIENT_KEY)?;
        let req = request.into_inner();
        let detail = format!("key {:?}", req.key_id);
        self.audited(
            methods::REVOKE_CLIENT_KEY,
            &caller,
            &detail,
            self.revoke_client_key_now(req).await,
        )
    }

    async fn set_role(&self, request: Request<SetRoleRequest>) -> std::result::Result<Response<AccessChange>, Status> {
        let caller = self.admit(&request, methods::SET_ROLE)?;
        let req = request.into_inner();
        let detail = format!("{req:?}");
        self.audited(methods::SET_ROLE, &caller, &detail, self.set_role_now(req).await)
    }

    async fn set_allowlist(
        &self,
        request: Request<SetAllowlistRequest>,
    ) -> std::result::Result<Response<AccessChange>, Status> {
        let caller = self.admit(&request, methods::SET_ALLOWLIST)?;
        let source = request
            .extensions()
            .get::<crate::tls::ConnectionInfo>()
            .and_then(|info| info.remote_ip());
        let req = request.into_inner();
        let detail = format!(
            "{} {:?}{}",
            req.list,
            req.cidrs,
            if req.reset { " (reset)" } else { "" }
        );
        let result = self.set_allowlist_now(req, source).await;
        self.audited(methods::SET_ALLOWLIST, &caller, &detail, result)
    }

    async fn list_access(
        &self,
        request: Request<ListAccessRequest>,
    ) -> std::result::Result<Response<AccessList>, Status> {
        self.admit(&request, methods::LIST_ACCESS)?;
        Ok(Response::new(self.list_access_now()?))
    }

    /// A node's security events, appended here if this node leads; the
    /// reporter keeps them until this answers OK.
    async fn record_audit(&self, request: Request<AuditReport>) -> std::result::Result<Response<AuditAck>, Status> {
        self.admit(&request, methods::RECORD_AUDIT)?;
        if let Some(leader) = self.leader_elsewhere()? {
            return Err(Error::NotLeader { leader: Some(leader) }.into());
        }
        let Some(writer) = &self.audit_writer else {
            return Err(Error::Unavailable("this node takes no audit events yet; retry".into()).into());
        };
        let entries = crate::audit::decode_entries(&request.get_ref().entries).map_err(Error::InvalidInput)?;
        if entries.len() > crate::audit::AUDIT_EVENTS_MAX + crate::audit::AUDIT_REFUSAL_KEYS_MAX + 1 {
            return Err(Error::InvalidInput(format!("{} audit events in one report", entries.len())).into());
        }
        writer.append(&entries).await?;
        Ok(Response::new(AuditAck {}))
    }
}

/// Change the membership only while this node leads a membership that
/// includes it. openraft 0.10.0-alpha.37 lets a node go on leading for up to
/// `removed_leader_step_down` (150 ms) after the committed membership dropped
/// it, and a membership write in that window trips a debug assertion that
/// stops its RaftCore for good ("Only leader is allowed to call
/// update_effective_membership()", `replication_handler/mod.rs:102`; seen in
/// a chaos run). The precondition pins the membership checked here inside
/// openraft's own event, so the check cannot race with the write; a failed
/// check or precondition is UNAVAILABLE, and the caller retries elsewhere.
pub(crate) async fn change_membership_guarded(
    raft: &Raft,
    self_id: u64,
    changes: ChangeMembers<u64, NodeInfo>,
    what: &str,
) -> Result<()> {
    let metrics = raft.metrics().borrow_watched().clone();
    let config = &metrics.membership_config;
    if metrics.state != ServerState::Leader || config.membership().get_node(&self_id).is_none() {
        return Err(Error::Unavailable(format!(
            "{what}: node {self_id} is not a leading member (stepping down or being removed); retry"
        )));
    }
    let precondition = Precondition::LastMembershipLogId {
        last_membership_log_id: *config.log_id(),
    };
    // `retain = false`: a voter removed here leaves the membership rather than
    // staying on as a learner; for additions the flag has no effect.
    raft.change_membership_if(changes, false, [precondition])
        .await
        .map_err(|e| raft_error(e, what))?;
    Ok(())
}

/// Access changes (client keys and roles), proposed on the leader as
/// records of [`ACCESS_CHANNEL`]; see `access_policy.rs`.
impl AdminServer {
    /// The policy as this node has applied it: the fold of its access
    /// records, read now (the guard's copy may be a moment behind).
    pub fn access_policy(&self) -> Result<AccessPolicy> {
        let mut policy = AccessPolicy::default();
        crate::access_guard::fold_access_records(&self.reader, &mut policy)?;
        Ok(policy)
    }

    /// Before an access change: a sealed cluster, and this node leads (a
    /// follower's policy may lag; the client follows the hint). The
    /// returned guard serialises check and proposal.
    async fn access_change_begins(&self) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        if self.keys.is_none() {
            return Err(Error::FailedPrecondition(
                "client keys and roles need a sealed cluster (this one runs with --no-seal): a secret must never be in clear in the log".into(),
            ));
        }
        if let Some(leader) = self.leader_elsewhere()? {
            return Err(Error::NotLeader { leader: Some(leader) });
        }
        Ok(self.access_lock.clone().lock_owned().await)
    }

    /// Propose one access change on the leader; the seq of its record,
    /// once applied here.
    async fn propose_access(&self, event: AccessEvent) -> Result<AccessChange> {
        let Some(batcher) = &self.batcher else {
            return Err(Error::Unavailable(
                "this node takes no access changes yet; retry".into(),
            ));
        };
        let record = txlog_storage::NewRecord {
            txid: event.txid().into_bytes().into(),
            channel: ACCESS_CHANNEL.into(),
            payload: event.encode().into(),
            client_time_ns: 0,
        };
        let outcomes = batcher.append(vec![record]).await?;
        let seq = outcomes
            .first()
            .map(|o| o.seq)
            .ok_or_else(|| Error::Internal("an access change was committed without an outcome".into()))?;
        tracing::info!(seq, change = %describe_access(&event), "access changed");
        // Answered once this node enforces it (its follower task folds it
        // in at once; a stalled one is reported, not waited on forever).
        if !self.guard.policy.wait_applied(seq, ACCESS_ENFORCED_WAIT).await {
            return Err(Error::Unavailable(format!(
                "access change committed at seq {seq} but not yet enforced on this node after {ACCESS_ENFORCED_WAIT:?}"
            )));
        }
        Ok(AccessChange { seq })
    }

    async fn add_client_key_now(&self, req: AddClientKeyRequest) -> Result<AccessChange> {
        txlog_client::check_token_name("a key id", &req.key_id).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let secret: [u8; 32] = req.secret[..].try_into().map_err(|_| {
            Error::InvalidInput(format!("a client secret is 32 bytes; {} were given", req.secret.len()))
        })?;
        if req.roles.is_empty() || req.roles.len() > txlog_client::TOKEN_ROLES_MAX {
            return Err(Error::InvalidInput(format!(
                "a key needs 1 to {} roles",
                txlog_client::TOKEN_ROLES_MAX
            )));
        }
        if Some(req.key_id.as_str()) == self.guard.root_key_id() {
            return Err(Error::InvalidInput(format!(
                "key id {:?} is the root key's (--root-key-file); pick another",
                req.key_id
            )));
        }
        let _serial = self.access_change_begins().await?;
        let policy = self.access_policy()?;
        for role in &req.roles {
            if !policy.roles.contains_key(role) {
                return Err(Error::FailedPrecondition(format!(
                    "role {role:?} is not defined: `txlog admin role set {role} --allow OPERATIONS:CHANNELS` first"
                )));
            }
        }
        if policy.secret_of(&req.key_id).is_some() {
            return Err(Error::AlreadyExists(format!(
                "key {:?} exists: revoke it first to replace it",
                req.key_id
            )));
        }
        self.propose_access(AccessEvent::KeyAdd {
            key_id: req.key_id,
            secret,
            roles: req.roles,
            created_ns: txlog_raft::wall_clock_ns(),
        })
        .await
    }

    async fn revoke_client_key_now(&self, req: RevokeClientKeyRequest) -> Result<AccessChange> {
        let _serial = self.access_change_begins().await?;
        let policy = self.access_policy()?;
        match policy.keys.get(&req.key_id) {
            None => return Err(Error::NotFound(format!("no client key {:?}", req.key_id))),
            Some(key) if key.revoked_seq.is_some() => {
                return Err(Error::FailedPrecondition(format!(
                    "key {:?} is already revoked",
                    req.key_id
                )))
            }
            Some(_) => {}
        }
        self.propose_access(AccessEvent::KeyRevoke {
            key_id: req.key_id,
            created_ns: txlog_raft::wall_clock_ns(),
        })
        .await
    }

    async fn set_role_now(&self, req: SetRoleRequest) -> Result<AccessChange> {
        txlog_client::check_token_name("a role name", &req.name).map_err(|e| Error::InvalidInput(e.to_string()))?;
        if req.rules.is_empty() || req.rules.len() > ROLE_RULES_MAX {
            return Err(Error::InvalidInput(format!("a role needs 1 to {ROLE_RULES_MAX} rules")));
        }
        let rules = req
            .rules
            .iter()
            .map(|rule| RoleRule::parse(rule))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::InvalidInput)?;
        let _serial = self.access_change_begins().await?;
        self.propose_access(AccessEvent::RoleSet {
            name: req.name,
            rules,
            created_ns: txlog_raft::wall_clock_ns(),
        })
        .await
    }

    fn list_access_now(&self) -> Result<AccessList> {
        let policy = self.access_policy()?;
        Ok(AccessList {
            keys: policy
                .keys
                .iter()
                .map(|(key_id, key)| ClientKeyView {
                    key_id: key_id.clone(),
                    roles: key.roles.clone(),
                    added_seq: key.added_seq,
                    revoked_seq: key.revoked_seq.unwrap_or(0),
                })
                .collect(),
            roles: policy
                .roles
                .iter()
                .map(|(name, role)| RoleView {
                    name: name.clone(),
                    rules: role.rules.iter().map(RoleRule::to_string).collect(),
                    set_seq: role.set_seq,
                })
                .collect(),
            applied_seq: policy.applied_seq,
            allowlists: ServiceClass::ALL
                .iter()
                .map(|class| {
                    let setting = class.setting();
                    match policy.allowlists.get(setting) {
                        Some(cidrs) => AllowlistView {
                            list: setting.into(),
                            cidrs: cidrs.clone(),
                            from_log: true,
                        },
                        None => AllowlistView {
                            list: setting.into(),
                            cidrs: self.allowlist.list(*class).iter().map(|c| c.to_string()).collect(),
                            from_log: false,
                        },
                    }
                })
                .collect(),
        })
    }

    /// Replace (or reset) one allowlist for every node, unless it would
    /// shut out a member or the caller (at `caller`).
    async fn set_allowlist_now(&self, req: SetAllowlistRequest, caller: Option<IpAddr>) -> Result<AccessChange> {
        let class = ServiceClass::from_setting(&req.list).ok_or_else(|| {
            Error::InvalidInput(format!(
                "no allowlist {:?}: use allow_clients, allow_admin or allow_peers",
                req.list
            ))
        })?;
        let cidrs = if req.reset {
            None
        } else {
            let parsed = Allowlist::parse_list(class.setting(), &req.cidrs).map_err(Error::InvalidInput)?;
            Some(parsed.iter().map(|c| c.to_string()).collect::<Vec<_>>())
        };
        let _serial = self.access_change_begins().await?;
        // What every list would be on this node with the change.
        let mut policy = (*self.guard.policy.current()).clone();
        match &cidrs {
            Some(cidrs) => policy.allowlists.insert(class.setting().into(), cidrs.clone()),
            None => policy.allowlists.remove(class.setting()),
        };
        let after = crate::allowlist::effective(&self.allowlist, &policy);
        for (id, node) in self.metrics().membership_config.membership().nodes() {
            let host = node.address.rsplit_once(':').map_or(node.address.as_str(), |(h, _)| h);
            if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
                if !after.allows(ServiceClass::Peers, ip) {
                    return Err(Error::FailedPrecondition(format!(
                        "refused: member {id} at {} would no longer be an allowed peer",
                        node.address
                    )));
                }
            }
        }
        if let Some(ip) = caller {
            if !after.allows(ServiceClass::Admin, ip) {
                return Err(Error::FailedPrecondition(format!(
                    "refused: your address {ip} could no longer make admin calls"
                )));
            }
        }
        self.propose_access(AccessEvent::AllowlistSet {
            list: class.setting().into(),
            cidrs,
            created_ns: txlog_raft::wall_clock_ns(),
        })
        .await
    }
}

/// One line for the log: never the secret.
fn describe_access(event: &AccessEvent) -> String {
    match event {
        AccessEvent::KeyAdd { key_id, roles, .. } => format!("client key {key_id:?} added with roles {roles:?}"),
        AccessEvent::KeyRevoke { key_id, .. } => format!("client key {key_id:?} revoked"),
        AccessEvent::RoleSet { name, rules, .. } => {
            let rules: Vec<String> = rules.iter().map(RoleRule::to_string).collect();
            format!("role {name:?} set to {rules:?}")
        }
        AccessEvent::AllowlistSet {
            list,
            cidrs: Some(cidrs),
            ..
        } => format!("{list} set to {cidrs:?}"),
        AccessEvent::AllowlistSet { list, cidrs: None, .. } => format!("{list} reset to each node's config"),
    }
}
