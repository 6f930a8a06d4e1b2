//! Feed packets, format version 1: one type for every packet on the wire,
//! used both to write and to read it.
//!
//! ```text
//! header (36 bytes, little-endian)
//!   0  magic          b"TF"
//!   2  version        u8   = 1
//!   3  kind           u8   PacketKind
//!   4  class          u8   priority class (its own stream and sequence space)
//!   5  flags          u8   bit 0: a speculative stream's packet (its class
//!                          is the slot after the last priority class);
//!                          other bits 0
//!   6  count          u16  data: messages in the packet; re-request: messages wanted
//!   8  session        u64  the publisher's session (new at every start)
//!  16  first_seq      u64  data: stream seq of the first message;
//!                          heartbeat / end: the next stream seq to be sent;
//!                          re-request: first stream seq wanted;
//!                          not-available: oldest stream seq still held (0: none)
//!  24  send_time_ns   u64  wall clock when the packet was first sent
//!  32  crc32          u32  over the whole packet with this field zero
//! body
//!   data:        count × (len u16 | message)
//!   heartbeat,
//!   end:         last_record_seq u64 (the global seq of the last record
//!                this stream carried, 0 if none)
//!   description: a [`crate::Description`]
//!   others:      empty
//! ```
//!
//! Messages (the first byte is the type):
//!
//! ```text
//! 1 record          flags u8 | seq u64 | channel_seq u64 | channel_len u8 | channel
//!                   | txid_len u8 | txid | payload (the rest)
//! 2 fragment start  flags u8 | seq u64 | channel_seq u64 | payload_bytes u32
//!                   | channel_len u8 | channel | txid_len u8 | txid | first chunk
//! 3 fragment more   seq u64 | offset u32 | chunk
//! 4 speculative     class u8 | flags u8 | term u64 | index u64 | position u32
//!                   | channel_len u8 | channel | txid_len u8 | txid | payload
//! 5 resolution      outcome u8 (1 committed, 2 rolled back, 3 unknown)
//!                   | term u64 | index u64
//! ```
//!
//! Types 4 and 5 travel only on a speculative stream ([`FLAG_SPECULATIVE`]),
//! 1 to 3 only on a priority class's: a speculative record is named by the
//! Raft entry that carries it (term, index) and its position in that entry,
//! as it has no seq until it is applied; a resolution says what became of
//! an entry whose records the stream carried (see [`crate::speculative`]).
//!
//! Message flag bit 0: the payload is sealed (as the record file holds it;
//! a subscriber with the cluster's keys opens it). A record too large for
//! one packet is a fragment start followed by fragment-more messages, each
//! one stream message with its own stream seq, in consecutive packets.

use crate::error::Error;

pub const MAGIC: [u8; 2] = *b"TF";
pub const FORMAT_VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 36;
/// Bytes a message's length prefix takes.
pub const MESSAGE_LEN_BYTES: usize = 2;
/// IPv4 + UDP headers: what an MTU leaves for the UDP payload.
pub const IP_UDP_HEADER_BYTES: usize = 28;
/// Smallest MTU accepted: room for a header and a fragment of a record
/// with the longest channel and txid.
pub const MTU_BYTES_MIN: usize = 576;
/// Largest UDP payload.
pub const UDP_PAYLOAD_BYTES_MAX: usize = 65_507;

/// Message flag: the payload is sealed.
pub const MESSAGE_SEALED: u8 = 1;
/// Header flag: the packet belongs to a speculative stream.
pub const FLAG_SPECULATIVE: u8 = 1;
const FLAGS_KNOWN: u8 = FLAG_SPECULATIVE;

const CRC_OFFSET: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketKind {
    Data = 0,
    Heartbeat = 1,
    EndOfSession = 2,
    /// A subscriber asks the retransmit service for `count` messages from `first_seq`.
    ReRequest = 3,
    /// The retransmit service no longer holds what was asked for.
    NotAvailable = 4,
    /// A subscriber asks for the publisher's classes and counters.
    Describe = 5,
    Description = 6,
}

impl PacketKind {
    fn from_u8(kind: u8) -> Option<PacketKind> {
        Some(match kind {
            0 => PacketKind::Data,
            1 => PacketKind::Heartbeat,
            2 => PacketKind::EndOfSession,
            3 => PacketKind::ReRequest,
            4 => PacketKind::NotAvailable,
            5 => PacketKind::Describe,
            6 => PacketKind::Description,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    pub kind: PacketKind,
    pub class: u8,
    /// [`FLAG_SPECULATIVE`] or 0.
    pub flags: u8,
    pub count: u16,
    pub session: u64,
    pub first_seq: u64,
    pub send_time_ns: u64,
}

impl PacketHeader {
    pub fn is_speculative(&self) -> bool {
        self.flags & FLAG_SPECULATIVE != 0
    }

    /// Append the header, checksum zero, to `out` (see [`finish`]).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(self.kind as u8);
        out.push(self.class);
        out.push(self.flags);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.session.to_le_bytes());
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.send_time_ns.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
    }

    /// A whole packet of this header and `body`, checksummed.
    pub fn packet(&self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
        self.write(&mut out);
        out.extend_from_slice(body);
        finish(&mut out);
        out
    }
}

/// Set a packet's count and checksum once its messages are written.
pub fn finish_with_count(packet: &mut [u8], count: u16) {
    packet[6..8].copy_from_slice(&count.to_le_bytes());
    finish(packet);
}

/// Set a packet's send time; the checksum is recomputed.
pub fn set_send_time(packet: &mut [u8], send_time_ns: u64) {
    packet[24..32].copy_from_slice(&send_time_ns.to_le_bytes());
    finish(packet);
}

/// Compute and store the checksum of a packet whose bytes are final.
pub fn finish(packet: &mut [u8]) {
    let crc = checksum(packet);
    packet[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(packet: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&packet[..CRC_OFFSET]);
    hasher.update(&packet[CRC_OFFSET + 4..]);
    hasher.finalize()
}

/// Check and split a received packet. Nothing in it is trusted before this.
pub fn parse(packet: &[u8]) -> Result<(PacketHeader, &[u8]), Error> {
    if packet.len() < HEADER_BYTES {
        return Err(Error::malformed(format!(
            "packet of {} bytes is shorter than the {HEADER_BYTES}-byte header",
            packet.len()
        )));
    }
    if packet[..2] != MAGIC {
        return Err(Error::malformed("not a txlog feed packet (bad magic)"));
    }
    if packet[2] != FORMAT_VERSION {
        return Err(Error::malformed(format!(
            "feed format version {} is not the supported {FORMAT_VERSION}",
            packet[2]
        )));
    }
    let stored = u32::from_le_bytes(packet[CRC_OFFSET..CRC_OFFSET + 4].try_into().expect("4 bytes"));
    if stored != checksum(packet) {
        return Err(Error::malformed("packet checksum mismatch"));
    }
    let kind =
        PacketKind::from_u8(packet[3]).ok_or_else(|| Error::malformed(format!("unknown packet kind {}", packet[3])))?;
    if packet[5] & !FLAGS_KNOWN != 0 {
        return Err(Error::malformed(format!("unknown packet flags {:#04x}", packet[5])));
    }
    let header = PacketHeader {
        kind,
        class: packet[4],
        flags: packet[5],
        count: u16::from_le_bytes([packet[6], packet[7]]),
        session: u64_at(packet, 8),
        first_seq: u64_at(packet, 16),
        send_time_ns: u64_at(packet, 24),
    };
    Ok((header, &packet[HEADER_BYTES..]))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// A record as the feed carries it: borrowed, for encoding and decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub channel_seq: u64,
    pub channel: &'a str,
    pub txid: &'a [u8],
    pub payload: &'a [u8],
    pub sealed: bool,
}

/// One message of a data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Record(RecordRef<'a>),
    /// The first part of a record too large for one packet: `record.payload`
    /// is the first chunk of `payload_bytes`.
    FragmentStart {
        record: RecordRef<'a>,
        payload_bytes: u32,
    },
    FragmentMore {
        seq: u64,
        offset: u32,
        chunk: &'a [u8],
    },
    /// A record appended to the log but not yet known to be committed.
    Speculative(SpeculativeRef<'a>),
    /// What became of a speculative entry.
    Resolution(Resolution),
}

const TYPE_RECORD: u8 = 1;
const TYPE_FRAGMENT_START: u8 = 2;
const TYPE_FRAGMENT_MORE: u8 = 3;
const TYPE_SPECULATIVE: u8 = 4;
const TYPE_RESOLUTION: u8 = 5;

/// A speculative record, borrowed: named by its Raft entry and its place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeculativeRef<'a> {
    /// The record's priority class at the publisher.
    pub class: u8,
    pub term: u64,
    pub index: u64,
    /// The record's position in its entry, from 0.
    pub position: u32,
    pub channel: &'a str,
    pub txid: &'a [u8],
    pub payload: &'a [u8],
    /// `payload` is sealed for the speculative stream (a sealed cluster's
    /// subscriber with its keys opens it).
    pub sealed: bool,
}

/// What became of a speculative entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// Applied from this log: its records are committed (a record whose
    /// txid the log already held stays the record it was).
    Committed = 1,
    /// Truncated after a change of leader: its records never existed.
    RolledBack = 2,
    /// The publisher cannot tell (a snapshot replaced its log, or it stopped
    /// tracking the entry): the committed streams decide.
    Unknown = 3,
}

/// A resolution message: entry (`term`, `index`) had `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    pub outcome: Outcome,
    pub term: u64,
    pub index: u64,
}

/// Bytes a speculative message takes besides its payload (length prefix included).
pub fn speculative_overhead_bytes(channel: &str, txid: &[u8]) -> usize {
    MESSAGE_LEN_BYTES + 1 + 1 + 1 + 8 + 8 + 4 + 1 + channel.len() + 1 + txid.len()
}

/// Bytes a resolution message takes (length prefix included).
pub const RESOLUTION_BYTES: usize = MESSAGE_LEN_BYTES + 1 + 1 + 8 + 8;

/// Bytes a record message's fields take besides its payload (length prefix included).
pub fn record_overhead_bytes(channel: &str, txid: &[u8]) -> usize {
    MESSAGE_LEN_BYTES + 1 + 1 + 8 + 8 + 1 + channel.len() + 1 + txid.len()
}

/// Bytes a fragment start takes besides its chunk (length prefix included).
pub fn fragment_start_overhead_bytes(channel: &str, txid: &[u8]) -> usize {
    record_overhead_bytes(channel, txid) + 4
}

/// Bytes a fragment-more message takes besides its chunk (length prefix included).
pub const FRAGMENT_MORE_OVERHEAD_BYTES: usize = MESSAGE_LEN_BYTES + 1 + 8 + 4;

impl Message<'_> {
    /// Append this message, length-prefixed, to `out`. The caller keeps it
    /// under the packet size (the packer does), so the length fits in u16.
    pub fn write(&self, out: &mut Vec<u8>) {
        let len_at = out.len();
        out.extend_from_slice(&[0, 0]);
        match self {
            Message::Record(record) => {
                out.push(TYPE_RECORD);
                write_record_head(record, None, out);
                out.extend_from_slice(record.payload);
            }
            Message::FragmentStart { record, payload_bytes } => {
                out.push(TYPE_FRAGMENT_START);
                write_record_head(record, Some(*payload_bytes), out);
                out.extend_from_slice(record.payload);
            }
            Message::FragmentMore { seq, offset, chunk } => {
                out.push(TYPE_FRAGMENT_MORE);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(chunk);
            }
            Message::Speculative(record) => {
                assert!(record.channel.len() <= u8::MAX as usize && record.txid.len() <= u8::MAX as usize);
                out.push(TYPE_SPECULATIVE);
                out.push(record.class);
                out.push(if record.sealed { MESSAGE_SEALED } else { 0 });
                out.extend_from_slice(&record.term.to_le_bytes());
                out.extend_from_slice(&record.index.to_le_bytes());
                out.extend_from_slice(&record.position.to_le_bytes());
                out.push(record.channel.len() as u8);
                out.extend_from_slice(record.channel.as_bytes());
                out.push(record.txid.len() as u8);
                out.extend_from_slice(record.txid);
                out.extend_from_slice(record.payload);
            }
            Message::Resolution(resolution) => {
                out.push(TYPE_RESOLUTION);
                out.push(resolution.outcome as u8);
                out.extend_from_slice(&resolution.term.to_le_bytes());
                out.extend_from_slice(&resolution.index.to_le_bytes());
            }
        }
        let len = out.len() - len_at - MESSAGE_LEN_BYTES;
        let len = u16::try_from(len).expect("a message fits a packet");
        out[len_at..len_at + 2].copy_from_slice(&len.to_le_bytes());
    }
}

fn write_record_head(record: &RecordRef<'_>, payload_bytes: Option<u32>, out: &mut Vec<u8>) {
    assert!(record.channel.len() <= u8::MAX as usize && record.txid.len() <= u8::MAX as usize);
    out.push(if record.sealed { MESSAGE_SEALED } else { 0 });
    out.extend_from_slice(&record.seq.to_le_bytes());
    out.extend_from_slice(&record.channel_seq.to_le_bytes());
    if let Some(bytes) = payload_bytes {
        out.extend_from_slice(&bytes.to_le_bytes());
    }
    out.push(record.channel.len() as u8);
    out.extend_from_slice(record.channel.as_bytes());
    out.push(record.txid.len() as u8);
    out.extend_from_slice(record.txid);
}

/// The messages of a data packet's body, each checked against the body's bounds.
pub struct Messages<'a> {
    body: &'a [u8],
    left: u16,
}

impl<'a> Messages<'a> {
    pub fn new(header: &PacketHeader, body: &'a [u8]) -> Messages<'a> {
        Messages {
            body,
            left: if header.kind == PacketKind::Data {
                header.count
            } else {
                0
            },
        }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let result = next_message(&mut self.body);
        if result.is_err() {
            self.left = 0;
        }
        Some(result)
    }
}

fn next_message<'a>(body: &mut &'a [u8]) -> Result<Message<'a>, Error> {
    let mut reader = Reader(body);
    let len = u16::from_le_bytes(reader.take(2)?.try_into().expect("2 bytes")) as usize;
    let message = reader.take(len)?;
    *body = reader.0;
    let mut reader = Reader(message);
    let kind = reader.u8()?;
    Ok(match kind {
        TYPE_RECORD => Message::Record(read_record_head(&mut reader, false)?.0),
        TYPE_FRAGMENT_START => {
            let (record, payload_bytes) = read_record_head(&mut reader, true)?;
            let payload_bytes = payload_bytes.expect("read with a payload length");
            if (payload_bytes as usize) < record.payload.len() {
                return Err(Error::malformed(
                    "fragment start carries more than its record's payload",
                ));
            }
            Message::FragmentStart { record, payload_bytes }
        }
        TYPE_FRAGMENT_MORE => {
            let seq = reader.u64()?;
            let offset = reader.u32()?;
            Message::FragmentMore {
                seq,
                offset,
                chunk: reader.0,
            }
        }
        TYPE_SPECULATIVE => {
            let class = reader.u8()?;
            let flags = reader.u8()?;
            let term = reader.u64()?;
            let index = reader.u64()?;
            let position = reader.u32()?;
            let channel_len = reader.u8()? as usize;
            let channel =
                std::str::from_utf8(reader.take(channel_len)?).map_err(|_| Error::malformed("channel is not UTF-8"))?;
            let txid_len = reader.u8()? as usize;
            let txid = reader.take(txid_len)?;
            Message::Speculative(SpeculativeRef {
                class,
                term,
                index,
                position,
                channel,
                txid,
                payload: reader.0,
                sealed: flags & MESSAGE_SEALED != 0,
            })
        }
        TYPE_RESOLUTION => {
            let outcome = match reader.u8()? {
                1 => Outcome::Committed,
                2 => Outcome::RolledBack,
                3 => Outcome::Unknown,
                other => return Err(Error::malformed(format!("unknown resolution outcome {other}"))),
            };
            let term = reader.u64()?;
            let index = reader.u64()?;
            if !reader.0.is_empty() {
                return Err(Error::malformed("resolution message longer than its fields"));
            }
            Message::Resolution(Resolution { outcome, term, index })
        }
        other => return Err(Error::malformed(format!("unknown message type {other}"))),
    })
}

fn read_record_head<'a>(reader: &mut Reader<'a>, fragment: bool) -> Result<(RecordRef<'a>, Option<u32>), Error> {
    let flags = reader.u8()?;
    let seq = reader.u64()?;
    let channel_seq = reader.u64()?;
    let payload_bytes = if fragment { Some(reader.u32()?) } else { None };
    let channel_len = reader.u8()? as usize;
    let channel =
        std::str::from_utf8(reader.take(channel_len)?).map_err(|_| Error::malformed("channel is not UTF-8"))?;
    let txid_len = reader.u8()? as usize;
    let txid = reader.take(txid_len)?;
    Ok((
        RecordRef {
            seq,
            channel_seq,
            channel,
            txid,
            payload: reader.0,
            sealed: flags & MESSAGE_SEALED != 0,
        },
        payload_bytes,
    ))
}

/// Bounds-checked reads from a received buffer.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::malformed(format!(
                "truncated: {n} bytes wanted, {} left",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

/// The body of a heartbeat or end-of-session packet.
pub fn stream_mark_body(last_record_seq: u64) -> [u8; 8] {
    last_record_seq.to_le_bytes()
}

/// Read a heartbeat or end-of-session body.
pub fn parse_stream_mark(body: &[u8]) -> Result<u64, Error> {
    Reader(body).u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: PacketKind, count: u16) -> PacketHeader {
        PacketHeader {
            kind,
            class: 2,
            flags: 0,
            count,
            session: 0xdead_beef_0000_0007,
            first_seq: 41,
            send_time_ns: 1_700_000_000_000_000_000,
        }
    }

    fn record(seq: u64, payload: &[u8]) -> RecordRef<'_> {
        RecordRef {
            seq,
            channel_seq: seq * 2,
            channel: "market-data",
            txid: b"tx-1",
            payload,
            sealed: seq.is_multiple_of(2),
        }
    }

    /// Every message type written into a packet reads back the same, header and all.
    #[test]
    fn packet_round_trip() {
        let messages = [
            Message::Record(record(7, b"hello")),
            Message::Record(record(8, b"")),
            Message::FragmentStart {
                record: record(9, b"first"),
                payload_bytes: 12,
            },
            Message::FragmentMore {
                seq: 9,
                offset: 5,
                chunk: b"-second",
            },
            Message::Speculative(SpeculativeRef {
                class: 3,
                term: 4,
                index: 1_000_000,
                position: 17,
                channel: "orders",
                txid: b"tx-9",
                payload: b"maybe",
                sealed: true,
            }),
            Message::Resolution(Resolution {
                outcome: Outcome::RolledBack,
                term: 4,
                index: 1_000_000,
            }),
        ];
        let mut packet = Vec::new();
        header(PacketKind::Data, 0).write(&mut packet);
        for message in &messages {
            message.write(&mut packet);
        }
        finish_with_count(&mut packet, messages.len() as u16);
        let (parsed, body) = parse(&packet).expect("valid packet");
        assert_eq!(parsed, header(PacketKind::Data, messages.len() as u16));
        let read: Vec<Message<'_>> = Messages::new(&parsed, body)
            .collect::<Result<_, _>>()
            .expect("valid messages");
        assert_eq!(read, messages);
        assert_eq!(
            record_overhead_bytes("market-data", b"tx-1") + 5,
            {
                let mut one = Vec::new();
                messages[0].write(&mut one);
                one.len()
            },
            "the overhead the packer plans with is what a message takes"
        );
        let written = |message: &Message<'_>| {
            let mut one = Vec::new();
            message.write(&mut one);
            one.len()
        };
        assert_eq!(speculative_overhead_bytes("orders", b"tx-9") + 5, written(&messages[4]));
        assert_eq!(RESOLUTION_BYTES, written(&messages[5]));
    }

    /// Any flipped bit, a truncation or a wrong version is refused, never misread.
    #[test]
    fn damaged_packets_are_refused() {
        let mut packet = Vec::new();
        header(PacketKind::Data, 0).write(&mut packet);
        Message::Record(record(1, b"payload")).write(&mut packet);
        finish_with_count(&mut packet, 1);
        for byte in 0..packet.len() {
            for bit in 0..8 {
                let mut damaged = packet.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    parse(&damaged).is_err(),
                    "bit {bit} of byte {byte} flipped was accepted"
                );
            }
        }
        for len in 0..packet.len() {
            let cut = &packet[..len];
            match parse(cut) {
                Err(_) => {}
                Ok((header, body)) => panic!("cut at {len} parsed as {header:?} with {} body bytes", body.len()),
            }
        }
    }

    /// A checksummed packet whose messages lie about their lengths yields an
    /// error for the bad message, never a panic or a read past the body.
    #[test]
    fn lying_lengths_are_errors() {
        let mut packet = Vec::new();
        header(PacketKind::Data, 0).write(&mut packet);
        packet.extend_from_slice(&500u16.to_le_bytes());
        packet.extend_from_slice(&[TYPE_RECORD, 0, 1]);
        finish_with_count(&mut packet, 3);
        let (parsed, body) = parse(&packet).expect("checksum is valid");
        let read: Vec<_> = Messages::new(&parsed, body).collect();
        assert_eq!(read.len(), 1, "reading stops at the first bad message");
        assert!(read[0].is_err());

        let mut packet = Vec::new();
        header(PacketKind::Data, 0).write(&mut packet);
        let message = [TYPE_RECORD, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200];
        packet.extend_from_slice(&(message.len() as u16).to_le_bytes());
        packet.extend_from_slice(&message);
        finish_with_count(&mut packet, 1);
        let (parsed, body) = parse(&packet).expect("checksum is valid");
        assert!(Messages::new(&parsed, body).next().expect("one message").is_err());
    }

    #[test]
    fn stream_marks_round_trip() {
        let packet = header(PacketKind::Heartbeat, 0).packet(&stream_mark_body(99));
        let (parsed, body) = parse(&packet).expect("valid");
        assert_eq!(parsed.kind, PacketKind::Heartbeat);
        assert_eq!(parse_stream_mark(body).expect("valid"), 99);
        assert_eq!(Messages::new(&parsed, body).count(), 0);
    }
}
