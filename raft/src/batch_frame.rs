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
//! `flags` is 0 (plain postcard body) today; compression, encryption and
//! signing will set bits here and name their keys in `key_ids` without
//! changing the layout. The body is `postcard(BatchBody)`.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;
use txlog_storage::NewRecord;
use txlog_storage::NewRecordRef;

use crate::error::Error;

const MAGIC: &[u8; 4] = b"TXLB";
const VERSION: u8 = 1;
const HEADER_BYTES: usize = 32;
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
            .map(|r| r.txid.len() + r.channel.len() + r.payload.len() + 3 * 5 + 10)
            .sum();
        let mut out = Vec::with_capacity(HEADER_BYTES + 10 + 5 + records_bytes + 4);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(0); // flags: plain
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&origin_node.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // key ids: none
        out.extend_from_slice(&(body.records.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // body length, set below
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

    pub fn decode(&self) -> Result<DecodedBatch<'_>, Error> {
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
        if flags != 0 {
            return Err(bad(format!("unsupported batch frame flags {flags:#x}")));
        }
        let origin_node = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        let key_ids = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(b[24..28].try_into().expect("4 bytes")) as usize;
        let len = u32::from_le_bytes(b[28..32].try_into().expect("4 bytes")) as usize;
        if len > BATCH_BYTES_MAX || HEADER_BYTES + len != framed.len() {
            return Err(bad(format!("batch body length {len} does not match frame")));
        }
        let body: BatchBodyRef<'_> =
            postcard::from_bytes(&b[HEADER_BYTES..HEADER_BYTES + len]).map_err(|e| bad(format!("body: {e}")))?;
        if body.records.len() != count {
            return Err(bad(format!(
                "batch header says {count} records, body has {}",
                body.records.len()
            )));
        }
        Ok(DecodedBatch {
            origin_node,
            flags,
            key_ids,
            body,
        })
    }
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
