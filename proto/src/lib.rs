//! txlog's wire protocol: the `.proto` definitions and their generated code, nothing else.
//!
//! Version 1 of the protocol lives in package `txlog.v1`. Peer messages
//! (`RaftMessage`, `SnapshotChunk`) carry a CRC32 of their body; the Raft
//! layer checks it on receipt.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("txlog.v1");
}

pub use v1::*;

/// The encoded `FileDescriptorSet` of `txlog.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/txlog_descriptor.bin"));

/// Version stamped in every `RaftMessage`.
pub const RAFT_MESSAGE_VERSION: u32 = 1;

/// Calls in one `AppendStreamRequest`, at most: nodes refuse a message with
/// more (and close the stream), the client library never sends more.
pub const APPEND_STREAM_MESSAGE_CALLS_MAX: usize = 1024;
