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
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::RwLock;

use aes_gcm::aead::AeadInOut;
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
/// Fewest sealed entries in a row whose signatures a follower checks
/// together. Measured on the EPYC hosts (AVX-512 IFMA) with
/// `signature.rs`: one alone ~18.4 µs; together, per signature, 4 ~12.9,
/// 16 ~11.2. ed25519-dalek's batch of 2 gained nothing over one alone, and
/// a failed batch costs a second pass, so runs start at 4.
const VERIFY_BATCH_FRAMES_MIN: usize = 4;

/// One key announcement: the payload of a [`KEYS_CHANNEL`] record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyEvent {
    Signing(SigningAnnounce),
    Data(DataKeyAnnounce),
    /// A data key announced before, wrapped again under another KEK (a
    /// KEK rotation). It never makes the key current.
    Rewrap(DataKeyAnnounce),
    /// A node's first signing key, announced before, proven again under
    /// another KEK (a KEK rotation). The proof must be [`SigningProof::Kek`].
    Reprove(SigningAnnounce),
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

    /// The KEK the event is wrapped or proven under; `None` for a signing
    /// key signed by its predecessor.
    pub fn kek_id(&self) -> Option<u32> {
        match self {
            KeyEvent::Data(a) | KeyEvent::Rewrap(a) => Some(a.kek_id),
            KeyEvent::Signing(a) | KeyEvent::Reprove(a) => match a.proof {
                SigningProof::Kek { kek_id, .. } => Some(kek_id),
                SigningProof::Previous { .. } => None,
            },
        }
    }

    /// The record that carries this event; its txid makes a repeat of the
    /// same announcement a duplicate.
    pub fn to_record(&self) -> NewRecord {
        let txid = match self {
            KeyEvent::Signing(a) => format!("{KEYS_CHANNEL}/signing/{}", a.id),
            KeyEvent::Data(a) => format!("{KEYS_CHANNEL}/data/{}", a.id),
            // One rewrap per key and KEK: rotating to the same KEK again is
            // a duplicate.
            KeyEvent::Rewrap(a) => format!("{KEYS_CHANNEL}/data/{}/kek/{}", a.id, a.kek_id),
            KeyEvent::Reprove(a) => match self.kek_id() {
                Some(kek_id) => format!("{KEYS_CHANNEL}/signing/{}/kek/{kek_id}", a.id),
                None => format!("{KEYS_CHANNEL}/signing/{}/kek/none", a.id),
            },
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

/// An announced public signing key: a valid point, and not of small order
/// (which no honest key is: an honest key is a multiple of the base point).
/// Batch signatures are checked under a cofactored rule (`signature.rs`),
/// under which a small-order key would verify anything.
fn announced_public(public: &[u8; 32]) -> Result<ed25519_dalek::VerifyingKey, String> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(public)
        .map_err(|_| "its public key is not an ed25519 point".to_string())?;
    if key.is_weak() {
        return Err("its public key is of small order (a weak key)".into());
    }
    Ok(key)
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
    /// The KEKs a verified proof of this key is under (a node's first key;
    /// empty for a key signed by its predecessor).
    pub keks: BTreeSet<u32>,
}

/// What the keyring knows of a data key (never the key itself).
#[derive(Debug, Clone)]
pub struct DataKeyInfo {
    pub created_ns: u64,
    pub by_node: u64,
    pub seq: Option<u64>,
    /// The KEKs a verified wrapping of this key is under.
    pub keks: BTreeSet<u32>,
}

/// Which key a rewrap or re-proof is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KeyName {
    Signing(u32),
    Data(u32),
}

#[derive(Default)]
struct Ring {
    live: Keyring,
    signing: BTreeMap<u32, SigningKeyInfo>,
    data: BTreeMap<u32, (DataKeyInfo, [u8; 32])>,
    /// The newest applied data key: the one a leader seals with.
    current_data: Option<u32>,
    /// Rewraps and re-proofs that verified under a KEK this node holds:
    /// what vouches for an older announcement whose KEK has been retired.
    rewraps: HashMap<KeyName, Vec<KeyEvent>>,
}

/// The key-encryption keys of the key file, reloadable.
struct KekSet {
    ciphers: HashMap<u32, Arc<Aes256Gcm>>,
    /// The key bytes, to tell a changed key file from another cluster's.
    keys: HashMap<u32, [u8; 32]>,
    current: u32,
}

impl KekSet {
    fn new(file: &KekFile) -> KekSet {
        KekSet {
            ciphers: file
                .keks
                .iter()
                .map(|k| (k.id, Arc::new(Aes256Gcm::new((&k.key).into()))))
                .collect(),
            keys: file.keks.iter().map(|k| (k.id, k.key)).collect(),
            current: file.current().id,
        }
    }
}

/// Counts an operator graphs: batches checked before persisting, refused,
/// opened at apply.
#[derive(Debug, Default)]
pub struct SealStats {
    pub verified_batches: AtomicU64,
    /// Runs of sealed entries of one AppendEntries whose signatures passed
    /// checked together (their entries also count in `verified_batches`).
    pub signature_batches: AtomicU64,
    pub rejected_batches: AtomicU64,
    pub opened_batches: AtomicU64,
    pub key_events: AtomicU64,
}

/// A reading of [`SealStats`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SealCounts {
    pub verified_batches: u64,
    pub signature_batches: u64,
    pub rejected_batches: u64,
    pub opened_batches: u64,
    pub key_events: u64,
}

impl SealStats {
    pub fn counts(&self) -> SealCounts {
        SealCounts {
            verified_batches: self.verified_batches.load(Ordering::Relaxed),
            signature_batches: self.signature_batches.load(Ordering::Relaxed),
            rejected_batches: self.rejected_batches.load(Ordering::Relaxed),
            opened_batches: self.opened_batches.load(Ordering::Relaxed),
            key_events: self.key_events.load(Ordering::Relaxed),
        }
    }
}

/// The cluster KEKs and the keyring, shared by the peer service, the state
/// machine and the leader's sealer.
pub struct Keys {
    keks: RwLock<KekSet>,
    ring: RwLock<Ring>,
    /// Bumped whenever a key joins the ring or becomes current.
    changed: tokio::sync::watch::Sender<u64>,
    pub stats: SealStats,
}

impl Keys {
    pub fn new(kek_file: &KekFile) -> Keys {
        Keys {
            keks: RwLock::new(KekSet::new(kek_file)),
            ring: RwLock::default(),
            changed: tokio::sync::watch::Sender::new(0),
            stats: SealStats::default(),
        }
    }

    fn kek(&self, id: u32) -> Result<Arc<Aes256Gcm>, Error> {
        self.keks
            .read()
            .expect("kek lock poisoned")
            .ciphers
            .get(&id)
            .cloned()
            .ok_or_else(|| {
                Error::Unauthorized(format!(
                    "key-encryption key {id} is not in this node's key file (a key file from another cluster, or one not updated after a KEK rotation)"
                ))
            })
    }

    fn holds_kek(&self, id: u32) -> bool {
        self.keks.read().expect("kek lock poisoned").ciphers.contains_key(&id)
    }

    /// The KEK new data keys and first signing keys are wrapped under: the
    /// newest in the key file.
    pub fn current_kek(&self) -> u32 {
        self.keks.read().expect("kek lock poisoned").current
    }

    /// The ids of the KEKs this node holds, ascending.
    pub fn kek_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .keks
            .read()
            .expect("kek lock poisoned")
            .ciphers
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Take the KEKs of a changed key file. Refused, keeping the KEKs held,
    /// when the file changes a KEK this node holds (another cluster's file)
    /// or drops the last KEK that any applied key is wrapped or proven
    /// under in the log (the node could not rebuild its keyring on its
    /// next start): rotate the KEK (`txlog keys rotate-kek`) first.
    pub fn reload(&self, file: &KekFile) -> Result<(), Error> {
        let next = KekSet::new(file);
        let mut keks = self.keks.write().expect("kek lock poisoned");
        if let Some((id, _)) = next
            .keys
            .iter()
            .find(|(id, key)| keks.keys.get(id).is_some_and(|held| held != *key))
        {
            return Err(Error::Unauthorized(format!(
                "key-encryption key {id} differs from the one this node holds: a key file of another cluster?"
            )));
        }
        // What vouches for a key after the change: a KEK both files hold,
        // with the same bytes (an id alone may name another cluster's KEK).
        let kept: BTreeSet<u32> = next
            .keys
            .iter()
            .filter(|(id, key)| keks.keys.get(id) == Some(*key))
            .map(|(id, _)| *id)
            .collect();
        let ring = self.ring.read().expect("keyring lock poisoned");
        let stranded = |held: &BTreeSet<u32>| !held.is_empty() && held.is_disjoint(&kept);
        let mut lost: Vec<String> = ring
            .data
            .iter()
            .filter(|(_, (info, _))| info.seq.is_some() && stranded(&info.keks))
            .map(|(id, (info, _))| format!("data key {id} (under KEK {:?})", info.keks))
            .collect();
        lost.extend(
            ring.signing
                .iter()
                .filter(|(_, info)| info.seq.is_some() && stranded(&info.keks))
                .map(|(id, info)| format!("signing key {id} of node {} (under KEK {:?})", info.node_id, info.keks)),
        );
        if !lost.is_empty() {
            lost.truncate(5);
            return Err(Error::Unauthorized(format!(
                "the key file drops every KEK that {} {} under; rewrap them first (txlog keys rotate-kek)",
                lost.join(", "),
                if lost.len() == 1 { "is wrapped" } else { "are wrapped" }
            )));
        }
        *keks = next;
        Ok(())
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
            None => self.kek_proof(self.current_kek(), &message)?,
        };
        Ok(KeyEvent::Signing(announce))
    }

    /// A proof of a signing announcement's `message` under KEK `kek_id`.
    fn kek_proof(&self, kek_id: u32, message: &[u8]) -> Result<SigningProof, Error> {
        let nonce = random_nonce()?;
        let tag = self
            .kek(kek_id)?
            .encrypt_inout_detached((&nonce).into(), message, (&mut [][..]).into())
            .map_err(|_| Error::Internal("AES-GCM failed on an empty message".into()))?;
        Ok(SigningProof::Kek {
            kek_id,
            nonce,
            tag: tag.into(),
        })
    }

    /// `key` wrapped under KEK `kek_id`, with `id`, `created_ns` and
    /// `by_node` bound to it.
    fn wrap(
        &self,
        kek_id: u32,
        id: u32,
        created_ns: u64,
        by_node: u64,
        key: &[u8; 32],
    ) -> Result<DataKeyAnnounce, Error> {
        let mut announce = DataKeyAnnounce {
            id,
            created_ns,
            by_node,
            kek_id,
            nonce: random_nonce()?,
            wrapped: Vec::new(),
        };
        let mut wrapped = key.to_vec();
        let tag = self
            .kek(kek_id)?
            .encrypt_inout_detached(
                (&announce.nonce).into(),
                &data_key_aad(&announce),
                (&mut wrapped[..]).into(),
            )
            .map_err(|_| Error::Internal("AES-GCM failed to wrap a data key".into()))?;
        wrapped.extend_from_slice(&tag);
        announce.wrapped = wrapped;
        Ok(announce)
    }

    /// What a KEK rotation announces: every applied data key wrapped again,
    /// and every applied first signing key proven again, under the current
    /// KEK, unless the log already holds that; at most `max` of them. Empty
    /// when nothing is left.
    pub fn rewrap_events(&self, max: usize) -> Result<Vec<KeyEvent>, Error> {
        let kek_id = self.current_kek();
        let ring = self.ring.read().expect("keyring lock poisoned");
        let mut events = Vec::new();
        for (id, (info, key)) in &ring.data {
            if events.len() == max {
                return Ok(events);
            }
            if info.seq.is_some() && !info.keks.contains(&kek_id) {
                let announce = self.wrap(kek_id, *id, info.created_ns, info.by_node, key)?;
                events.push(KeyEvent::Rewrap(announce));
            }
        }
        for (id, info) in &ring.signing {
            if events.len() == max {
                return Ok(events);
            }
            if info.seq.is_some() && !info.keks.is_empty() && !info.keks.contains(&kek_id) {
                let mut announce = SigningAnnounce {
                    id: *id,
                    node_id: info.node_id,
                    public: info.public,
                    created_ns: info.created_ns,
                    proof: SigningProof::Previous {
                        id: 0,
                        signature: Vec::new(),
                    },
                };
                announce.proof = self.kek_proof(kek_id, &signing_message(&announce))?;
                events.push(KeyEvent::Reprove(announce));
            }
        }
        Ok(events)
    }

    /// A fresh data key, wrapped under the current KEK, with an id free in
    /// the keyring.
    pub fn new_data_key(&self, by_node: u64) -> Result<KeyEvent, Error> {
        let id = {
            let ring = self.ring.read().expect("keyring lock poisoned");
            random_id(|id| ring.data.contains_key(&id))?
        };
        let key = crate::seal::random_key()?;
        let created_ns = crate::state_machine::wall_clock_ns();
        Ok(KeyEvent::Data(self.wrap(
            self.current_kek(),
            id,
            created_ns,
            by_node,
            &key,
        )?))
    }

    /// A free signing key id.
    pub fn free_signing_id(&self) -> Result<u32, Error> {
        let ring = self.ring.read().expect("keyring lock poisoned");
        random_id(|id| ring.signing.contains_key(&id))
    }

    /// Check `event` against the KEKs and the keyring. A signing key proven
    /// by a previous key needs that key in the ring; a rewrap or re-proof
    /// needs its key there with the same material. A first announcement
    /// under a KEK this node no longer holds is vouched for by a rewrap
    /// (re-proof) of the same key under one it holds, if the ring has one.
    fn verify(&self, ring: &Ring, event: &KeyEvent) -> Result<Verified, Error> {
        match event {
            KeyEvent::Signing(a) => match &a.proof {
                SigningProof::Kek { kek_id, .. } => match self.vouched(ring, event, *kek_id) {
                    Some(vouched) => Ok(vouched),
                    None => self.verify_under_kek(event),
                },
                SigningProof::Previous { id, signature } => {
                    let refused =
                        |why: String| Error::Unauthorized(format!("signing key {} of node {}: {why}", a.id, a.node_id));
                    let public = announced_public(&a.public).map_err(refused)?;
                    let previous = ring
                        .signing
                        .get(id)
                        .ok_or_else(|| refused(format!("signed by unknown key {id}")))?;
                    if previous.node_id != a.node_id {
                        return Err(refused(format!("signed by key {id} of node {}", previous.node_id)));
                    }
                    let signature = ed25519_dalek::Signature::from_slice(signature)
                        .map_err(|_| refused("malformed signature".into()))?;
                    // dalek's strict rule, not the batch rule of `signature.rs`:
                    // announcements are checked one at a time, at apply, on
                    // every node by the same code, and nodes of older builds
                    // check them this way too.
                    ed25519_dalek::VerifyingKey::from_bytes(&previous.public)
                        .expect("keys in the ring are valid")
                        .verify_strict(&signing_message(a), &signature)
                        .map_err(|_| refused(format!("signature by its previous key {id} does not verify")))?;
                    Ok(Verified {
                        material: Material::Signing(public),
                        kek: None,
                    })
                }
            },
            KeyEvent::Data(a) => match self.vouched(ring, event, a.kek_id) {
                Some(vouched) => Ok(vouched),
                None => self.verify_under_kek(event),
            },
            KeyEvent::Reprove(a) => {
                let verified = self.verify_under_kek(event)?;
                match ring.signing.get(&a.id) {
                    None => Err(Error::Unauthorized(format!(
                        "re-proof of signing key {}, which was never announced",
                        a.id
                    ))),
                    Some(known)
                        if (known.node_id, known.public, known.created_ns) != (a.node_id, a.public, a.created_ns) =>
                    {
                        Err(Error::Unauthorized(format!(
                            "re-proof of signing key {} differs from its announcement",
                            a.id
                        )))
                    }
                    Some(_) => Ok(verified),
                }
            }
            KeyEvent::Rewrap(a) => {
                let verified = self.verify_under_kek(event)?;
                let Material::Data(key) = &verified.material else {
                    unreachable!("a rewrap holds a data key")
                };
                match ring.data.get(&a.id) {
                    None => Err(Error::Unauthorized(format!(
                        "rewrap of data key {}, which was never announced",
                        a.id
                    ))),
                    Some((info, known))
                        if known != key || (info.created_ns, info.by_node) != (a.created_ns, a.by_node) =>
                    {
                        Err(Error::Unauthorized(format!(
                            "rewrap of data key {} differs from its announcement",
                            a.id
                        )))
                    }
                    Some(_) => Ok(verified),
                }
            }
        }
    }

    /// Check an event whose proof is under a KEK (a first signing key, a
    /// re-proof, a data key or a rewrap) against that KEK alone.
    fn verify_under_kek(&self, event: &KeyEvent) -> Result<Verified, Error> {
        match event {
            KeyEvent::Signing(a) | KeyEvent::Reprove(a) => {
                let refused =
                    |why: String| Error::Unauthorized(format!("signing key {} of node {}: {why}", a.id, a.node_id));
                let public = announced_public(&a.public).map_err(refused)?;
                let SigningProof::Kek { kek_id, nonce, tag } = &a.proof else {
                    return Err(refused("its proof is not under a key-encryption key".into()));
                };
                self.kek(*kek_id)?
                    .decrypt_inout_detached(nonce.into(), &signing_message(a), (&mut [][..]).into(), tag.into())
                    .map_err(|_| refused(format!("its proof under key-encryption key {kek_id} does not verify")))?;
                Ok(Verified {
                    material: Material::Signing(public),
                    kek: Some(*kek_id),
                })
            }
            KeyEvent::Data(a) | KeyEvent::Rewrap(a) => {
                if a.wrapped.len() != 32 + 16 {
                    return Err(Error::decode(
                        "key event",
                        format!("wrapped data key of {} bytes", a.wrapped.len()),
                    ));
                }
                let (ciphertext, tag) = a.wrapped.split_last_chunk::<16>().expect("48 bytes");
                let mut key = [0u8; 32];
                key.copy_from_slice(ciphertext);
                self.kek(a.kek_id)?
                    .decrypt_inout_detached((&a.nonce).into(), &data_key_aad(a), (&mut key[..]).into(), tag.into())
                    .map_err(|_| {
                        Error::Unauthorized(format!(
                            "data key {}: does not unwrap under key-encryption key {}",
                            a.id, a.kek_id
                        ))
                    })?;
                Ok(Verified {
                    material: Material::Data(key),
                    kek: Some(a.kek_id),
                })
            }
        }
    }

    /// For a first announcement under a KEK this node does not hold: the
    /// same key, with the same fields, as a rewrap (re-proof) in the ring
    /// under a KEK it holds gives it.
    fn vouched(&self, ring: &Ring, event: &KeyEvent, kek_id: u32) -> Option<Verified> {
        if self.holds_kek(kek_id) {
            return None;
        }
        let candidates: Vec<&KeyEvent> = match event {
            KeyEvent::Signing(a) => ring
                .rewraps
                .get(&KeyName::Signing(a.id))?
                .iter()
                .filter(|r| {
                    matches!(r, KeyEvent::Reprove(b)
                        if (b.node_id, b.public, b.created_ns) == (a.node_id, a.public, a.created_ns))
                })
                .collect(),
            KeyEvent::Data(a) => ring
                .rewraps
                .get(&KeyName::Data(a.id))?
                .iter()
                .filter(|r| matches!(r, KeyEvent::Rewrap(b) if (b.created_ns, b.by_node) == (a.created_ns, a.by_node)))
                .collect(),
            KeyEvent::Rewrap(_) | KeyEvent::Reprove(_) => return None,
        };
        candidates.into_iter().find_map(|r| self.verify_under_kek(r).ok())
    }

    /// Verify a key event and add it to the keyring. `applied_seq` is its
    /// record's sequence number when the state machine applies it (it then
    /// becomes the current data key), `None` when a follower receives it.
    pub fn observe(&self, payload: &[u8], applied_seq: Option<u64>) -> Result<(), Error> {
        let event = KeyEvent::decode(payload)?;
        self.observe_event(event, applied_seq)
    }

    fn observe_event(&self, event: KeyEvent, applied_seq: Option<u64>) -> Result<(), Error> {
        let mut ring = self.ring.write().expect("keyring lock poisoned");
        let Verified { material, kek } = self.verify(&ring, &event)?;
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
                    known.keks.extend(kek);
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
                        keks: kek.into_iter().collect(),
                    },
                );
            }
            (event @ KeyEvent::Reprove(_), Material::Signing(_)) => {
                let KeyEvent::Reprove(a) = &event else { unreachable!() };
                let known = ring.signing.get_mut(&a.id).expect("verify checked the key is known");
                known.keks.extend(kek);
                remember_rewrap(&mut ring, event);
            }
            (KeyEvent::Data(a), Material::Data(key)) => {
                match ring.data.get_mut(&a.id) {
                    Some((_, known)) if *known != key => return conflict("data key", a.id),
                    Some((info, _)) => {
                        info.seq = info.seq.or(applied_seq);
                        info.keks.extend(kek);
                    }
                    None => {
                        ring.live.add_data_key(DataKey::new(a.id, &key));
                        let info = DataKeyInfo {
                            created_ns: a.created_ns,
                            by_node: a.by_node,
                            seq: applied_seq,
                            keks: kek.into_iter().collect(),
                        };
                        ring.data.insert(a.id, (info, key));
                    }
                }
                if applied_seq.is_some() {
                    ring.current_data = Some(a.id);
                }
            }
            (event @ KeyEvent::Rewrap(_), Material::Data(_)) => {
                let KeyEvent::Rewrap(a) = &event else { unreachable!() };
                let (info, _) = ring.data.get_mut(&a.id).expect("verify checked the key is known");
                info.keks.extend(kek);
                remember_rewrap(&mut ring, event);
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
    /// stay. Rewraps are learnt first, so an announcement under a KEK the
    /// key file no longer holds verifies by its later rewrap.
    pub fn load_applied(&self, events: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Result<usize, Error> {
        let in_store = |seq: u64, e: Error| Error::Internal(format!("key event at seq {seq} in the record store: {e}"));
        let events = events
            .into_iter()
            .map(|(seq, payload)| {
                KeyEvent::decode(&payload)
                    .map(|e| (seq, e))
                    .map_err(|e| in_store(seq, e))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        self.learn_rewraps(events.iter().map(|(_, e)| e));
        let mut count = 0;
        for (seq, event) in events {
            self.observe_loaded(event, seq).map_err(|e| in_store(seq, e))?;
            count += 1;
        }
        Ok(count)
    }

    /// Remember the rewraps and re-proofs among `events` that verify under
    /// a KEK this node holds: what [`Self::observe_loaded`] needs before it
    /// meets announcements under KEKs retired since.
    pub fn learn_rewraps<'a>(&self, events: impl IntoIterator<Item = &'a KeyEvent>) {
        let mut ring = self.ring.write().expect("keyring lock poisoned");
        for event in events {
            // A rewrap under a KEK this node lacks does not verify.
            if matches!(event, KeyEvent::Rewrap(_) | KeyEvent::Reprove(_)) && self.verify_under_kek(event).is_ok() {
                remember_rewrap(&mut ring, event.clone());
            }
        }
    }

    /// [`Self::observe`] for an event read back from a record store, which
    /// was checked when it was applied: a rewrap under a KEK retired since
    /// is skipped (it vouches for nothing this node can use).
    pub fn observe_loaded(&self, event: KeyEvent, seq: u64) -> Result<(), Error> {
        if matches!(event, KeyEvent::Rewrap(_) | KeyEvent::Reprove(_))
            && !event.kek_id().is_some_and(|kek_id| self.holds_kek(kek_id))
        {
            tracing::debug!(
                seq,
                kek = ?event.kek_id(),
                "skipping a rewrap under a retired key-encryption key"
            );
            return Ok(());
        }
        self.observe_event(event, Some(seq))
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

    /// Check the frames of one AppendEntries, in order, as
    /// [`Self::check_frame`] does each; on a refusal, the index of the first
    /// refused frame and why. A run of at least [`VERIFY_BATCH_FRAMES_MIN`]
    /// sealed frames has its signatures checked together (a catching-up
    /// follower gets hundreds per call), under the same rule as one by one
    /// (`signature.rs`); if that fails, the run is checked one frame at a
    /// time, so the refusal names the same entry and error it would have.
    /// Plain frames (key events) stay one at a time: one may announce the
    /// key that the next is sealed under.
    pub fn check_frames(&self, frames: &[&BatchFrame]) -> Result<(), (usize, Error)> {
        let mut at = 0;
        while at < frames.len() {
            let run_len = frames[at..].iter().take_while(|f| f.is_sealed()).count();
            if run_len >= VERIFY_BATCH_FRAMES_MIN {
                let run = &frames[at..at + run_len];
                let verified = {
                    let ring = self.ring.read().expect("keyring lock poisoned");
                    BatchFrame::verify_all(run, &ring.live)
                };
                if verified {
                    self.stats.verified_batches.fetch_add(run_len as u64, Ordering::Relaxed);
                    self.stats.signature_batches.fetch_add(1, Ordering::Relaxed);
                    at += run_len;
                    continue;
                }
            }
            // A short run, a plain frame, or a run with a bad frame in it.
            let one_by_one = run_len.max(1);
            for (i, frame) in frames[at..at + one_by_one].iter().enumerate() {
                self.check_frame(frame).map_err(|err| (at + i, err))?;
            }
            at += one_by_one;
        }
        Ok(())
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

    /// The speculative feed's key for `term` under data key `id`
    /// ([`crate::seal::SpeculativeKey`]).
    pub fn speculative_key(&self, id: u32, term: u64) -> Option<crate::seal::SpeculativeKey> {
        let ring = self.ring.read().expect("keyring lock poisoned");
        ring.live.speculative_key(id, term)
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

fn remember_rewrap(ring: &mut Ring, event: KeyEvent) {
    let name = match &event {
        KeyEvent::Rewrap(a) => KeyName::Data(a.id),
        KeyEvent::Reprove(a) => KeyName::Signing(a.id),
        KeyEvent::Data(_) | KeyEvent::Signing(_) => unreachable!("only rewraps vouch for keys"),
    };
    let known = ring.rewraps.entry(name).or_default();
    if !known.contains(&event) {
        known.push(event);
    }
}

enum Material {
    Signing(ed25519_dalek::VerifyingKey),
    Data([u8; 32]),
}

/// A key event that verified: its key, and the KEK its proof is under
/// (`None` for a signing key signed by its predecessor).
struct Verified {
    material: Material,
    kek: Option<u32>,
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

    /// The frames of one AppendEntries: a run of sealed frames passes with
    /// one batch verification; a forgery or damage anywhere in a run is
    /// refused at its own index with the error a one-by-one check gives; a
    /// key event between runs is still checked in order (the sealed frames
    /// after it are under the key it announces).
    #[test]
    fn check_frames_verifies_runs_in_one_batch_and_names_the_bad_entry() {
        let keys = Keys::new(&kek_file(1));
        let first = keys.announce_signing(1000, &seed(7, 2), None).unwrap();
        let data = keys.new_data_key(1000).unwrap();
        let KeyEvent::Data(d) = &data else { unreachable!() };
        let first_frame = KeyEvent::frame(1000, std::slice::from_ref(&first));
        keys.check_frame(&first_frame).unwrap();
        let body = one_record_body();
        let sealed_with = |key: &DataKey, counter: u32| {
            let signer = Signer::new(7, &[2; 32]);
            let with = crate::batch_frame::SealWith {
                node_id: 1000,
                data_key: key,
                signer: &signer,
            };
            BatchFrame::seal(1000, &body, &with, counter)
        };
        let sealed_under = |announce: &DataKeyAnnounce, counter: u32| {
            let key = {
                let ring = keys.ring.read().unwrap();
                let (_, key) = ring.data.get(&announce.id).unwrap();
                DataKey::new(announce.id, key)
            };
            sealed_with(&key, counter)
        };
        let key_frame = KeyEvent::frame(1000, std::slice::from_ref(&data));
        keys.check_frame(&key_frame).unwrap();
        let good: Vec<BatchFrame> = (1..=6).map(|c| sealed_under(d, c)).collect();
        let refs: Vec<&BatchFrame> = good.iter().collect();
        keys.check_frames(&refs).unwrap();
        assert_eq!(keys.stats.signature_batches.load(Ordering::Relaxed), 1);
        assert_eq!(keys.stats.verified_batches.load(Ordering::Relaxed), 2 + 6);

        // Forged (signature flipped, CRC fixed) or damaged (CRC wrong) at
        // any place in a run: that index, the one-by-one error.
        for bad_at in [0, 3, 5] {
            for forge in [true, false] {
                let mut frames = good.clone();
                let n = frames[bad_at].0.len();
                frames[bad_at].0[n - 10] ^= 1;
                if forge {
                    let crc = crc32fast::hash(&frames[bad_at].0[..n - 4]);
                    frames[bad_at].0[n - 4..].copy_from_slice(&crc.to_le_bytes());
                }
                let alone = keys.check_frame(&frames[bad_at]).unwrap_err().to_string();
                let refs: Vec<&BatchFrame> = frames.iter().collect();
                let before = keys.stats.counts();
                let (at, err) = keys.check_frames(&refs).unwrap_err();
                assert_eq!((at, err.to_string()), (bad_at, alone), "forged {forge}");
                let after = keys.stats.counts();
                assert_eq!(
                    (
                        after.signature_batches - before.signature_batches,
                        after.verified_batches - before.verified_batches,
                        after.rejected_batches - before.rejected_batches
                    ),
                    (0, bad_at as u64, 1),
                    "a failed run counts only what the one-by-one checks found"
                );
            }
        }
        // A good signature over a ciphertext under the wrong key with the
        // right id: the run's signatures pass together, its tag does not.
        let wrong_key = DataKey::new(d.id, &[9; 32]);
        let mut frames = good.clone();
        frames[2] = sealed_with(&wrong_key, 3);
        let alone = keys.check_frame(&frames[2]).unwrap_err().to_string();
        assert!(alone.contains("authentication tag does not match"), "{alone}");
        let refs: Vec<&BatchFrame> = frames.iter().collect();
        let (at, err) = keys.check_frames(&refs).unwrap_err();
        assert_eq!((at, err.to_string()), (2, alone));

        // A key event between two runs announces the data key of the run
        // after it; in one call, in order, everything passes.
        let next = keys.new_data_key(1000).unwrap();
        let KeyEvent::Data(next_d) = &next else { unreachable!() };
        let next_frame = KeyEvent::frame(1000, std::slice::from_ref(&next));
        keys.check_frame(&next_frame).unwrap();
        let after: Vec<BatchFrame> = (1..=4).map(|c| sealed_under(next_d, c)).collect();
        let mut frames: Vec<&BatchFrame> = good.iter().collect();
        frames.push(&next_frame);
        frames.extend(after.iter());
        let fresh = Keys::new(&kek_file(1));
        for event in [&first_frame, &key_frame] {
            fresh.check_frame(event).unwrap();
        }
        fresh.check_frames(&frames).unwrap();
        assert_eq!(fresh.stats.signature_batches.load(Ordering::Relaxed), 2);
        // Without the key event, the run after it is refused at its first frame.
        let without: Vec<&BatchFrame> = frames
            .iter()
            .copied()
            .filter(|f| !std::ptr::eq(*f, &next_frame))
            .collect();
        let fresh = Keys::new(&kek_file(1));
        for event in [&first_frame, &key_frame] {
            fresh.check_frame(event).unwrap();
        }
        let (at, err) = fresh.check_frames(&without).unwrap_err();
        assert_eq!(at, 6, "{err}");
        assert!(err.to_string().contains("unknown data key"), "{err}");
    }

    fn kek(id: u32, byte: u8) -> Kek {
        Kek {
            id,
            created_ns: 0,
            key: [byte; 32],
        }
    }

    fn events_of(keys: &Keys, events: &[(u64, KeyEvent)]) {
        for (seq, event) in events {
            keys.observe(&event.encode(), Some(*seq)).unwrap();
        }
    }

    /// A KEK rotation: rewraps every applied data key and re-proves every
    /// first signing key under the new KEK (once), never changes the
    /// current data key, and then lets the old KEK go — a node holding only
    /// the new KEK rebuilds the same keyring; before the rewrap it cannot,
    /// and says which KEK it lacks.
    #[test]
    fn kek_rotation_rewraps_then_retires_the_old_kek() {
        let keys = Keys::new(&KekFile { keks: vec![kek(1, 1)] });
        let mut log = vec![
            (1, keys.announce_signing(1000, &seed(7, 2), None).unwrap()),
            (2, keys.announce_signing(1000, &seed(8, 3), Some(&seed(7, 2))).unwrap()),
            (3, keys.new_data_key(1000).unwrap()),
        ];
        events_of(&keys, &log);
        let old_data = keys.current_data_key().unwrap().0.id();
        // Dropping KEK 1 now would strand every key.
        let err = keys.reload(&KekFile { keks: vec![kek(2, 9)] }).unwrap_err().to_string();
        assert!(err.contains("rewrap them first"), "{err}");
        // Another cluster's KEK 1 is refused.
        let err = keys.reload(&KekFile { keks: vec![kek(1, 5)] }).unwrap_err().to_string();
        assert!(err.contains("differs"), "{err}");
        keys.reload(&KekFile {
            keks: vec![kek(1, 1), kek(2, 9)],
        })
        .unwrap();
        assert_eq!((keys.current_kek(), keys.kek_ids()), (2, vec![1, 2]));
        let new_data = keys.new_data_key(1000).unwrap();
        log.push((4, new_data.clone()));
        events_of(&keys, &log[3..]);
        let KeyEvent::Data(new_data) = new_data else {
            unreachable!()
        };
        assert_eq!(new_data.kek_id, 2, "new keys are wrapped under the newest KEK");

        assert_eq!(
            keys.rewrap_events(1).unwrap().len(),
            1,
            "a batch holds at most what is asked"
        );
        let rewraps = keys.rewrap_events(usize::MAX).unwrap();
        let mut named: Vec<String> = rewraps
            .iter()
            .map(|e| match e {
                KeyEvent::Rewrap(a) => format!("data {} kek {}", a.id, a.kek_id),
                KeyEvent::Reprove(a) => format!("signing {} kek {}", a.id, e.kek_id().unwrap()),
                other => panic!("{other:?}"),
            })
            .collect();
        named.sort();
        let mut expected = vec![format!("data {old_data} kek 2"), "signing 7 kek 2".to_string()];
        expected.sort();
        assert_eq!(named, expected, "the chained key 8 and the new data key need nothing");
        for (i, event) in rewraps.into_iter().enumerate() {
            log.push((5 + i as u64, event));
        }
        events_of(&keys, &log[4..]);
        assert!(
            keys.rewrap_events(usize::MAX).unwrap().is_empty(),
            "a second rotation to KEK 2 has nothing to do"
        );
        assert_eq!(
            keys.current_data_key().unwrap().0.id(),
            new_data.id,
            "a rewrap never becomes current"
        );
        let txids: Vec<_> = log.iter().map(|(_, e)| e.to_record().txid).collect();
        assert_eq!(
            txids.iter().collect::<std::collections::HashSet<_>>().len(),
            txids.len(),
            "every announcement has its own txid"
        );

        // KEK 1 may go now; a node holding only KEK 2 rebuilds the same ring.
        keys.reload(&KekFile { keks: vec![kek(2, 9)] }).unwrap();
        let restarted = Keys::new(&KekFile { keks: vec![kek(2, 9)] });
        let loaded = restarted
            .load_applied(log.iter().map(|(seq, e)| (*seq, e.encode())))
            .unwrap();
        assert_eq!(loaded, log.len());
        assert_eq!(restarted.key_counts(), (2, 2));
        assert_eq!(restarted.current_data_key().unwrap().0.id(), new_data.id);
        for id in [old_data, new_data.id] {
            let material = |k: &Keys| k.ring.read().unwrap().data.get(&id).unwrap().1;
            assert_eq!(material(&restarted), material(&keys));
        }
        assert_eq!(
            restarted.signing_key(8).unwrap().node_id,
            1000,
            "the chain from key 7 verifies"
        );

        // Without the rewraps, a node holding only KEK 2 names what it lacks.
        let early = Keys::new(&KekFile { keks: vec![kek(2, 9)] });
        let err = early
            .load_applied(log[..4].iter().map(|(seq, e)| (*seq, e.encode())))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key-encryption key 1 is not in this node's key file"),
            "{err}"
        );
    }

    /// A rewrap or re-proof must be of a known key with the same material
    /// and fields, under a KEK; anything else is refused.
    #[test]
    fn forged_rewraps_are_refused() {
        let keys = Keys::new(&KekFile {
            keks: vec![kek(1, 1), kek(2, 9)],
        });
        let first = keys.announce_signing(1000, &seed(7, 2), None).unwrap();
        let data = keys.new_data_key(1000).unwrap();
        events_of(&keys, &[(1, first.clone()), (2, data.clone())]);
        let KeyEvent::Data(d) = &data else { unreachable!() };
        // Another key under the same id.
        let other = keys.wrap(2, d.id, d.created_ns, d.by_node, &[3; 32]).unwrap();
        let err = keys
            .observe(&KeyEvent::Rewrap(other).encode(), Some(3))
            .unwrap_err()
            .to_string();
        assert!(err.contains("differs from its announcement"), "{err}");
        // A key never announced.
        let stray = keys.wrap(2, d.id ^ 1, d.created_ns, d.by_node, &[3; 32]).unwrap();
        let err = keys
            .observe(&KeyEvent::Rewrap(stray).encode(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("never announced"), "{err}");
        // Same key, another creation time.
        let moved = keys.wrap(2, d.id, d.created_ns + 1, d.by_node, &[0; 32]).unwrap();
        assert!(keys.observe(&KeyEvent::Rewrap(moved).encode(), Some(3)).is_err());
        // A re-proof signed by a key, not under a KEK.
        let KeyEvent::Signing(chained) = keys.announce_signing(1000, &seed(8, 3), Some(&seed(7, 2))).unwrap() else {
            unreachable!()
        };
        let err = keys
            .observe(&KeyEvent::Reprove(chained).encode(), Some(3))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not under a key-encryption key"), "{err}");
        // A re-proof of key 7 with another public key.
        let KeyEvent::Signing(mut swapped) = keys.announce_signing(1000, &seed(7, 4), None).unwrap() else {
            unreachable!()
        };
        swapped.proof = keys.kek_proof(2, &signing_message(&swapped)).unwrap();
        let err = keys
            .observe(&KeyEvent::Reprove(swapped).encode(), Some(3))
            .unwrap_err()
            .to_string();
        assert!(err.contains("differs from its announcement"), "{err}");
        assert_eq!(keys.key_counts(), (1, 1));
    }
}
