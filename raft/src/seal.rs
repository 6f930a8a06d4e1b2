//! Sealing a batch: LZ4, then AES-256-GCM, then an ed25519 signature, one
//! call of each per batch (never per record).
//!
//! A sealed batch frame keeps the [`crate::batch_frame`] layout; `flags`
//! says what was done and `key_ids` names the keys:
//!
//! ```text
//! header[32] (flags = SEALED [| COMPRESSED], key_ids = data key id u32 LE ‖ signing key id u32 LE,
//!             len = bytes from nonce through signature)
//! | nonce[12] | ciphertext ‖ tag[16] | signature[64] | crc32(all before) u32
//! ```
//!
//! - The plaintext is the batch body, LZ4-compressed (size-prepended
//!   block) when that saves at least [`COMPRESS_SAVING_MIN_PERCENT`] %,
//!   stored as is otherwise.
//! - The nonce is `data key id u32 ‖ node id (low 32 bits) ‖ counter u32`
//!   (big endian). It must never repeat under one key: the caller's duty,
//!   kept by `crate::sealer` (only the node that announced a data key seals
//!   under it; durable counter reservations; a new data key long before
//!   the counter wraps).
//! - The header is the AEAD's associated data, so a header changed on the
//!   way (origin, count, key ids, flags) fails the tag as well as the
//!   signature.
//! - The signature covers header, nonce and ciphertext (it signs a domain
//!   tag and their SHA-256): it is checked first, so a forged frame costs
//!   a verification, never a decryption.
//! - The CRC covers everything before it, as for a plain frame, so damage
//!   is told apart from forgery.
//!
//! At rest, apply seals each record's payload once more for the record file
//! ([`AtRestKey`]): AES-256-GCM under a key derived from the batch's data
//! key, the record's seq as nonce, `data key id ‖ flags` as associated
//! data; see [`AtRestKey`] for why that nonce never repeats.

use std::collections::HashMap;

use aes_gcm::aead::AeadInOut;
use aes_gcm::Aes256Gcm;
use aes_gcm::KeyInit;
use ed25519_dalek::Signer as _;

use crate::error::Error;

/// The frame is sealed: encrypted and signed.
pub const FLAG_SEALED: u8 = 0x01;
/// The plaintext under the seal is an LZ4 block (size prepended).
pub const FLAG_COMPRESSED: u8 = 0x02;
pub const NONCE_BYTES: usize = 12;
pub const TAG_BYTES: usize = 16;
pub const SIGNATURE_BYTES: usize = ed25519_dalek::SIGNATURE_LENGTH;
/// A batch is stored compressed only when LZ4 saves at least this share.
pub const COMPRESS_SAVING_MIN_PERCENT: usize = 10;

/// Bytes a sealed frame adds to its (possibly compressed) plaintext.
pub const SEAL_OVERHEAD_BYTES: usize = NONCE_BYTES + TAG_BYTES + SIGNATURE_BYTES;

/// A 32-byte secret from the operating system's generator.
pub fn random_key() -> Result<[u8; 32], Error> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| Error::Internal(format!("no randomness for a key: {e}")))?;
    Ok(key)
}

/// An AES-256-GCM data key and its id.
#[derive(Clone)]
pub struct DataKey {
    id: u32,
    cipher: Aes256Gcm,
    at_rest: AtRestKey,
    /// Root of the speculative feed's per-term keys ([`SpeculativeKey`]).
    speculative_root: [u8; 32],
}

impl DataKey {
    pub fn new(id: u32, key: &[u8; 32]) -> DataKey {
        DataKey {
            id,
            cipher: Aes256Gcm::new(key.into()),
            at_rest: AtRestKey::derive(id, key),
            speculative_root: {
                use sha2::Digest;
                let mut hasher = sha2::Sha256::new();
                hasher.update(SPECULATIVE_DOMAIN);
                hasher.update(key);
                hasher.finalize().into()
            },
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// The key that seals the payloads of this key's batches in the record file.
    pub fn at_rest(&self) -> &AtRestKey {
        &self.at_rest
    }
}

/// Domain of the at-rest key derived from a data key: `SHA-256(domain ‖
/// data key)`, so the two never share a (key, nonce) pair.
const AT_REST_DOMAIN: &[u8; 24] = b"txlog record at rest v1\0";
/// An at-rest nonce is this prefix and the record's seq (big endian).
const AT_REST_NONCE_PREFIX: &[u8; 4] = b"rec\0";
/// Domain of the speculative feed's key root derived from a data key.
const SPECULATIVE_DOMAIN: &[u8; 24] = b"txlog speculative feed1\0";

/// Seals the payloads of one Raft term's entries for the feed's
/// speculative stream, before they have a seq: `data key id | flags |
/// ciphertext | tag`, as at rest, under `SHA-256(root ‖ term)` where the
/// root is derived from the batch's data key, with nonce `index (BE) ‖
/// position (BE)`. A (term, index) names one entry for the life of the log
/// (one leader per term appends each index once), so a (key, nonce) pair
/// only ever seals one plaintext; every node that publishes the entry
/// writes the same bytes.
pub struct SpeculativeKey {
    id: u32,
    cipher: Aes256Gcm,
}

impl SpeculativeKey {
    pub fn seal(&self, index: u64, position: u32, payload: &[u8], out: &mut Vec<u8>) {
        seal_payload(&self.cipher, self.id, &speculative_nonce(index, position), payload, out);
    }

    /// Open what [`SpeculativeKey::seal`] sealed for (`index`, `position`).
    pub fn open(&self, index: u64, position: u32, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let bad = |detail: &str| Error::Corruption(format!("speculative record {index}.{position}: {detail}"));
        if sealed.len() < AT_REST_OVERHEAD_BYTES {
            return Err(bad("shorter than its seal"));
        }
        if sealed[..4] != self.id.to_le_bytes() || sealed[4] != 0 {
            return Err(bad("sealed under another key"));
        }
        let mut plain = sealed.to_vec();
        open_payload_in_place(&self.cipher, &speculative_nonce(index, position), &mut plain)
            .map_err(|()| bad("tag mismatch"))?;
        Ok(plain)
    }
}

/// A speculative payload's nonce: its entry's index and its position in it.
fn speculative_nonce(index: u64, position: u32) -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    nonce[..8].copy_from_slice(&index.to_be_bytes());
    nonce[8..].copy_from_slice(&position.to_be_bytes());
    nonce
}

/// `data key id u32 LE | flags u8 (0; none defined)`: the head of a payload
/// sealed at rest, and its associated data.
pub const AT_REST_HEADER_BYTES: usize = 5;
/// Bytes sealing adds to a payload at rest.
pub const AT_REST_OVERHEAD_BYTES: usize = AT_REST_HEADER_BYTES + TAG_BYTES;

/// Seals record payloads for the record file (and so for the snapshots and
/// delta files built from it): `data key id | flags | ciphertext | tag`.
///
/// The nonce is the record's seq under a key derived from the batch's data
/// key, and what it seals is exactly the record's committed payload (no
/// compression, whose output a new LZ4 version could change). A seq names
/// one committed record for the life of the log, so a (key, nonce) pair
/// only ever seals one plaintext, and every node writes the same bytes:
/// the hash chain, computed over them, agrees across nodes. (A copy of a
/// data directory started as a cluster of its own breaks this, as it
/// breaks the batch nonces' reservations: rotate its keys first.)
#[derive(Clone)]
pub struct AtRestKey {
    id: u32,
    cipher: Aes256Gcm,
}

impl AtRestKey {
    fn derive(id: u32, data_key: &[u8; 32]) -> AtRestKey {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(AT_REST_DOMAIN);
        hasher.update(data_key);
        let key: [u8; 32] = hasher.finalize().into();
        AtRestKey {
            id,
            cipher: Aes256Gcm::new((&key).into()),
        }
    }
}

/// Append `data key id | flags (0) | ciphertext | tag` of `payload` to
/// `out`: the layout of a payload sealed at rest or for the speculative feed.
fn seal_payload(cipher: &Aes256Gcm, id: u32, nonce: &[u8; NONCE_BYTES], payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&id.to_le_bytes());
    out.push(0);
    out.extend_from_slice(payload);
    let (header, plain) = out[start..].split_at_mut(AT_REST_HEADER_BYTES);
    let tag = cipher
        .encrypt_inout_detached(nonce.into(), header, plain.into())
        .expect("AES-GCM seals any record under the frame limit");
    out.extend_from_slice(&tag);
}

/// Check and decrypt, in `payload` itself, what [`seal_payload`] wrote:
/// it becomes the plaintext. The caller has checked the length and the
/// header (the associated data).
fn open_payload_in_place(cipher: &Aes256Gcm, nonce: &[u8; NONCE_BYTES], payload: &mut Vec<u8>) -> Result<(), ()> {
    let tag_at = payload.len() - TAG_BYTES;
    let tag: [u8; TAG_BYTES] = payload[tag_at..].try_into().expect("16 bytes");
    let (header, body) = payload[..tag_at].split_at_mut(AT_REST_HEADER_BYTES);
    cipher
        .decrypt_inout_detached(nonce.into(), header, body.into(), (&tag).into())
        .map_err(|_| ())?;
    payload.truncate(tag_at);
    payload.drain(..AT_REST_HEADER_BYTES);
    Ok(())
}

fn at_rest_nonce(seq: u64) -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    nonce[..4].copy_from_slice(AT_REST_NONCE_PREFIX);
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    nonce
}

impl txlog_storage::SealAtRest for AtRestKey {
    fn seal(&self, seq: u64, payload: &[u8], out: &mut Vec<u8>) {
        seal_payload(&self.cipher, self.id, &at_rest_nonce(seq), payload, out);
    }
}

/// A node's ed25519 signing key and its id.
pub struct Signer {
    id: u32,
    key: ed25519_dalek::SigningKey,
}

impl Signer {
    pub fn new(id: u32, seed: &[u8; 32]) -> Signer {
        Signer {
            id,
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }

    pub(crate) fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        &self.key
    }
}

/// The keys a node opens sealed frames with: data keys by id, and public
/// signing keys by id with the node each belongs to.
#[derive(Default, Clone)]
pub struct Keyring {
    data: HashMap<u32, DataKey>,
    verifying: HashMap<u32, (u64, ed25519_dalek::VerifyingKey)>,
}

impl Keyring {
    pub fn add_data_key(&mut self, key: DataKey) {
        self.data.insert(key.id, key);
    }

    /// `node_id`'s public signing key `id`: frames it signs must name that
    /// node as their origin.
    pub fn add_verifying_key(&mut self, id: u32, node_id: u64, key: ed25519_dalek::VerifyingKey) {
        self.verifying.insert(id, (node_id, key));
    }

    /// Data key `id`, built (its ciphers keyed) when it joined the ring.
    pub fn data_key(&self, id: u32) -> Option<&DataKey> {
        self.data.get(&id)
    }

    /// The at-rest key of data key `id`.
    pub fn at_rest_key(&self, id: u32) -> Option<&AtRestKey> {
        self.data_key(id).map(DataKey::at_rest)
    }

    /// The speculative feed's key for `term` under data key `id`.
    pub fn speculative_key(&self, id: u32, term: u64) -> Option<SpeculativeKey> {
        use sha2::Digest;
        let data_key = self.data_key(id)?;
        let mut hasher = sha2::Sha256::new();
        hasher.update(data_key.speculative_root);
        hasher.update(term.to_le_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        Some(SpeculativeKey {
            id,
            cipher: Aes256Gcm::new((&key).into()),
        })
    }

    /// Open the payload of the record at `seq`, sealed at rest: check the
    /// tag and decrypt under the named data key's at-rest key.
    pub fn open_at_rest(&self, seq: u64, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let mut payload = sealed.to_vec();
        self.open_at_rest_in_place(seq, &mut payload)?;
        Ok(payload)
    }

    /// [`Keyring::open_at_rest`] in `payload` itself, which becomes the
    /// plaintext (no allocation: what a read does for every record).
    pub fn open_at_rest_in_place(&self, seq: u64, payload: &mut Vec<u8>) -> Result<(), Error> {
        let bad = |detail: String| Error::Corruption(format!("record {seq} sealed at rest: {detail}"));
        if payload.len() < AT_REST_OVERHEAD_BYTES {
            return Err(bad(format!("{} bytes is shorter than its seal", payload.len())));
        }
        let header: [u8; AT_REST_HEADER_BYTES] = payload[..AT_REST_HEADER_BYTES].try_into().expect("5 bytes");
        let id = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        if header[4] != 0 {
            return Err(bad(format!("unknown flags {:#x}", header[4])));
        }
        let key = self
            .at_rest_key(id)
            .ok_or_else(|| Error::Unauthorized(format!("record {seq} is sealed under unknown data key {id}")))?;
        open_payload_in_place(&key.cipher, &at_rest_nonce(seq), payload)
            .map_err(|()| bad(format!("authentication tag does not match under data key {id}")))
    }
}

/// The nonce of one seal: `data key id ‖ node id ‖ counter`.
pub fn nonce(data_key_id: u32, node_id: u32, counter: u32) -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    nonce[0..4].copy_from_slice(&data_key_id.to_be_bytes());
    nonce[4..8].copy_from_slice(&node_id.to_be_bytes());
    nonce[8..12].copy_from_slice(&counter.to_be_bytes());
    nonce
}

/// `key_ids` of a sealed frame's header.
pub fn key_ids(data_key_id: u32, signing_key_id: u32) -> u64 {
    u64::from(data_key_id) | (u64::from(signing_key_id) << 32)
}

/// LZ4 `plain` when that saves enough; returns the bytes to encrypt and
/// whether they are compressed.
pub fn compress(plain: Vec<u8>) -> (Vec<u8>, bool) {
    let compressed = lz4_flex::block::compress_prepend_size(&plain);
    if compressed.len() * 100 <= plain.len() * (100 - COMPRESS_SAVING_MIN_PERCENT) {
        (compressed, true)
    } else {
        (plain, false)
    }
}

/// Bytes of `plain` as an LZ4 block (size prepended), whether or not a
/// seal would keep it.
pub fn lz4_bytes(plain: &[u8]) -> usize {
    lz4_flex::block::compress_prepend_size(plain).len()
}

/// Seal the frame whose 32-byte `header` is given (its `len` field must
/// already say `SEAL_OVERHEAD_BYTES + plain.len()`): append nonce,
/// ciphertext, tag and a signature over all of them and the header to
/// `out`, which holds the header.
pub(crate) fn seal_into(
    out: &mut Vec<u8>,
    header_bytes: usize,
    plain: Vec<u8>,
    key: &DataKey,
    signer: &Signer,
    nonce: [u8; NONCE_BYTES],
) {
    assert_eq!(out.len(), header_bytes, "seal_into appends to a bare header");
    let len = u32::from_le_bytes(out[header_bytes - 4..header_bytes].try_into().expect("4 bytes"));
    assert_eq!(
        len as usize,
        SEAL_OVERHEAD_BYTES + plain.len(),
        "header len must cover the seal"
    );
    out.extend_from_slice(&nonce);
    let mut buffer = plain;
    let (header, _) = out.split_at(header_bytes);
    let tag = key
        .cipher
        .encrypt_inout_detached((&nonce).into(), header, (&mut buffer[..]).into())
        .expect("AES-GCM seals any batch under the frame limit");
    out.extend_from_slice(&buffer);
    out.extend_from_slice(&tag);
    let (header, sealed) = out.split_at(header_bytes);
    let signature = signer.key.sign(&signed_digest(header, sealed));
    out.extend_from_slice(&signature.to_bytes());
}

/// What the signature signs: a domain tag and the SHA-256 of header, nonce
/// and ciphertext. ed25519 hashes what it signs twice with SHA-512, which
/// has no instructions of its own on x86; SHA-256 has (SHA-NI), so
/// hashing once with it keeps the signature's cost flat in the batch size.
fn signed_digest(header: &[u8], sealed: &[u8]) -> [u8; SIGNED_DOMAIN.len() + 32] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(header);
    hasher.update(sealed);
    let mut message = [0u8; SIGNED_DOMAIN.len() + 32];
    message[..SIGNED_DOMAIN.len()].copy_from_slice(SIGNED_DOMAIN);
    message[SIGNED_DOMAIN.len()..].copy_from_slice(&hasher.finalize());
    message
}

/// Domain separation: a txlog batch signature signs nothing else.
const SIGNED_DOMAIN: &[u8; 16] = b"txlog batch v1\0\0";

/// Open a sealed frame's `sealed` part (nonce through signature) under
/// `header`: check the signature (by a key of `origin_node`), decrypt,
/// decompress. `limit` bounds the plaintext a compressed body may claim.
pub(crate) fn open(
    header: &[u8],
    sealed: &[u8],
    frame: FrameKeys,
    keyring: &Keyring,
    limit: usize,
    signature: Signature,
) -> Result<Vec<u8>, Error> {
    let plain = authenticate(header, sealed, frame, keyring, signature)?;
    if frame.flags & FLAG_COMPRESSED == 0 {
        return Ok(plain);
    }
    let bad = |detail: String| Error::decode("sealed batch", detail);
    let Some((size, _)) = plain.split_first_chunk::<4>() else {
        return Err(bad("compressed body has no size".into()));
    };
    let size = u32::from_le_bytes(*size) as usize;
    if size > limit {
        return Err(bad(format!(
            "compressed body claims {size} bytes; the limit is {limit}"
        )));
    }
    lz4_flex::block::decompress_size_prepended(&plain).map_err(|e| bad(format!("lz4: {e}")))
}

/// Whether opening a frame checks its signature too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signature {
    Check,
    /// Checked already, before the frame was persisted: applying an entry
    /// from this node's own WAL re-checks its CRC and tag only.
    CheckedBefore,
}

/// What a sealed frame's header says about its seal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameKeys {
    pub flags: u8,
    pub key_ids: u64,
    pub origin_node: u64,
}

impl FrameKeys {
    pub(crate) fn data_key_id(self) -> u32 {
        self.key_ids as u32
    }

    pub(crate) fn signing_key_id(self) -> u32 {
        (self.key_ids >> 32) as u32
    }
}

/// Check a sealed frame's signature (by a key of its origin node) and its
/// AEAD tag; returns the decrypted (possibly still compressed) plaintext.
/// A key the keyring lacks, a signature or a tag that does not verify is
/// [`Error::Unauthorized`]; a malformed seal is a decode error.
pub(crate) fn authenticate(
    header: &[u8],
    sealed: &[u8],
    frame: FrameKeys,
    keyring: &Keyring,
    signature: Signature,
) -> Result<Vec<u8>, Error> {
    let signed = signed_part(sealed, frame)?;
    let verifying = signing_key(frame, keyring)?;
    if signature == Signature::Check {
        let signature = frame_signature(sealed);
        // One rule for a batch alone and batches together (`signature.rs`).
        if !crate::signature::verify(verifying, &signed_digest(header, signed), &signature) {
            return Err(refused(format_args!(
                "signature does not verify under key {}",
                frame.signing_key_id()
            )));
        }
    }
    let data_key_id = frame.data_key_id();
    let key = keyring
        .data
        .get(&data_key_id)
        .ok_or_else(|| refused(format_args!("encrypted under unknown data key {data_key_id}")))?;
    let (nonce, rest) = signed.split_first_chunk::<NONCE_BYTES>().expect("length checked above");
    let (ciphertext, tag) = rest.split_last_chunk::<TAG_BYTES>().expect("length checked above");
    let mut plain = ciphertext.to_vec();
    key.cipher
        .decrypt_inout_detached(nonce.into(), header, (&mut plain[..]).into(), tag.into())
        .map_err(|_| {
            refused(format_args!(
                "authentication tag does not match under data key {data_key_id}"
            ))
        })?;
    Ok(plain)
}

/// Whether the signatures of several sealed frames all verify, checked
/// together (`signature::verify_all`: exactly when each would alone). It
/// checks nothing else (CRC, tag); a caller that gets `false` checks the
/// frames one by one to find which is bad and why.
pub(crate) fn verify_signatures(frames: &[(&[u8], &[u8], FrameKeys)], keyring: &Keyring) -> bool {
    let mut checks = Vec::with_capacity(frames.len());
    for &(header, sealed, frame) in frames {
        let (Ok(signed), Ok(key)) = (signed_part(sealed, frame), signing_key(frame, keyring)) else {
            return false;
        };
        checks.push((key, signed_digest(header, signed), frame_signature(sealed)));
    }
    let items: Vec<_> = checks
        .iter()
        .map(|(key, digest, signature)| (*key, &digest[..], signature))
        .collect();
    crate::signature::verify_all(&items)
}

/// The part of a sealed body that the signature covers (nonce through
/// tag), after checking the frame claims a seal and is long enough for one.
fn signed_part(sealed: &[u8], frame: FrameKeys) -> Result<&[u8], Error> {
    if frame.flags & FLAG_SEALED == 0 {
        return Err(refused(format_args!("frame is not sealed (flags {:#x})", frame.flags)));
    }
    if sealed.len() < SEAL_OVERHEAD_BYTES {
        return Err(Error::decode(
            "sealed batch",
            format!("sealed body of {} bytes is shorter than its seal", sealed.len()),
        ));
    }
    Ok(&sealed[..sealed.len() - SIGNATURE_BYTES])
}

/// A sealed frame's nonce and tag, if it is sealed and long enough to
/// hold a seal.
pub(crate) fn nonce_and_tag(sealed: &[u8], frame: FrameKeys) -> Option<([u8; NONCE_BYTES], [u8; TAG_BYTES])> {
    let signed = signed_part(sealed, frame).ok()?;
    let (nonce, _) = signed.split_first_chunk::<NONCE_BYTES>()?;
    let (_, tag) = signed.split_last_chunk::<TAG_BYTES>()?;
    Some((*nonce, *tag))
}

/// A seal that does not check: a forgery, or keys this node lacks.
fn refused(detail: std::fmt::Arguments<'_>) -> Error {
    Error::Unauthorized(format!("sealed batch: {detail}"))
}

/// The last [`SIGNATURE_BYTES`] of a sealed body; its length is checked by
/// [`signed_part`].
fn frame_signature(sealed: &[u8]) -> ed25519_dalek::Signature {
    let (_, bytes) = sealed.split_last_chunk::<SIGNATURE_BYTES>().expect("length checked");
    ed25519_dalek::Signature::from_bytes(bytes)
}

/// The key a frame names as its signer, if the keyring holds it and it
/// belongs to the frame's origin node.
fn signing_key(frame: FrameKeys, keyring: &Keyring) -> Result<&ed25519_dalek::VerifyingKey, Error> {
    let id = frame.signing_key_id();
    let (key_node, verifying) = keyring
        .verifying
        .get(&id)
        .ok_or_else(|| refused(format_args!("signed by unknown key {id}")))?;
    if *key_node != frame.origin_node {
        return Err(refused(format_args!(
            "signed by key {id} of node {key_node}, but the batch names node {}",
            frame.origin_node
        )));
    }
    Ok(verifying)
}

#[cfg(test)]
mod tests {
    use txlog_storage::SealAtRest;

    use super::*;

    fn keyring(id: u32, key: &[u8; 32]) -> Keyring {
        let mut keyring = Keyring::default();
        keyring.add_data_key(DataKey::new(id, key));
        keyring
    }

    /// A speculative payload opens under its own (key, term, index,
    /// position) only; another term, index, position or key refuses it, and
    /// terms give different ciphertexts for the same place.
    #[test]
    fn speculative_payloads_open_only_where_sealed() {
        let keyring = keyring(3, &[7; 32]);
        let key = keyring.speculative_key(3, 5).expect("known key");
        let mut out = Vec::new();
        key.seal(100, 2, b"order 42 filled", &mut out);
        assert_eq!(key.open(100, 2, &out).expect("opens"), b"order 42 filled");
        assert!(key.open(100, 3, &out).is_err());
        assert!(key.open(101, 2, &out).is_err());
        let other_term = keyring.speculative_key(3, 6).expect("known key");
        assert!(other_term.open(100, 2, &out).is_err());
        let mut again = Vec::new();
        other_term.seal(100, 2, b"order 42 filled", &mut again);
        assert_ne!(again, out);
        let other_key = self::keyring(4, &[7; 32]).speculative_key(4, 5).expect("known key");
        assert!(other_key.open(100, 2, &out).is_err());
        assert!(keyring.speculative_key(9, 5).is_none());
        let mut damaged = out.clone();
        damaged[6] ^= 1;
        assert!(key.open(100, 2, &damaged).is_err());
    }

    fn sealed(keyring: &Keyring, id: u32, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        keyring.at_rest_key(id).unwrap().seal(seq, payload, &mut out);
        out
    }

    /// A payload sealed at rest opens to itself; the same seq, key and
    /// payload always seal to the same bytes (every node writes them),
    /// which never hold the payload in clear.
    #[test]
    fn payloads_sealed_at_rest_open_to_themselves() {
        let keyring = keyring(7, &[3; 32]);
        let text = b"8=FIX.4.4|35=D|55=EURUSD|54=1|38=1000000|".repeat(32);
        let mut noise = vec![0u8; 300];
        getrandom::fill(&mut noise).unwrap();
        for payload in [&text, &noise, &Vec::new()] {
            let bytes = sealed(&keyring, 7, 42, payload);
            assert_eq!(bytes, sealed(&keyring, 7, 42, payload));
            assert_eq!(bytes.len(), payload.len() + AT_REST_OVERHEAD_BYTES);
            if payload.len() >= 16 {
                assert!(!bytes.windows(16).any(|w| w == &payload[..16]));
            }
            assert_eq!(&keyring.open_at_rest(42, &bytes).unwrap(), payload);
        }
        assert_ne!(sealed(&keyring, 7, 42, &text), sealed(&keyring, 7, 43, &text));
    }

    /// A flipped bit anywhere, another seq, an unknown or another key, a
    /// truncated seal: refused, never a wrong payload.
    #[test]
    fn damaged_or_misplaced_payloads_at_rest_are_refused() {
        let keyring = keyring(7, &[3; 32]);
        let payload = b"order 1 buy 100 EURUSD ".repeat(4);
        let bytes = sealed(&keyring, 7, 42, &payload);
        for at in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[at / 8] ^= 1 << (at % 8);
            assert!(keyring.open_at_rest(42, &damaged).is_err(), "bit {at} flipped");
        }
        let refused = |err: Error| err.to_string();
        assert!(refused(keyring.open_at_rest(43, &bytes).unwrap_err()).contains("tag does not match"));
        let other = self::keyring(7, &[4; 32]);
        assert!(refused(other.open_at_rest(42, &bytes).unwrap_err()).contains("tag does not match"));
        let unknown = self::keyring(8, &[3; 32]);
        assert!(matches!(
            unknown.open_at_rest(42, &bytes),
            Err(Error::Unauthorized(m)) if m.contains("unknown data key 7")
        ));
        for len in 0..AT_REST_OVERHEAD_BYTES {
            assert!(keyring.open_at_rest(42, &bytes[..len]).is_err());
        }
    }
}
