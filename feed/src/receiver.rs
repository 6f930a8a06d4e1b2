//! The subscriber's side of the feed, without I/O: turns datagrams into
//! records delivered exactly once, in order, per class; says when to ask
//! the retransmit service and when to read the log instead.
//!
//! Invariants, per class:
//! * Records are delivered in strictly increasing global seq, each once:
//!   `last_delivered` only grows and a record at or below it is a
//!   duplicate (a replay, a retransmission, or a record the log already
//!   gave).
//! * The receiver follows one publisher session at a time. Its stream seqs
//!   say what is missing; the log fills what the stream cannot: after a
//!   fill of `(after, before)`, everything of the class below `before` has
//!   been delivered.
//! * A gap is asked for again ([`ReceiverConfig::rerequest_timeout`]) up to
//!   [`ReceiverConfig::rerequest_attempts_max`] times, then read from the
//!   log; a "not available" answer goes to the log at once.
//! * Another session (another node's feed, or a restarted publisher) is
//!   followed when the current one ends or is silent for
//!   [`ReceiverConfig::session_timeout`]; the switch is bridged by a log
//!   read, so nothing is lost or repeated across it.
//!
//! What it leaves out: it does not open sealed payloads (the caller does,
//! with the cluster's keys) and does not order records across classes
//! (each class is its own stream; a record's `seq` orders them globally).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use crate::class::Classes;
use crate::describe::Description;
use crate::packet::Message;
use crate::packet::Messages;
use crate::packet::PacketHeader;
use crate::packet::PacketKind;
use crate::record::FeedRecord;
use crate::retransmit::describe_request;
use crate::retransmit::rerequest;

/// Other sessions a class remembers as failover candidates.
const OTHER_SESSIONS_MAX: usize = 16;
/// Sessions whose description is kept or asked for, before those not
/// followed are forgotten.
const SESSIONS_REMEMBERED_MAX: usize = 256;

#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Classes to deliver, by index; `None`: all.
    pub classes: Option<Vec<u8>>,
    /// Deliver records from this global seq on (history from the log
    /// first); `None`: from whatever arrives first.
    pub from_seq: Option<u64>,
    pub rerequest_timeout: Duration,
    pub rerequest_attempts_max: u32,
    pub session_timeout: Duration,
    /// Messages held ahead of a gap; past it, the receiver drops them and
    /// repositions (a log read bridges the hole).
    pub buffer_messages_max: usize,
}

impl Default for ReceiverConfig {
    fn default() -> ReceiverConfig {
        ReceiverConfig {
            classes: None,
            from_seq: None,
            rerequest_timeout: Duration::from_millis(20),
            rerequest_attempts_max: 3,
            session_timeout: Duration::from_secs(3),
            buffer_messages_max: 1 << 20,
        }
    }
}

/// How a delivered record reached the subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Live,
    /// Re-sent by the retransmit service after a gap.
    Retransmit,
    /// Read from the log (history, a gap the ring no longer held, a switch of session).
    Log,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub class: u8,
    pub record: FeedRecord,
    pub via: Via,
    /// When the packet that completed it was first sent (0 for log reads).
    pub send_time_ns: u64,
}

/// What the caller must do for the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `packet` (a re-request or Describe) to `to`, unicast.
    Send { to: SocketAddr, packet: Vec<u8> },
    /// Read every record with `after < seq < before` from the log and hand
    /// those of `classes` that map to `class` to [`Receiver::filled`].
    ReadLog {
        class: u8,
        /// Pass it back to [`Receiver::filled`]: a read that a session
        /// switch overtook is ignored.
        fill_id: u64,
        after: u64,
        before: u64,
        classes: Classes,
    },
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReceiverCounters {
    pub packets: u64,
    pub duplicate_packets: u64,
    pub malformed: u64,
    pub gaps: u64,
    pub rerequests: u64,
    pub recovered: u64,
    pub fallback_reads: u64,
    pub records_from_log: u64,
    pub delivered: u64,
    pub session_switches: u64,
    pub overflows: u64,
    /// Log reads that could not be done: their records were skipped.
    pub unfilled: u64,
}

#[derive(Debug, Clone)]
enum Owned {
    Record(FeedRecord),
    FragmentStart { record: FeedRecord, payload_bytes: u32 },
    FragmentMore { seq: u64, offset: u32, chunk: Vec<u8> },
}

impl Owned {
    /// `None` for the speculative stream's messages, which a class stream never carries.
    fn from_message(message: Message<'_>) -> Option<Owned> {
        Some(match message {
            Message::Record(record) => Owned::Record(record.into()),
            Message::FragmentStart { record, payload_bytes } => Owned::FragmentStart {
                record: record.into(),
                payload_bytes,
            },
            Message::FragmentMore { seq, offset, chunk } => Owned::FragmentMore {
                seq,
                offset,
                chunk: chunk.to_vec(),
            },
            Message::Speculative(_) | Message::Resolution(_) => return None,
        })
    }

    /// The exclusive bound a log read must reach to cover everything
    /// before this message: a fragment's own record too, since its start
    /// may be missing.
    fn fill_before(&self) -> u64 {
        match self {
            Owned::Record(record) | Owned::FragmentStart { record, .. } => record.seq,
            Owned::FragmentMore { seq, .. } => seq + 1,
        }
    }
}

struct Buffered {
    message: Owned,
    recovered: bool,
    send_time_ns: u64,
}

struct Gap {
    first: u64,
    end: u64,
    /// The end of the range last asked for.
    requested_until: u64,
    requested_at: Instant,
    attempts: u32,
}

struct Follow {
    session: u64,
    source: SocketAddr,
    /// The next stream seq to deliver; `None` until a packet places it.
    next_seq: Option<u64>,
    buffer: BTreeMap<u64, Buffered>,
    last_heard: Instant,
    /// The stream's next seq and last record seq, from its last heartbeat.
    announced: Option<(u64, u64)>,
    partial: Option<(FeedRecord, u32)>,
    gap: Option<Gap>,
    ended: bool,
}

impl Follow {
    fn new(session: u64, source: SocketAddr, now: Instant) -> Follow {
        Follow {
            session,
            source,
            next_seq: None,
            buffer: BTreeMap::new(),
            last_heard: now,
            announced: None,
            partial: None,
            gap: None,
            ended: false,
        }
    }
}

/// A log read that is wanted or under way.
#[derive(Clone, Copy)]
struct Fill {
    id: u64,
    before: u64,
    issued: bool,
}

#[derive(Default)]
struct ClassState {
    last_delivered: Option<u64>,
    follow: Option<Follow>,
    others: HashMap<u64, (SocketAddr, Instant)>,
    fill: Option<Fill>,
}

pub struct Receiver {
    config: ReceiverConfig,
    classes: Vec<ClassState>,
    /// Descriptions by session; a log read waits for its session's.
    descriptions: HashMap<u64, Classes>,
    describe_sent: HashMap<u64, Instant>,
    fills: u64,
    counters: ReceiverCounters,
}

impl Receiver {
    pub fn new(config: ReceiverConfig) -> Receiver {
        Receiver {
            config,
            classes: Vec::new(),
            descriptions: HashMap::new(),
            describe_sent: HashMap::new(),
            fills: 0,
            counters: ReceiverCounters::default(),
        }
    }

    pub fn counters(&self) -> &ReceiverCounters {
        &self.counters
    }

    fn wants(&self, class: u8) -> bool {
        self.config.classes.as_ref().is_none_or(|c| c.contains(&class))
    }

    fn state(&mut self, class: u8) -> &mut ClassState {
        let i = class as usize;
        if self.classes.len() <= i {
            let from = self.config.from_seq;
            self.classes.resize_with(i + 1, || ClassState {
                last_delivered: from.map(|s| s.saturating_sub(1)),
                ..ClassState::default()
            });
        }
        &mut self.classes[i]
    }

    /// Handle one datagram from `from`.
    pub fn on_datagram(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        out: &mut Vec<Delivered>,
        actions: &mut Vec<Action>,
    ) {
        let (header, body) = match crate::packet::parse(datagram) {
            Ok(parsed) => parsed,
            Err(err) => {
                self.counters.malformed += 1;
                tracing::debug!(%from, %err, "feed datagram dropped");
                return;
            }
        };
        self.counters.packets += 1;
        match header.kind {
            PacketKind::Description => {
                match Description::decode(body) {
                    // Only descriptions asked for are kept (the map stays bounded).
                    Ok(description)
                        if description.session == header.session
                            && self.describe_sent.contains_key(&header.session) =>
                    {
                        self.descriptions.insert(description.session, description.classes);
                    }
                    _ => self.counters.malformed += 1,
                }
                self.tick(now, actions);
                return;
            }
            PacketKind::ReRequest | PacketKind::Describe => {
                self.counters.malformed += 1;
                return;
            }
            _ => {}
        }
        // The speculative stream is the [`crate::SpeculativeReceiver`]'s.
        if header.is_speculative() || !self.wants(header.class) {
            return;
        }
        self.ask_description(header.session, from, now, actions);
        let class = header.class;
        let state = self.state(class);
        let follow = state
            .follow
            .get_or_insert_with(|| Follow::new(header.session, from, now));
        if follow.session != header.session {
            if header.kind != PacketKind::EndOfSession {
                if state.others.len() < OTHER_SESSIONS_MAX || state.others.contains_key(&header.session) {
                    state.others.insert(header.session, (from, now));
                }
            } else {
                state.others.remove(&header.session);
            }
            return;
        }
        follow.last_heard = now;
        match header.kind {
            PacketKind::Data => self.on_data(class, &header, body, now, out, actions),
            PacketKind::Heartbeat | PacketKind::EndOfSession => {
                let Ok(last_record_seq) = crate::packet::parse_stream_mark(body) else {
                    self.counters.malformed += 1;
                    return;
                };
                let follow = self.classes[class as usize].follow.as_mut().expect("followed above");
                follow.announced = Some((header.first_seq, last_record_seq));
                if header.kind == PacketKind::EndOfSession {
                    follow.ended = true;
                }
                if follow.next_seq.is_none() {
                    self.place(class, header.first_seq, last_record_seq + 1, now, actions);
                }
                self.drain(class, now, out, actions);
                if self.classes[class as usize].follow.as_ref().is_some_and(|f| f.ended) {
                    self.tick(now, actions);
                }
            }
            PacketKind::NotAvailable => {
                // The ring no longer has the gap: read it from the log now.
                let state = &mut self.classes[class as usize];
                if let Some(gap) = state.follow.as_mut().and_then(|f| f.gap.as_mut()) {
                    gap.attempts = u32::MAX;
                }
                self.tick(now, actions);
            }
            _ => {}
        }
    }

    fn on_data(
        &mut self,
        class: u8,
        header: &PacketHeader,
        body: &[u8],
        now: Instant,
        out: &mut Vec<Delivered>,
        actions: &mut Vec<Action>,
    ) {
        let mut messages = Vec::with_capacity(header.count as usize);
        for message in Messages::new(header, body) {
            match message.map(Owned::from_message) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => {
                    self.counters.malformed += 1;
                    tracing::warn!("feed packet of a class stream with a speculative message dropped");
                    return;
                }
                Err(err) => {
                    // A checksummed packet with a bad message is a publisher
                    // bug; the packet is dropped whole so the stream gaps
                    // and recovery takes over.
                    self.counters.malformed += 1;
                    tracing::warn!(%err, "feed packet with a malformed message dropped");
                    return;
                }
            }
        }
        if messages.len() != header.count as usize || messages.is_empty() {
            self.counters.malformed += 1;
            return;
        }
        if self.classes[class as usize]
            .follow
            .as_ref()
            .is_some_and(|f| f.next_seq.is_none())
        {
            let before = messages[0].fill_before();
            self.place(class, header.first_seq, before, now, actions);
        }
        let buffer_max = self.config.buffer_messages_max;
        let state = &mut self.classes[class as usize];
        let follow = state.follow.as_mut().expect("followed");
        let next = follow.next_seq.expect("placed");
        // In order with nothing held (the common case): the packet's
        // messages are handed out straight, without the reorder buffer.
        let in_order = state.fill.is_none() && follow.buffer.is_empty() && header.first_seq == next;
        let mut fresh = 0;
        for (seq, message) in (header.first_seq..).zip(messages) {
            if seq < next || follow.buffer.contains_key(&seq) {
                continue;
            }
            let buffered = Buffered {
                message,
                recovered: follow.gap.as_ref().is_some_and(|g| (g.first..g.end).contains(&seq)),
                send_time_ns: header.send_time_ns,
            };
            fresh += 1;
            if in_order {
                take(
                    follow,
                    &mut state.last_delivered,
                    &mut self.counters,
                    class,
                    buffered,
                    out,
                );
                follow.next_seq = Some(seq + 1);
            } else {
                follow.buffer.insert(seq, buffered);
            }
        }
        if fresh == 0 {
            self.counters.duplicate_packets += 1;
        }
        if follow.buffer.len() > buffer_max {
            // Too far behind a gap: drop what is held and let the next
            // packet place the stream again, bridged by the log.
            self.counters.overflows += 1;
            follow.buffer.clear();
            follow.next_seq = None;
            follow.gap = None;
            follow.partial = None;
            return;
        }
        self.drain(class, now, out, actions);
    }

    /// Place the stream of `class` at `next_seq`, the first message of
    /// which is at global seq `before` or later: what lies between the last
    /// delivered record and `before` comes from the log.
    fn place(&mut self, class: u8, next_seq: u64, before: u64, now: Instant, actions: &mut Vec<Action>) {
        let state = &mut self.classes[class as usize];
        let follow = state.follow.as_mut().expect("followed");
        follow.next_seq = Some(next_seq);
        follow.partial = None;
        match state.last_delivered {
            None => state.last_delivered = Some(before.saturating_sub(1)),
            Some(last) if last + 1 < before => {
                self.fills += 1;
                state.fill = Some(Fill {
                    id: self.fills,
                    before: state.fill.map_or(before, |f| f.before.max(before)),
                    issued: false,
                });
                self.issue_fills(now, actions);
            }
            Some(_) => {}
        }
    }

    /// Deliver what is in order; open or close the gap.
    fn drain(&mut self, class: u8, now: Instant, out: &mut Vec<Delivered>, actions: &mut Vec<Action>) {
        let state = &mut self.classes[class as usize];
        if state.fill.is_some() {
            return;
        }
        let Some(follow) = state.follow.as_mut() else { return };
        let Some(mut next) = follow.next_seq else { return };
        while let Some(entry) = follow.buffer.first_entry() {
            if *entry.key() > next {
                break;
            }
            let seq = *entry.key();
            let buffered = entry.remove();
            if seq < next {
                continue;
            }
            next += 1;
            take(
                follow,
                &mut state.last_delivered,
                &mut self.counters,
                class,
                buffered,
                out,
            );
        }
        follow.next_seq = Some(next);
        // A gap: before the first message held, or before the announced end.
        let gap_end = match (follow.buffer.keys().next(), follow.announced) {
            (Some(&held), _) => Some(held),
            (None, Some((announced_next, _))) if announced_next > next => Some(announced_next),
            _ => None,
        };
        match gap_end {
            None => follow.gap = None,
            Some(end) => {
                // A gap still inside what was last asked for (answers to it
                // are arriving) is not asked for again until that times out.
                let asked = follow.gap.as_ref().is_some_and(|g| next < g.requested_until);
                if asked {
                    let gap = follow.gap.as_mut().expect("checked above");
                    gap.first = next;
                    gap.end = end;
                } else {
                    self.counters.gaps += 1;
                    let count = (end - next).min(u16::MAX as u64) as u16;
                    follow.gap = Some(Gap {
                        first: next,
                        end,
                        requested_until: next + count as u64,
                        requested_at: now,
                        attempts: 1,
                    });
                    self.counters.rerequests += 1;
                    actions.push(Action::Send {
                        to: follow.source,
                        packet: rerequest(follow.session, class, next, count),
                    });
                }
            }
        }
    }

    /// Hand out the log reads that can go now (their session is described).
    fn issue_fills(&mut self, _now: Instant, actions: &mut Vec<Action>) {
        for (class, state) in self.classes.iter_mut().enumerate() {
            let (Some(fill), Some(follow), Some(last)) =
                (state.fill.as_mut(), state.follow.as_ref(), state.last_delivered)
            else {
                continue;
            };
            if fill.issued {
                continue;
            }
            let Some(classes) = self.descriptions.get(&follow.session) else {
                continue;
            };
            fill.issued = true;
            self.counters.fallback_reads += 1;
            actions.push(Action::ReadLog {
                class: class as u8,
                fill_id: fill.id,
                after: last,
                before: fill.before,
                classes: classes.clone(),
            });
        }
    }

    /// The log read for `class` is done: `records` are its records in the
    /// range asked for, in seq order.
    pub fn filled(
        &mut self,
        class: u8,
        fill_id: u64,
        records: Vec<FeedRecord>,
        now: Instant,
        out: &mut Vec<Delivered>,
        actions: &mut Vec<Action>,
    ) {
        self.state(class);
        let state = &mut self.classes[class as usize];
        if state.fill.is_none_or(|f| f.id != fill_id) {
            return;
        }
        let fill = state.fill.take().expect("checked above");
        for record in records {
            if record.seq >= fill.before || state.last_delivered.is_some_and(|last| record.seq <= last) {
                continue;
            }
            state.last_delivered = Some(record.seq);
            self.counters.records_from_log += 1;
            self.counters.delivered += 1;
            out.push(Delivered {
                class,
                record,
                via: Via::Log,
                send_time_ns: 0,
            });
        }
        let state = &mut self.classes[class as usize];
        state.last_delivered = Some(state.last_delivered.unwrap_or(0).max(fill.before - 1));
        if let Some(follow) = state.follow.as_mut() {
            // What the log gave ends where the held messages (or the
            // announced end) begin: the stream resumes there.
            if let Some(gap) = follow.gap.take() {
                if let Some(next) = follow.next_seq.as_mut() {
                    *next = (*next).max(gap.end);
                }
            }
        }
        self.drain(class, now, out, actions);
    }

    /// A log read could not be done (no log access): its range is skipped
    /// and counted as lost.
    pub fn fill_failed(
        &mut self,
        class: u8,
        fill_id: u64,
        now: Instant,
        out: &mut Vec<Delivered>,
        actions: &mut Vec<Action>,
    ) {
        self.counters.unfilled += 1;
        self.filled(class, fill_id, Vec::new(), now, out, actions);
    }

    /// Time-driven work: re-requests that timed out, fallbacks, session failover.
    pub fn tick(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let (session_timeout, rerequest_timeout, attempts_max) = (
            self.config.session_timeout,
            self.config.rerequest_timeout,
            self.config.rerequest_attempts_max,
        );
        for class in 0..self.classes.len() {
            let state = &mut self.classes[class];
            // Failover: the followed session ended or went silent.
            let switch = state
                .follow
                .as_ref()
                .is_some_and(|f| f.ended || now.saturating_duration_since(f.last_heard) >= session_timeout);
            if switch {
                state
                    .others
                    .retain(|_, (_, heard)| now.saturating_duration_since(*heard) < session_timeout);
                let next = state
                    .others
                    .iter()
                    .max_by_key(|(_, (_, heard))| *heard)
                    .map(|(&s, &(a, h))| (s, a, h));
                let ended = state.follow.as_ref().is_some_and(|f| f.ended);
                match next {
                    Some((session, source, heard)) => {
                        state.others.remove(&session);
                        tracing::info!(class, session, %source, "feed session switched");
                        self.counters.session_switches += 1;
                        state.follow = Some(Follow::new(session, source, heard));
                        state.fill = None;
                    }
                    None if ended => state.follow = None,
                    None => {}
                }
            }
            let state = &mut self.classes[class];
            let Some(follow) = state.follow.as_mut() else { continue };
            if state.fill.is_some() {
                continue;
            }
            let Some(gap) = follow.gap.as_mut() else { continue };
            if gap.attempts != u32::MAX && now.saturating_duration_since(gap.requested_at) < rerequest_timeout {
                continue;
            }
            if gap.attempts < attempts_max {
                let count = (gap.end - gap.first).min(u16::MAX as u64) as u16;
                gap.attempts += 1;
                gap.requested_at = now;
                gap.requested_until = gap.first + count as u64;
                self.counters.rerequests += 1;
                actions.push(Action::Send {
                    to: follow.source,
                    packet: rerequest(follow.session, class as u8, gap.first, count),
                });
                continue;
            }
            // The ring cannot help: the log fills up to the first message held.
            let before = match follow.buffer.values().next() {
                Some(held) => held.message.fill_before(),
                None => match follow.announced {
                    Some((_, last_record_seq)) => last_record_seq + 1,
                    None => continue,
                },
            };
            gap.attempts = u32::MAX;
            gap.requested_at = now;
            self.fills += 1;
            state.fill = Some(Fill {
                id: self.fills,
                before,
                issued: false,
            });
        }
        self.issue_fills(now, actions);
        // Sessions not yet described are asked again.
        let followed: Vec<(u64, SocketAddr)> = self
            .classes
            .iter()
            .filter_map(|state| state.follow.as_ref().map(|f| (f.session, f.source)))
            .collect();
        for (session, source) in followed {
            self.ask_description(session, source, now, actions);
        }
    }

    /// Ask `source` for `session`'s description unless it is known or was
    /// asked for less than a re-request timeout ago.
    fn ask_description(&mut self, session: u64, source: SocketAddr, now: Instant, actions: &mut Vec<Action>) {
        if self.descriptions.contains_key(&session) {
            return;
        }
        let due = self
            .describe_sent
            .get(&session)
            .is_none_or(|&at| now.saturating_duration_since(at) >= self.config.rerequest_timeout);
        if due {
            if self.describe_sent.len() >= SESSIONS_REMEMBERED_MAX {
                // Many sessions seen (restarts, or forged packets): keep
                // only those followed.
                let followed: Vec<u64> = self
                    .classes
                    .iter()
                    .filter_map(|s| s.follow.as_ref().map(|f| f.session))
                    .collect();
                self.describe_sent.retain(|s, _| followed.contains(s));
                self.descriptions.retain(|s, _| followed.contains(s));
            }
            self.describe_sent.insert(session, now);
            actions.push(Action::Send {
                to: source,
                packet: describe_request(),
            });
        }
    }

    /// When [`Self::tick`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut deadline: Option<Instant> = None;
        let mut consider = |at: Instant| deadline = Some(deadline.map_or(at, |d| d.min(at)));
        for state in &self.classes {
            if let Some(follow) = &state.follow {
                consider(follow.last_heard + self.config.session_timeout);
                if let Some(gap) = &follow.gap {
                    if state.fill.is_none() {
                        consider(gap.requested_at + self.config.rerequest_timeout);
                    }
                }
                if !self.descriptions.contains_key(&follow.session) {
                    let sent = self.describe_sent.get(&follow.session).copied();
                    consider(sent.map_or_else(Instant::now, |at| at + self.config.rerequest_timeout));
                }
            }
        }
        deadline
    }

    /// The name of `class` in the session followed for it, once described.
    pub fn class_name(&self, class: u8) -> Option<&str> {
        let (session, _) = self.following(class)?;
        Some(self.descriptions.get(&session)?.get(class)?.name.as_str())
    }

    /// The session followed for `class`, if any, and its source.
    pub fn following(&self, class: u8) -> Option<(u64, SocketAddr)> {
        self.classes
            .get(class as usize)
            .and_then(|s| s.follow.as_ref())
            .map(|f| (f.session, f.source))
    }
}

/// Hand on the next message of `class` in stream order: a record, or the
/// fragment that completes one, unless it was delivered already (from the
/// log, or before a session switch).
fn take(
    follow: &mut Follow,
    last_delivered: &mut Option<u64>,
    counters: &mut ReceiverCounters,
    class: u8,
    buffered: Buffered,
    out: &mut Vec<Delivered>,
) {
    let via = if buffered.recovered { Via::Retransmit } else { Via::Live };
    let delivered = match buffered.message {
        Owned::Record(record) => {
            follow.partial = None;
            Some(record)
        }
        Owned::FragmentStart { record, payload_bytes } => {
            follow.partial = Some((record, payload_bytes));
            None
        }
        Owned::FragmentMore { seq, offset, chunk } => match follow.partial.as_mut() {
            Some((record, total)) if record.seq == seq && record.payload.len() == offset as usize => {
                record.payload.extend_from_slice(&chunk);
                if record.payload.len() >= *total as usize {
                    follow.partial.take().map(|(record, _)| record)
                } else {
                    None
                }
            }
            // The start was delivered from the log, or is older than where
            // this stream was placed.
            _ => None,
        },
    };
    let Some(record) = delivered else { return };
    if last_delivered.is_some_and(|last| record.seq <= last) {
        return;
    }
    *last_delivered = Some(record.seq);
    if via == Via::Retransmit {
        counters.recovered += 1;
    }
    counters.delivered += 1;
    out.push(Delivered {
        class,
        record,
        via,
        send_time_ns: buffered.send_time_ns,
    });
}
