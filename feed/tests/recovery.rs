//! Subscriber recovery without sockets: a publisher, its retransmit service
//! and a receiver joined by a simulated network that loses, reorders and
//! duplicates packets, and a log the receiver falls back to. Every test
//! checks that each class gets exactly the log's records of that class,
//! once each, in order.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use common::Capture;
use txlog_feed::Action;
use txlog_feed::Classes;
use txlog_feed::Delivered;
use txlog_feed::FeedRecord;
use txlog_feed::Publisher;
use txlog_feed::PublisherConfig;
use txlog_feed::Receiver;
use txlog_feed::ReceiverConfig;
use txlog_feed::RetransmitLimits;
use txlog_feed::RetransmitService;
use txlog_feed::Via;

const CHANNELS: [&str; 5] = ["market-data", "order-book", "execution", "orders", "market-data.eurex"];

/// `count` records over [`CHANNELS`]; every 97th is large enough to fragment.
fn log(count: u64) -> Vec<FeedRecord> {
    let mut channel_seqs = [0u64; CHANNELS.len()];
    (1..=count)
        .map(|seq| {
            let c = (seq * 7 % CHANNELS.len() as u64) as usize;
            channel_seqs[c] += 1;
            let len = if seq % 97 == 0 { 5000 } else { (seq % 300) as usize };
            FeedRecord {
                seq,
                channel_seq: channel_seqs[c],
                channel: CHANNELS[c].to_string(),
                txid: format!("tx-{seq}").into_bytes(),
                payload: (0..len).map(|i| (i as u64 + seq) as u8).collect(),
                sealed: seq.is_multiple_of(2),
            }
        })
        .collect()
}

struct Node {
    publisher: Publisher,
    service: RetransmitService,
    capture: Capture,
    address: SocketAddr,
}

impl Node {
    fn new(session: u64, ring_bytes: usize, port: u16) -> Node {
        let publisher = Publisher::new(PublisherConfig {
            session,
            mtu_bytes: 1500,
            classes: Classes::default(),
            ring_bytes,
            heartbeat: Duration::from_millis(100),
            egress_packets_per_s: 0,
            queue_packets_max: 1 << 20,
            speculative: false,
        })
        .expect("valid config");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let service = RetransmitService::new(
            socket,
            publisher.shared(),
            RetransmitLimits::default(),
            Box::new(|_| true),
        );
        Node {
            publisher,
            service,
            capture: Capture::default(),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Publish `records` in batches of 10, returning the packets sent.
    fn publish(&mut self, records: &[FeedRecord], now: Instant) -> Vec<Vec<u8>> {
        for batch in records.chunks(10) {
            self.publisher.publish(batch.iter().map(FeedRecord::borrowed), now);
            self.publisher.send(&mut self.capture, now).expect("sent");
        }
        std::mem::take(&mut *self.capture.0.lock().unwrap())
    }

    fn heartbeat(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.publisher.heartbeats(now);
        self.publisher.send(&mut self.capture, now).expect("sent");
        std::mem::take(&mut *self.capture.0.lock().unwrap())
    }
}

/// A receiver, its simulated clock, and what it delivered.
struct Harness {
    receiver: Receiver,
    now: Instant,
    delivered: Vec<Delivered>,
    log: Vec<FeedRecord>,
    /// Replies to re-requests are dropped while this returns true.
    lose_reply: Box<dyn FnMut() -> bool>,
}

impl Harness {
    fn new(config: ReceiverConfig, log: Vec<FeedRecord>) -> Harness {
        Harness {
            receiver: Receiver::new(config),
            now: Instant::now(),
            delivered: Vec::new(),
            log,
            lose_reply: Box::new(|| false),
        }
    }

    /// Hand the receiver `datagram` from `nodes[from]`.
    fn receive(&mut self, nodes: &mut [&mut Node], datagram: &[u8], from: usize) {
        let from = nodes[from].address;
        let mut actions = Vec::new();
        self.receiver
            .on_datagram(datagram, from, self.now, &mut self.delivered, &mut actions);
        self.act(nodes, actions);
    }

    fn act(&mut self, nodes: &mut [&mut Node], mut actions: Vec<Action>) {
        while let Some(action) = actions.pop() {
            match action {
                Action::Send { to, packet } => {
                    let Some(node) = nodes.iter_mut().find(|n| n.address == to) else {
                        continue;
                    };
                    let mut replies = Vec::new();
                    node.service
                        .handle(&packet, "127.0.0.1:5000".parse().unwrap(), self.now, &mut replies);
                    for reply in replies {
                        if (self.lose_reply)() {
                            continue;
                        }
                        self.receiver
                            .on_datagram(&reply, to, self.now, &mut self.delivered, &mut actions);
                    }
                }
                Action::ReadLog {
                    class,
                    fill_id,
                    after,
                    before,
                    classes,
                } => {
                    let records = self
                        .log
                        .iter()
                        .filter(|r| r.seq > after && r.seq < before && classes.classify(&r.channel) == Some(class))
                        .cloned()
                        .collect();
                    self.receiver
                        .filled(class, fill_id, records, self.now, &mut self.delivered, &mut actions);
                }
            }
        }
    }

    /// Let simulated time pass in steps, ticking the receiver.
    fn advance(&mut self, nodes: &mut [&mut Node], by: Duration) {
        let step = Duration::from_millis(5);
        let end = self.now + by;
        while self.now < end {
            self.now += step;
            let mut actions = Vec::new();
            self.receiver.tick(self.now, &mut actions);
            self.act(nodes, actions);
        }
    }

    /// Each class got exactly the log's records of that class from
    /// `from_seq`, once each, in order; returns how many came each way.
    fn check(&self, from_seq: u64) -> [usize; 3] {
        let classes = Classes::default();
        for class in 0..classes.len() as u8 {
            let want: Vec<u64> = self
                .log
                .iter()
                .filter(|r| r.seq >= from_seq && classes.classify(&r.channel) == Some(class))
                .map(|r| r.seq)
                .collect();
            let got: Vec<&Delivered> = self.delivered.iter().filter(|d| d.class == class).collect();
            let got_seqs: Vec<u64> = got.iter().map(|d| d.record.seq).collect();
            assert_eq!(got_seqs, want, "class {class}");
            for d in got {
                assert_eq!(
                    d.record,
                    self.log[d.record.seq as usize - 1],
                    "record {} intact",
                    d.record.seq
                );
            }
        }
        let via = |v| self.delivered.iter().filter(|d| d.via == v).count();
        [via(Via::Live), via(Via::Retransmit), via(Via::Log)]
    }
}

fn from_all() -> ReceiverConfig {
    ReceiverConfig {
        from_seq: Some(1),
        ..ReceiverConfig::default()
    }
}

/// Runs `records` through one node to a receiver, `network` deciding what
/// becomes of each packet (its index): delivered, dropped or repeated.
fn run_lossy(records: u64, network: impl Fn(usize) -> usize) -> Harness {
    let log = log(records);
    let mut node = Node::new(1, 64 << 20, 7000);
    let mut harness = Harness::new(from_all(), log.clone());
    let packets = node.publish(&log, harness.now);
    for (i, packet) in packets.iter().enumerate() {
        for _ in 0..network(i) {
            harness.receive(&mut [&mut node], packet, 0);
        }
    }
    harness.advance(&mut [&mut node], Duration::from_millis(150));
    let beats = node.heartbeat(harness.now);
    for beat in &beats {
        harness.receive(&mut [&mut node], beat, 0);
    }
    harness.advance(&mut [&mut node], Duration::from_millis(200));
    harness
}

#[test]
fn every_nth_packet_lost_is_recovered_from_the_ring() {
    for nth in [2, 3, 10, 100] {
        // The first packets arrive, so each stream is placed at its start
        // (a stream joined later is bridged by the log, tested below).
        let harness = run_lossy(3000, |i| usize::from(i < 8 || i % nth != nth - 1));
        let [live, retransmit, from_log] = harness.check(1);
        assert!(retransmit > 0, "every {nth}th lost: some came again");
        assert_eq!(
            from_log,
            0,
            "every {nth}th lost: the ring held everything; {:?}",
            harness.receiver.counters()
        );
        assert!(live > 0);
    }
}

/// Losing the last packets of a burst shows only at the next heartbeat.
#[test]
fn bursts_and_a_lost_tail_are_recovered() {
    let harness = run_lossy(3000, |i| {
        usize::from(!(100..160).contains(&i) && i < 700 || (800..900).contains(&i))
    });
    let [_, retransmit, _] = harness.check(1);
    assert!(retransmit > 0);
}

#[test]
fn duplicates_are_delivered_once() {
    let harness = run_lossy(2000, |_| 3);
    let [live, retransmit, from_log] = harness.check(1);
    assert_eq!((retransmit, from_log), (0, 0));
    assert_eq!(live, 2000);
    assert!(harness.receiver.counters().duplicate_packets > 0);
}

#[test]
fn reordered_packets_are_delivered_in_order() {
    let log = log(3000);
    let mut node = Node::new(1, 64 << 20, 7000);
    let mut harness = Harness::new(from_all(), log.clone());
    let mut packets = node.publish(&log, harness.now);
    // Reverse every window of 7 packets.
    for window in packets.chunks_mut(7) {
        window.reverse();
    }
    for packet in &packets {
        harness.receive(&mut [&mut node], packet, 0);
    }
    harness.check(1);
}

/// Random loss (of feed packets and of retransmissions), duplication and
/// reordering, over several seeds.
#[test]
fn random_loss_duplication_and_reordering() {
    for seed in 1..=8u64 {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % 1000
        };
        let log = log(4000);
        let mut node = Node::new(seed, 64 << 20, 7000);
        let mut harness = Harness::new(from_all(), log.clone());
        let mut packets: VecDeque<Vec<u8>> = node.publish(&log, harness.now).into();
        let mut reply_state = seed;
        harness.lose_reply = Box::new(move || {
            reply_state = reply_state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (reply_state >> 33) % 100 < 10
        });
        let mut held: Option<Vec<u8>> = None;
        while let Some(packet) = packets.pop_front() {
            let roll = random();
            if roll < 10 {
                continue; // 1 % lost
            }
            if roll < 20 {
                harness.receive(&mut [&mut node], &packet, 0);
            }
            if roll < 40 && held.is_none() {
                held = Some(packet);
                continue;
            }
            harness.receive(&mut [&mut node], &packet, 0);
            if let Some(late) = held.take() {
                harness.receive(&mut [&mut node], &late, 0);
            }
        }
        harness.advance(&mut [&mut node], Duration::from_millis(150));
        for beat in node.heartbeat(harness.now) {
            harness.receive(&mut [&mut node], &beat, 0);
        }
        harness.advance(&mut [&mut node], Duration::from_millis(500));
        harness.check(1);
    }
}

/// A subscriber that joins after 2,000 records gets them from the log,
/// then the live stream, with nothing repeated at the seam.
#[test]
fn late_subscriber_gets_history_then_live() {
    let log = log(3000);
    let mut node = Node::new(1, 64 << 20, 7000);
    let mut harness = Harness::new(from_all(), log.clone());
    let _missed = node.publish(&log[..2000], harness.now);
    for packet in node.publish(&log[2000..], harness.now) {
        harness.receive(&mut [&mut node], &packet, 0);
    }
    let [live, _, from_log] = harness.check(1);
    assert!(from_log >= 1900 && live > 900, "log {from_log}, live {live}");
    // And one that asks only for what is new from where it joins.
    let mut live_only = Harness::new(ReceiverConfig::default(), log.clone());
    let mut node = Node::new(2, 64 << 20, 7000);
    let _missed = node.publish(&log[..2000], live_only.now);
    for packet in node.publish(&log[2000..], live_only.now) {
        live_only.receive(&mut [&mut node], &packet, 0);
    }
    assert_eq!(live_only.receiver.counters().fallback_reads, 0);
    assert!(live_only
        .delivered
        .iter()
        .all(|d| d.record.seq > 2000 && d.via == Via::Live));
}

/// A subscriber that sleeps past the ring gets "not available" for its gap
/// and reads the log instead.
#[test]
fn sleeping_past_the_ring_falls_back_to_the_log() {
    let log = log(6000);
    // 64 KiB per class: a few hundred records.
    let mut node = Node::new(1, 4 * 64 * 1024, 7000);
    let mut harness = Harness::new(from_all(), log.clone());
    let first = node.publish(&log[..100], harness.now);
    for packet in &first {
        harness.receive(&mut [&mut node], packet, 0);
    }
    let _slept_through = node.publish(&log[100..5000], harness.now);
    for packet in node.publish(&log[5000..], harness.now) {
        harness.receive(&mut [&mut node], &packet, 0);
    }
    harness.advance(&mut [&mut node], Duration::from_millis(100));
    let [_, _, from_log] = harness.check(1);
    assert!(from_log > 4000, "{from_log} from the log");
    assert!(harness.receiver.counters().fallback_reads > 0);
}

/// The followed publisher dies mid-stream (no end marker); the receiver
/// switches to another node's session after the timeout, and the log
/// bridges what the dead one never sent.
#[test]
fn publisher_killed_mid_stream_switches_session() {
    let log = log(4000);
    let mut a = Node::new(10, 64 << 20, 7001);
    let mut b = Node::new(20, 64 << 20, 7002);
    let config = ReceiverConfig {
        session_timeout: Duration::from_millis(300),
        ..from_all()
    };
    let mut harness = Harness::new(config, log.clone());
    let a_packets = a.publish(&log[..1500], harness.now);
    let b_packets = b.publish(&log[..1500], harness.now);
    // Both feeds arrive; a's last 40 packets never do (it died).
    for (i, packet) in a_packets.iter().enumerate() {
        if i < a_packets.len() - 40 {
            harness.receive(&mut [&mut a, &mut b], packet, 0);
        }
        if let Some(packet) = b_packets.get(i) {
            harness.receive(&mut [&mut a, &mut b], packet, 1);
        }
    }
    let followed: Vec<u64> = (0..4)
        .filter_map(|c| harness.receiver.following(c))
        .map(|(s, _)| s)
        .collect();
    assert!(followed.iter().all(|&s| s == 10), "{followed:?}");
    // a is gone: only b goes on, and is followed once a times out.
    let mut nodes = [&mut a, &mut b];
    harness.advance(&mut nodes, Duration::from_millis(100));
    let more = nodes[1].publish(&log[1500..], harness.now);
    for packet in &more {
        harness.receive(&mut nodes, packet, 1);
    }
    harness.advance(&mut nodes, Duration::from_millis(400));
    for beat in nodes[1].heartbeat(harness.now + Duration::from_secs(1)) {
        harness.receive(&mut nodes, &beat, 1);
    }
    harness.advance(&mut nodes, Duration::from_millis(100));
    harness.check(1);
    assert!(harness.receiver.counters().session_switches >= 1);
    let followed: Vec<u64> = (0..4)
        .filter_map(|c| harness.receiver.following(c))
        .map(|(s, _)| s)
        .collect();
    assert!(followed.iter().all(|&s| s == 20), "{followed:?}");
}

/// An orderly end of session switches at once, without waiting for the timeout.
#[test]
fn end_of_session_switches_at_once() {
    let log = log(1000);
    let mut a = Node::new(10, 64 << 20, 7001);
    let mut b = Node::new(20, 64 << 20, 7002);
    let mut harness = Harness::new(from_all(), log.clone());
    for packet in a.publish(&log[..500], harness.now) {
        harness.receive(&mut [&mut a, &mut b], &packet, 0);
    }
    let _ = b.publish(&log[..500], harness.now);
    for beat in b.heartbeat(harness.now + Duration::from_secs(1)) {
        harness.receive(&mut [&mut a, &mut b], &beat, 1);
    }
    let mut capture = a.capture.clone();
    a.publisher.end(&mut capture, Instant::now()).expect("ended");
    let marks = std::mem::take(&mut *capture.0.lock().unwrap());
    for mark in marks {
        harness.receive(&mut [&mut a, &mut b], &mark, 0);
    }
    for packet in b.publish(&log[500..], harness.now) {
        harness.receive(&mut [&mut a, &mut b], &packet, 1);
    }
    harness.advance(&mut [&mut a, &mut b], Duration::from_millis(50));
    harness.check(1);
    assert_eq!(harness.receiver.counters().session_switches, 4, "one per class");
}
