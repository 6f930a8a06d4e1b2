//! Packs one class stream's records into packets no larger than the MTU
//! allows, numbering its messages densely from 1.
//!
//! Invariant: stream seqs are dense; each finished packet holds the
//! messages `first_seq .. first_seq + count`, and the next packet starts
//! where it ended. A record that does not fit in an empty packet is split
//! into a fragment start and fragment-more messages, each in a packet of
//! its own stream seq.

use crate::packet::fragment_start_overhead_bytes;
use crate::packet::record_overhead_bytes;
use crate::packet::Message;
use crate::packet::PacketHeader;
use crate::packet::PacketKind;
use crate::packet::RecordRef;
use crate::packet::FLAG_SPECULATIVE;
use crate::packet::FRAGMENT_MORE_OVERHEAD_BYTES;
use crate::packet::HEADER_BYTES;

/// A finished packet of one stream.
#[derive(Debug, Clone)]
pub struct Packet {
    pub class: u8,
    pub first_seq: u64,
    pub count: u16,
    pub bytes: std::sync::Arc<Vec<u8>>,
}

pub struct StreamPacker {
    class: u8,
    /// Header flags of every packet: [`FLAG_SPECULATIVE`] on a speculative stream.
    flags: u8,
    session: u64,
    /// Largest UDP payload.
    packet_bytes_max: usize,
    next_seq: u64,
    /// The packet being filled; empty when none is.
    current: Vec<u8>,
    current_first: u64,
    current_count: u16,
    /// Global seq of the last record packed.
    last_record_seq: u64,
}

impl StreamPacker {
    pub fn new(class: u8, session: u64, packet_bytes_max: usize) -> StreamPacker {
        assert!(packet_bytes_max >= HEADER_BYTES + fragment_start_overhead_bytes(&"c".repeat(64), &[0; 64]) + 64);
        StreamPacker {
            class,
            flags: 0,
            session,
            packet_bytes_max,
            next_seq: 1,
            current: Vec::new(),
            current_first: 0,
            current_count: 0,
            last_record_seq: 0,
        }
    }

    /// This packer fills a speculative stream's packets.
    pub fn speculative(mut self) -> StreamPacker {
        self.flags = FLAG_SPECULATIVE;
        self
    }

    /// Pack one message that takes `bytes` (as written, length prefix
    /// included) and must not be split; false, packing nothing, when it is
    /// larger than a packet.
    pub fn push_message(
        &mut self,
        message: Message<'_>,
        bytes: usize,
        now_ns: u64,
        done: &mut impl FnMut(Packet),
    ) -> bool {
        if bytes > self.packet_bytes_max - HEADER_BYTES {
            return false;
        }
        if bytes > self.room() {
            self.flush(now_ns, done);
        }
        self.add(message);
        debug_assert!(self.current.len() <= self.packet_bytes_max);
        true
    }

    /// The stream seq the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Pack `record`; every packet it fills is handed to `done`.
    pub fn push(&mut self, record: &RecordRef<'_>, now_ns: u64, done: &mut impl FnMut(Packet)) {
        assert!(
            record.seq > self.last_record_seq,
            "records reach a stream in seq order: {} after {}",
            record.seq,
            self.last_record_seq
        );
        self.last_record_seq = record.seq;
        let whole = record_overhead_bytes(record.channel, record.txid) + record.payload.len();
        if whole > self.room() && self.current_count > 0 && whole <= self.packet_bytes_max - HEADER_BYTES {
            self.flush(now_ns, done);
        }
        if whole <= self.room() {
            self.add(Message::Record(*record));
            return;
        }
        // Too large for any packet: a fragment start then fragment-more
        // messages, starting in the packet under way if the start fits.
        let start_overhead = fragment_start_overhead_bytes(record.channel, record.txid);
        if self.room() < start_overhead + 1 {
            self.flush(now_ns, done);
        }
        let first = (self.room() - start_overhead).min(record.payload.len());
        self.add(Message::FragmentStart {
            record: RecordRef {
                payload: &record.payload[..first],
                ..*record
            },
            payload_bytes: u32::try_from(record.payload.len()).expect("payloads are under 4 GiB"),
        });
        let mut offset = first;
        while offset < record.payload.len() {
            if self.room() < FRAGMENT_MORE_OVERHEAD_BYTES + 1 {
                self.flush(now_ns, done);
            }
            let chunk = (self.room() - FRAGMENT_MORE_OVERHEAD_BYTES).min(record.payload.len() - offset);
            self.add(Message::FragmentMore {
                seq: record.seq,
                offset: offset as u32,
                chunk: &record.payload[offset..offset + chunk],
            });
            offset += chunk;
        }
    }

    /// Finish the packet under way, if any.
    pub fn flush(&mut self, now_ns: u64, done: &mut impl FnMut(Packet)) {
        if self.current_count == 0 {
            return;
        }
        let mut bytes = std::mem::take(&mut self.current);
        bytes[6..8].copy_from_slice(&self.current_count.to_le_bytes());
        crate::packet::set_send_time(&mut bytes, now_ns);
        debug_assert!(bytes.len() <= self.packet_bytes_max);
        done(Packet {
            class: self.class,
            first_seq: self.current_first,
            count: self.current_count,
            bytes: std::sync::Arc::new(bytes),
        });
        self.current_count = 0;
    }

    /// A heartbeat (`kind` Heartbeat) or end-of-session packet: the next
    /// stream seq and the last record's seq.
    pub fn mark(&self, kind: PacketKind, now_ns: u64) -> Vec<u8> {
        self.header(kind, self.next_seq, now_ns)
            .packet(&crate::packet::stream_mark_body(self.last_record_seq))
    }

    fn header(&self, kind: PacketKind, first_seq: u64, now_ns: u64) -> PacketHeader {
        PacketHeader {
            kind,
            class: self.class,
            flags: self.flags,
            count: 0,
            session: self.session,
            first_seq,
            send_time_ns: now_ns,
        }
    }

    /// Bytes left in the packet under way (a whole packet's if none is).
    fn room(&self) -> usize {
        if self.current_count == 0 {
            self.packet_bytes_max - HEADER_BYTES
        } else {
            self.packet_bytes_max - self.current.len()
        }
    }

    fn add(&mut self, message: Message<'_>) {
        if self.current_count == 0 {
            self.current.clear();
            self.current.reserve(self.packet_bytes_max);
            self.header(PacketKind::Data, self.next_seq, 0).write(&mut self.current);
            self.current_first = self.next_seq;
        }
        message.write(&mut self.current);
        // A message takes at least 24 bytes, so a 64 KiB packet holds
        // fewer than u16::MAX of them.
        self.current_count += 1;
        self.next_seq += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::parse;
    use crate::packet::Messages;

    fn record(seq: u64, payload: &[u8]) -> RecordRef<'_> {
        RecordRef {
            seq,
            channel_seq: seq,
            channel: "orders",
            txid: b"tx",
            payload,
            sealed: false,
        }
    }

    /// Packs `records`, then checks every packet: within the size, dense
    /// stream seqs, and the payloads reassemble to what went in.
    fn pack_and_check(packet_bytes_max: usize, payloads: &[Vec<u8>]) {
        let mut packer = StreamPacker::new(0, 9, packet_bytes_max);
        let mut packets = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            packer.push(&record(i as u64 + 1, payload), 5, &mut |p| packets.push(p));
        }
        packer.flush(5, &mut |p| packets.push(p));
        let mut next = 1;
        let mut rebuilt: Vec<Vec<u8>> = Vec::new();
        for packet in &packets {
            assert!(
                packet.bytes.len() <= packet_bytes_max,
                "{} > {packet_bytes_max}",
                packet.bytes.len()
            );
            let (header, body) = parse(&packet.bytes).expect("valid");
            assert_eq!((header.first_seq, header.count), (packet.first_seq, packet.count));
            assert_eq!(header.first_seq, next, "stream seqs are dense");
            next += header.count as u64;
            for message in Messages::new(&header, body) {
                match message.expect("valid") {
                    Message::Record(r) => rebuilt.push(r.payload.to_vec()),
                    Message::FragmentStart { record, payload_bytes } => {
                        assert!(record.payload.len() < payload_bytes as usize);
                        rebuilt.push(record.payload.to_vec());
                    }
                    Message::FragmentMore { seq, offset, chunk } => {
                        let records = rebuilt.len() as u64;
                        let last = rebuilt.last_mut().expect("a start came first");
                        assert_eq!(
                            (seq, offset as usize),
                            (records, last.len()),
                            "fragments follow their start"
                        );
                        last.extend_from_slice(chunk);
                    }
                    other => panic!("a class stream packed {other:?}"),
                }
            }
        }
        assert_eq!(next, packer.next_seq());
        assert_eq!(&rebuilt, payloads);
    }

    #[test]
    fn small_records_share_packets() {
        let payloads: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 256]).collect();
        pack_and_check(1472, &payloads);
    }

    /// Payload sizes around and far past the packet size, at several MTUs.
    #[test]
    fn large_records_are_fragmented_and_reassemble() {
        for packet_bytes_max in [548, 1472, 8972] {
            let sizes = [0, 1, 300, 500, 510, 520, 1400, 1500, 3000, 9000, 70_000, 1 << 20, 7];
            let payloads: Vec<Vec<u8>> = sizes
                .iter()
                .map(|&n| (0..n).map(|i| (i % 251) as u8).collect())
                .collect();
            pack_and_check(packet_bytes_max, &payloads);
        }
    }

    #[test]
    fn marks_carry_the_stream_position() {
        let mut packer = StreamPacker::new(3, 9, 1472);
        packer.push(&record(40, b"x"), 0, &mut |_| {});
        packer.flush(0, &mut |_| {});
        let (header, body) = parse(&packer.mark(PacketKind::Heartbeat, 1))
            .map(|(h, b)| (h, b.to_vec()))
            .expect("valid");
        assert_eq!(
            (header.kind, header.class, header.first_seq),
            (PacketKind::Heartbeat, 3, 2)
        );
        assert_eq!(crate::packet::parse_stream_mark(&body).expect("valid"), 40);
    }
}
