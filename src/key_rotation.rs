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
//!
//! An operator can ask for keys now (`txlog keys rotate`, the admin
//! `RotateKeys` call): the request is queued to this same task
//! ([`Rotations`]), so every announcement of a node is prepared and
//! proposed by one task, one at a time — two concurrent preparations could
//! otherwise pick the same free key id for two different keys.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;
use txlog_raft::openraft::ServerState;
use txlog_raft::KeyEvent;
use txlog_raft::Raft;
use txlog_raft::Sealer;

use crate::config::Sealing;
use crate::metrics::Metrics;
use crate::Error;
use crate::Result;

/// How often a leader checks whether a key is due.
pub const KEY_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How long one announcement may take to commit before it is tried again.
pub const KEY_PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Operator requests waiting for the task.
const ROTATIONS_QUEUED_MAX: usize = 8;

/// Which keys an operator asked for.
#[derive(Debug, Clone, Copy)]
pub struct Rotate {
    pub data: bool,
    pub signing: bool,
}

/// What one announcement put in the log.
#[derive(Debug)]
pub struct Announced {
    /// e.g. "data key 7", "signing key 3 of node 2".
    pub keys: Vec<String>,
    pub log_index: u64,
}

type Request = (Rotate, oneshot::Sender<Result<Announced>>);

/// The admin service's way to ask the rotation task for keys now.
#[derive(Clone)]
pub struct Rotations(mpsc::Sender<Request>);

/// Where the rotation task takes operator requests from.
pub struct RotationRequests(mpsc::Receiver<Request>);

pub fn rotations() -> (Rotations, RotationRequests) {
    let (tx, rx) = mpsc::channel(ROTATIONS_QUEUED_MAX);
    (Rotations(tx), RotationRequests(rx))
}

impl Rotations {
    /// Announce the keys `rotate` names, once committed and applied.
    pub async fn rotate(&self, rotate: Rotate) -> Result<Announced> {
        let (reply, answer) = oneshot::channel();
        self.0
            .try_send((rotate, reply))
            .map_err(|_| Error::Unavailable("key rotations are queued up (or the node is stopping); retry".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the node stopped before the keys were announced".into()))?
    }
}

pub async fn run(
    raft: Raft,
    node_id: u64,
    sealer: Arc<Sealer>,
    sealing: Sealing,
    metrics: Arc<Metrics>,
    mut requests: RotationRequests,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(KEY_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => None,
            Some(request) = requests.0.recv() => Some(request),
        };
        let leading = raft.metrics().borrow_watched().state == ServerState::Leader;
        let Some((rotate, reply)) = forced else {
            if leading {
                let due = (sealing.signing_key_rotate, sealing.data_key_rotate);
                if let Err(err) = announce(&raft, node_id, &sealer, due, &metrics, &shutdown).await {
                    tracing::debug!(%err, "keys not announced");
                }
            }
            continue;
        };
        let outcome = if !leading {
            Err(Error::Unavailable("this node no longer leads; retry".into()))
        } else {
            // A zero age makes the key due now.
            let due = (
                if rotate.signing {
                    Duration::ZERO
                } else {
                    sealing.signing_key_rotate
                },
                if rotate.data {
                    Duration::ZERO
                } else {
                    sealing.data_key_rotate
                },
            );
            announce(&raft, node_id, &sealer, due, &metrics, &shutdown).await
        };
        let _ = reply.send(outcome);
    }
}

/// Propose the key events due under `(signing, data)` rotation ages as one
/// batch and wait until it is applied. Nothing due: an empty announcement.
async fn announce(
    raft: &Raft,
    node_id: u64,
    sealer: &Sealer,
    (signing_rotate, data_rotate): (Duration, Duration),
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<Announced> {
    let events = sealer.due_events(signing_rotate, data_rotate).map_err(|err| {
        tracing::error!(%err, "cannot prepare a key announcement");
        Error::Internal(format!("cannot prepare a key announcement: {err}"))
    })?;
    if events.is_empty() {
        return Ok(Announced {
            keys: Vec::new(),
            log_index: 0,
        });
    }
    let described: Vec<String> = events.iter().map(describe).collect();
    let written = tokio::select! {
        _ = shutdown.cancelled() => return Err(Error::Unavailable("the node is stopping".into())),
        written = tokio::time::timeout(KEY_PROPOSE_TIMEOUT, raft.client_write(KeyEvent::frame(node_id, &events))) => written,
    };
    match written {
        Ok(Ok(response)) => match response.data.error {
            None => {
                metrics.key_announcements.inc_by(events.len() as u64);
                tracing::info!(keys = ?described, log_id = %response.log_id, "keys announced");
                Ok(Announced {
                    keys: described,
                    log_index: response.log_id.index,
                })
            }
            Some(err) => {
                tracing::error!(keys = ?described, %err, "key announcement rejected by the state machine");
                Err(Error::Internal(format!(
                    "key announcement rejected by the state machine: {err}"
                )))
            }
        },
        // Leadership moved on; the next leader announces what it needs.
        Ok(Err(err)) => {
            tracing::debug!(keys = ?described, %err, "key announcement not committed");
            Err(Error::Unavailable(format!(
                "key announcement not committed: {err}; retry"
            )))
        }
        Err(_) => {
            tracing::warn!(keys = ?described, "key announcement did not commit within {KEY_PROPOSE_TIMEOUT:?}");
            Err(Error::Unavailable(format!(
                "key announcement did not commit within {KEY_PROPOSE_TIMEOUT:?}; retry"
            )))
        }
    }
}

fn describe(event: &KeyEvent) -> String {
    match event {
        KeyEvent::Signing(a) => format!("signing key {} of node {}", a.id, a.node_id),
        KeyEvent::Data(a) => format!("data key {}", a.id),
    }
}
