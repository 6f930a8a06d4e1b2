//! The accepting node's side of sealing: its signing seeds, its nonce
//! counters, and which key events it should propose while it leads.
//!
//! Invariants:
//! * A nonce (`data key id ‖ node id ‖ counter`) is used at most once: the
//!   counter for a data key only grows, and a block of counters is reserved
//!   durably ([`NonceReservations`]) before any counter in it is used; after
//!   a restart sealing resumes past the reservation. A node seals only under
//!   a data key it announced itself (listing it in its reservations before
//!   proposing it), so a node that lost its reservations, or leads for the
//!   first time, announces a fresh data key before it seals anything.
//! * A leader seals only under keys the state machine has applied: the
//!   newest applied data key, and this node's newest signing key once its
//!   announcement is applied. Followers learn a key at the latest from the
//!   entry that announces it, which precedes every batch sealed under it.
//! * A signing seed is on disk before its public key is proposed.

use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use txlog_storage::NonceReservations;
use txlog_storage::SigningSeed;
use txlog_storage::SigningSeeds;

use crate::batch_frame::BatchBody;
use crate::batch_frame::BatchFrame;
use crate::batch_frame::SealWith;
use crate::error::Error;
use crate::keys::KeyEvent;
use crate::keys::Keys;
use crate::seal::Signer;

/// Counters reserved per durable write: one small fsync per this many
/// batches.
pub const NONCE_RESERVE_BLOCK: u64 = 1 << 16;
/// Past this counter the leader announces a new data key, long before the
/// 32-bit counter could wrap.
pub const NONCE_COUNTER_ROTATE: u64 = 1 << 31;

/// Seals batches for one node and tells it which keys to announce.
pub struct Sealer {
    node_id: u64,
    /// The node id as the nonce carries it.
    nonce_node: u32,
    data_dir: PathBuf,
    keys: Arc<Keys>,
    state: Mutex<SealerState>,
}

struct SealerState {
    seeds: SigningSeeds,
    signers: HashMap<u32, Arc<Signer>>,
    reservations: NonceReservations,
    /// Next counter per data key, from this process's seals.
    next: HashMap<u32, u64>,
}

impl SealerState {
    /// The next counter to seal with under `data_key_id`: past this
    /// process's last seal, or past the durable reservation after a restart
    /// (anything below it may have been used before).
    fn next_counter(&self, data_key_id: u32) -> u64 {
        self.next
            .get(&data_key_id)
            .copied()
            .unwrap_or_else(|| self.reservations.reserved(data_key_id))
    }
}

impl Sealer {
    /// Read the node's seeds and nonce reservations from `data_dir`.
    pub fn open(node_id: u64, data_dir: &Path, keys: Arc<Keys>) -> Result<Sealer, Error> {
        // The nonce's node field names the sealer; it need not be unique
        // (ids are u64): no two nodes ever seal under one data key, since a
        // node seals only under a key it announced itself.
        let nonce_node = node_id as u32;
        let seeds = SigningSeeds::load(data_dir)?;
        let reservations = NonceReservations::load(data_dir)?;
        Ok(Sealer {
            node_id,
            nonce_node,
            data_dir: data_dir.to_path_buf(),
            keys,
            state: Mutex::new(SealerState {
                seeds,
                signers: HashMap::new(),
                reservations,
                next: HashMap::new(),
            }),
        })
    }

    /// Seal `body` as this node's batch: one compression, encryption and
    /// signature. [`Error::Unavailable`] while the keys to seal under are
    /// not applied yet (a new leader announces them within moments).
    /// The keyring this sealer seals under.
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    pub fn seal(&self, body: &BatchBody) -> Result<BatchFrame, Error> {
        let (data_key, _) = self
            .keys
            .current_data_key()
            .ok_or_else(|| Error::Unavailable("no data key is in the log yet; the leader is announcing one".into()))?;
        let (signer, counter) = {
            let mut state = self.state.lock().expect("sealer lock poisoned");
            let signer = self.applied_signer(&mut state).ok_or_else(|| {
                Error::Unavailable("this node's signing key is not in the log yet; it is being announced".into())
            })?;
            let id = data_key.id();
            if !state.reservations.contains(id) {
                return Err(Error::Unavailable(format!(
                    "data key {id} was announced by another node; this leader is announcing its own"
                )));
            }
            let counter = state.next_counter(id);
            if counter > u64::from(u32::MAX) {
                return Err(Error::Unavailable(format!(
                    "data key {id} has sealed 2^32 batches on this node; waiting for a new one"
                )));
            }
            if counter >= state.reservations.reserved(id) {
                let until = (counter + NONCE_RESERVE_BLOCK).min(1 << 32);
                state.reservations.reserve(&self.data_dir, id, until)?;
            }
            state.next.insert(id, counter + 1);
            (signer, counter as u32)
        };
        let with = SealWith {
            node_id: self.nonce_node,
            data_key: &data_key,
            signer: &signer,
        };
        Ok(BatchFrame::seal(self.node_id, body, &with, counter))
    }

    /// This node's newest signing key whose announcement is applied.
    fn applied_signer(&self, state: &mut SealerState) -> Option<Arc<Signer>> {
        let seed = self.newest_applied_seed(state)?.clone();
        Some(
            state
                .signers
                .entry(seed.id)
                .or_insert_with(|| Arc::new(Signer::new(seed.id, &seed.seed)))
                .clone(),
        )
    }

    /// This node's newest seed whose public key the log has applied.
    fn newest_applied_seed<'a>(&self, state: &'a SealerState) -> Option<&'a SigningSeed> {
        state.seeds.seeds.iter().rev().find(|seed| self.is_applied_own(seed.id))
    }

    fn is_applied_own(&self, id: u32) -> bool {
        self.keys
            .signing_key(id)
            .is_some_and(|k| k.node_id == self.node_id && k.seq.is_some())
    }

    /// The key events this node should propose now, as leader: its signing
    /// key when the log lacks it or it is older than `signing_rotate`
    /// (making a new seed, durably, first); a new data key when there is
    /// none, the current one is older than `data_rotate`, or this node's
    /// counter under it passed [`NONCE_COUNTER_ROTATE`].
    pub fn due_events(&self, signing_rotate: Duration, data_rotate: Duration) -> Result<Vec<KeyEvent>, Error> {
        let now = crate::state_machine::wall_clock_ns();
        let age = |created_ns: u64| Duration::from_nanos(now.saturating_sub(created_ns));
        let mut events = Vec::new();
        let mut state = self.state.lock().expect("sealer lock poisoned");
        // A new key is signed by the newest one already in the log, if any.
        let previous = self.newest_applied_seed(&state).cloned();
        match state.seeds.newest().cloned() {
            Some(seed) if !self.is_applied_own(seed.id) => {
                // Written but not (yet) in the log: announce it (again; a
                // repeat is a duplicate txid and changes nothing).
                events.push(self.keys.announce_signing(self.node_id, &seed, previous.as_ref())?);
            }
            Some(seed) if age(seed.created_ns) < signing_rotate => {}
            _ => {
                let seed = SigningSeed {
                    id: self.keys.free_signing_id()?,
                    created_ns: now,
                    seed: crate::seal::random_key()?,
                };
                state.seeds.push(&self.data_dir, seed.clone())?;
                events.push(self.keys.announce_signing(self.node_id, &seed, previous.as_ref())?);
            }
        }
        let data_due = match self.keys.current_data_key() {
            None => true,
            Some((key, info)) => {
                !state.reservations.contains(key.id())
                    || age(info.created_ns) >= data_rotate
                    || state.next_counter(key.id()) >= NONCE_COUNTER_ROTATE
            }
        };
        if data_due {
            let event = self.keys.new_data_key(self.node_id)?;
            let KeyEvent::Data(announce) = &event else {
                unreachable!("new_data_key announces a data key")
            };
            // Listed before it is proposed: this node may seal under it from counter 0.
            state.reservations.reserve(&self.data_dir, announce.id, 0)?;
            events.push(event);
        }
        Ok(events)
    }

    /// [`Self::seal`], waiting up to `wait` for keys that are being
    /// announced (a new leader's first batches wait for its data key).
    pub async fn seal_when_ready(&self, body: &BatchBody, wait: Duration) -> Result<BatchFrame, Error> {
        let mut changes = self.keys.watch();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            changes.borrow_and_update();
            match self.seal(body) {
                Err(Error::Unavailable(why)) => {
                    if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                        return Err(Error::Unavailable(why));
                    }
                }
                sealed => return sealed,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::keys::tests::kek_file;
    use crate::keys::tests::one_record_body;

    use super::*;

    fn keys() -> Arc<Keys> {
        Arc::new(Keys::new(&kek_file(1)))
    }

    fn body() -> BatchBody {
        one_record_body()
    }

    /// Apply `events` as the state machine would, at seqs from `seq`.
    fn apply(keys: &Keys, events: &[KeyEvent], seq: &mut u64) {
        for event in events {
            *seq += 1;
            keys.observe(&event.encode(), Some(*seq)).unwrap();
        }
    }

    /// A node seals only once its keys are applied; then announces nothing
    /// until a key is due; a rotated signing key is chained from the
    /// previous one.
    #[test]
    fn seals_once_keys_are_applied_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys();
        let sealer = Sealer::open(4_000_000_000, dir.path(), keys.clone()).unwrap();
        assert!(matches!(sealer.seal(&body()), Err(Error::Unavailable(_))));
        let day = Duration::from_secs(86_400);
        // Another node's data key, applied: this node will not seal under it.
        let mut seq = 0;
        apply(&keys, &[keys.new_data_key(9).unwrap()], &mut seq);
        let events = sealer.due_events(day, Duration::from_secs(3600)).unwrap();
        assert_eq!(events.len(), 2, "a signing key and a data key");
        assert!(
            matches!(sealer.seal(&body()), Err(Error::Unavailable(_))),
            "proposed is not applied"
        );
        apply(&keys, &events, &mut seq);
        let frame = sealer.seal(&body()).unwrap();
        keys.check_frame(&frame).unwrap();
        assert!(sealer.due_events(day, Duration::from_secs(3600)).unwrap().is_empty());
        // Everything is due at once with zero rotation periods.
        let events = sealer.due_events(Duration::ZERO, Duration::ZERO).unwrap();
        assert_eq!(events.len(), 2);
        let KeyEvent::Signing(signing) = &events[0] else {
            panic!("signing first")
        };
        assert!(matches!(signing.proof, crate::keys::SigningProof::Previous { .. }));
        apply(&keys, &events, &mut seq);
        let frame = sealer.seal(&body()).unwrap();
        assert_eq!(
            (frame.0[20..24]).to_vec(),
            signing.id.to_le_bytes().to_vec(),
            "signed by the new key"
        );
        keys.check_frame(&frame).unwrap();
    }

    /// A node that lost its reservations (a wiped data dir) never seals
    /// under a data key it used before: it announces a new one first.
    #[test]
    fn lost_reservations_mean_a_new_data_key() {
        let keys = keys();
        let mut seq = 0;
        let dir = tempfile::tempdir().unwrap();
        let used = {
            let sealer = Sealer::open(7, dir.path(), keys.clone()).unwrap();
            let events = sealer
                .due_events(Duration::from_secs(60), Duration::from_secs(60))
                .unwrap();
            apply(&keys, &events, &mut seq);
            sealer.seal(&body()).unwrap();
            keys.current_data_key().unwrap().0.id()
        };
        std::fs::remove_file(NonceReservations::path(dir.path())).unwrap();
        let sealer = Sealer::open(7, dir.path(), keys.clone()).unwrap();
        let err = sealer.seal(&body()).unwrap_err().to_string();
        assert!(err.contains("announced by another node"), "{err}");
        let events = sealer
            .due_events(Duration::from_secs(60), Duration::from_secs(60))
            .unwrap();
        assert!(matches!(&events[..], [KeyEvent::Data(d)] if d.id != used), "{events:?}");
        apply(&keys, &events, &mut seq);
        let frame = sealer.seal(&body()).unwrap();
        assert_ne!(u32::from_le_bytes(frame.0[16..20].try_into().unwrap()), used);
    }

    /// A thousand data-key and a hundred signing-key rotations: every batch
    /// sealed along the way still verifies under the final keyring, and a
    /// keyring rebuilt from the applied announcements alone (a restart)
    /// opens them too.
    #[test]
    fn many_rotations_keep_old_batches_readable() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys();
        let sealer = Sealer::open(3, dir.path(), keys.clone()).unwrap();
        let mut seq = 0;
        let mut applied = Vec::new();
        let mut frames = Vec::new();
        for round in 0..1000u32 {
            // Data keys every round, signing keys every tenth.
            let signing = if round % 10 == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs(3600)
            };
            let events = sealer.due_events(signing, Duration::ZERO).unwrap();
            for event in &events {
                seq += 1;
                keys.observe(&event.encode(), Some(seq)).unwrap();
                applied.push((seq, event.encode()));
            }
            frames.push(sealer.seal(&body()).unwrap());
        }
        assert_eq!(keys.key_counts(), (100, 1000), "signing and data keys");
        for frame in &frames {
            keys.check_frame(frame).unwrap();
        }
        let rebuilt = Keys::new(&kek_file(1));
        assert_eq!(rebuilt.load_applied(applied).unwrap(), 1100);
        for frame in &frames {
            assert_eq!(rebuilt.open(frame).unwrap().body().unwrap().records.len(), 1);
        }
    }

    /// Two nodes whose ids agree in their low 32 bits (the nonce's node
    /// field) never share a nonce: each seals only under its own data key.
    #[test]
    fn node_ids_over_32_bits_seal_under_their_own_keys() {
        let keys = keys();
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Sealer::open(7, a_dir.path(), keys.clone()).unwrap();
        let b = Sealer::open(7 + (1 << 32), b_dir.path(), keys.clone()).unwrap();
        let mut seq = 0;
        let events = a.due_events(Duration::from_secs(60), Duration::from_secs(60)).unwrap();
        apply(&keys, &events, &mut seq);
        let from_a = a.seal(&body()).unwrap();
        assert!(b.seal(&body()).is_err(), "b may not seal under a's data key");
        let events = b.due_events(Duration::from_secs(60), Duration::from_secs(60)).unwrap();
        apply(&keys, &events, &mut seq);
        let from_b = b.seal(&body()).unwrap();
        assert_ne!(from_a.0[32..36], from_b.0[32..36], "different data keys");
        keys.check_frame(&from_a).unwrap();
        keys.check_frame(&from_b).unwrap();
    }

    /// After a restart, counters resume past the durable reservation: no
    /// nonce is used twice.
    #[test]
    fn counters_resume_past_the_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys();
        let nonce_counter = |frame: &BatchFrame| u32::from_be_bytes(frame.0[40..44].try_into().unwrap());
        let mut seq = 0;
        let first = {
            let sealer = Sealer::open(7, dir.path(), keys.clone()).unwrap();
            let events = sealer
                .due_events(Duration::from_secs(60), Duration::from_secs(60))
                .unwrap();
            apply(&keys, &events, &mut seq);
            let a = sealer.seal(&body()).unwrap();
            let b = sealer.seal(&body()).unwrap();
            assert_eq!(nonce_counter(&b), nonce_counter(&a) + 1);
            nonce_counter(&b)
        };
        let sealer = Sealer::open(7, dir.path(), keys.clone()).unwrap();
        let after = nonce_counter(&sealer.seal(&body()).unwrap());
        assert!(after > first, "{after} after {first}");
        assert_eq!(u64::from(after), NONCE_RESERVE_BLOCK);
    }
}
