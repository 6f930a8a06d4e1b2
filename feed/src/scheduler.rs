//! Egress order across class streams: weighted rounds, highest class first.
//!
//! Each round, classes are visited in priority order and each may send up
//! to its weight in packets; a round ends when every backlogged class has
//! used its quota, and the next starts again at the highest class. So the
//! highest class waits at most one round behind lower ones, and a lower
//! class still gets its weight's share of every round: never starved.
//!
//! Queues are bounded. A packet that finds its class's queue full is shed
//! (counted): it is already in the retransmit ring, so a subscriber that
//! misses it recovers it there or from the log. Optional pacing caps the
//! packets per second (a link or switch limit).

use std::collections::VecDeque;
use std::time::Duration;
use std::time::Instant;

use crate::packer::Packet;

pub struct Scheduler {
    queues: Vec<VecDeque<Packet>>,
    /// The order queues are visited in each round: by index unless
    /// [`Scheduler::serve_first`] moved one ahead.
    order: Vec<usize>,
    weights: Vec<u32>,
    quota: Vec<u32>,
    queue_packets_max: usize,
    pacing: Option<Pacing>,
    shed: u64,
}

struct Pacing {
    packets_per_s: u64,
    tokens: f64,
    burst: f64,
    refilled: Instant,
}

impl Scheduler {
    pub fn new(weights: Vec<u32>, queue_packets_max: usize, packets_per_s: u64) -> Scheduler {
        let pacing = (packets_per_s > 0).then(|| {
            let burst = (packets_per_s as f64 / 1000.0).max(8.0);
            Pacing {
                packets_per_s,
                tokens: burst,
                burst,
                refilled: Instant::now(),
            }
        });
        Scheduler {
            queues: weights.iter().map(|_| VecDeque::new()).collect(),
            order: (0..weights.len()).collect(),
            quota: weights.clone(),
            weights,
            queue_packets_max,
            pacing,
            shed: 0,
        }
    }

    /// Visit queue `first` first in every round (the speculative stream:
    /// its packets are worth something only while they are early).
    pub fn serve_first(mut self, first: usize) -> Scheduler {
        self.order.retain(|&q| q != first);
        self.order.insert(0, first);
        self
    }

    /// Queue `packet`; returns false (and counts it) if its class's queue is full.
    pub fn push(&mut self, packet: Packet) -> bool {
        let queue = &mut self.queues[packet.class as usize];
        if queue.len() >= self.queue_packets_max {
            self.shed += 1;
            return false;
        }
        queue.push_back(packet);
        true
    }

    /// Packets shed because their queue was full.
    pub fn shed(&self) -> u64 {
        self.shed
    }

    pub fn backlog(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Take up to `max` packets in send order, as pacing allows at `now`.
    pub fn next_batch(&mut self, max: usize, now: Instant, out: &mut Vec<Packet>) {
        let allowed = match &mut self.pacing {
            None => max,
            Some(pacing) => {
                let elapsed = now.saturating_duration_since(pacing.refilled).as_secs_f64();
                pacing.tokens = (pacing.tokens + elapsed * pacing.packets_per_s as f64).min(pacing.burst);
                pacing.refilled = now;
                (pacing.tokens as usize).min(max)
            }
        };
        let mut taken = 0;
        while taken < allowed {
            let Some(class) = self.next_class() else { break };
            let packet = self.queues[class]
                .pop_front()
                .expect("next_class picks a backlogged class");
            self.quota[class] -= 1;
            out.push(packet);
            taken += 1;
        }
        if let Some(pacing) = &mut self.pacing {
            pacing.tokens -= taken as f64;
        }
    }

    /// When pacing will next allow a packet, if packets wait for it.
    pub fn next_send_in(&self) -> Option<Duration> {
        if self.backlog() == 0 {
            return None;
        }
        match &self.pacing {
            Some(pacing) if pacing.tokens < 1.0 => Some(Duration::from_secs_f64(
                (1.0 - pacing.tokens) / pacing.packets_per_s as f64,
            )),
            _ => Some(Duration::ZERO),
        }
    }

    fn next_class(&mut self) -> Option<usize> {
        for _round in 0..2 {
            let class = self
                .order
                .iter()
                .copied()
                .find(|&c| self.quota[c] > 0 && !self.queues[c].is_empty());
            if class.is_some() {
                return class;
            }
            if self.queues.iter().all(VecDeque::is_empty) {
                return None;
            }
            // Every backlogged class has used its quota: a new round.
            self.quota.copy_from_slice(&self.weights);
        }
        unreachable!("a fresh round gives every backlogged class a quota of at least 1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(class: u8, seq: u64) -> Packet {
        Packet {
            class,
            first_seq: seq,
            count: 1,
            bytes: std::sync::Arc::new(Vec::new()),
        }
    }

    /// With every class backlogged, each round sends weight-many packets per
    /// class, highest first; no class is starved.
    #[test]
    fn weighted_rounds_highest_first() {
        let mut scheduler = Scheduler::new(vec![3, 2, 1], 100, 0);
        for seq in 0..10 {
            for class in 0..3 {
                assert!(scheduler.push(packet(class, seq)));
            }
        }
        let mut out = Vec::new();
        scheduler.next_batch(12, Instant::now(), &mut out);
        let classes: Vec<u8> = out.iter().map(|p| p.class).collect();
        assert_eq!(classes, vec![0, 0, 0, 1, 1, 2, 0, 0, 0, 1, 1, 2]);
    }

    /// A packet of the highest class that arrives mid-round goes before the
    /// lower classes' remaining quota once its own quota is back.
    #[test]
    fn lone_high_class_packet_goes_next() {
        let mut scheduler = Scheduler::new(vec![8, 1], 100, 0);
        for seq in 0..5 {
            scheduler.push(packet(1, seq));
        }
        scheduler.push(packet(0, 0));
        let mut out = Vec::new();
        scheduler.next_batch(1, Instant::now(), &mut out);
        assert_eq!(out[0].class, 0);
    }

    #[test]
    fn full_queues_shed_and_pacing_caps_rate() {
        let mut scheduler = Scheduler::new(vec![1], 2, 1000);
        assert!(scheduler.push(packet(0, 1)));
        assert!(scheduler.push(packet(0, 2)));
        assert!(!scheduler.push(packet(0, 3)));
        assert_eq!(scheduler.shed(), 1);
        let start = Instant::now();
        let mut scheduler = Scheduler::new(vec![1], 1000, 1000);
        for seq in 0..100 {
            scheduler.push(packet(0, seq));
        }
        let mut out = Vec::new();
        scheduler.next_batch(100, start, &mut out);
        assert_eq!(out.len(), 8, "the burst");
        out.clear();
        scheduler.next_batch(100, start + Duration::from_millis(20), &mut out);
        assert_eq!(out.len(), 8, "20 ms at 1000/s, capped by the burst");
        assert!(scheduler.next_send_in().is_some());
    }
}
