//! The speculative stream without sockets: a publisher fed log events
//! (appends, a truncation, applies), its retransmit service, and a
//! `SpeculativeReceiver` behind a simulated network that loses, duplicates
//! and reorders packets. Each test checks that every record the publisher
//! previewed reaches the receiver once, in stream order, and that each
//! entry is resolved once with the outcome the log gave it.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use common::Capture;
use txlog_feed::packet::Outcome;
use txlog_feed::Action;
use txlog_feed::AppendedEntry;
use txlog_feed::Classes;
use txlog_feed::LogEvent;
use txlog_feed::Publisher;
use txlog_feed::PublisherConfig;
use txlog_feed::RetransmitLimits;
use txlog_feed::RetransmitService;
use txlog_feed::SpeculativeConfig;
use txlog_feed::SpeculativeEvent;
use txlog_feed::SpeculativeReceiver;
use txlog_feed::SpeculativeRecord;
use txlog_feed::SpeculativeUpdate;

const CHANNELS: [&str; 4] = ["market-data", "order-book", "execution", "orders"];

/// A small deterministic generator (xorshift64*), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The log's story: 200 entries of 1–4 records in term 1; entries 151–160
/// are cut by a term-2 leader and replaced; applies trail the appends.
/// Returns the update rounds and each entry's true outcome.
fn story() -> (Vec<SpeculativeUpdate>, BTreeMap<(u64, u64), Outcome>) {
    let mut rounds = Vec::new();
    let mut outcomes = BTreeMap::new();
    let entry = |term: u64, index: u64| {
        let records = (0..=(index % 4))
            .map(|position| SpeculativeRecord {
                channel: CHANNELS[((index + position) % 4) as usize].to_string(),
                txid: format!("tx-{term}-{index}-{position}").into_bytes(),
                payload: vec![index as u8; (index as usize * 37) % 300],
                sealed: false,
            })
            .collect();
        LogEvent::Appended(AppendedEntry {
            term,
            index,
            epoch: 0,
            records,
        })
    };
    let mut applied = 0;
    for index in 1..=160u64 {
        let mut events = vec![entry(1, index)];
        outcomes.insert((1, index), Outcome::Committed);
        if index == 160 {
            events.push(LogEvent::TruncatedAfter(Some(150)));
            for cut in 151..=160 {
                outcomes.insert((1, cut), Outcome::RolledBack);
            }
        }
        rounds.push(SpeculativeUpdate {
            applied_index: applied,
            epoch: Some(0),
            events,
        });
        applied = index.saturating_sub(3).min(150);
    }
    for index in 151..=200u64 {
        outcomes.insert((2, index), Outcome::Committed);
        rounds.push(SpeculativeUpdate {
            applied_index: applied,
            epoch: Some(0),
            events: vec![entry(2, index)],
        });
        applied = index.saturating_sub(3);
    }
    rounds.push(SpeculativeUpdate {
        applied_index: 200,
        epoch: Some(0),
        events: Vec::new(),
    });
    (rounds, outcomes)
}

/// Every record of the story's appends, in the order it was published.
fn previewed(rounds: &[SpeculativeUpdate]) -> Vec<Vec<u8>> {
    rounds
        .iter()
        .flat_map(|round| &round.events)
        .filter_map(|event| match event {
            LogEvent::Appended(entry) => Some(entry.records.iter().map(|r| r.txid.clone())),
            LogEvent::TruncatedAfter(_) => None,
        })
        .flatten()
        .collect()
}

/// Run the story through a lossy network: `loss` % of datagrams (replies
/// included) lost, `duplicate` % sent twice, and every 7th held back one
/// step. Returns what the receiver handed out and the receiver.
fn run(seed: u64, loss: u64, duplicate: u64) -> (Vec<SpeculativeEvent>, SpeculativeReceiver) {
    let (rounds, _) = story();
    let mut publisher = Publisher::new(PublisherConfig {
        session: 31,
        mtu_bytes: 1500,
        classes: Classes::default(),
        ring_bytes: 16 << 20,
        heartbeat: Duration::from_millis(100),
        egress_packets_per_s: 0,
        queue_packets_max: 1 << 20,
        speculative: true,
    })
    .expect("valid config");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let limits = RetransmitLimits {
        packets_per_s: 1_000_000,
        burst_packets: 100_000,
    };
    let mut service = RetransmitService::new(socket, publisher.shared(), limits, Box::new(|_| true));
    let mut capture = Capture::default();
    let mut receiver = SpeculativeReceiver::new(SpeculativeConfig::default());
    let node: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let subscriber: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let mut rng = Rng(seed);
    let mut now = Instant::now();
    let mut out = Vec::new();
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut sent = 0u64;
    let deliver = |datagram: &[u8],
                   receiver: &mut SpeculativeReceiver,
                   service: &mut RetransmitService,
                   rng: &mut Rng,
                   now: Instant,
                   out: &mut Vec<SpeculativeEvent>| {
        let mut actions = Vec::new();
        receiver.on_datagram(datagram, node, now, &|_| true, out, &mut actions);
        while let Some(action) = actions.pop() {
            let Action::Send { packet, .. } = action else {
                panic!("a speculative receiver never reads the log");
            };
            let mut replies = Vec::new();
            service.handle(&packet, subscriber, now, &mut replies);
            for reply in replies {
                if !rng.chance(loss) {
                    receiver.on_datagram(&reply, node, now, &|_| true, out, &mut actions);
                }
            }
        }
    };
    let steps = rounds.len() + 200;
    for step in 0..steps {
        now += Duration::from_millis(1);
        if let Some(round) = rounds.get(step) {
            publisher.publish_speculative(round, now);
        }
        publisher.heartbeats(now);
        publisher.send(&mut capture, now).expect("sent");
        let packets = std::mem::take(&mut *capture.0.lock().unwrap());
        for packet in std::mem::take(&mut held).into_iter().chain(packets) {
            sent += 1;
            // The first packet places the receiver (no history before it): never lost.
            if sent > 1 && rng.chance(loss) {
                continue;
            }
            if sent > 1 && sent.is_multiple_of(7) {
                held.push(packet);
                continue;
            }
            deliver(&packet, &mut receiver, &mut service, &mut rng, now, &mut out);
            if rng.chance(duplicate) {
                deliver(&packet, &mut receiver, &mut service, &mut rng, now, &mut out);
            }
        }
        let mut actions = Vec::new();
        receiver.tick(now, &|_| true, &mut out, &mut actions);
        for action in actions {
            if let Action::Send { packet, .. } = action {
                let mut replies = Vec::new();
                service.handle(&packet, subscriber, now, &mut replies);
                for reply in replies {
                    if !rng.chance(loss) {
                        deliver(&reply, &mut receiver, &mut service, &mut rng, now, &mut out);
                    }
                }
            }
        }
    }
    (out, receiver)
}

/// Records once and in order, and each entry's one resolution is the
/// log's outcome for it.
fn check(out: &[SpeculativeEvent]) {
    let (rounds, outcomes) = story();
    let records: Vec<Vec<u8>> = out
        .iter()
        .filter_map(|e| match e {
            SpeculativeEvent::Record(r) => Some(r.txid.clone()),
            SpeculativeEvent::Resolved(_) => None,
        })
        .collect();
    let want = previewed(&rounds);
    let text =
        |txids: &[Vec<u8>]| -> Vec<String> { txids.iter().map(|t| String::from_utf8_lossy(t).into_owned()).collect() };
    if let Some(at) = (0..want.len().max(records.len())).find(|&i| records.get(i) != want.get(i)) {
        panic!(
            "every previewed record once, in order: {} of {} came; first difference at {at}: got {:?}, want {:?}",
            records.len(),
            want.len(),
            text(&records[at.min(records.len())..(at + 3).min(records.len())]),
            text(&want[at.min(want.len())..(at + 3).min(want.len())]),
        );
    }
    let mut resolved = BTreeMap::new();
    for event in out {
        if let SpeculativeEvent::Resolved(r) = event {
            let first = resolved.insert((r.term, r.index), r.outcome);
            assert!(first.is_none(), "entry {}/{} resolved twice", r.term, r.index);
        }
    }
    assert_eq!(resolved, outcomes, "each entry resolved with its outcome");
    let resolution_place = |term, index| {
        out.iter()
            .position(|e| matches!(e, SpeculativeEvent::Resolved(r) if (r.term, r.index) == (term, index)))
    };
    let record_place = |term: u64, index: u64| {
        out.iter()
            .position(|e| matches!(e, SpeculativeEvent::Record(r) if (r.term, r.index) == (term, index)))
    };
    for &(term, index) in outcomes.keys() {
        assert!(
            record_place(term, index) < resolution_place(term, index),
            "entry {term}/{index}: records before their resolution"
        );
    }
}

/// A clean network: everything arrives live, nothing re-requested.
#[test]
fn clean_stream_previews_and_resolves_every_entry() {
    let (out, receiver) = run(1, 0, 0);
    check(&out);
    let counters = receiver.counters();
    assert_eq!((counters.gaps, counters.lost), (0, 0), "{counters:?}");
    assert_eq!(counters.rolled_back, 10);
}

/// Loss (also of retransmissions), duplicates and reordering over several
/// seeds: the ring fills every gap, so nothing is lost.
#[test]
fn loss_duplicates_and_reordering_are_recovered_from_the_ring() {
    for seed in [2, 3, 5, 8, 13, 21] {
        let (out, receiver) = run(seed, 10, 5);
        check(&out);
        let counters = receiver.counters();
        assert!(counters.gaps > 0 && counters.recovered > 0, "seed {seed}: {counters:?}");
        assert_eq!(counters.lost, 0, "seed {seed}: {counters:?}");
    }
}
