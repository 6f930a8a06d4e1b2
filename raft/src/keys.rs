//! The keyring in the log: which keys sealed batches are signed and
//! encrypted under, announced as Raft entries so that every node (and an
//! offline verifier) holds the same public keyring.
//!
//! A key announcement is a record on the reserved channel [`KEYS_CHANNEL`]
//! whose payload is a [`KeyEvent`], carried in a plain (unsealed) batch
//! frame: the keys to seal it may not exist yet. Each event authenticates
//! itself, so a plain frame is accepted only when every record in it is a
//! key event that verifies:
//!
//! * [`KeyEvent::Signing`] — a node's ed25519 public key. Its proof is a
//!   signature by the same node's previous key or, for a node's first key
//!   (or after it lost its seeds), an AES-GCM tag under the cluster KEK over
//!   the announcement: only a holder of the key file can announce a first
//!   key. Public keys are never removed, so old batches still verify.
//! * [`KeyEvent::Data`] — an AES-256 data key, wrapped (AES-256-GCM) under
//!   the cluster KEK with the announcement's fields as associated data. No
//!   key appears in clear in the log or on the wire.
//!
//! Being records, key events travel in snapshots and deltas like any other
//! and are rebuilt into the keyring from the record store on start and
//! after an install ([`Keys::load_applied`]).
//!
//! Two views share one keyring:
//! * the **receive** side: a follower checks every entry of an
//!   AppendEntries before it reaches the WAL ([`Keys::check_frame`]); key
//!   events in those entries join the keyring as they are checked, since
//!   later entries of the same request may be sealed under them;
//! * the **apply** side: the state machine opens sealed batches
//!   ([`Keys::open`]) and, in log order, sets the current data key — the
//!   one the leader seals with — to the newest applied one.
//!
//! Key ids are random u32s chosen by the proposer and checked against the
//! keyring. A second announcement of an id with different material is
//! refused at apply (the txid `_keys/<kind>/<id>` makes a repeat of the
//! same announcement a duplicate) and ignored with a warning on receive.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::RwLock;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::Aes256Gcm;
use aes_gcm::KeyInit;
use ed25519_dalek::Signer as _;
use serde::Deserialize;
use serde::Serialize;
use txlog_storage::KekFile;
use txlog_storage::NewRecord;
use txlog_storage::SigningSeed;

use crate::batch_frame::BatchBody;
use crate::batch_frame::BatchBodyRef;
use crate::batch_frame::BatchFrame;
use crate::batch_frame::OpenedBatch;
use crate::error::Error;
use crate::seal::AtRestKey;
use crate::seal::DataKey;
use crate::seal::Keyring;
use crate::seal::Signer;

/// The reserved channel key announcements are records of. Client channels
/// must start with a letter or digit, so no client can append here.
pub const KEYS_CHANNEL: &str = "_keys";
/// Version byte in front of every [`KeyEvent`] payload.
const KEY_EVENT_VERSION: u8 = 1;
/// Largest key event payload accepted.
const KEY_EVENT_BYTES_MAX: usize = 1024;
const SIGNING_DOMAIN: &[u8] = b"txlog signing key v1";
const DATA_KEY_DOMAIN: &[u8] = b"txlog data key v1";
/// WAL entries read per call when scanning the unapplied tail for key events.
const LOG_TAIL_READ_ENTRIES: u64 = 256;

/// One key announcement: the payload of a [`KEYS_CHANNEL`] record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyEvent {
    Signing(SigningAnnounce),
    Data(DataKeyAnnounce),
}

/// A node's public signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningAnnounce {
    pub id: u32,
    pub node_id: u64,
    pub public: [u8; 32],
    pub created_ns: u64,
    pub proof: SigningProof,
}

/// Why a signing key announcement is to be believed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningProof {
    /// An AES-GCM tag under the cluster KEK over the announcement.
    Kek {
        kek_id: u32,
        nonce: [u8; 12],
        tag: [u8; 16],
    },
    /// A signature by the same node's previous key `id` (64 bytes).
    Previous { id: u32, signature: Vec<u8> },
}

/// A data key, wrapped under a KEK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKeyAnnounce {
    pub id: u32,
    pub created_ns: u64,
    pub by_node: u64,
    pub kek_id: u32,
    pub nonce: [u8; 12],
    /// The key's ciphertext and tag (48 bytes).
    pub wrapped: Vec<u8>,
}

impl KeyEvent {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![KEY_EVENT_VERSION]).expect("encoding an in-memory value cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<KeyEvent, Error> {
        let bad = |detail: String| Error::decode("key event", detail);
        if bytes.len() > KEY_EVENT_BYTES_MAX {
            return Err(bad(format!(
                "{} bytes, over the limit of {KEY_EVENT_BYTES_MAX}",
                bytes.len()
            )));
        }
        match bytes.split_first() {
            Some((&KEY_EVENT_VERSION, body)) => txlog_storage::decode_whole(body).map_err(bad),
            Some((version, _)) => Err(bad(format!("unsupported version {version}"))),
            None => Err(bad("empty".into())),
        }
    }

    /// The record that carries this event; its txid makes a repeat of the
    /// same announcement a duplicate.
    pub fn to_record(&self) -> NewRecord {
        let txid = match self {
            KeyEvent::Signing(a) => format!("{KEYS_CHANNEL}/signing/{}", a.id),
            KeyEvent::Data(a) => format!("{KEYS_CHANNEL}/data/{}", a.id),
        };
        NewRecord {
            txid: txid.into_bytes().into(),
            channel: KEYS_CHANNEL.into(),
            payload: self.encode().into(),
            client_time_ns: 0,
        }
    }

    /// A plain batch frame carrying `events`, proposed by `origin_node`.
    pub fn frame(origin_node: u64, events: &[KeyEvent]) -> BatchFrame {
        BatchFrame::encode(
            origin_node,
            &BatchBody {
                created_ns: crate::state_machine::wall_clock_ns(),
                records: events.iter().map(KeyEvent::to_record).collect(),
            },
        )
    }
}

fn signing_message(a: &SigningAnnounce) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_DOMAIN.len() + 52);
    m.extend_from_slice(SIGNING_DOMAIN);
    m.extend_from_slice(&a.id.to_le_bytes());
    m.extend_from_slice(&a.node_id.to_le_bytes());
    m.extend_from_slice(&a.public);
    m.extend_from_slice(&a.created_ns.to_le_bytes());
    m
}

fn data_key_aad(a: &DataKeyAnnounce) -> Vec<u8> {
    let mut m = Vec::with_capacity(DATA_KEY_DOMAIN.len() + 24);
    m.extend_from_slice(DATA_KEY_DOMAIN);
    m.extend_from_slice(&a.id.to_le_bytes());
    m.extend_from_slice(&a.created_ns.to_le_bytes());
    m.extend_from_slice(&a.by_node.to_le_bytes());
    m.extend_from_slice(&a.kek_id.to_le_bytes());
    m
}

fn random_nonce() -> Result<[u8; 12], Error> {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| Error::Internal(format!("no randomness for a nonce: {e}")))?;
    Ok(nonce)
}

fn random_id(taken: impl Fn(u32) -> bool) -> Result<u32, Error> {
    for _ in 0..64 {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("no randomness for a key id: {e}")))?;
        let id = u32::from_le_bytes(bytes);
        if id != 0 && !taken(id) {
            return Ok(id);
        }
    }
    Err(Error::Internal("no free key id after 64 draws".into()))
}

/// What the keyring knows of a signing key.
#[derive(Debug, Clone)]
pub struct SigningKeyInfo {
    pub node_id: u64,
    pub public: [u8; 32],
    pub created_ns: u64,
    /// The sequence number of its announcement, once applied.
    pub seq: Option<u64>,
}

/// What the keyring knows of a data key (never the key itself).
#[derive(Debug, Clone)]
pub struct DataKeyInfo {
    pub created_ns: u64,
    pub by_node: u64,
    pub seq: Option<u64>,
}

#[derive(Default)]
struct Ring {
    live: Keyring,
    signing: BTreeMap<u32, SigningKeyInfo>,
    data: BTreeMap<u32, (DataKeyInfo, [u8; 32])>,
    /// The newest applied data key: the one a leader seals with.
    current_data: Option<u32>,
}

/// Counts an operator graphs: batches checked before persisting, refused,
/// opened at apply.
#[derive(Debug, Default)]
pub struct SealStats {
    pub verified_batches: AtomicU64,
    pub rejected_batches: AtomicU64,
    pub opened_batches: AtomicU64,
    pub key_events: AtomicU64,
}

/// A reading of [`SealStats`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SealCounts {
    pub verified_batches: u64,
    pub rejected_batches: u64,
    pub opened_batches: u64,
    pub key_events: u64,
}

impl SealStats {
    pub fn counts(&self) -> SealCounts {
        SealCounts {
            verified_batches: self.verified_batches.load(Ordering::Relaxed),
            rejected_batches: self.rejected_batches.load(Ordering::Relaxed),
            opened_batches: self.opened_batches.load(Ordering::Relaxed),
            key_events: self.key_events.load(Ordering::Relaxed),
        }
    }
}

/// The cluster KEKs and the keyring, shared by the peer service, the state
/// machine and the leader's sealer.
pub struct Keys {
    keks: HashMap<u32, Aes256Gcm>,
    current_kek: u32,
    ring: RwLock<Ring>,
    /// Bumped whenever a key joins the ring or becomes current.
    changed: tokio::sync::watch::Sender<u64>,
    pub stats: SealStats,
}

impl Keys {
    pub fn new(kek_file: &KekFile) -> Keys {
        Keys {
            keks: kek_file
                .keks
                .iter()
                .map(|k| (k.id, Aes256Gcm::new((&k.key).into())))
                .collect(),
            current_kek: kek_file.current().id,
            ring: RwLock::default(),
            changed: tokio::sync::watch::Sender::new(0),
            stats: SealStats::default(),
        }
    }

    fn kek(&self, id: u32) -> Result<&Aes256Gcm, Error> {
        self.keks.get(&id).ok_or_else(|| {
            Error::Unauthorized(format!(
                "key-encryption key {id} is not in this node's key file (a key file from another cluster, or one not updated after a KEK rotation)"
            ))
        })
    }

    /// An announcement of `seed`'s public key by `node_id`, signed by
    /// `previous` (the node's applied key before it) or, without one,
    /// proven under the KEK.
    pub fn announce_signing(
        &self,
        node_id: u64,
        seed: &SigningSeed,
        previous: Option<&SigningSeed>,
    ) -> Result<KeyEvent, Error> {
        let signer = Signer::new(seed.id, &seed.seed);
        let mut announce = SigningAnnounce {
            id: seed.id,
            node_id,
            public: signer.verifying_key().to_bytes(),
            created_ns: seed.created_ns,
            proof: SigningProof::Previous {
                id: 0,
                signature: Vec::new(),
            },
        };
        let message = signing_message(&announce);
        announce.proof = match previous {
            Some(previous) => SigningProof::Previous {
                id: previous.id,
                signature: Signer::new(previous.id, &previous.seed)
                    .signing_key()
                    .sign(&message)
                    .to_bytes()
                    .to_vec(),
            },
            None => {
                let nonce = random_nonce()?;
                let tag = self
                    .kek(self.current_kek)?
                    .encrypt_in_place_detached((&nonce).into(), &message, &mut [])
                    .map_err(|_| Error::Internal("AES-GCM failed on an empty message".into()))?;
                SigningProof::Kek {
                    kek_id: self.current_kek,
                    nonce,
                    tag: tag.into(),
                }
            }
        };
        Ok(KeyEvent::Signing(announce))
    }

    /// A fresh data key, wrapped under the current KEK, with an id free in
    /// the keyring.
    pub fn new_data_key(&self, by_node: u64) -> Result<KeyEvent, Error> {
        let id = {
            let ring = self.ring.read().expect("keyring lock poisoned");
            random_id(|id| ring.data.contains_key(&id))?
        };
        let key = crate::seal::random_key()?;
        let mut announce = DataKeyAnnounce {
            id,
            created_ns: crate::state_machine::wall_clock_ns(),
            by_node,
            kek_id: self.current_kek,
            nonce: random_nonce()?,
            wrapped: Vec::new(),
        };
        let mut wrapped = key.to_vec();
        let tag = self
            .kek(self.current_kek)?
            .encrypt_in_place_detached((&announce.nonce).into(), &data_key_aad(&announce), &mut wrapped)
            .map_err(|_| Error::Internal("AES-GCM failed to wrap a data key".into()))?;
        wrapped.extend_from_slice(&tag);
        announce.wrapped = wrapped;
        Ok(KeyEvent::Data(announce))
    }

    /// A free signing key id.
    pub fn free_signing_id(&self) -> Result<u32, Error> {
        let ring = self.ring.read().expect("keyring lock poisoned");
        random_id(|id| ring.signing.contains_key(&id))
    }

    /// Check `event` against the KEKs and the keyring (for a signing key
    /// proven by a previous key).
    fn verify(&self, ring: &Ring, event: &KeyEvent) -> Result<Material, Error> {
        match event {
            KeyEvent::Signing(a) => {
                let refused =
                    |why: String| Error::Unauthorized(format!("signing key {} of node {}: {why}", a.id, a.node_id));
                let public = ed25519_dalek::VerifyingKey::from_bytes(&a.public)
                    .map_err(|_| refused("not a valid ed25519 public key".into()))?;
                let message = signing_message(a);
                match &a.proof {
                    SigningProof::Kek { kek_id, nonce, tag } => self
                        .kek(*kek_id)?
                        .decrypt_in_place_detached(nonce.into(), &message, &mut [], tag.into())
                        .map_err(|_| refused(format!("its proof under key-encryption key {kek_id} does not verify")))?,
                    SigningProof::Previous { id, signature } => {
                        let previous = ring
                            .signing
                            .get(id)
                            .ok_or_else(|| refused(format!("signed by unknown key {id}")))?;
                        if previous.node_id != a.node_id {
                            return Err(refused(format!("signed by key {id} of node {}", previous.node_id)));
                        }
                        let signature = ed25519_dalek::Signature::from_slice(signature)
                            .map_err(|_| refused("malformed signature".into()))?;
                        ed25519_dalek::VerifyingKey::from_bytes(&previous.public)
                            .expect("keys in the ring are valid")
                            .verify_strict(&message, &signature)
                            .map_err(|_| refused(format!("signature by its previous key {id} does not verify")))?;
                    }
                }
                Ok(Material::Signing(public))
            }
            KeyEvent::Data(a) => {
                if a.wrapped.len() != 32 + 16 {
                    return Err(Error::decode(
                        "key event",
                        format!("wrapped data key of {} bytes", a.wrapped.len()),
                    ));
                }
                let (ciphertext, tag) = a.wrapped.split_at(32);
                let mut key = [0u8; 32];
                key.copy_from_slice(ciphertext);
                self.kek(a.kek_id)?
                    .decrypt_in_place_detached((&a.nonce).into(), &data_key_aad(a), &mut key, tag.into())
                    .map_err(|_| {
                        Error::Unauthorized(format!(
                            "data key {}: does not unwrap under key-encryption key {}",
                            a.id, a.kek_id
                        ))
                    })?;
                Ok(Material::Data(key))
            }
        }
    }

    /// Verify a key event and add it to the keyring. `applied_seq` is its
    /// record's sequence number when the state machine applies it (it then
    /// becomes the current data key), `None` when a follower receives it.
    pub fn observe(&self, payload: &[u8], applied_seq: Option<u64>) -> Result<(), Error> {
        let event = KeyEvent::decode(payload)?;
        let mut ring = self.ring.write().expect("keyring lock poisoned");
        let material = self.verify(&ring, &event)?;
        let conflict = |what: &str, id: u32| {
            let err = Error::Unauthorized(format!("{what} {id} was announced before with other material"));
            match applied_seq {
                Some(_) => Err(err),
                None => {
                    // A stale leader's announcement, truncated since: the
                    // one that commits is applied (and checked) later.
                    tracing::warn!(%err, "ignoring a conflicting key announcement");
                    Ok(())
                }
            }
        };
        match (event, material) {
            (KeyEvent::Signing(a), Material::Signing(public)) => {
                if let Some(known) = ring.signing.get_mut(&a.id) {
                    if known.public != a.public || known.node_id != a.node_id {
                        return conflict("signing key", a.id);
                    }
                    known.seq = known.seq.or(applied_seq);
                    drop(ring);
                    // Applied now: its node may seal with it.
                    self.changed.send_modify(|version| *version += 1);
                    return Ok(());
                }
                ring.live.add_verifying_key(a.id, a.node_id, public);
                ring.signing.insert(
                    a.id,
                    SigningKeyInfo {
                        node_id: a.node_id,
                        public: a.public,
                        created_ns: a.created_ns,
                        seq: applied_seq,
                    },
                );
            }
            (KeyEvent::Data(a), Material::Data(key)) => {
                match ring.data.get_mut(&a.id) {
                    Some((_, known)) if *known != key => return conflict("data key", a.id),
                    Some((info, _)) => info.seq = info.seq.or(applied_seq),
                    None => {
                        ring.live.add_data_key(DataKey::new(a.id, &key));
                        let info = DataKeyInfo {
                            created_ns: a.created_ns,
                            by_node: a.by_node,
                            seq: applied_seq,
                        };
                        ring.data.insert(a.id, (info, key));
                    }
                }
                if applied_seq.is_some() {
                    ring.current_data = Some(a.id);
                }
            }
            _ => unreachable!("verify returns the material of the event's kind"),
        }
        drop(ring);
        self.stats.key_events.fetch_add(1, Ordering::Relaxed);
        self.changed.send_modify(|version| *version += 1);
        Ok(())
    }

    /// Changes whenever a key joins the ring or becomes current.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Check a key event payload against the KEKs and the keyring without
    /// adding it.
    fn verify_payload(&self, payload: &[u8]) -> Result<(), Error> {
        let event = KeyEvent::decode(payload)?;
        let ring = self.ring.read().expect("keyring lock poisoned");
        self.verify(&ring, &event).map(drop)
    }

    /// Add the key events of log entries after `applied` to the keyring as
    /// received: on start, a follower may hold entries sealed under keys
    /// announced in entries it has not applied yet, and must verify the
    /// entries that follow them.
    pub async fn observe_log_tail(
        &self,
        log: &mut crate::type_config::LogStore,
        applied: Option<u64>,
    ) -> Result<usize, Error> {
        use openraft::storage::RaftLogReader;
        use openraft::storage::RaftLogStorage;
        let state = log.get_log_state().await?;
        let Some(last) = state.last_log_id else {
            return Ok(0);
        };
        let mut from = applied
            .map_or(0, |a| a + 1)
            .max(state.last_purged_log_id.map_or(0, |p| p.index + 1));
        let mut count = 0;
        while from <= last.index {
            let upto = (from + LOG_TAIL_READ_ENTRIES).min(last.index + 1);
            for entry in log.try_get_log_entries(from..upto).await? {
                let openraft::EntryPayload::Normal(frame) = &entry.payload else {
                    continue;
                };
                if frame.is_sealed() {
                    continue;
                }
                let Ok(decoded) = frame.decode() else { continue };
                for record in decoded.body.records.iter().filter(|r| r.channel == KEYS_CHANNEL) {
                    match self.observe(record.payload, None) {
                        Ok(()) => count += 1,
                        Err(err) => {
                            tracing::warn!(index = entry.log_id.index, %err, "key event in the WAL does not verify")
                        }
                    }
                }
            }
            from = upto;
        }
        Ok(count)
    }

    /// Add applied key events, in sequence order, from the record store
    /// (on start and after a snapshot install). Keys already in the ring
    /// stay.
    pub fn load_applied(&self, events: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Result<usize, Error> {
        let mut count = 0;
        for (seq, payload) in events {
            self.observe(&payload, Some(seq))
                .map_err(|e| Error::Internal(format!("key event at seq {seq} in the record store: {e}")))?;
            count += 1;
        }
        Ok(count)
    }

    /// Check one entry's frame before it is persisted: a sealed frame's
    /// CRC, signature and tag; a plain frame only if it carries nothing
    /// but key events that verify (which then join the keyring).
    pub fn check_frame(&self, frame: &BatchFrame) -> Result<(), Error> {
        let result = if frame.is_sealed() {
            let ring = self.ring.read().expect("keyring lock poisoned");
            frame.verify(&ring.live)
        } else {
            self.check_key_frame(frame)
        };
        let counter = match result {
            Ok(()) => &self.stats.verified_batches,
            Err(_) => &self.stats.rejected_batches,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn check_key_frame(&self, frame: &BatchFrame) -> Result<(), Error> {
        let decoded = frame.decode()?;
        if decoded.body.records.is_empty() {
            return Err(Error::Unauthorized(
                "plain batch with no key event in a sealed cluster".into(),
            ));
        }
        for payload in key_event_payloads(&decoded.body)? {
            self.observe(payload, None)?;
        }
        Ok(())
    }

    /// Check a plain batch at apply, before any of it is written: every
    /// record a key event that verifies (they join the ring as they are
    /// appended).
    pub fn verify_key_batch(&self, body: &BatchBodyRef<'_>) -> Result<(), Error> {
        for payload in key_event_payloads(body)? {
            self.verify_payload(payload)?;
        }
        Ok(())
    }

    /// Open a sealed frame at apply: every entry in the WAL had its
    /// signature checked before it was written (or was sealed here), so
    /// apply re-checks CRC and tag and decrypts, but does not verify the
    /// signature again.
    pub fn open(&self, frame: &BatchFrame) -> Result<OpenedBatch, Error> {
        let ring = self.ring.read().expect("keyring lock poisoned");
        let opened = frame.open_verified(&ring.live)?;
        self.stats.opened_batches.fetch_add(1, Ordering::Relaxed);
        Ok(opened)
    }

    /// The at-rest key of data key `id`: what apply seals the payloads of
    /// that key's batches with in the record file.
    pub fn at_rest_key(&self, id: u32) -> Option<AtRestKey> {
        let ring = self.ring.read().expect("keyring lock poisoned");
        ring.live.at_rest_key(id).cloned()
    }

    /// The payload of the record at `seq`, sealed at rest, opened.
    pub fn open_at_rest(&self, seq: u64, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let ring = self.ring.read().expect("keyring lock poisoned");
        ring.live.open_at_rest(seq, sealed)
    }

    /// Open, in place, the payload of every record in `records` that is
    /// sealed at rest (what a read serves), under one look at the keyring.
    pub fn open_records(&self, records: &mut [txlog_storage::StoredRecord]) -> Result<(), Error> {
        let ring = self.ring.read().expect("keyring lock poisoned");
        for record in records.iter_mut().filter(|r| r.sealed_at_rest) {
            ring.live.open_at_rest_in_place(record.seq, &mut record.payload)?;
            record.sealed_at_rest = false;
        }
        Ok(())
    }

    /// The data key to seal with: the newest applied one.
    pub fn current_data_key(&self) -> Option<(DataKey, DataKeyInfo)> {
        let ring = self.ring.read().expect("keyring lock poisoned");
        let id = ring.current_data?;
        let (info, _) = ring.data.get(&id)?;
        Some((ring.live.data_key(id)?.clone(), info.clone()))
    }

    /// The signing key `id`, if the keyring has it.
    pub fn signing_key(&self, id: u32) -> Option<SigningKeyInfo> {
        self.ring
            .read()
            .expect("keyring lock poisoned")
            .signing
            .get(&id)
            .cloned()
    }

    /// How many signing and data keys the ring holds.
    #[cfg(test)]
    pub(crate) fn key_counts(&self) -> (usize, usize) {
        let ring = self.ring.read().expect("keyring lock poisoned");
        (ring.signing.len(), ring.data.len())
    }
}

/// The payloads of a plain batch in a sealed cluster, where a plain batch
/// may carry key events only: refused whole if any record is on another
/// channel. Receipt and apply judge plain batches by this one rule.
fn key_event_payloads<'a>(body: &'a BatchBodyRef<'a>) -> Result<impl Iterator<Item = &'a [u8]>, Error> {
    if let Some(record) = body.records.iter().find(|r| r.channel != KEYS_CHANNEL) {
        return Err(Error::Unauthorized(format!(
            "plain batch with a record on channel {:?}: a sealed cluster accepts only sealed batches and key events",
            record.channel
        )));
    }
    Ok(body.records.iter().map(|r| r.payload))
}

enum Material {
    Signing(ed25519_dalek::VerifyingKey),
    Data([u8; 32]),
}

#[cfg(test)]
pub(crate) mod tests {
    use txlog_storage::Kek;

    use super::*;

    /// A key file holding KEK 1 of `key` bytes.
    pub(crate) fn kek_file(key: u8) -> KekFile {
        KekFile {
            keks: vec![Kek {
                id: 1,
                created_ns: 0,
                key: [key; 32],
            }],
        }
    }

    /// A batch of one 64-byte record on `orders`.
    pub(crate) fn one_record_body() -> BatchBody {
        BatchBody {
            created_ns: 1,
            records: vec![NewRecord {
                txid: b"t".to_vec().into(),
                channel: "orders".into(),
                payload: vec![1; 64].into(),
                client_time_ns: 0,
            }],
        }
    }

    fn seed(id: u32, byte: u8) -> SigningSeed {
        SigningSeed {
            id,
            created_ns: 10,
            seed: [byte; 32],
        }
    }

    /// Key events round-trip, and a damaged or foreign payload is refused.
    #[test]
    fn key_event_round_trip() {
        let keys = Keys::new(&kek_file(1));
        for event in [
            keys.announce_signing(1000, &seed(7, 2), None).unwrap(),
            keys.new_data_key(1000).unwrap(),
        ] {
            assert_eq!(KeyEvent::decode(&event.encode()).unwrap(), event);
            let mut bad = event.encode();
            bad[0] = 9;
            assert!(KeyEvent::decode(&bad).is_err());
            assert!(KeyEvent::decode(&[]).is_err());
        }
    }

    /// A first signing key needs the cluster KEK; a later one is signed by
    /// the same node's previous key; another node's key or a changed field
    /// is refused.
    #[test]
    fn signing_announcements_verify() {
        let keys = Keys::new(&kek_file(1));
        let first = keys.announce_signing(1000, &seed(7, 2), None).unwrap();
        // Another cluster's KEK does not prove it.
        let foreign = Keys::new(&kek_file(9));
        let err = foreign.observe(&first.encode(), Some(1)).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");
        keys.observe(&first.encode(), Some(1)).unwrap();
        assert_eq!(keys.signing_key(7).unwrap().node_id, 1000);

        let second = keys.announce_signing(1000, &seed(8, 3), Some(&seed(7, 2))).unwrap();
        keys.observe(&second.encode(), Some(2)).unwrap();
        // Node 2000 cannot chain a key from node 1000's.
        let stolen = keys.announce_signing(2000, &seed(9, 4), Some(&seed(8, 3))).unwrap();
        let err = keys.observe(&stolen.encode(), Some(3)).unwrap_err().to_string();
        assert!(err.contains("of node 1000"), "{err}");
        // A field changed after signing.
        let KeyEvent::Signing(mut forged) = keys.announce_signing(1000, &seed(10, 5), Some(&seed(8, 3))).unwrap()
        else {
            unreachable!()
        };
        forged.created_ns += 1;
        let err = keys
            .observe(&KeyEvent::Signing(forged).encode(), Some(4))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not verify"), "{err}");
        // Re-announcing the same key is harmless; other material under its id is not.
        keys.observe(&first.encode(), Some(5)).unwrap();
        let clash = keys.announce_signing(1000, &seed(7, 6), None).unwrap();
        assert!(keys.observe(&clash.encode(), Some(6)).is_err());
        assert!(keys.observe(&clash.encode(), None).is_ok(), "ignored on receive");
    }

    /// A data key unwraps only under its KEK, becomes current only once
    /// applied, and a wrapped key with a changed field is refused.
    #[test]
    fn data_keys_unwrap_and_become_current() {
        let keys = Keys::new(&kek_file(1));
        let event = keys.new_data_key(1000).unwrap();
        let KeyEvent::Data(announce) = &event else {
            unreachable!()
        };
        assert!(Keys::new(&kek_file(9)).observe(&event.encode(), Some(1)).is_err());
        keys.observe(&event.encode(), None).unwrap();
        assert!(keys.current_data_key().is_none(), "received is not current");
        keys.observe(&event.encode(), Some(1)).unwrap();
        assert_eq!(keys.current_data_key().unwrap().0.id(), announce.id);
        let mut forged = announce.clone();
        forged.by_node = 2000;
        assert!(keys.observe(&KeyEvent::Data(forged).encode(), Some(2)).is_err());
        assert!(!announce.wrapped.windows(8).any(|w| w == [0u8; 8]));
    }

    /// The receive check accepts sealed batches under known keys and plain
    /// frames of key events only.
    #[test]
    fn check_frame_accepts_only_sealed_batches_and_key_events() {
        let keys = Keys::new(&kek_file(1));
        let signing = keys.announce_signing(1000, &seed(7, 2), None).unwrap();
        let data = keys.new_data_key(1000).unwrap();
        keys.check_frame(&KeyEvent::frame(1000, &[signing, data.clone()]))
            .unwrap();
        let KeyEvent::Data(d) = &data else { unreachable!() };
        let body = one_record_body();
        let plain = BatchFrame::encode(1000, &body);
        let err = keys.check_frame(&plain).unwrap_err().to_string();
        assert!(err.contains("accepts only sealed batches"), "{err}");
        // The data key is only received, not applied: it still verifies.
        let (info_key, _) = {
            let ring = keys.ring.read().unwrap();
            let (_, key) = ring.data.get(&d.id).unwrap();
            (DataKey::new(d.id, key), ())
        };
        let signer = Signer::new(7, &[2; 32]);
        let with = crate::batch_frame::SealWith {
            node_id: 1000,
            data_key: &info_key,
            signer: &signer,
        };
        let sealed = BatchFrame::seal(1000, &body, &with, 1);
        keys.check_frame(&sealed).unwrap();
        let mut forged = sealed.clone();
        let n = forged.0.len();
        forged.0[40] ^= 1;
        let crc = crc32fast::hash(&forged.0[..n - 4]);
        forged.0[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(keys.check_frame(&forged), Err(Error::Unauthorized(_))));
        assert_eq!(keys.stats.rejected_batches.load(Ordering::Relaxed), 2);
        assert_eq!(keys.stats.verified_batches.load(Ordering::Relaxed), 2);
    }
}
