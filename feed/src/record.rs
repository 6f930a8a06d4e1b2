//! A record owned by the feed: what the publisher is handed and what a
//! subscriber delivers.

use crate::packet::RecordRef;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRecord {
    /// The record's global sequence number in the log.
    pub seq: u64,
    pub channel_seq: u64,
    pub channel: String,
    pub txid: Vec<u8>,
    pub payload: Vec<u8>,
    /// `payload` is sealed as the record file holds it.
    pub sealed: bool,
}

impl FeedRecord {
    pub fn borrowed(&self) -> RecordRef<'_> {
        RecordRef {
            seq: self.seq,
            channel_seq: self.channel_seq,
            channel: &self.channel,
            txid: &self.txid,
            payload: &self.payload,
            sealed: self.sealed,
        }
    }
}

impl From<RecordRef<'_>> for FeedRecord {
    fn from(record: RecordRef<'_>) -> FeedRecord {
        FeedRecord {
            seq: record.seq,
            channel_seq: record.channel_seq,
            channel: record.channel.to_string(),
            txid: record.txid.to_vec(),
            payload: record.payload.to_vec(),
            sealed: record.sealed,
        }
    }
}
