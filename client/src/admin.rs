//! `AdminService` calls: one node's status, membership changes, snapshot
//! and compaction.

use std::time::Duration;

use tonic::transport::Channel;
use txlog_proto::admin_service_client::AdminServiceClient;
use txlog_proto::AccessChange;
use txlog_proto::AccessList;
use txlog_proto::AddClientKeyRequest;
use txlog_proto::CompactRequest;
use txlog_proto::CompactResponse;
use txlog_proto::JoinProgress;
use txlog_proto::JoinRequest;
use txlog_proto::ListAccessRequest;
use txlog_proto::MembershipResponse;
use txlog_proto::NodeStatus;
use txlog_proto::RemoveRequest;
use txlog_proto::RevokeClientKeyRequest;
use txlog_proto::RotateKekRequest;
use txlog_proto::RotateKeysRequest;
use txlog_proto::RotateKeysResponse;
use txlog_proto::SetAllowlistRequest;
use txlog_proto::SetRoleRequest;
use txlog_proto::SnapshotRequest;
use txlog_proto::SnapshotResponse;
use txlog_proto::StatusRequest;
use txlog_proto::TransferLeaderRequest;

use crate::methods;
use crate::normalize_address;
use crate::retry::Call;
use crate::retry::Retry;
use crate::retry::Shape;
use crate::retry::Target;
use crate::Client;
use crate::ClientError;
use crate::ADMIN_RPC_TIMEOUT;
use crate::SNAPSHOT_RPC_TIMEOUT;
use crate::STATUS_RPC_TIMEOUT;

fn admin_service(channel: Channel) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(channel)
}

/// A membership call: any member takes it (members forward it to the
/// leader); retried only while nodes answer `UNAVAILABLE`.
fn membership_call(name: &'static str, method: &'static str, shape: Shape) -> Call<'static> {
    Call {
        name,
        method: Some(method),
        target: Target::Leader,
        retry: Retry::Unavailable,
        shape,
        deadline: ADMIN_RPC_TIMEOUT,
    }
}

/// A call to the one node at `address`, tried once.
fn node_call<'a>(name: &'static str, method: &'static str, address: &'a str, deadline: Duration) -> Call<'a> {
    Call {
        name,
        method: Some(method),
        target: Target::Node(address),
        retry: Retry::Never,
        shape: Shape::Unary,
        deadline,
    }
}

impl Client {
    /// One node's own status, no retries.
    pub async fn node_status(&self, address: &str) -> Result<NodeStatus, ClientError> {
        let address = normalize_address(address)?;
        let call = node_call("status", methods::STATUS, &address, STATUS_RPC_TIMEOUT);
        self.call(call, StatusRequest {}, |route, request| async move {
            admin_service(route.channel)
                .status(request)
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Start a join; progress messages follow, the last one has `done`. The
    /// stream ends within the request's `timeout_ms` (the server's default
    /// when 0).
    pub async fn join(&self, request: JoinRequest) -> Result<tonic::Streaming<JoinProgress>, ClientError> {
        self.call(
            membership_call("join", methods::JOIN, Shape::Stream),
            request,
            |route, request| async move { admin_service(route.channel).join(request).await.map(|r| r.into_inner()) },
        )
        .await
    }

    /// Take node `node_id` out of the cluster.
    pub async fn remove_node(&self, node_id: u64) -> Result<MembershipResponse, ClientError> {
        self.call(
            membership_call("remove", methods::REMOVE, Shape::Unary),
            RemoveRequest { node_id },
            |route, request| async move {
                admin_service(route.channel)
                    .remove(request)
                    .await
                    .map(|r| r.into_inner())
            },
        )
        .await
    }

    /// Make voter `node_id` the leader.
    pub async fn transfer_leader(&self, node_id: u64) -> Result<MembershipResponse, ClientError> {
        self.call(
            membership_call("transfer_leader", methods::TRANSFER_LEADER, Shape::Unary),
            TransferLeaderRequest { node_id },
            |route, request| async move {
                admin_service(route.channel)
                    .transfer_leader(request)
                    .await
                    .map(|r| r.into_inner())
            },
        )
        .await
    }

    /// Build a snapshot on the node at `address` now.
    pub async fn snapshot_node(&self, address: &str) -> Result<SnapshotResponse, ClientError> {
        let address = normalize_address(address)?;
        let call = node_call("snapshot", methods::SNAPSHOT, &address, SNAPSHOT_RPC_TIMEOUT);
        self.call(call, SnapshotRequest {}, |route, request| async move {
            admin_service(route.channel)
                .snapshot(request)
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Purge the WAL of the node at `address` behind its latest snapshot.
    pub async fn compact_node(&self, address: &str) -> Result<CompactResponse, ClientError> {
        let address = normalize_address(address)?;
        let call = node_call("compact", methods::COMPACT, &address, ADMIN_RPC_TIMEOUT);
        self.call(call, CompactRequest {}, |route, request| async move {
            admin_service(route.channel)
                .compact(request)
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Wrap every data key, and prove every first signing key, again under
    /// KEK `kek_id` (the key file's newest), on the leader.
    pub async fn rotate_kek(&self, kek_id: u32) -> Result<RotateKeysResponse, ClientError> {
        self.call(
            membership_call("rotate_kek", methods::ROTATE_KEK, Shape::Unary),
            RotateKekRequest { kek_id },
            |route, request| async move {
                admin_service(route.channel)
                    .rotate_kek(request)
                    .await
                    .map(|r| r.into_inner())
            },
        )
        .await
    }

    /// Announce new sealing keys now (a data key, the leader's signing
    /// key, or both when neither is asked for), on the leader.
    pub async fn rotate_keys(&self, data: bool, signing: bool) -> Result<RotateKeysResponse, ClientError> {
        self.call(
            membership_call("rotate_keys", methods::ROTATE_KEYS, Shape::Unary),
            RotateKeysRequest { data, signing },
            |route, request| async move {
                admin_service(route.channel)
                    .rotate_keys(request)
                    .await
                    .map(|r| r.into_inner())
            },
        )
        .await
    }

    /// Add a client key (its secret and the roles it may claim) to the
    /// cluster's access policy, on the leader.
    pub async fn add_client_key(&self, request: AddClientKeyRequest) -> Result<AccessChange, ClientError> {
        self.call(
            membership_call("add_client_key", methods::ADD_CLIENT_KEY, Shape::Unary),
            request,
            |route, request| async move {
                admin_service(route.channel)
                    .add_client_key(request)
                    .await
                    .map(|r| r.into_inner())
            },
        )
        .await
    }

    /// Revoke a client key, on the leader.
    pub async fn revoke_client_key(&self, key_id: &str) -> Result<AccessChange, ClientError> {
        self.call(
            membership_call("revoke_client_key", methods::REVOKE_CLIENT_KEY, Shape::Unary),
            RevokeClientKeyRequest {
                key_id: key_id.to_string(),
            },
            |route, request| async move {
                admin_service(route.channel)
                    .revoke_client_key(request)
                    .await
                    .map(|r| r.into_inner())
            },
        )
        .await
    }

    /// Define or replace a role (`OPERATIONS:CHANNELS` rules), on the leader.
    pub async fn set_role(&self, name: &str, rules: Vec<String>) -> Result<AccessChange, ClientError> {
        self.call(
            membership_call("set_role", methods::SET_ROLE, Shape::Unary),
            SetRoleRequest {
                name: name.to_string(),
                rules,
            },
            |route, request| async move {
                admin_service(route.channel)
                    .set_role(request)
                    .await
                    .map(|r| r.into_inner())
            },
        )
        .await
    }

    /// Replace the address allowlist `list` (`allow_clients`,
    /// `allow_admin`, `allow_peers`) on every node, or reset it to their
    /// configs (`cidrs: None`).
    pub async fn set_allowlist(&self, list: &str, cidrs: Option<Vec<String>>) -> Result<AccessChange, ClientError> {
        self.call(
            membership_call("set_allowlist", methods::SET_ALLOWLIST, Shape::Unary),
            SetAllowlistRequest {
                list: list.to_string(),
                reset: cidrs.is_none(),
                cidrs: cidrs.unwrap_or_default(),
            },
            |route, request| async move {
                admin_service(route.channel)
                    .set_allowlist(request)
                    .await
                    .map(|r| r.into_inner())
            },
        )
        .await
    }

    /// The client keys (without secrets) and roles the node at `address`
    /// has applied.
    pub async fn list_access(&self, address: &str) -> Result<AccessList, ClientError> {
        let address = normalize_address(address)?;
        let call = node_call("list_access", methods::LIST_ACCESS, &address, STATUS_RPC_TIMEOUT);
        self.call(call, ListAccessRequest {}, |route, request| async move {
            admin_service(route.channel)
                .list_access(request)
                .await
                .map(|r| r.into_inner())
        })
        .await
    }
}
