//! The subscriber's side of the speculative stream, without I/O: records
//! as a publisher's log appends them, then what became of each entry.
//!
//! It follows one publisher's speculative stream at a time, in stream-seq
//! order: a gap is re-requested from the retransmit ring like a class
//! stream's, but what the ring no longer holds is given up (counted in
//! `lost`), not read from the log — the log holds only what committed,
//! and those records reach the subscriber on its class streams anyway.
//!
//! Invariants:
//! * Each speculative record is handed out at most once, and each entry
//!   whose records were handed out is resolved at most once: committed,
//!   rolled back, or unknown. Entries of a session that ends or goes silent
//!   are resolved unknown when the receiver moves to another session.
//! * A resolution never reaches the caller for an entry it was not shown.
//!
//! What it leaves out: history (a subscriber sees what is appended after
//! it joins) and matching records with their committed copies (the
//! resolution names the entry; a committed record carries its txid).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use crate::packet::Message;
use crate::packet::Messages;
use crate::packet::Outcome;
use crate::packet::PacketKind;
use crate::packet::Resolution;
use crate::receiver::Action;

/// Entries shown and not yet resolved, at most (the publisher's bound);
/// past it the oldest are resolved unknown.
use crate::speculative::PENDING_ENTRIES_MAX;
/// Other sessions remembered as candidates to follow next.
const OTHER_SESSIONS_MAX: usize = 16;

#[derive(Debug, Clone)]
pub struct SpeculativeConfig {
    pub rerequest_timeout: Duration,
    pub rerequest_attempts_max: u32,
    pub session_timeout: Duration,
    /// Messages held ahead of a gap; past it the gap is given up.
    pub buffer_messages_max: usize,
}

impl Default for SpeculativeConfig {
    fn default() -> SpeculativeConfig {
        SpeculativeConfig {
            rerequest_timeout: Duration::from_millis(20),
            rerequest_attempts_max: 3,
            session_timeout: Duration::from_secs(3),
            buffer_messages_max: 1 << 16,
        }
    }
}

/// A record appended to a publisher's log, not yet known to be committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeculativeDelivered {
    /// The record's priority class at the publisher.
    pub class: u8,
    pub term: u64,
    pub index: u64,
    pub position: u32,
    pub channel: String,
    pub txid: Vec<u8>,
    pub payload: Vec<u8>,
    /// `payload` is sealed (see [`crate::packet::SpeculativeRef::sealed`]).
    pub sealed: bool,
    /// When the packet carrying it was first sent.
    pub send_time_ns: u64,
}

/// Which records the caller wants (its channel and class selection): only
/// those, and the resolutions of their entries, are handed out.
pub type Keep<'a> = &'a dyn Fn(&SpeculativeDelivered) -> bool;

/// What the speculative stream hands out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpeculativeEvent {
    Record(SpeculativeDelivered),
    Resolved(Resolution),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpeculativeCounters {
    pub packets: u64,
    pub malformed: u64,
    pub gaps: u64,
    pub rerequests: u64,
    /// Messages that came from the retransmit ring after a gap.
    pub recovered: u64,
    /// Messages given up: the ring no longer held them.
    pub lost: u64,
    pub records: u64,
    pub committed: u64,
    pub rolled_back: u64,
    pub unknown: u64,
    pub session_switches: u64,
}

#[derive(Debug, Clone)]
enum Owned {
    Record(SpeculativeDelivered),
    Resolution(Resolution),
}

struct Gap {
    first: u64,
    end: u64,
    requested_at: Instant,
    attempts: u32,
}

struct Follow {
    session: u64,
    source: SocketAddr,
    class: u8,
    next_seq: u64,
    buffer: BTreeMap<u64, Owned>,
    gap: Option<Gap>,
    last_heard: Instant,
    ended: bool,
}

pub struct SpeculativeReceiver {
    config: SpeculativeConfig,
    follow: Option<Follow>,
    others: HashMap<u64, (SocketAddr, Instant)>,
    /// Entries shown, by index, with their term.
    pending: BTreeMap<u64, u64>,
    counters: SpeculativeCounters,
}

impl SpeculativeReceiver {
    pub fn new(config: SpeculativeConfig) -> SpeculativeReceiver {
        SpeculativeReceiver {
            config,
            follow: None,
            others: HashMap::new(),
            pending: BTreeMap::new(),
            counters: SpeculativeCounters::default(),
        }
    }

    pub fn counters(&self) -> &SpeculativeCounters {
        &self.counters
    }

    /// The session followed and its feed address, if any.
    pub fn following(&self) -> Option<(u64, SocketAddr)> {
        self.follow.as_ref().map(|f| (f.session, f.source))
    }

    /// Entries shown and not yet resolved.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Handle one datagram from `from`; anything but a speculative
    /// stream's packet is ignored (the class receiver takes those).
    pub fn on_datagram(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        keep: Keep<'_>,
        out: &mut Vec<SpeculativeEvent>,
        actions: &mut Vec<Action>,
    ) {
        let Ok((header, body)) = crate::packet::parse(datagram) else {
            return;
        };
        if !header.is_speculative() {
            return;
        }
        self.counters.packets += 1;
        if matches!(
            header.kind,
            PacketKind::ReRequest | PacketKind::Describe | PacketKind::Description
        ) {
            self.counters.malformed += 1;
            return;
        }
        let follow = self.follow.get_or_insert_with(|| Follow {
            session: header.session,
            source: from,
            class: header.class,
            // Placed by the first packet heard: no history.
            next_seq: header.first_seq,
            buffer: BTreeMap::new(),
            gap: None,
            last_heard: now,
            ended: false,
        });
        if follow.session != header.session {
            if header.kind == PacketKind::EndOfSession {
                self.others.remove(&header.session);
            } else if self.others.len() < OTHER_SESSIONS_MAX || self.others.contains_key(&header.session) {
                self.others.insert(header.session, (from, now));
            }
            return;
        }
        follow.last_heard = now;
        match header.kind {
            PacketKind::Data => {
                let mut messages = Vec::with_capacity(header.count as usize);
                for message in Messages::new(&header, body) {
                    let owned = match message {
                        Ok(Message::Speculative(record)) => Owned::Record(SpeculativeDelivered {
                            class: record.class,
                            term: record.term,
                            index: record.index,
                            position: record.position,
                            channel: record.channel.to_string(),
                            txid: record.txid.to_vec(),
                            payload: record.payload.to_vec(),
                            sealed: record.sealed,
                            send_time_ns: header.send_time_ns,
                        }),
                        Ok(Message::Resolution(resolution)) => Owned::Resolution(resolution),
                        // A class stream's message or a bad one: the packet
                        // is dropped whole, so the stream gaps.
                        _ => {
                            self.counters.malformed += 1;
                            return;
                        }
                    };
                    messages.push(owned);
                }
                if messages.len() != header.count as usize {
                    self.counters.malformed += 1;
                    return;
                }
                for (i, message) in messages.into_iter().enumerate() {
                    let seq = header.first_seq + i as u64;
                    if seq >= follow.next_seq {
                        if follow.gap.as_ref().is_some_and(|g| (g.first..g.end).contains(&seq))
                            && !follow.buffer.contains_key(&seq)
                        {
                            self.counters.recovered += 1;
                        }
                        follow.buffer.entry(seq).or_insert(message);
                    }
                }
            }
            PacketKind::Heartbeat | PacketKind::EndOfSession => {
                // `first_seq` is the next seq to be sent: anything before it
                // not yet here is a gap.
                if header.first_seq > follow.next_seq && follow.gap.is_none() && follow.buffer.is_empty() {
                    self.open_gap(header.first_seq, now, actions);
                }
                if header.kind == PacketKind::EndOfSession {
                    if let Some(follow) = self.follow.as_mut() {
                        follow.ended = true;
                    }
                }
            }
            PacketKind::NotAvailable => {
                if let Some(gap) = self.follow.as_mut().and_then(|f| f.gap.as_mut()) {
                    gap.attempts = u32::MAX;
                }
            }
            _ => {}
        }
        self.drain(now, keep, out, actions);
        self.tick(now, keep, out, actions);
    }

    /// When [`tick`](Self::tick) next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let follow = self.follow.as_ref()?;
        let session = follow.last_heard + self.config.session_timeout;
        Some(match &follow.gap {
            Some(gap) => (gap.requested_at + self.config.rerequest_timeout).min(session),
            None => session,
        })
    }

    /// Timers: re-ask for a gap, give it up, or move to another session.
    pub fn tick(&mut self, now: Instant, keep: Keep<'_>, out: &mut Vec<SpeculativeEvent>, actions: &mut Vec<Action>) {
        let Some(follow) = self.follow.as_mut() else { return };
        let mut ask_again = None;
        let mut give_up = false;
        if let Some(gap) = follow.gap.as_mut() {
            if gap.attempts >= self.config.rerequest_attempts_max {
                give_up = true;
            } else if now.saturating_duration_since(gap.requested_at) >= self.config.rerequest_timeout {
                gap.attempts += 1;
                gap.requested_at = now;
                if gap.attempts < self.config.rerequest_attempts_max {
                    ask_again = Some((gap.first, gap.end));
                } else {
                    give_up = true;
                }
            }
        }
        if let Some((first, end)) = ask_again {
            self.rerequest(first, end, actions);
        }
        if give_up {
            self.give_up_gap(now, keep, out, actions);
        }
        let Some(follow) = self.follow.as_ref() else { return };
        let silent = now.saturating_duration_since(follow.last_heard) >= self.config.session_timeout;
        // An ended session's last messages may still be in a gap: wait for it.
        if !(silent || follow.ended && follow.gap.is_none()) {
            return;
        }
        let next = self
            .others
            .iter()
            .filter(|(_, (_, heard))| now.saturating_duration_since(*heard) < self.config.session_timeout)
            .max_by_key(|(_, (_, heard))| *heard)
            .map(|(&session, &(source, _))| (session, source));
        if next.is_none() && !follow.ended {
            return;
        }
        // The session's unresolved entries: the committed streams decide.
        for (index, term) in std::mem::take(&mut self.pending) {
            self.counters.unknown += 1;
            out.push(SpeculativeEvent::Resolved(Resolution {
                outcome: Outcome::Unknown,
                term,
                index,
            }));
        }
        self.follow = None;
        if let Some((session, _)) = next {
            self.others.remove(&session);
            self.counters.session_switches += 1;
            tracing::info!(session, "speculative feed follows another session");
        }
    }

    fn open_gap(&mut self, end: u64, now: Instant, actions: &mut Vec<Action>) {
        let Some(follow) = self.follow.as_mut() else { return };
        let first = follow.next_seq;
        follow.gap = Some(Gap {
            first,
            end,
            requested_at: now,
            attempts: 0,
        });
        self.counters.gaps += 1;
        self.rerequest(first, end, actions);
    }

    fn rerequest(&mut self, first: u64, end: u64, actions: &mut Vec<Action>) {
        let Some(follow) = self.follow.as_ref() else { return };
        let count = (end - first).min(u16::MAX as u64) as u16;
        let packet = crate::retransmit::speculative_rerequest(follow.session, follow.class, first, count);
        self.counters.rerequests += 1;
        actions.push(Action::Send {
            to: follow.source,
            packet,
        });
    }

    /// Skip the gap under way: its messages are lost to this subscriber.
    fn give_up_gap(
        &mut self,
        now: Instant,
        keep: Keep<'_>,
        out: &mut Vec<SpeculativeEvent>,
        actions: &mut Vec<Action>,
    ) {
        let Some(follow) = self.follow.as_mut() else { return };
        let Some(gap) = follow.gap.take() else { return };
        let resume = follow
            .buffer
            .keys()
            .next()
            .copied()
            .unwrap_or(gap.end)
            .max(follow.next_seq);
        self.counters.lost += resume - follow.next_seq;
        follow.next_seq = resume;
        self.drain(now, keep, out, actions);
    }

    /// Hand out what is contiguous from the next seq; open a gap at the
    /// first hole, or skip it when more than the buffer's bound waits
    /// behind it.
    fn drain(&mut self, now: Instant, keep: Keep<'_>, out: &mut Vec<SpeculativeEvent>, actions: &mut Vec<Action>) {
        let buffer_max = self.config.buffer_messages_max;
        loop {
            let Some(follow) = self.follow.as_mut() else { return };
            while let Some(message) = follow.buffer.remove(&follow.next_seq) {
                follow.next_seq += 1;
                match message {
                    Owned::Record(record) => {
                        if !keep(&record) {
                            continue;
                        }
                        self.counters.records += 1;
                        if self.pending.insert(record.index, record.term) != Some(record.term) {
                            while self.pending.len() > PENDING_ENTRIES_MAX {
                                let (index, term) = self.pending.pop_first().expect("non-empty");
                                self.counters.unknown += 1;
                                out.push(SpeculativeEvent::Resolved(Resolution {
                                    outcome: Outcome::Unknown,
                                    term,
                                    index,
                                }));
                            }
                        }
                        out.push(SpeculativeEvent::Record(record));
                    }
                    Owned::Resolution(resolution) => {
                        if self.pending.get(&resolution.index) != Some(&resolution.term) {
                            continue;
                        }
                        self.pending.remove(&resolution.index);
                        match resolution.outcome {
                            Outcome::Committed => self.counters.committed += 1,
                            Outcome::RolledBack => self.counters.rolled_back += 1,
                            Outcome::Unknown => self.counters.unknown += 1,
                        }
                        out.push(SpeculativeEvent::Resolved(resolution));
                    }
                }
            }
            if follow.gap.as_ref().is_some_and(|gap| gap.end <= follow.next_seq) {
                follow.gap = None;
            }
            let Some(&ahead) = follow.buffer.keys().next() else {
                return;
            };
            if follow.buffer.len() > buffer_max {
                // Too much waits behind the hole: it is lost; go on after it.
                self.counters.lost += ahead - follow.next_seq;
                follow.next_seq = ahead;
                follow.gap = None;
                continue;
            }
            if follow.gap.is_none() {
                self.open_gap(ahead, now, actions);
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packer::Packet;
    use crate::packer::StreamPacker;
    use crate::packet::SpeculativeRef;

    const SOURCE: &str = "127.0.0.1:9000";
    /// Every record wanted.
    const ALL: Keep<'static> = &|_| true;

    fn record(index: u64, position: u32, class: u8) -> SpeculativeRef<'static> {
        SpeculativeRef {
            class,
            term: 2,
            index,
            position,
            channel: "orders",
            txid: b"tx",
            payload: b"speculative payload",
            sealed: false,
        }
    }

    /// Packets of a speculative stream: each message its own packet.
    fn packets(messages: &[Message<'_>]) -> Vec<Packet> {
        let mut packer = StreamPacker::new(4, 77, 1472).speculative();
        let mut packets = Vec::new();
        for message in messages {
            let mut bytes = Vec::new();
            message.write(&mut bytes);
            assert!(packer.push_message(*message, bytes.len(), 1, &mut |p| packets.push(p)));
            packer.flush(1, &mut |p| packets.push(p));
        }
        packets
    }

    fn receive(
        receiver: &mut SpeculativeReceiver,
        packets: &[Packet],
        order: impl IntoIterator<Item = usize>,
    ) -> (Vec<SpeculativeEvent>, Vec<Action>) {
        receive_keeping(receiver, packets, order, ALL)
    }

    fn receive_keeping(
        receiver: &mut SpeculativeReceiver,
        packets: &[Packet],
        order: impl IntoIterator<Item = usize>,
        keep: Keep<'_>,
    ) -> (Vec<SpeculativeEvent>, Vec<Action>) {
        let (mut out, mut actions) = (Vec::new(), Vec::new());
        let now = Instant::now();
        for i in order {
            receiver.on_datagram(
                &packets[i].bytes,
                SOURCE.parse().unwrap(),
                now,
                keep,
                &mut out,
                &mut actions,
            );
        }
        (out, actions)
    }

    fn resolution(outcome: Outcome, index: u64) -> Message<'static> {
        Message::Resolution(Resolution {
            outcome,
            term: 2,
            index,
        })
    }

    /// Records, then their resolutions, in stream order; a resolution of an
    /// entry never shown is not handed out; duplicates change nothing.
    #[test]
    fn records_then_resolutions_once() {
        let packets = packets(&[
            Message::Speculative(record(10, 0, 0)),
            Message::Speculative(record(10, 1, 0)),
            Message::Speculative(record(11, 0, 1)),
            resolution(Outcome::Committed, 9),
            resolution(Outcome::Committed, 10),
            resolution(Outcome::RolledBack, 11),
        ]);
        let mut receiver = SpeculativeReceiver::new(SpeculativeConfig::default());
        let (out, actions) = receive(&mut receiver, &packets, [0, 1, 2, 2, 3, 4, 5, 5, 0]);
        assert!(actions.is_empty());
        let summary: Vec<String> = out
            .iter()
            .map(|e| match e {
                SpeculativeEvent::Record(r) => format!("record {}.{}", r.index, r.position),
                SpeculativeEvent::Resolved(r) => format!("{:?} {}", r.outcome, r.index),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "record 10.0",
                "record 10.1",
                "record 11.0",
                "Committed 10",
                "RolledBack 11"
            ]
        );
        assert_eq!(receiver.pending(), 0);
        let counters = receiver.counters();
        assert_eq!((counters.committed, counters.rolled_back, counters.records), (1, 1, 3));
    }

    /// A lost packet is re-requested (flagged speculative) and the stream
    /// waits for it; when the ring has it no more, the gap is skipped and
    /// counted, and later messages still arrive.
    #[test]
    fn gaps_are_rerequested_then_given_up() {
        let packets = packets(&[
            Message::Speculative(record(1, 0, 0)),
            Message::Speculative(record(2, 0, 0)),
            Message::Speculative(record(3, 0, 0)),
        ]);
        let mut receiver = SpeculativeReceiver::new(SpeculativeConfig::default());
        let (out, actions) = receive(&mut receiver, &packets, [0, 2]);
        assert_eq!(out.len(), 1, "record 3 waits behind the gap");
        let [Action::Send { packet, .. }] = actions.as_slice() else {
            panic!("one re-request: {actions:?}");
        };
        let (header, _) = crate::packet::parse(packet).expect("valid");
        assert_eq!(
            (header.kind, header.first_seq, header.count),
            (PacketKind::ReRequest, 2, 1)
        );
        assert!(header.is_speculative());
        // Retransmitted: delivered in order.
        let (out, _) = receive(&mut receiver, &packets, [1]);
        assert_eq!(out.len(), 2);
        assert_eq!(receiver.counters().recovered, 1);

        let more = packets_after(&[
            Message::Speculative(record(4, 0, 0)),
            Message::Speculative(record(5, 0, 0)),
        ]);
        let mut lossy = SpeculativeReceiver::new(SpeculativeConfig::default());
        let (_, _) = receive(&mut lossy, &more, [0]);
        let mut out = Vec::new();
        let mut actions = Vec::new();
        let now = Instant::now();
        lossy.on_datagram(
            &more[2].bytes,
            SOURCE.parse().unwrap(),
            now,
            ALL,
            &mut out,
            &mut actions,
        );
        assert!(out.is_empty());
        let not_available = crate::packet::PacketHeader {
            kind: PacketKind::NotAvailable,
            class: 4,
            flags: crate::packet::FLAG_SPECULATIVE,
            count: 0,
            session: 77,
            first_seq: 0,
            send_time_ns: 0,
        }
        .packet(&[]);
        lossy.on_datagram(
            &not_available,
            SOURCE.parse().unwrap(),
            now,
            ALL,
            &mut out,
            &mut actions,
        );
        assert_eq!(out.len(), 1, "the message after the gap arrives");
        assert_eq!(lossy.counters().lost, 1);
    }

    /// Packets whose third message is the one after a missing second.
    fn packets_after(messages: &[Message<'_>]) -> Vec<Packet> {
        let mut all = vec![Message::Speculative(record(3, 0, 0))];
        all.extend_from_slice(messages);
        packets(&all)
    }

    /// A session that ends leaves its shown, unresolved entries unknown;
    /// the receiver then follows another session.
    #[test]
    fn an_ended_session_resolves_pending_as_unknown() {
        let first = packets(&[Message::Speculative(record(7, 0, 0))]);
        let mut receiver = SpeculativeReceiver::new(SpeculativeConfig::default());
        let (out, _) = receive(&mut receiver, &first, [0]);
        assert_eq!(out.len(), 1);
        let mut other = StreamPacker::new(4, 88, 1472).speculative();
        let heartbeat = other.mark(PacketKind::Heartbeat, 1);
        let end = StreamPacker::new(4, 77, 1472)
            .speculative()
            .mark(PacketKind::EndOfSession, 1);
        let (mut out, mut actions) = (Vec::new(), Vec::new());
        let now = Instant::now();
        receiver.on_datagram(
            &heartbeat,
            "127.0.0.1:9001".parse().unwrap(),
            now,
            ALL,
            &mut out,
            &mut actions,
        );
        receiver.on_datagram(&end, SOURCE.parse().unwrap(), now, ALL, &mut out, &mut actions);
        assert_eq!(
            out,
            [SpeculativeEvent::Resolved(Resolution {
                outcome: Outcome::Unknown,
                term: 2,
                index: 7
            })]
        );
        assert_eq!(receiver.counters().session_switches, 1);
        let mut next = Vec::new();
        assert!(other.push_message(Message::Speculative(record(8, 0, 0)), 200, 1, &mut |p| next.push(p)));
        other.flush(1, &mut |p| next.push(p));
        receiver.on_datagram(
            &next[0].bytes,
            "127.0.0.1:9001".parse().unwrap(),
            now,
            ALL,
            &mut out,
            &mut actions,
        );
        assert_eq!(receiver.following().map(|f| f.0), Some(88));
        assert!(matches!(out.last(), Some(SpeculativeEvent::Record(r)) if r.index == 8));
    }

    /// More than the buffer's bound behind a hole: the hole is lost at once
    /// and what waited behind it is handed out.
    #[test]
    fn a_full_buffer_skips_the_hole() {
        let messages: Vec<Message<'_>> = (1..=6).map(|i| Message::Speculative(record(i, 0, 0))).collect();
        let packets = packets(&messages);
        let mut receiver = SpeculativeReceiver::new(SpeculativeConfig {
            buffer_messages_max: 2,
            ..SpeculativeConfig::default()
        });
        let (out, _) = receive(&mut receiver, &packets, [0, 2, 3]);
        assert_eq!(out.len(), 1, "two wait behind the hole at 2");
        let (out, _) = receive(&mut receiver, &packets, [4, 5]);
        let indexes: Vec<u64> = out
            .iter()
            .map(|e| match e {
                SpeculativeEvent::Record(r) => r.index,
                SpeculativeEvent::Resolved(r) => panic!("no resolution here: {r:?}"),
            })
            .collect();
        assert_eq!(indexes, [3, 4, 5, 6]);
        assert_eq!(receiver.counters().lost, 1);
    }

    /// Class selection: records of other classes are not shown, and their
    /// entries' resolutions are not either.
    #[test]
    fn classes_not_asked_for_are_not_shown() {
        let packets = packets(&[
            Message::Speculative(record(1, 0, 0)),
            Message::Speculative(record(2, 0, 3)),
            resolution(Outcome::Committed, 1),
            resolution(Outcome::Committed, 2),
        ]);
        let mut receiver = SpeculativeReceiver::new(SpeculativeConfig::default());
        let (out, _) = receive_keeping(&mut receiver, &packets, 0..4, &|r| r.class == 3);
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], SpeculativeEvent::Record(r) if r.index == 2));
        assert!(matches!(&out[1], SpeculativeEvent::Resolved(r) if r.index == 2));
    }
}
