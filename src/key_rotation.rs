//! Keys announced through the log, by the leader.
//!
//! While this node leads, it checks every [`KEY_CHECK_INTERVAL`], and at
//! once when its role changes, whether the log lacks its signing key,
//! whether that key is older than `signing_key_rotate_s`, and whether the
//! current data key is older than `data_key_rotate_s`, has its nonce
//! counter half used, or is one this node holds no nonce reservation for;
//! what is due is proposed as one plain batch of key events (see
//! `txlog_raft::Keys`), and the batcher seals under the new keys once they
//! are applied. A node seals only under data keys it reserved counters for
//! itself (nonces must never repeat, across restarts too), and the current
//! data key is the last leader's, so a new leader announces a data key of
//! its own before its first batch: failover costs one commit round more.
//!
//! An operator can ask for keys now (`txlog keys rotate`, the admin
//! `RotateKeys` call) or for a KEK rotation (`txlog keys rotate-kek`, the
//! admin `RotateKek` call: every applied key wrapped again under the key
//! file's newest KEK): the request is queued to this same task
//! ([`Rotations`]), so every announcement of a node is prepared and
//! proposed by one task, one at a time — two concurrent preparations could
//! otherwise pick the same free key id for two different keys, and a data
//! key announced during a rewrap could miss it.

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
/// Key events per rewrap batch: a year of hourly data keys is ~8,800.
const REWRAP_EVENTS_PER_BATCH_MAX: usize = 256;
/// Rewrap batches per KEK rotation; more means keys keep appearing.
const REWRAP_BATCHES_MAX: usize = 256;

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

/// What an operator asked the task for.
#[derive(Debug, Clone, Copy)]
enum Job {
    Keys(Rotate),
    /// Rewrap every applied key under KEK `kek_id`.
    Rewrap {
        kek_id: u32,
    },
}

type Request = (Job, oneshot::Sender<Result<Announced>>);

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
        self.ask(Job::Keys(rotate)).await
    }

    /// Wrap every applied data key and prove every first signing key again
    /// under KEK `kek_id`, which must be this node's newest.
    pub async fn rewrap(&self, kek_id: u32) -> Result<Announced> {
        self.ask(Job::Rewrap { kek_id }).await
    }

    async fn ask(&self, job: Job) -> Result<Announced> {
        let (reply, answer) = oneshot::channel();
        self.0
            .try_send((job, reply))
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
    // Role changes wake the task at once: a new leader that needs a key
    // announces it now, not up to one check interval later, since its
    // first client batches wait for it (this was ~25 ms of every failover).
    let mut server = raft.server_metrics();
    loop {
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => None,
            Ok(()) = server.changed() => None,
            Some(request) = requests.0.recv() => Some(request),
        };
        let leading = server.borrow_watched().state == ServerState::Leader;
        let Some((job, reply)) = forced else {
            if leading {
                let due = (sealing.signing_key_rotate, sealing.data_key_rotate);
                if let Err(err) = announce(&raft, node_id, &sealer, due, &metrics, &shutdown).await {
                    tracing::debug!(%err, "keys not announced");
                }
            }
            continue;
        };
        let outcome = match job {
            _ if !leading => Err(Error::Unavailable("this node no longer leads; retry".into())),
            Job::Keys(rotate) => {
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
            }
            Job::Rewrap { kek_id } => rewrap(&raft, node_id, &sealer, kek_id, &metrics, &shutdown).await,
        };
        let _ = reply.send(outcome);
    }
}

/// Propose rewraps of every applied key under KEK `kek_id`, in batches,
/// until the keyring has none left to rewrap; wait until each is applied.
async fn rewrap(
    raft: &Raft,
    node_id: u64,
    sealer: &Sealer,
    kek_id: u32,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<Announced> {
    let keys = sealer.keys();
    let current = keys.current_kek();
    if current != kek_id {
        return Err(Error::FailedPrecondition(format!(
            "the leader's newest key-encryption key is {current}, not {kek_id}: it has not loaded the new key file yet (nodes reload it within {:?} of a change)",
            crate::key_file_watch::KEY_FILE_POLL
        )));
    }
    let mut announced = Announced {
        keys: Vec::new(),
        log_index: 0,
    };
    for _ in 0..REWRAP_BATCHES_MAX {
        let events = keys.rewrap_events(REWRAP_EVENTS_PER_BATCH_MAX).map_err(|err| {
            tracing::error!(%err, "cannot prepare a rewrap");
            Error::Internal(format!("cannot prepare a rewrap: {err}"))
        })?;
        if events.is_empty() {
            tracing::info!(
                kek = kek_id,
                rewrapped = announced.keys.len(),
                "every key is wrapped under the newest key-encryption key"
            );
            return Ok(announced);
        }
        let batch = propose(raft, node_id, events, metrics, shutdown).await?;
        announced.keys.extend(batch.keys);
        announced.log_index = batch.log_index;
    }
    Err(Error::Internal(format!(
        "keys still left to rewrap after {REWRAP_BATCHES_MAX} batches"
    )))
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
    propose(raft, node_id, events, metrics, shutdown).await
}

/// Propose `events` as one plain batch and wait until it is applied.
async fn propose(
    raft: &Raft,
    node_id: u64,
    events: Vec<KeyEvent>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<Announced> {
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
        KeyEvent::Rewrap(a) => format!("data key {} rewrapped under KEK {}", a.id, a.kek_id),
        KeyEvent::Reprove(a) => format!("signing key {} of node {} proven under the new KEK", a.id, a.node_id),
    }
}
