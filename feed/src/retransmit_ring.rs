//! The packets a publisher sent recently, per class stream, for answering
//! re-requests: bounded in bytes, oldest dropped first.
//!
//! Invariant: each class's packets are held in stream-seq order and are
//! contiguous (a packet starts where the one before it ended), so a stream
//! seq is found by binary search.

use std::collections::VecDeque;

use crate::packer::Packet;

pub struct RetransmitRing {
    streams: Vec<VecDeque<Packet>>,
    bytes: Vec<usize>,
    /// Bytes each class may hold.
    class_bytes_max: usize,
}

/// What a re-request finds.
#[derive(Debug)]
pub enum Lookup {
    /// Packets that cover the start of the range, in order.
    Found(Vec<Packet>),
    /// The range is older than anything held; `oldest` is the first stream
    /// seq still held (0 if nothing is).
    Gone { oldest: u64 },
    /// The range has not been sent yet.
    Ahead,
}

impl RetransmitRing {
    /// A ring of `bytes_max` in all, shared evenly by `classes` streams.
    pub fn new(classes: usize, bytes_max: usize) -> RetransmitRing {
        RetransmitRing {
            streams: (0..classes).map(|_| VecDeque::new()).collect(),
            bytes: vec![0; classes],
            class_bytes_max: bytes_max / classes.max(1),
        }
    }

    pub fn push(&mut self, packet: Packet) {
        let class = packet.class as usize;
        let stream = &mut self.streams[class];
        if let Some(last) = stream.back() {
            assert_eq!(
                last.first_seq + last.count as u64,
                packet.first_seq,
                "ring packets are contiguous"
            );
        }
        self.bytes[class] += packet.bytes.len();
        stream.push_back(packet);
        while self.bytes[class] > self.class_bytes_max {
            let Some(old) = stream.pop_front() else { break };
            self.bytes[class] -= old.bytes.len();
        }
    }

    /// Packets holding stream seqs `first .. first + count` of `class`, at most `packets_max` of them.
    pub fn lookup(&self, class: u8, first: u64, count: u16, packets_max: usize) -> Lookup {
        let Some(stream) = self.streams.get(class as usize) else {
            return Lookup::Gone { oldest: 0 };
        };
        let Some(oldest) = stream.front() else {
            return Lookup::Gone { oldest: 0 };
        };
        if first < oldest.first_seq {
            return Lookup::Gone {
                oldest: oldest.first_seq,
            };
        }
        let end = first.saturating_add(count.max(1) as u64);
        // The first packet whose range ends after `first`.
        let start = stream.partition_point(|p| p.first_seq + p.count as u64 <= first);
        let found: Vec<Packet> = stream
            .range(start..)
            .take_while(|p| p.first_seq < end)
            .take(packets_max)
            .cloned()
            .collect();
        if found.is_empty() {
            Lookup::Ahead
        } else {
            Lookup::Found(found)
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(class: u8, first_seq: u64, count: u16, bytes: usize) -> Packet {
        Packet {
            class,
            first_seq,
            count,
            bytes: std::sync::Arc::new(vec![0; bytes]),
        }
    }

    #[test]
    fn finds_covering_packets_and_forgets_the_oldest() {
        let mut ring = RetransmitRing::new(2, 2000);
        for i in 0..10u64 {
            ring.push(packet(0, 1 + i * 4, 4, 100));
        }
        let Lookup::Found(found) = ring.lookup(0, 6, 5, 64) else {
            panic!("held")
        };
        assert_eq!(found.iter().map(|p| p.first_seq).collect::<Vec<_>>(), vec![5, 9]);
        let Lookup::Found(found) = ring.lookup(0, 6, 5, 1) else {
            panic!("held")
        };
        assert_eq!(found.len(), 1, "at most packets_max");
        assert!(matches!(ring.lookup(0, 41, 1, 64), Lookup::Ahead));
        assert!(matches!(ring.lookup(1, 1, 1, 64), Lookup::Gone { oldest: 0 }));
        // 1000 bytes per class: the first packets go.
        for i in 10..20u64 {
            ring.push(packet(0, 1 + i * 4, 4, 100));
        }
        assert_eq!(ring.bytes(), 1000);
        assert!(matches!(ring.lookup(0, 1, 1, 64), Lookup::Gone { oldest: 41 }));
        assert!(matches!(ring.lookup(0, 41, 1, 64), Lookup::Found(_)));
    }
}
