//! Peer message codec: openraft values as postcard inside a CRC32-checked
//! `RaftMessage`. Checked on both ends: after encode (debug) and after decode.

use serde::de::DeserializeOwned;
use serde::Serialize;
use txlog_proto::RaftMessage;
use txlog_proto::SnapshotChunk;
use txlog_proto::RAFT_MESSAGE_VERSION;

use crate::error::Error;
use crate::error::Result;

/// Largest peer message accepted or sent (an append carrying many batches,
/// or one snapshot chunk with headroom).
pub const PEER_MESSAGE_BYTES_MAX: usize = 96 * 1024 * 1024;

pub fn encode<T: Serialize>(value: &T) -> RaftMessage {
    let body = postcard::to_allocvec(value).expect("encoding an in-memory value cannot fail");
    RaftMessage {
        version: RAFT_MESSAGE_VERSION,
        crc32: crc32fast::hash(&body),
        body: body.into(),
    }
}

/// Decode a peer message; any failure (version, checksum, body) is a
/// [`Error::Decode`], answered `INVALID_ARGUMENT`.
pub fn decode<T: DeserializeOwned>(message: &RaftMessage) -> Result<T> {
    if message.version != RAFT_MESSAGE_VERSION {
        return Err(Error::decode(
            "raft message",
            format!("unsupported version {}", message.version),
        ));
    }
    if crc32fast::hash(&message.body) != message.crc32 {
        return Err(Error::decode("raft message", "checksum mismatch"));
    }
    postcard::from_bytes(&message.body).map_err(|e| Error::decode("raft message body", e))
}

/// CRC32 of a snapshot or delta chunk: its header followed by its data.
pub fn chunk_crc(header: &[u8], data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(data);
    hasher.finalize()
}

/// A CRC'd chunk; `header` is non-empty on the first chunk of a stream only.
pub fn chunk(header: Vec<u8>, offset: u64, data: Vec<u8>, done: bool) -> SnapshotChunk {
    SnapshotChunk {
        crc32: chunk_crc(&header, &data),
        header: header.into(),
        offset,
        data: data.into(),
        done,
    }
}

/// Refuse a received chunk whose checksum does not match.
pub fn check_chunk(chunk: &SnapshotChunk) -> Result<()> {
    if chunk_crc(&chunk.header, &chunk.data) != chunk.crc32 {
        return Err(Error::Corruption(format!(
            "snapshot chunk at offset {} failed its checksum",
            chunk.offset
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message round-trips, and a flipped body byte or a wrong version is rejected.
    #[test]
    fn crc_and_version_are_checked() {
        let message = encode(&(7u64, "hello".to_string()));
        assert_eq!(decode::<(u64, String)>(&message).unwrap(), (7, "hello".to_string()));
        let mut body = message.body.to_vec();
        body[0] ^= 1;
        let damaged = RaftMessage {
            body: body.into(),
            ..message.clone()
        };
        assert!(decode::<(u64, String)>(&damaged).is_err());
        let future = RaftMessage { version: 99, ..message };
        assert!(decode::<(u64, String)>(&future).is_err());
    }
}
