//! The batch frame: one Raft entry's application payload.
//!
//! The leader groups concurrent appends into one frame (group commit), so one
//! fsync — and later one signature and one encryption — covers many records.
//! Versioned from day one:
//!
//! ```text
//! magic "TXLB" | version u8 | flags u8 | reserved u16 | origin_node u64
//! | key_ids u64 | count u32 | len u32 | body[len] | crc32(all before) u32
//! ```
//!
//! `flags` 0 is a plain body, `postcard(BatchBody)`. A sealed frame
//! ([`BatchFrame::seal`], layout in [`crate::seal`]) sets
//! [`seal::FLAG_SEALED`] (and [`seal::FLAG_COMPRESSED`] when LZ4 paid) and
//! names its data and signing keys in `key_ids`; [`BatchFrame::open`] opens
//! it and [`BatchFrame::verify`] checks it without decompressing. In a sealed
//! cluster every client batch is sealed; plain frames carry only key
//! announcements (`crate::keys`).

use std::fmt;

use serde::Deserialize;
use serde::Serialize;
use txlog_storage::NewRecord;
use txlog_storage::NewRecordRef;

use crate::error::Error;
use crate::seal;
use crate::seal::DataKey;
use crate::seal::Keyring;
use crate::seal::Signer;

const MAGIC: &[u8; 4] = b"TXLB";
const VERSION: u8 = 1;
const HEADER_BYTES: usize = 32;
/// A record's encoding beyond its bytes: three length varints (≤ 5 bytes
/// each) and the client time varint (≤ 10).
const RECORD_FIELDS_BYTES_MAX: usize = 3 * 5 + 10;
/// Upper bound on a decoded frame's body; a bigger length is damage.
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Records in one batch plus the leader's timestamp for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchBody {
    /// Wall-clock nanoseconds when the leader sealed the batch; becomes every
    /// record's commit time, identical on every node.
    pub created_ns: u64,
    pub records: Vec<NewRecord>,
}

impl BatchBody {
    /// The body's bytes as a frame carries them before sealing.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding a batch cannot fail")
    }
}

/// An encoded batch frame, as stored in a Raft entry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchFrame(#[serde(with = "txlog_storage::byte_string")] pub Vec<u8>);

impl fmt::Debug for BatchFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BatchFrame({} bytes)", self.0.len())
    }
}

impl fmt::Display for BatchFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch[{}B]", self.0.len())
    }
}

/// A [`BatchBody`] borrowed from the frame it is decoded from: applying it
/// allocates nothing per record.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BatchBodyRef<'a> {
    pub created_ns: u64,
    #[serde(borrow)]
    pub records: Vec<NewRecordRef<'a>>,
}

/// A decoded frame, borrowing its records from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBatch<'a> {
    pub origin_node: u64,
    pub flags: u8,
    pub key_ids: u64,
    pub body: BatchBodyRef<'a>,
}

impl BatchFrame {
    pub fn encode(origin_node: u64, body: &BatchBody) -> BatchFrame {
        // Sized for the body so it is encoded in place, never copied.
        let records_bytes: usize = body
            .records
            .iter()
            .map(|r| r.txid.len() + r.channel.len() + r.payload.len() + RECORD_FIELDS_BYTES_MAX)
            .sum();
        let mut out = Vec::with_capacity(HEADER_BYTES + 10 + 5 + records_bytes + 4);
        // Plain: no flags, no key ids; the body length is set below.
        write_header(&mut out, 0, origin_node, 0, body.records.len(), 0);
        let mut out = postcard::to_extend(body, out).expect("encoding a batch cannot fail");
        let body_len = out.len() - HEADER_BYTES;
        assert!(body_len <= BATCH_BYTES_MAX, "batch body over limit");
        out[28..32].copy_from_slice(&(body_len as u32).to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let frame = BatchFrame(out);
        debug_assert!(
            frame.decode().is_ok_and(|d| d.body.created_ns == body.created_ns
                && d.body
                    .records
                    .iter()
                    .copied()
                    .eq(body.records.iter().map(NewRecord::borrowed))),
            "frame must round-trip"
        );
        frame
    }

    /// Seal `body` (see [`crate::seal`]) as `origin_node`'s batch with nonce
    /// counter `counter`: one compression, encryption and signature.
    pub fn seal(origin_node: u64, body: &BatchBody, with: &SealWith<'_>, counter: u32) -> BatchFrame {
        let plain = body.to_bytes();
        assert!(plain.len() <= BATCH_BYTES_MAX, "batch body over limit");
        let (plain, compressed) = seal::compress(plain);
        let flags = seal::FLAG_SEALED | if compressed { seal::FLAG_COMPRESSED } else { 0 };
        let len = seal::SEAL_OVERHEAD_BYTES + plain.len();
        let mut out = Vec::with_capacity(HEADER_BYTES + len + 4);
        let key_ids = seal::key_ids(with.data_key.id(), with.signer.id());
        write_header(&mut out, flags, origin_node, key_ids, body.records.len(), len);
        let nonce = seal::nonce(with.data_key.id(), with.node_id, counter);
        seal::seal_into(&mut out, HEADER_BYTES, plain, with.data_key, with.signer, nonce);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        BatchFrame(out)
    }

    /// Decode a plain (unsealed) frame, borrowing its records.
    pub fn decode(&self) -> Result<DecodedBatch<'_>, Error> {
        let frame = self.parse()?;
        if frame.flags != 0 {
            return Err(Error::decode(
                "batch frame",
                format!(
                    "frame is sealed (flags {:#x}); it needs the keyring to open",
                    frame.flags
                ),
            ));
        }
        Ok(DecodedBatch {
            origin_node: frame.origin_node,
            flags: frame.flags,
            key_ids: frame.key_ids,
            body: parse_body(frame.body, frame.count)?,
        })
    }

    /// Check and open a sealed frame: CRC, signature (by a key of the
    /// origin node), tag, compression. A plain frame is refused: where
    /// frames are sealed, an unsealed one is a forgery.
    pub fn open(&self, keyring: &Keyring) -> Result<OpenedBatch, Error> {
        self.open_with(keyring, seal::Signature::Check)
    }

    /// [`Self::open`] for a frame whose signature was checked before it was
    /// persisted ([`Self::verify`] on receipt, or sealed here): CRC, key
    /// origin and tag are checked again, the signature (the costly part) is
    /// not.
    pub fn open_verified(&self, keyring: &Keyring) -> Result<OpenedBatch, Error> {
        self.open_with(keyring, seal::Signature::CheckedBefore)
    }

    fn open_with(&self, keyring: &Keyring, signature: seal::Signature) -> Result<OpenedBatch, Error> {
        let frame = self.parse()?;
        let plain = seal::open(
            &self.0[..HEADER_BYTES],
            frame.body,
            frame.keys(),
            keyring,
            BATCH_BYTES_MAX,
            signature,
        )?;
        Ok(OpenedBatch {
            origin_node: frame.origin_node,
            flags: frame.flags,
            key_ids: frame.key_ids,
            count: frame.count,
            plain,
        })
    }

    /// Check a sealed frame without keeping its body: CRC, signature and
    /// tag, as [`Self::open`] does, but no decompression. A follower runs it
    /// on every entry before the entry reaches its WAL.
    pub fn verify(&self, keyring: &Keyring) -> Result<(), Error> {
        let frame = self.parse()?;
        seal::authenticate(
            &self.0[..HEADER_BYTES],
            frame.body,
            frame.keys(),
            keyring,
            seal::Signature::Check,
        )
        .map(drop)
    }

    /// Whether every frame passes [`Self::verify`], with their signatures
    /// checked together (see `signature.rs`: the same answer as one by
    /// one). `false` does not say which failed or why: check them one by
    /// one for that.
    pub fn verify_all(frames: &[&BatchFrame], keyring: &Keyring) -> bool {
        let Ok(parsed) = frames.iter().map(|f| f.parse()).collect::<Result<Vec<_>, _>>() else {
            return false;
        };
        let signed: Vec<_> = frames
            .iter()
            .zip(&parsed)
            .map(|(f, p)| (&f.0[..HEADER_BYTES], p.body, p.keys()))
            .collect();
        seal::verify_signatures(&signed, keyring)
            && signed.into_iter().all(|(header, body, keys)| {
                seal::authenticate(header, body, keys, keyring, seal::Signature::CheckedBefore).is_ok()
            })
    }

    /// A sealed frame's nonce under its data key, and its tag: what an
    /// offline check needs to find a nonce used twice. `None` for a plain
    /// or malformed frame.
    pub fn seal_nonce(&self) -> Option<SealNonce> {
        let frame = self.parse().ok()?;
        let (nonce, tag) = seal::nonce_and_tag(frame.body, frame.keys())?;
        Some(SealNonce {
            data_key_id: frame.keys().data_key_id(),
            nonce,
            tag,
        })
    }

    /// Whether the header says the frame is sealed (before any check).
    pub fn is_sealed(&self) -> bool {
        self.0.get(5).is_some_and(|flags| flags & seal::FLAG_SEALED != 0)
    }

    fn parse(&self) -> Result<ParsedFrame<'_>, Error> {
        let bad = |detail: String| Error::decode("batch frame", detail);
        let b = &self.0;
        if b.len() < HEADER_BYTES + 4 {
            return Err(bad(format!("batch frame too short: {} bytes", b.len())));
        }
        let (framed, crc_bytes) = b.split_at(b.len() - 4);
        let crc = u32::from_le_bytes(crc_bytes.try_into().expect("4 bytes"));
        if crc32fast::hash(framed) != crc {
            return Err(bad("checksum mismatch".into()));
        }
        if &b[0..4] != MAGIC {
            return Err(bad("bad magic".into()));
        }
        if b[4] != VERSION {
            return Err(bad(format!("unsupported batch frame version {}", b[4])));
        }
        let flags = b[5];
        let known = seal::FLAG_SEALED | seal::FLAG_COMPRESSED;
        if flags & !known != 0 || flags == seal::FLAG_COMPRESSED {
            return Err(bad(format!("unsupported batch frame flags {flags:#x}")));
        }
        let len = u32::from_le_bytes(b[28..32].try_into().expect("4 bytes")) as usize;
        let len_max = match flags & seal::FLAG_SEALED {
            0 => BATCH_BYTES_MAX,
            _ => BATCH_BYTES_MAX + seal::SEAL_OVERHEAD_BYTES,
        };
        if len > len_max || HEADER_BYTES + len != framed.len() {
            return Err(bad(format!("batch body length {len} does not match frame")));
        }
        Ok(ParsedFrame {
            origin_node: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            flags,
            key_ids: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            count: u32::from_le_bytes(b[24..28].try_into().expect("4 bytes")) as usize,
            body: &b[HEADER_BYTES..HEADER_BYTES + len],
        })
    }
}

/// Append a frame's [`HEADER_BYTES`]-byte header to `out`.
fn write_header(out: &mut Vec<u8>, flags: u8, origin_node: u64, key_ids: u64, count: usize, len: usize) {
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(&0u16.to_le_bytes()); // reserved
    out.extend_from_slice(&origin_node.to_le_bytes());
    out.extend_from_slice(&key_ids.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

/// What sealing a frame needs: this node's id (in the nonce), the current
/// data key and this node's signing key.
pub struct SealWith<'a> {
    pub node_id: u32,
    pub data_key: &'a DataKey,
    pub signer: &'a Signer,
}

/// A frame that passed its checks, with its body in the clear.
pub struct OpenedBatch {
    pub origin_node: u64,
    pub flags: u8,
    pub key_ids: u64,
    count: usize,
    plain: Vec<u8>,
}

impl OpenedBatch {
    /// The records, borrowed from the opened body.
    pub fn body(&self) -> Result<BatchBodyRef<'_>, Error> {
        parse_body(&self.plain, self.count)
    }

    /// Whether the sealed body was LZ4-compressed.
    pub fn compressed(&self) -> bool {
        self.flags & seal::FLAG_COMPRESSED != 0
    }
}

/// Where a sealed frame sits in its data key's nonce space; see
/// [`BatchFrame::seal_nonce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealNonce {
    pub data_key_id: u32,
    pub nonce: [u8; seal::NONCE_BYTES],
    pub tag: [u8; seal::TAG_BYTES],
}

/// A frame's header fields and its (possibly sealed) body.
struct ParsedFrame<'a> {
    origin_node: u64,
    flags: u8,
    key_ids: u64,
    count: usize,
    body: &'a [u8],
}

impl ParsedFrame<'_> {
    fn keys(&self) -> seal::FrameKeys {
        seal::FrameKeys {
            flags: self.flags,
            key_ids: self.key_ids,
            origin_node: self.origin_node,
        }
    }
}

fn parse_body(plain: &[u8], count: usize) -> Result<BatchBodyRef<'_>, Error> {
    let body: BatchBodyRef<'_> =
        postcard::from_bytes(plain).map_err(|e| Error::decode("batch frame", format!("body: {e}")))?;
    if body.records.len() != count {
        return Err(Error::decode(
            "batch frame",
            format!("batch header says {count} records, body has {}", body.records.len()),
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> BatchBody {
        BatchBody {
            created_ns: 42,
            records: vec![NewRecord {
                txid: b"t1".to_vec().into(),
                channel: "orders".into(),
                payload: vec![7; 100].into(),
                client_time_ns: 5,
            }],
        }
    }

    fn keys() -> (DataKey, Signer, Keyring) {
        let data_key = DataKey::new(5, &[1; 32]);
        let signer = Signer::new(9, &[2; 32]);
        let mut keyring = Keyring::default();
        keyring.add_data_key(data_key.clone());
        keyring.add_verifying_key(signer.id(), 1000, signer.verifying_key());
        (data_key, signer, keyring)
    }

    fn sealed(body: &BatchBody) -> (BatchFrame, Keyring) {
        let (data_key, signer, keyring) = keys();
        let with = SealWith {
            node_id: 1000,
            data_key: &data_key,
            signer: &signer,
        };
        (BatchFrame::seal(1000, body, &with, 77), keyring)
    }

    fn compressible() -> BatchBody {
        fix_orders(64)
    }

    fn incompressible() -> BatchBody {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let payload: Vec<u8> = (0..200)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        BatchBody {
            created_ns: 42,
            records: vec![NewRecord {
                txid: b"t1".to_vec().into(),
                channel: "orders".into(),
                payload: payload.into(),
                client_time_ns: 5,
            }],
        }
    }

    fn fix_orders(count: u64) -> BatchBody {
        BatchBody {
            created_ns: 42,
            records: (0..count)
                .map(|i| NewRecord {
                    txid: format!("order-{i}").into_bytes().into(),
                    channel: "orders".into(),
                    payload: format!(
                        "8=FIX.4.4|35=D|49=BANK|56=EXCH|11=ORD{i}|55=EURUSD|54=1|38=1000000|40=2|44=1.0842"
                    )
                    .into_bytes()
                    .into(),
                    client_time_ns: i,
                })
                .collect(),
        }
    }

    /// A sealed frame opens to its body with the keyring, compressed when it
    /// pays and stored raw when it does not; no payload byte is in the clear.
    #[test]
    fn sealed_frame_opens_to_its_body() {
        for (body, compressed) in [(compressible(), true), (incompressible(), false)] {
            let (frame, keyring) = sealed(&body);
            assert_eq!(frame.0[5] & seal::FLAG_COMPRESSED != 0, compressed);
            let opened = frame.open(&keyring).unwrap();
            assert_eq!(opened.origin_node, 1000);
            let records = opened.body().unwrap().records;
            assert!(records.iter().copied().eq(body.records.iter().map(NewRecord::borrowed)));
            let payload = &body.records[0].payload[..];
            assert!(
                !frame.0.windows(16).any(|w| w == &payload[..16]),
                "payload in the clear"
            );
            assert!(
                frame.decode().is_err(),
                "decode without keys must refuse a sealed frame"
            );
        }
        let (frame, _) = sealed(&compressible());
        assert!(frame.0.len() * 3 < BatchFrame::encode(1000, &compressible()).0.len() * 2);
    }

    /// Every single-byte flip of a sealed frame is rejected, whether the CRC
    /// is fixed up afterwards (forgery: signature or tag) or not (damage).
    #[test]
    fn sealed_frame_rejects_every_flip() {
        for body in [fix_orders(4), incompressible()] {
            let (frame, keyring) = sealed(&body);
            let n = frame.0.len();
            for i in 0..n {
                let mut bad = frame.clone();
                bad.0[i] ^= 0x01;
                assert!(bad.open(&keyring).is_err(), "flip at {i} accepted");
                if i < n - 4 {
                    let crc = crc32fast::hash(&bad.0[..n - 4]);
                    bad.0[n - 4..].copy_from_slice(&crc.to_le_bytes());
                    assert!(bad.open(&keyring).is_err(), "flip at {i} with a fixed CRC accepted");
                }
            }
        }
    }

    /// A frame signed or encrypted under a key the keyring lacks or gets
    /// wrong is refused, naming the key; so is a key of another node, and a
    /// plain frame where a sealed one is expected.
    #[test]
    fn sealed_frame_needs_its_keys() {
        let (frame, _) = sealed(&body());
        let (data_key, signer, _) = keys();
        let mut no_signer = Keyring::default();
        no_signer.add_data_key(data_key);
        let err = frame.open(&no_signer).err().unwrap().to_string();
        assert!(err.contains("unknown key 9"), "{err}");
        let mut no_data_key = Keyring::default();
        no_data_key.add_verifying_key(signer.id(), 1000, signer.verifying_key());
        let err = frame.open(&no_data_key).err().unwrap().to_string();
        assert!(err.contains("unknown data key 5"), "{err}");
        let mut wrong_data_key = no_data_key.clone();
        wrong_data_key.add_data_key(DataKey::new(5, &[3; 32]));
        let err = frame.open(&wrong_data_key).err().unwrap().to_string();
        assert!(err.contains("authentication tag does not match"), "{err}");
        let mut wrong_signer = Keyring::default();
        wrong_signer.add_data_key(DataKey::new(5, &[1; 32]));
        wrong_signer.add_verifying_key(9, 1000, Signer::new(9, &[4; 32]).verifying_key());
        let err = frame.open(&wrong_signer).err().unwrap().to_string();
        assert!(err.contains("signature does not verify"), "{err}");
        let mut other_node = Keyring::default();
        other_node.add_data_key(DataKey::new(5, &[1; 32]));
        other_node.add_verifying_key(9, 2000, signer.verifying_key());
        let err = frame.open(&other_node).err().unwrap().to_string();
        assert!(err.contains("of node 2000, but the batch names node 1000"), "{err}");
        let plain = BatchFrame::encode(1000, &body());
        let err = plain.open(&other_node).err().unwrap().to_string();
        assert!(err.contains("not sealed"), "{err}");
    }

    /// A frame decodes to what was encoded, and every single-byte flip is rejected.
    #[test]
    fn round_trip_and_damage() {
        let frame = BatchFrame::encode(3, &body());
        let decoded = frame.decode().unwrap();
        assert_eq!(decoded.origin_node, 3);
        assert_eq!(decoded.body.created_ns, 42);
        assert_eq!(decoded.body.records, [body().records[0].borrowed()]);
        for i in 0..frame.0.len() {
            let mut bad = frame.clone();
            bad.0[i] ^= 0x01;
            assert!(bad.decode().is_err(), "flip at {i} accepted");
        }
    }
}
