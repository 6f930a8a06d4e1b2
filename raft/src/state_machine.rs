//! The replicated state machine: applies batch entries to the record store.
//!
//! Invariants:
//! * Apply is idempotent by log index: an entry at or below the applied log id
//!   is skipped, so openraft may re-apply from the WAL after the record store
//!   lost its last writes in a crash.
//! * One `apply` call is one record-store batch: its records appended to the
//!   record file, then one atomic sled batch with their indexes, the applied
//!   log id and membership; so the store is always at some applied prefix.
//! * Responses are sent only after that batch is published, so a client that
//!   hears "ok" can read its record from this node.
//! * A snapshot is durable before openraft learns of it (and so before it
//!   may purge the WAL behind it): a built one is a linked snapshot whose
//!   shared segments and manifest are fsynced, a received one a fsynced file.
//!   On open, if the newest snapshot is ahead of the store (it lost writes
//!   the WAL no longer holds), the store is rebuilt from it; if that
//!   snapshot is damaged, the node refuses to start (the records are gone
//!   from this disk).

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

use futures::Stream;
use futures::StreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;
use tokio::sync::watch;
use txlog_storage::snapshot_file;
use txlog_storage::RecordStore;
use txlog_storage::SnapshotDir;
use txlog_storage::StoredRecord;

use crate::keys::Keys;
use crate::keys::KEYS_CHANNEL;
use crate::meta;
use crate::seal::AtRestKey;
use crate::snapshot::snapshot_name;
use crate::snapshot::Snapshot;
use crate::snapshot::SnapshotFile;
use crate::type_config::BatchResponse;
use crate::type_config::LogId;
use crate::type_config::SnapshotMeta;
use crate::type_config::StoredMembership;
use crate::type_config::TypeConfig;

const SNAPSHOT_READ_CHUNK: usize = 4096;
/// Key events read from the store per call when loading the keyring.
const KEY_EVENTS_READ_MAX: usize = 1024;

/// The Raft node type: txlog's types with this state machine.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

#[derive(Debug, Clone, Default)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    last_seq: u64,
}

struct Shared {
    store: RecordStore,
    /// The keyring, in a sealed cluster: sealed batches are opened with it
    /// and key events join it as they are applied.
    keys: Option<Arc<Keys>>,
    snapshots: SnapshotDir,
    applied: Mutex<AppliedState>,
    current_snapshot: Mutex<Option<(SnapshotMeta, PathBuf)>>,
    last_seq_tx: watch::Sender<u64>,
    /// Serialises snapshot builds with each other and with installs.
    snapshot_lock: tokio::sync::Mutex<()>,
    /// Full (not delta) snapshots installed since open; resync uses it to
    /// tell when a follower that asked for a full snapshot has had one.
    full_installs: AtomicU64,
    /// Incremented when a snapshot install starts and when it ends: odd
    /// while one is under way (the store then holds part of it).
    install_epoch: AtomicU64,
}

/// The state machine. Clones share state; openraft owns one, the services hold
/// a [`StateMachineReader`].
pub struct StateMachine {
    shared: Arc<Shared>,
}

/// Read access to the applied records, for the client services.
#[derive(Clone)]
pub struct StateMachineReader {
    shared: Arc<Shared>,
}

impl StateMachineReader {
    pub fn store(&self) -> &RecordStore {
        &self.shared.store
    }

    /// [`RecordStore::read`], payloads sealed at rest opened: what a
    /// client is served.
    pub fn read(
        &self,
        from_seq: u64,
        limit: usize,
        bytes_max: usize,
        channel: Option<&str>,
    ) -> Result<Vec<StoredRecord>, crate::error::Error> {
        let mut records = self.shared.store.read(from_seq, limit, bytes_max, channel)?;
        self.open(&mut records)?;
        Ok(records)
    }

    /// [`RecordStore::lookup_txid`], the payload opened as by [`Self::read`].
    pub fn lookup_txid(&self, txid: &[u8]) -> Result<Option<StoredRecord>, crate::error::Error> {
        let mut record = self.shared.store.lookup_txid(txid)?;
        self.open(record.as_mut_slice())?;
        Ok(record)
    }

    /// Open the payloads sealed at rest among `records`.
    fn open(&self, records: &mut [StoredRecord]) -> Result<(), crate::error::Error> {
        let Some(sealed) = records.iter().find(|r| r.sealed_at_rest) else {
            return Ok(());
        };
        match &self.shared.keys {
            Some(keys) => keys.open_records(records),
            None => Err(crate::error::Error::Unauthorized(format!(
                "record {} is sealed at rest and this node runs without keys",
                sealed.seq
            ))),
        }
    }

    /// Watch the highest applied sequence (for subscriptions).
    pub fn watch_last_seq(&self) -> watch::Receiver<u64> {
        self.shared.last_seq_tx.subscribe()
    }

    pub fn last_seq(&self) -> u64 {
        *self.shared.last_seq_tx.borrow()
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.shared.applied.lock().expect("sm lock poisoned").last_applied
    }

    /// Check every record against its frame checksum and the hash chain,
    /// from the first to the last applied: `Some(what is wrong)` when the
    /// store no longer holds what it applied (a damaged disk, an edited
    /// file). Reads the whole record file, decoding nothing (about 0.3 s
    /// per million records of 256 B).
    pub fn check_records(&self) -> io::Result<Option<String>> {
        let store = &self.shared.store;
        let last_seq = store.last_seq()?;
        match store.check_chain(last_seq) {
            Ok(Ok(_)) => Ok(None),
            Ok(Err(differs)) => Ok(Some(differs)),
            Err(err @ txlog_storage::Error::Corruption { .. }) => Ok(Some(err.to_string())),
            Err(err) => Err(err.into()),
        }
    }

    /// The members as of the last applied membership: `(id, address)`.
    pub fn members(&self) -> Vec<(u64, String)> {
        let applied = self.shared.applied.lock().expect("sm lock poisoned");
        applied
            .membership
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.address.clone()))
            .collect()
    }

    /// The snapshot openraft would send now: its metadata and file.
    pub fn current_snapshot(&self) -> Option<(SnapshotMeta, PathBuf)> {
        self.shared.current_snapshot.lock().expect("sm lock poisoned").clone()
    }

    /// Snapshot files and staged transfers.
    pub fn snapshot_dir(&self) -> &SnapshotDir {
        &self.shared.snapshots
    }

    /// How many full snapshots this state machine has installed since it
    /// was opened.
    pub fn full_installs(&self) -> u64 {
        self.shared.full_installs.load(Ordering::Relaxed)
    }

    /// Odd while a snapshot install is under way; changes with every
    /// install. While it is odd the store holds a prefix of the snapshot,
    /// which must not be described to anyone as this node's state (a resync
    /// probe would plan a delta on it); a reader that sees the same even
    /// value before and after reading saw no install.
    pub fn install_epoch(&self) -> u64 {
        self.shared.install_epoch.load(Ordering::Acquire)
    }
}

/// Current time in nanoseconds since the Unix epoch (for batch timestamps).
pub fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl StateMachine {
    /// Open the record store in `dir/records` and snapshots in `dir/snapshots`,
    /// for a cluster that does not seal its entries.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<Self> {
        Self::open_with_keys(dir, None)
    }

    /// [`Self::open`] for a sealed cluster when `keys` is given: the
    /// applied key events in the store are loaded into it.
    pub fn open_with_keys(dir: impl AsRef<Path>, keys: Option<Arc<Keys>>) -> io::Result<Self> {
        let dir = dir.as_ref();
        let store = RecordStore::open(dir.join("records"))?;
        // Opening the directory removes leftovers of interrupted transfers.
        let snapshots = SnapshotDir::open(dir.join("snapshots"))?;

        let last_applied = store.get_meta(&meta::APPLIED)?.flatten();
        let membership = store.get_meta(&meta::MEMBERSHIP)?.unwrap_or_default();
        let last_seq = store.last_seq()?;
        let (last_seq_tx, _) = watch::channel(last_seq);
        let shared = Arc::new(Shared {
            store,
            keys,
            snapshots,
            applied: Mutex::new(AppliedState {
                last_applied,
                membership,
                last_seq,
            }),
            current_snapshot: Mutex::new(None),
            last_seq_tx,
            snapshot_lock: tokio::sync::Mutex::new(()),
            full_installs: AtomicU64::new(0),
            install_epoch: AtomicU64::new(0),
        });
        let sm = StateMachine { shared };
        sm.recover_snapshot()?;
        sm.load_keys()?;
        let applied = sm.shared.applied.lock().expect("sm lock poisoned").clone();
        tracing::info!(
            applied = ?applied.last_applied,
            last_seq = applied.last_seq,
            "record store opened; openraft re-applies only committed entries after the applied id"
        );
        Ok(sm)
    }

    /// Replace the store's contents with the verified snapshot staged at
    /// `path` (a full copy fetched from a peer), keep the file as this
    /// node's snapshot and remove the staged one. Blocking work runs on a
    /// blocking thread.
    pub async fn install_fetched(&self, meta: SnapshotMeta, path: PathBuf) -> io::Result<()> {
        let _guard = self.shared.snapshot_lock.lock().await;
        let machine = StateMachine {
            shared: self.shared.clone(),
        };
        tokio::task::spawn_blocking(move || {
            let installed = machine.install(
                &meta,
                &SnapshotFile {
                    path: path.clone(),
                    delta_base: None,
                },
            );
            machine.shared.snapshots.remove(&path);
            installed
        })
        .await
        .map_err(io::Error::other)?
    }

    pub fn reader(&self) -> StateMachineReader {
        StateMachineReader {
            shared: self.shared.clone(),
        }
    }

    /// Snapshot files live here; received snapshots are staged here too.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.shared.snapshots.path().to_path_buf()
    }

    /// Add the key events the store holds to the keyring (in a sealed
    /// cluster): on open, and after an install brought new ones.
    fn load_keys(&self) -> io::Result<()> {
        let Some(keys) = &self.shared.keys else {
            return Ok(());
        };
        let store = &self.shared.store;
        let mut events = Vec::new();
        let mut from = 1;
        loop {
            let records = store.read(from, KEY_EVENTS_READ_MAX, usize::MAX, Some(KEYS_CHANNEL))?;
            let Some(last) = records.last() else { break };
            from = last.seq + 1;
            events.extend(records.into_iter().map(|r| (r.seq, r.payload.to_vec())));
        }
        let count = keys.load_applied(events).map_err(io::Error::from)?;
        tracing::info!(key_events = count, "keyring loaded from the record store");
        Ok(())
    }

    /// Find the newest valid snapshot; rebuild the store from it if the store is behind it.
    fn recover_snapshot(&self) -> io::Result<()> {
        let Some(path) = self.shared.snapshots.newest()? else {
            return Ok(());
        };
        let meta = match snapshot_file::read_meta(&path)
            .map_err(io::Error::from)
            .and_then(|bytes| meta::decode_snapshot_meta(&bytes))
        {
            Ok(meta) => meta,
            Err(err) => {
                tracing::error!(path = %path.display(), %err, "newest snapshot is damaged; ignoring it");
                return Ok(());
            }
        };
        let applied = self.shared.applied.lock().expect("sm lock poisoned").last_applied;
        if meta.last_log_id > applied {
            if let Err(err) = snapshot_file::verify(&path) {
                // The store needs records only this snapshot holds (the WAL
                // may be purged behind it). A linked snapshot shares the
                // store's segment files, so damage to one is damage to both:
                // this disk no longer has the records. Starting anyway
                // would apply later entries on a store missing earlier ones.
                tracing::error!(path = %path.display(), %err, ?applied, snapshot = ?meta.last_log_id, "record store is behind its newest snapshot and the snapshot is damaged");
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "records lost on this disk: the record store is behind the newest snapshot {} and that snapshot is damaged ({err}); \
                         a node replaces such a store with a full copy from a peer at start-up",
                        path.display()
                    ),
                ));
            }
            // After a crash the store is often a prefix of the snapshot (sled
            // lagged a snapshot built in its last ~500 ms): then only the
            // records after it are added, not all of them again.
            let local_seq = self.shared.store.last_seq()?;
            let snapshot_chain = snapshot_file::chain_at(&path, local_seq)?;
            if local_seq > 0 && snapshot_chain.is_some() && snapshot_chain == self.shared.store.chain_at(local_seq)? {
                tracing::warn!(
                    snapshot = ?meta.last_log_id,
                    applied = ?applied,
                    local_seq,
                    "record store is behind the newest snapshot; adding the snapshot's records after its own"
                );
                self.restore_after(&meta, &path, local_seq)?;
            } else {
                tracing::warn!(
                    snapshot = ?meta.last_log_id,
                    applied = ?applied,
                    "record store is behind the newest snapshot; rebuilding it from the snapshot"
                );
                self.rebuild_from(&meta, &path)?;
            }
        } else {
            // The store already holds everything the snapshot does, so a
            // start-up need not read it (1M records take about a second).
            // It is checked in the background before anyone relies on it.
            self.verify_in_background(path.clone());
        }
        *self.shared.current_snapshot.lock().expect("sm lock poisoned") = Some((meta, path));
        Ok(())
    }

    /// Check the snapshot at `path` end to end off the start-up path; if it
    /// is damaged and still current, forget it so openraft builds a fresh
    /// one instead of sending a file every follower would refuse.
    fn verify_in_background(&self, path: PathBuf) {
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("snapshot-verify".into())
            .spawn(move || {
                let Err(err) = snapshot_file::verify(&path) else {
                    return;
                };
                if !path.exists() {
                    return; // replaced by a newer snapshot meanwhile
                }
                tracing::error!(path = %path.display(), %err, "current snapshot is damaged; a new one will be built");
                let mut current = shared.current_snapshot.lock().expect("sm lock poisoned");
                if current.as_ref().is_some_and(|(_, p)| p == &path) {
                    *current = None;
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(%err, "could not start the snapshot check");
        }
    }

    /// Add the records after `base` from the snapshot at `path` to a store
    /// that already holds (and has verified) records `1..=base`. A crash
    /// part-way leaves the store behind the snapshot file, so the next open
    /// rebuilds from the file.
    fn apply_delta(&self, meta: &SnapshotMeta, path: &Path, base: u64) -> io::Result<()> {
        self.restore_after(meta, path, base)?;
        tracing::info!(base, "delta applied on top of the local records");
        Ok(())
    }

    /// Replace the record store's contents with the snapshot at `path`.
    fn rebuild_from(&self, meta: &SnapshotMeta, path: &Path) -> io::Result<()> {
        self.shared.store.clear()?;
        self.restore_after(meta, path, 0)
    }

    /// Restore the snapshot's records after `after_seq`, in batches of
    /// [`SNAPSHOT_READ_CHUNK`]. Applied id and membership go in the last
    /// batch: until then a crash leaves the store looking as before, and the
    /// next open rebuilds from the snapshot file.
    fn restore_after(&self, meta: &SnapshotMeta, path: &Path, after_seq: u64) -> io::Result<()> {
        let store = &self.shared.store;
        let mut batch = Some(store.batch()?);
        let mut pending = 0usize;
        snapshot_file::for_each_record(path, |record| {
            if record.seq <= after_seq {
                return Ok(());
            }
            batch.as_mut().expect("a batch is open").restore(&record);
            pending += 1;
            if pending >= SNAPSHOT_READ_CHUNK {
                // Commit before opening the next batch: a batch starts from
                // the store's last seq and chain.
                batch.take().expect("a batch is open").commit()?;
                batch = Some(store.batch()?);
                pending = 0;
            }
            Ok(())
        })?;
        let mut batch = batch.expect("a batch is open");
        batch.set_meta(&meta::APPLIED, &meta.last_log_id);
        batch.set_meta(&meta::MEMBERSHIP, &meta.last_membership);
        let last_seq = batch.commit()?;
        {
            let mut applied = self.shared.applied.lock().expect("sm lock poisoned");
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            applied.last_seq = last_seq;
        }
        self.shared.last_seq_tx.send_replace(last_seq);
        Ok(())
    }
}

impl StateMachine {
    /// Install a received snapshot (blocking: see `install_snapshot`).
    fn install(&self, meta: &SnapshotMeta, snapshot: &SnapshotFile) -> io::Result<()> {
        struct Installing<'a>(&'a AtomicU64);
        impl Drop for Installing<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.shared.install_epoch.fetch_add(1, Ordering::AcqRel);
        let _installing = Installing(&self.shared.install_epoch);
        let started = std::time::Instant::now();
        let info = snapshot_file::verify(&snapshot.path)?;
        let verified = started.elapsed();
        let file_meta = meta::decode_snapshot_meta(&info.meta)?;
        if &file_meta != meta {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot file metadata does not match the installed metadata",
            ));
        }
        // Keep a durable copy under our own name before touching the store, so
        // a crash mid-install is repaired from it on the next open.
        let target = self
            .shared
            .snapshots
            .install_copy(&snapshot.path, &snapshot_name(meta))?;
        let local_seq = self.shared.store.last_seq()?;
        let copied = started.elapsed();
        // Restored from the file just verified: a snapshot of the same log id
        // already here (kept by `install_copy`) was not checked.
        match snapshot.delta_base {
            Some(base) if base == local_seq => self.apply_delta(meta, &snapshot.path, base)?,
            _ => {
                self.rebuild_from(meta, &snapshot.path)?;
                self.shared.full_installs.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.load_keys()?;
        let restored = started.elapsed();
        if target.is_file() {
            // The received file is a second copy of records the store now
            // holds: a linked snapshot of the store takes its place.
            if let Err(err) = self.relink(meta, &target) {
                tracing::warn!(path = %target.display(), %err, "could not swap a received snapshot for a linked one; keeping the file");
            }
        }
        self.shared.snapshots.prune_older_than(&target);
        *self.shared.current_snapshot.lock().expect("sm lock poisoned") = Some((meta.clone(), target));
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            records = info.record_count,
            delta_base = ?snapshot.delta_base,
            verify_ms = verified.as_millis() as u64,
            copy_ms = (copied - verified).as_millis() as u64,
            restore_ms = (restored - copied).as_millis() as u64,
            "snapshot installed"
        );
        Ok(())
    }
}

impl StateMachine {
    /// Replace the snapshot file at `file` (just installed into the store)
    /// with a linked snapshot of the store at the same log id and name.
    fn relink(&self, meta: &SnapshotMeta, file: &Path) -> io::Result<()> {
        let last_seq = self.shared.store.last_seq()?;
        let building = file.with_extension("linking");
        self.shared.snapshots.discard(&building)?;
        let linked = self
            .shared
            .store
            .link_snapshot(&building, &meta::encode_snapshot_meta(meta), last_seq)?;
        self.shared.snapshots.swap_in(file, &linked)?;
        Ok(())
    }
}

/// Add one entry's records (or its membership) to `batch` and `state`;
/// returns what the entry's proposer is told.
fn apply_entry(
    batch: &mut txlog_storage::ApplyBatch<'_>,
    state: &mut AppliedState,
    entry: &crate::type_config::Entry,
    keys: Option<&Keys>,
) -> io::Result<BatchResponse> {
    let log_id = entry.log_id();
    let frame = match &entry.payload {
        EntryPayload::Blank => return Ok(BatchResponse::default()),
        EntryPayload::Membership(membership) => {
            state.membership = StoredMembership::new(Some(log_id), membership.clone());
            return Ok(BatchResponse::default());
        }
        EntryPayload::Normal(frame) => frame,
    };
    // Every node rejects the same batch the same way (the keyring is the
    // same at the same index), so the order of what is applied is kept.
    let reject = |err: crate::error::Error| {
        tracing::error!(log_id = %log_id, %err, "rejecting batch entry");
        Ok(BatchResponse {
            outcomes: Vec::new(),
            error: Some(err.to_string()),
        })
    };
    match keys {
        Some(keys) if frame.is_sealed() => {
            let opened = match keys.open(frame) {
                Ok(opened) => opened,
                Err(err) => return reject(err),
            };
            // Its payloads go to the record file sealed under the batch's data key.
            let at_rest = keys
                .at_rest_key(opened.key_ids as u32)
                .expect("the data key that opened the batch is in the ring: keys are never removed");
            match opened.body() {
                Ok(body) => append_records(batch, log_id, opened.origin_node, &body, None, Some(&at_rest)),
                Err(err) => reject(err),
            }
        }
        _ => match frame.decode() {
            Ok(decoded) => {
                if let Some(keys) = keys {
                    // In a sealed cluster a plain frame carries key events only.
                    if let Err(err) = keys.verify_key_batch(&decoded.body) {
                        return reject(err);
                    }
                }
                append_records(batch, log_id, decoded.origin_node, &decoded.body, keys, None)
            }
            Err(err) => reject(err),
        },
    }
}

/// Append a batch's records, their payloads sealed by `at_rest` when
/// given; with `keys`, its key events join the keyring as applied (a
/// duplicate announcement changes nothing).
fn append_records(
    batch: &mut txlog_storage::ApplyBatch<'_>,
    log_id: LogId,
    origin_node: u64,
    body: &crate::batch_frame::BatchBodyRef<'_>,
    keys: Option<&Keys>,
    at_rest: Option<&AtRestKey>,
) -> io::Result<BatchResponse> {
    let mut outcomes = Vec::with_capacity(body.records.len());
    for &record in &body.records {
        let outcome = batch.append_sealed(
            record,
            log_id.index,
            log_id.leader_id.term,
            origin_node,
            body.created_ns,
            at_rest.map(|key| key as &dyn txlog_storage::SealAtRest),
        )?;
        if let Some(keys) = keys {
            if !outcome.duplicate {
                keys.observe(record.payload, Some(outcome.seq))
                    .map_err(io::Error::from)?;
            }
        }
        outcomes.push(outcome);
    }
    Ok(BatchResponse { outcomes, error: None })
}

/// The responder of an applied entry and what it is told.
type Answered = (openraft::storage::ApplyResponder<TypeConfig>, BatchResponse);

/// Apply committed entries as one record-store batch; returns the answers
/// to send once the batch is published.
fn apply_items(shared: &Shared, items: Vec<EntryResponder<TypeConfig>>) -> io::Result<Vec<Answered>> {
    let mut state = shared.applied.lock().expect("sm lock poisoned").clone();
    let mut batch = shared.store.batch()?;
    let mut responses = Vec::new();
    for (entry, responder) in items {
        let log_id = entry.log_id();
        if state.last_applied.is_some_and(|applied| log_id.index <= applied.index) {
            // Already in the store: a re-apply after restart. Never apply twice.
            if let Some(responder) = responder {
                responder.send(BatchResponse {
                    outcomes: Vec::new(),
                    error: Some("entry was already applied".into()),
                });
            }
            continue;
        }
        if let Some(last) = state.last_applied {
            // openraft hands us committed entries in order; a gap would
            // mean entries were skipped. Its storage suite does this on
            // purpose, so it is logged rather than asserted.
            if log_id.index != last.index + 1 {
                tracing::warn!(applied = %last, next = %log_id, "gap in applied log indexes");
            }
        }
        let response = apply_entry(&mut batch, &mut state, &entry, shared.keys.as_deref())?;
        state.last_applied = Some(log_id);
        if let Some(responder) = responder {
            responses.push((responder, response));
        }
    }
    batch.set_meta(&meta::APPLIED, &state.last_applied);
    batch.set_meta(&meta::MEMBERSHIP, &state.membership);
    state.last_seq = batch.commit()?;
    let last_seq = state.last_seq;
    *shared.applied.lock().expect("sm lock poisoned") = state;
    shared.last_seq_tx.send_replace(last_seq);
    Ok(responses)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let applied = self.shared.applied.lock().expect("sm lock poisoned");
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        let mut items = Vec::new();
        while let Some(item) = entries.next().await {
            items.push(item?);
        }
        // Decoding, indexing and writing a batch is CPU and file work: it
        // runs on a blocking thread so it never holds an async worker that
        // heartbeats and vote RPCs need (a batch of 6,400 records held one
        // for tens of ms and followers timed their leader out).
        let shared = self.shared.clone();
        let responses = match tokio::task::spawn_blocking(move || apply_items(&shared, items)).await {
            Ok(responses) => responses?,
            // A panic while applying is a bug: it must stop the node as it
            // would have on the async worker, not become an IO error.
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => return Err(io::Error::other(err)),
        };
        for (responder, response) in responses {
            responder.send(response);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> io::Result<()> {
        let _guard = self.shared.snapshot_lock.lock().await;
        let machine = StateMachine {
            shared: self.shared.clone(),
        };
        let meta = meta.clone();
        // Verifying, copying and restoring read and write whole files.
        tokio::task::spawn_blocking(move || machine.install(&meta, &snapshot))
            .await
            .map_err(io::Error::other)?
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let current = self.shared.current_snapshot.lock().expect("sm lock poisoned").clone();
        Ok(current.map(|(meta, path)| Snapshot {
            meta,
            snapshot: SnapshotFile { path, delta_base: None },
        }))
    }
}

/// Builds a linked snapshot of the records applied so far: it shares the
/// record file's segments, so a build costs the same at any log size.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let _guard = self.shared.snapshot_lock.lock().await;
        let started = std::time::Instant::now();
        let state = self.shared.applied.lock().expect("sm lock poisoned").clone();
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
        };
        let path = self.shared.snapshots.snapshot_path(&snapshot_name(&meta));
        let shared = self.shared.clone();
        let meta_bytes = meta::encode_snapshot_meta(&meta);
        // Records up to `last_seq` are immutable, so the segments holding
        // them, linked while later applies run, still hold exactly the state
        // at `last_applied`. Linking and the fsyncs are blocking file work.
        let built = tokio::task::spawn_blocking(move || -> io::Result<PathBuf> {
            // A snapshot already under this name is of this log id and is
            // kept when it is the current one (checked, or installed after a
            // check); otherwise it was found damaged, or never checked, and
            // is replaced.
            let current = shared.current_snapshot.lock().expect("sm lock poisoned").clone();
            if path.exists() && current.as_ref().map(|(_, p)| p) != Some(&path) {
                shared.snapshots.discard(&path)?;
            }
            let built = shared.store.link_snapshot(&path, &meta_bytes, state.last_seq)?;
            shared.snapshots.prune_older_than(&built);
            Ok(built)
        })
        .await
        .map_err(io::Error::other)??;
        *self.shared.current_snapshot.lock().expect("sm lock poisoned") = Some((meta.clone(), built.clone()));
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            last_seq = state.last_seq,
            build_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFile {
                path: built,
                delta_base: None,
            },
        })
    }
}
