//! Peer pings: every second a node pings each other member on its control
//! connection ([`Network::ping`]). A connection that broke (a peer
//! restarted) is dialled again here, off the critical path, so the votes
//! that follow a leader's death each cost one round trip rather than a TCP,
//! TLS and h2 handshake first — three or four round trips between regions,
//! more than a vote's deadline.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::Network;
use txlog_raft::Raft;

/// How often each member is pinged.
const PING_EVERY: Duration = Duration::from_secs(1);
/// How long a ping may take, connecting included.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn run(raft: Raft, self_id: u64, network: Network, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let members: Vec<(u64, String)> = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow_watched();
            metrics
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self_id)
                .map(|(id, node)| (*id, node.address.clone()))
                .collect()
        };
        let pings = members.iter().map(|(id, address)| {
            let network = &network;
            async move { (*id, network.ping(address, PING_TIMEOUT).await) }
        });
        for (id, outcome) in futures::future::join_all(pings).await {
            match outcome {
                Ok(rtt) => tracing::trace!(peer = id, ?rtt, "ping"),
                Err(err) => tracing::debug!(peer = id, %err, "ping unanswered"),
            }
        }
    }
}
