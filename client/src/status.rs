//! The cluster's status as clients see it, with typed roles.
//!
//! Nodes report roles and kinds as strings (`NodeStatus.role`,
//! `Member.role`, `Member.kind`); they are parsed into [`Role`]
//! and [`Kind`] here and nowhere else. JSON output (`txlog status --json`)
//! writes them back as the same lowercase strings.

use std::time::Duration;

use tonic::Status;
use txlog_proto::Member;
use txlog_proto::NodeStatus;

use crate::Client;
use crate::ClientError;

/// What a node is doing, as `txlog status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    /// Replicated to, no vote.
    Learner,
    /// Standing for election.
    Candidate,
    /// Shutting down.
    Shutdown,
    /// Did not answer, or the leader has not heard from it lately.
    Down,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Leader,
        Role::Follower,
        Role::Learner,
        Role::Candidate,
        Role::Shutdown,
        Role::Down,
    ];

    /// The wire and display name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Learner => "learner",
            Role::Candidate => "candidate",
            Role::Shutdown => "shutdown",
            Role::Down => "down",
        }
    }

    /// The role a wire name stands for; `None` for an empty or unknown one.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Whether a member votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Voter,
    Learner,
}

impl Kind {
    /// The wire and display name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Voter => "voter",
            Kind::Learner => "learner",
        }
    }

    /// The kind a wire name stands for; `None` for an empty or unknown one.
    pub fn parse(name: &str) -> Option<Kind> {
        [Kind::Voter, Kind::Learner].into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
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

impl ClusterStatus {
    /// Ids of the voting members, ascending.
    pub fn voters(&self) -> Vec<u64> {
        let mut voters: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.kind == Kind::Voter)
            .map(|n| n.id)
            .collect();
        voters.sort_unstable();
        voters
    }

    /// Whether a leader is known and one of the nodes reports leading.
    pub fn has_leader(&self) -> bool {
        self.leader_id.is_some() && self.nodes.iter().any(|n| n.role == Role::Leader)
    }

    /// Whether there is a leader and every member is up, a voter, and has
    /// applied everything the leader has committed: the cluster as a user
    /// expects it when told it is "up".
    pub fn every_voter_caught_up(&self) -> bool {
        self.has_leader()
            && self
                .nodes
                .iter()
                .all(|n| n.is_up() && n.kind == Kind::Voter && n.applied_index >= self.commit_index)
    }
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
    pub role: Role,
    pub kind: Kind,
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
    /// The KEKs the node's key file holds, as it loaded them.
    pub kek_ids: Vec<u32>,
    /// The KEK the node wraps new keys under (0: unsealed or not answering).
    pub kek_current: u32,
}

impl NodeView {
    /// Whether the node answered and the leader counts it as alive.
    pub fn is_up(&self) -> bool {
        self.role != Role::Down
    }

    /// One member as the view's node sees it, completed by the member's own
    /// answer (`None`: it did not answer).
    fn new(member: &Member, answer: Option<&NodeStatus>) -> NodeView {
        // A member of unknown kind is not counted as a voter.
        let kind = Kind::parse(&member.kind).unwrap_or(Kind::Learner);
        let role = match answer {
            None => Role::Down,
            Some(own) => merged_role(Role::parse(&member.role), Role::parse(&own.role), kind),
        };
        NodeView {
            id: member.id,
            region: member.region.clone(),
            address: member.address.clone(),
            role,
            kind,
            match_index: member.match_index,
            lag: member.lag,
            heartbeat_age_ms: (member.heartbeat_age_ms >= 0).then_some(member.heartbeat_age_ms as u64),
            pid: answer.map(|s| s.pid).unwrap_or(0),
            snapshot_index: answer.map(|s| s.snapshot_index).unwrap_or(0),
            purged_index: answer.map(|s| s.purged_index).unwrap_or(0),
            applied_index: answer.map(|s| s.applied_index).unwrap_or(0),
            last_seq: answer.map(|s| s.last_seq).unwrap_or(0),
            term: answer.map(|s| s.term).unwrap_or(0),
            kek_ids: answer.map(|s| s.kek_ids.clone()).unwrap_or_default(),
            kek_current: answer.map(|s| s.kek_current).unwrap_or(0),
        }
    }
}

/// The role of a member that answered: the viewing node's word for it when
/// it has one (the leader's, which knows who is behind or silent), else the
/// member's own.
fn merged_role(seen: Option<Role>, own: Option<Role>, kind: Kind) -> Role {
    match (seen, own) {
        (Some(role), _) => role,
        (None, Some(Role::Leader)) => Role::Leader,
        (None, _) if kind == Kind::Learner => Role::Learner,
        (None, Some(role @ (Role::Candidate | Role::Shutdown))) => role,
        (None, _) => Role::Follower,
    }
}

/// Each address asked, with its answer.
type Answers = Vec<(String, Result<NodeStatus, ClientError>)>;

impl Client {
    /// Ask every listed node, and every member an answer names, for its status.
    async fn ask_every_node(&self) -> Answers {
        let mut addresses: Vec<String> = self.endpoints().to_vec();
        let mut answers = Answers::new();
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
        answers
    }

    /// Status of every node: asks each known address (plus every member the
    /// cluster reports) and marks the ones that do not answer as down.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        let answers = self.ask_every_node().await;
        let reachable: Vec<&NodeStatus> = answers.iter().filter_map(|(_, a)| a.as_ref().ok()).collect();
        // Prefer the leader's own view of membership and progress.
        let view = reachable
            .iter()
            .find(|s| Role::parse(&s.role) == Some(Role::Leader))
            .or_else(|| reachable.iter().max_by_key(|s| s.term))
            .copied();
        let Some(view) = view else {
            // Every node refused: the leader's refusal is the current one (a
            // follower may not have applied an access change yet, and name a
            // new key unknown), so it wins over the others.
            let leader = self.leader_route().ok().map(|route| route.address);
            let mut refusals: Vec<(String, ClientError)> = answers
                .into_iter()
                .filter_map(|(a, answer)| Some((a, answer.err()?)))
                .collect();
            let pick = refusals
                .iter()
                .position(|(a, _)| Some(a) == leader.as_ref())
                .or(refusals.len().checked_sub(1));
            return Err(match pick {
                Some(i) => refusals.swap_remove(i).1,
                None => ClientError::BadCluster("no nodes".into()),
            });
        };
        let nodes = view
            .members
            .iter()
            .map(|member| {
                let answer = answers
                    .iter()
                    .find(|(a, _)| *a == member.address)
                    .and_then(|(_, a)| a.as_ref().ok());
                NodeView::new(member, answer)
            })
            .collect();
        Ok(ClusterStatus {
            leader_id: (view.leader_id != 0).then_some(view.leader_id),
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
        self.wait_for_status(timeout, "a leader elected", ClusterStatus::has_leader)
            .await
    }

    /// Wait until the cluster's status satisfies `ready` (described by
    /// `what` in the error), up to `timeout`.
    pub async fn wait_for_status(
        &self,
        timeout: Duration,
        what: &str,
        ready: impl Fn(&ClusterStatus) -> bool,
    ) -> Result<ClusterStatus, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.cluster_status().await {
                Ok(status) if ready(&status) => return Ok(status),
                Ok(_) | Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(ClientError::Exhausted {
                        attempts: 0,
                        last: Status::unavailable(format!("not {what} within {timeout:?}")),
                    })
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every role and kind survives its wire name and its JSON form;
    /// unknown names parse to nothing.
    #[test]
    fn role_and_kind_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(format!("{role}"), role.as_str());
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
            assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), role);
        }
        for kind in [Kind::Voter, Kind::Learner] {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<Kind>(&json).unwrap(), kind);
        }
        assert_eq!(Role::parse(""), None);
        assert_eq!(Role::parse("Leader"), None);
        assert_eq!(Kind::parse("witness"), None);
        assert_eq!(format!("{:<9}|", Role::Down), "down     |");
    }

    /// The viewing node's word wins; without it a member's own role counts,
    /// learners stay learners, and anything else is a follower.
    #[test]
    fn merged_roles() {
        use Role::*;
        assert_eq!(merged_role(Some(Down), Some(Follower), Kind::Voter), Down);
        assert_eq!(merged_role(None, Some(Leader), Kind::Voter), Leader);
        assert_eq!(merged_role(None, Some(Follower), Kind::Learner), Learner);
        assert_eq!(merged_role(None, Some(Candidate), Kind::Voter), Candidate);
        assert_eq!(merged_role(None, Some(Shutdown), Kind::Voter), Shutdown);
        assert_eq!(merged_role(None, None, Kind::Voter), Follower);
    }
}
