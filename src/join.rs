//! Join: how a node becomes a member of a running cluster, both sides.
//!
//! * The leader's side ([`AdminServer::join_node`], behind `AdminService.Join`):
//!   validate, forward to the leader if this node is not it, add the node as
//!   a learner, wait until it is within [`JOIN_LAG_MAX`] entries, promote it
//!   to voter (unless `learner_only`), streaming progress to the caller. One
//!   membership change at a time (the admin server's membership lock).
//! * The joining node's side ([`join_cluster`], `txlog node --join ADDR`):
//!   ask any member to admit this node and retry with backoff until it is
//!   admitted, refused for good, or the node shuts down.
//!
//! A node that was added but never comes up stays a learner; removing it is
//! `txlog admin remove`.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::Status;
use txlog_client::methods;
use txlog_proto::JoinProgress;
use txlog_proto::JoinRequest;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::openraft::ChangeMembers;
use txlog_raft::openraft::ServerState;
use txlog_raft::NodeInfo;
use txlog_raft::Raft;

use crate::access_guard::AccessMode;
use crate::admin_service::change_membership_guarded;
use crate::admin_service::validate_id;
use crate::admin_service::AdminServer;
use crate::admin_service::JoinStream;
use crate::Error;
use crate::Result;

/// A learner this close to the leader's last log index is promoted.
pub const JOIN_LAG_MAX: u64 = 64;
const JOIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(120);
const JOIN_PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Longest wait between a joining node's attempts.
const JOIN_RETRY_MAX: Duration = Duration::from_secs(5);

impl AdminServer {
    pub(crate) async fn join_node(&self, req: JoinRequest) -> Result<JoinStream> {
        validate_id(req.node_id)?;
        crate::config::validate_address(&req.address).map_err(Error::InvalidInput)?;
        validate_region(&req.region)?;
        if let Some(leader) = self.leader_elsewhere()? {
            let stream = self
                .dial
                .admin_client(&leader)?
                .join(self.guard.node_request(methods::JOIN, req))
                .await?
                .into_inner();
            return Ok(Box::pin(stream));
        }
        let guard = self.lock(&format!("join of node {}", req.node_id))?;
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        if let Some(node) = membership.get_node(&req.node_id) {
            if node.address != req.address {
                return Err(Error::AlreadyExists(format!(
                    "node {} is already a member at {} ({}); remove it first or pick another id",
                    req.node_id, node.address, node.region
                )));
            }
        } else if let Some((other, _)) = membership.nodes().find(|(_, n)| n.address == req.address) {
            return Err(Error::AlreadyExists(format!(
                "address {} already belongs to node {other}",
                req.address
            )));
        }
        let is_member = membership.get_node(&req.node_id).is_some();
        let is_voter = membership.voter_ids().any(|v| v == req.node_id);
        let (tx, rx) = mpsc::channel(16);
        let raft = self.raft.clone();
        let self_id = self.node_id;
        tokio::spawn(async move {
            let _guard = guard;
            let outcome = run_join(&raft, self_id, &req, is_member, is_voter, &tx).await;
            let last = outcome
                .map(|message| progress("done", 0, 0, true, message))
                .map_err(Status::from);
            let _ = tx.send(last).await;
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Leader side of a join: learner, catch up, promote. Returns the final message.
async fn run_join(
    raft: &Raft,
    self_id: u64,
    req: &JoinRequest,
    is_member: bool,
    is_voter: bool,
    tx: &mpsc::Sender<std::result::Result<JoinProgress, Status>>,
) -> Result<String> {
    let id = req.node_id;
    if is_voter {
        return Ok(format!("node {id} is already a voter"));
    }
    let what = format!("join node {id}");
    if !is_member {
        let _ = tx
            .send(Ok(progress(
                "adding",
                0,
                0,
                false,
                format!("adding node {id} as a learner"),
            )))
            .await;
        let node = NodeInfo {
            address: req.address.clone(),
            region: req.region.clone(),
        };
        change_membership_guarded(
            raft,
            self_id,
            ChangeMembers::AddNodes(BTreeMap::from([(id, node)])),
            &what,
        )
        .await?;
        tracing::info!(node = id, address = %req.address, region = %req.region, "learner added");
    }
    wait_for_catch_up(raft, req, &what, tx).await?;
    if req.learner_only {
        return Ok(format!("node {id} has caught up and stays a learner"));
    }
    let _ = tx
        .send(Ok(progress(
            "promoting",
            0,
            0,
            false,
            format!("promoting node {id} to voter"),
        )))
        .await;
    change_membership_guarded(raft, self_id, ChangeMembers::AddVoterIds(BTreeSet::from([id])), &what).await?;
    tracing::info!(node = id, "node promoted to voter");
    Ok(format!("node {id} is a voter"))
}

/// Wait until the learner `req.node_id` is within [`JOIN_LAG_MAX`] entries
/// of this leader, reporting progress to `tx` every [`JOIN_PROGRESS_EVERY`].
async fn wait_for_catch_up(
    raft: &Raft,
    req: &JoinRequest,
    what: &str,
    tx: &mpsc::Sender<std::result::Result<JoinProgress, Status>>,
) -> Result<()> {
    let id = req.node_id;
    let timeout = match req.timeout_ms {
        0 => JOIN_TIMEOUT_DEFAULT,
        ms => Duration::from_millis(u64::from(ms)),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_report = None::<tokio::time::Instant>;
    let mut caller_gone = false;
    loop {
        let metrics = raft.metrics().borrow_watched().clone();
        if metrics.state != ServerState::Leader {
            return Err(Error::Unavailable(format!(
                "{what}: this node stopped leading during the join; node {id} stays a learner — retry the join"
            )));
        }
        let target = metrics.last_log_index.unwrap_or(0);
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index);
        let lag = target.saturating_sub(matched.unwrap_or(0));
        if matched.is_some() && lag <= JOIN_LAG_MAX {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Error::DeadlineExceeded(format!(
                "{what}: not caught up within {timeout:?} ({lag} entries behind); it stays a learner — is it running at {}?",
                req.address
            )));
        }
        if !caller_gone && last_report.is_none_or(|t| now.duration_since(t) >= JOIN_PROGRESS_EVERY) {
            last_report = Some(now);
            let message = format!("node {id} at index {} of {target}", matched.unwrap_or(0));
            if tx
                .send(Ok(progress(
                    "catching-up",
                    matched.unwrap_or(0),
                    target,
                    false,
                    message,
                )))
                .await
                .is_err()
            {
                // Said once: the join goes on, with no one left to report to.
                caller_gone = true;
                tracing::info!(node = id, "join caller went away; continuing the join");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn progress(phase: &str, matched: u64, target: u64, done: bool, message: String) -> JoinProgress {
    JoinProgress {
        phase: phase.to_string(),
        matched_index: matched,
        target_index: target,
        lag: target.saturating_sub(matched),
        done,
        message,
    }
}

fn validate_region(region: &str) -> Result<()> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "region {region:?} must be 1..=64 characters of [a-z0-9_-]"
        )))
    }
}

/// A node asking to be admitted: through which member, as whom, from
/// where, and the root key its request is signed with.
pub struct Joining {
    pub via: String,
    pub id: u64,
    pub address: String,
    pub region: String,
    pub dial: crate::peer_dial::PeerDial,
    pub access: AccessMode,
    /// Stay a learner (`--learner`).
    pub learner: bool,
}

/// Ask `via` (any member) to admit this node; retry until admitted, refused
/// for good, or shut down. A node that is already a voter is told so at once.
///
/// An attempt whose answer is lost may still have admitted the node, and an
/// operator may have removed it since: so once this node has been a voter
/// (in its own view of the membership) it never asks again. Otherwise a
/// removed node whose join loop was still retrying added itself back.
pub async fn join_cluster(raft: Raft, joining: Joining, shutdown: CancellationToken) {
    let via = joining.via.clone();
    let was_voter = watch_voter(raft, joining.id, shutdown.clone());
    let mut backoff = Duration::from_millis(200);
    loop {
        if was_voter.load(std::sync::atomic::Ordering::Acquire) {
            tracing::info!(%via, "this node has been a voter since it started; not asking to join again");
            return;
        }
        let attempt = join_once(&joining);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(message) => {
                tracing::info!(%via, "joined the cluster: {message}");
                return;
            }
            Err(status)
                if matches!(
                    status.code(),
                    Code::AlreadyExists | Code::InvalidArgument | Code::NotFound | Code::PermissionDenied
                ) =>
            {
                tracing::error!(%via, code = ?status.code(), "the cluster refused to admit this node: {}", status.message());
                return;
            }
            // A refused token is retried: it may be this node's clock, which
            // can be put right without a restart (a wrong root key is not,
            // and the line says so every attempt).
            Err(status) if status.code() == Code::Unauthenticated => {
                tracing::error!(%via, retry_in = ?backoff, "the cluster refused this node's root-key token (same --root-key-file as the members? clocks within 30 s?): {}", status.message());
            }
            Err(status) => {
                tracing::warn!(%via, code = ?status.code(), retry_in = ?backoff, "join attempt failed: {}", status.message());
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(JOIN_RETRY_MAX);
    }
}

/// A flag set once `id` is a voter in this node's view of the membership.
fn watch_voter(raft: Raft, id: u64, shutdown: CancellationToken) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = flag.clone();
    tokio::spawn(async move {
        let mut metrics = raft.metrics();
        loop {
            let is_voter = metrics
                .borrow_watched()
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == id);
            if is_voter {
                set.store(true, std::sync::atomic::Ordering::Release);
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
        }
    });
    flag
}

async fn join_once(joining: &Joining) -> std::result::Result<String, Status> {
    let mut client = joining.dial.admin_client(&joining.via)?;
    let request = JoinRequest {
        node_id: joining.id,
        address: joining.address.clone(),
        region: joining.region.clone(),
        learner_only: joining.learner,
        timeout_ms: 0,
    };
    let mut stream = client
        .join(joining.access.node_request(methods::JOIN, request))
        .await?
        .into_inner();
    while let Some(progress) = stream.message().await? {
        if progress.done {
            return Ok(progress.message);
        }
        tracing::info!(phase = %progress.phase, lag = progress.lag, "join: {}", progress.message);
    }
    Err(crate::Error::Unavailable("the join stream ended before the join finished".into()).into())
}
