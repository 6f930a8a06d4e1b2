//! Keys announced through the log, by the leader.
//!
//! While this node leads, it checks every [`KEY_CHECK_INTERVAL`] whether
//! the log lacks its signing key, whether that key is older than
//! `signing_key_rotate_s`, and whether the current data key is older than
//! `data_key_rotate_s` (or its nonce counter is half used); what is due is
//! proposed as one plain batch of key events (see `txlog_raft::Keys`), and
//! the batcher seals under the new keys once they are applied. A new
//! leader whose keys are already in the log proposes nothing, so failover
//! costs no extra round; the first leader of a cluster announces its keys
//! within one check.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::openraft::ServerState;
use txlog_raft::KeyEvent;
use txlog_raft::Raft;
use txlog_raft::Sealer;

use crate::config::Sealing;
use crate::metrics::Metrics;

/// How often a leader checks whether a key is due.
pub const KEY_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How long one announcement may take to commit before it is tried again.
pub const KEY_PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(
    raft: Raft,
    node_id: u64,
    sealer: Arc<Sealer>,
    sealing: Sealing,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(KEY_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if raft.metrics().borrow_watched().state != ServerState::Leader {
            continue;
        }
        let events = match sealer.due_events(sealing.signing_key_rotate, sealing.data_key_rotate) {
            Ok(events) => events,
            Err(err) => {
                tracing::error!(%err, "cannot prepare a key announcement");
                continue;
            }
        };
        if events.is_empty() {
            continue;
        }
        let described: Vec<String> = events.iter().map(describe).collect();
        let written = tokio::select! {
            _ = shutdown.cancelled() => return,
            written = tokio::time::timeout(KEY_PROPOSE_TIMEOUT, raft.client_write(KeyEvent::frame(node_id, &events))) => written,
        };
        match written {
            Ok(Ok(response)) => match response.data.error {
                None => {
                    metrics.key_announcements.inc_by(events.len() as u64);
                    tracing::info!(keys = ?described, log_id = %response.log_id, "keys announced");
                }
                Some(err) => tracing::error!(keys = ?described, %err, "key announcement rejected by the state machine"),
            },
            // Leadership moved on; the next leader announces what it needs.
            Ok(Err(err)) => tracing::debug!(keys = ?described, %err, "key announcement not committed"),
            Err(_) => {
                tracing::warn!(keys = ?described, "key announcement did not commit within {KEY_PROPOSE_TIMEOUT:?}")
            }
        }
    }
}

fn describe(event: &KeyEvent) -> String {
    match event {
        KeyEvent::Signing(a) => format!("signing key {} of node {}", a.id, a.node_id),
        KeyEvent::Data(a) => format!("data key {}", a.id),
    }
}
