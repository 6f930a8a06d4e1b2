//! `AdminService`: what operators ask a node. Today: `Status`, this node's
//! view of the cluster (role, term, leader, indexes, members with their
//! replication progress when this node leads).

use tonic::Request;
use tonic::Response;
use tonic::Status;
use txlog_proto::admin_service_server::AdminService;
use txlog_proto::Member;
use txlog_proto::NodeStatus;
use txlog_proto::StatusRequest;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::openraft::ServerState;
use txlog_raft::Raft;
use txlog_raft::StateMachineReader;

pub struct AdminServer {
    pub node_id: u64,
    pub region: String,
    pub address: String,
    pub raft: Raft,
    pub reader: StateMachineReader,
}

pub fn role_name(state: ServerState, is_learner: bool) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
        ServerState::Learner => "learner",
        ServerState::Follower if is_learner => "learner",
        ServerState::Follower => "follower",
    }
}

#[tonic::async_trait]
impl AdminService for AdminServer {
    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<NodeStatus>, Status> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let is_learner = !voters.contains(&self.node_id);
        let replication = metrics.replication.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                region: node.region.clone(),
                address: node.address.clone(),
                kind: if voters.contains(id) { "voter" } else { "learner" }.to_string(),
                match_index: replication
                    .get(id)
                    .and_then(|m| m.as_ref().map(|l| l.index))
                    .unwrap_or(0),
            })
            .collect();
        Ok(Response::new(NodeStatus {
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
            members,
        }))
    }
}
