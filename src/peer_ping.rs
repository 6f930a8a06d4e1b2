//! Peer pings: every second a node pings each other member on its control
//! connection ([`Network::ping`]). A connection that broke (a peer
//! restarted) is dialled again here, off the critical path, so the votes
//! that follow a leader's death each cost one round trip rather than a TCP,
//! TLS and h2 handshake first — three or four round trips between regions,
//! more than a vote's deadline.
//!
//! The round trips measured are kept in [`PeerLatency`] (this node's
//! quorum RTT, exported as `txlog_quorum_rtt_seconds`), and each ping
//! carries this node's quorum RTT to the peer, for leader placement
//! (`prefer_region.rs`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::Network;
use txlog_raft::PeerLatency;
use txlog_raft::Raft;

use crate::metrics::Metrics;

/// How often each member is pinged.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Until every member has answered once (a node just started, its peers
/// maybe not yet), rounds come this often: a node learns its peers' clocks
/// and round trips within its first moments, not a second later.
const PING_FIRST_ROUND_EVERY: Duration = Duration::from_millis(100);
/// How long a ping may take, connecting included.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn run(
    raft: Raft,
    network: Network,
    latency: PeerLatency,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let self_id = latency.self_id();
    let mut pause = Duration::ZERO;
    let mut everyone_answered = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let (members, voters): (Vec<(u64, String)>, Vec<u64>) = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow_watched();
            let membership = metrics.membership_config.membership();
            (
                membership
                    .nodes()
                    .filter(|(id, _)| **id != self_id)
                    .map(|(id, node)| (*id, node.address.clone()))
                    .collect(),
                membership.voter_ids().collect(),
            )
        };
        let ids: Vec<u64> = members.iter().map(|(id, _)| *id).collect();
        latency.retain(&ids);
        let report = latency.report(&voters);
        let pings = members.iter().map(|(id, address)| {
            let network = &network;
            async move { (*id, network.ping(address, &report, PING_TIMEOUT).await) }
        });
        let mut answered = 0;
        for (id, outcome) in futures::future::join_all(pings).await {
            answered += usize::from(outcome.is_ok());
            match outcome {
                Ok((rtt, answer)) => {
                    tracing::trace!(peer = id, ?rtt, "ping");
                    latency.sample(id, rtt);
                    if let Some(answer) = answer.filter(|a| a.from == id) {
                        latency.receive_clock(answer);
                    }
                }
                Err(err) => tracing::debug!(peer = id, %err, "ping unanswered"),
            }
        }
        if let Some(rtt) = latency.quorum_rtt(&voters) {
            metrics.quorum_rtt_seconds.set(rtt.as_secs_f64());
        }
        everyone_answered |= !members.is_empty() && answered == members.len();
        pause = if everyone_answered {
            PING_EVERY
        } else {
            PING_FIRST_ROUND_EVERY
        };
    }
}
