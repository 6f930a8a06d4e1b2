//! Retry and deadline settings.
//!
//! Log calls (`append`, `read`, `lookup`) use [`ClientOptions::rpc_timeout`].
//! Admin calls wait on the server for slow things — a leadership change, a
//! membership commit, a snapshot build — so their deadlines are longer and
//! fixed here, each above the longest wait the server itself bounds, so the
//! server's own, more telling error arrives first.

use std::time::Duration;

/// Deadline of `node_status`: one node's in-memory view, answered at once
/// by a live node; `cluster_status` asks every node with it in turn.
pub const STATUS_RPC_TIMEOUT: Duration = Duration::from_millis(1000);

/// Deadline of `remove_node`, `transfer_leader`, `compact_node` and of
/// opening a `join` stream. The server waits at most 3 s for a leadership
/// change and 10 s for a purge; a membership change commits in one round
/// trip to a quorum, and this bounds it when there is no quorum.
pub const ADMIN_RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline of `snapshot_node`: the server waits up to 120 s for the
/// snapshot to be built before it answers `DEADLINE_EXCEEDED` itself.
pub const SNAPSHOT_RPC_TIMEOUT: Duration = Duration::from_secs(150);

/// Retry and deadline settings.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Deadline of one attempt of a log call, and of opening a `subscribe` stream.
    pub rpc_timeout: Duration,
    /// Attempts per call before it fails with `Exhausted`.
    pub attempts_max: u32,
    /// First pause between attempts; it doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// TCP connect timeout of each channel.
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
