//! The publisher: turns records, in global seq order, into class streams of
//! packets, keeps them in the retransmit ring and sends them in priority
//! order; heartbeats idle streams; ends the session on shutdown.
//!
//! It runs on its own thread ([`run`]), reading from a [`RecordSource`];
//! nothing it does waits on the Raft path, and a subscriber (present, slow
//! or absent) cannot slow it: UDP never waits for a reader.

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use crate::backend::Backend;
use crate::class::Classes;
use crate::counters::Counters;
use crate::error::Error;
use crate::packer::Packet;
use crate::packer::StreamPacker;
use crate::packet::speculative_overhead_bytes;
use crate::packet::Message;
use crate::packet::Outcome;
use crate::packet::PacketKind;
use crate::packet::RecordRef;
use crate::packet::Resolution;
use crate::packet::SpeculativeRef;
use crate::packet::IP_UDP_HEADER_BYTES;
use crate::packet::MTU_BYTES_MIN;
use crate::packet::RESOLUTION_BYTES;
use crate::packet::UDP_PAYLOAD_BYTES_MAX;
use crate::record::FeedRecord;
use crate::retransmit_ring::RetransmitRing;
use crate::speculative::LogEvent;
use crate::speculative::SpeculativeUpdate;
use crate::speculative::Tracker;

/// Packets handed to the backend per call.
const SEND_BATCH_PACKETS_MAX: usize = 256;

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// New at every start; subscribers tell a restarted publisher by it.
    pub session: u64,
    /// IP packet size: each UDP payload is at most this less 28 bytes.
    pub mtu_bytes: usize,
    pub classes: Classes,
    /// Bytes of recent packets kept for re-requests, over all classes.
    pub ring_bytes: usize,
    /// A class stream idle this long sends a heartbeat.
    pub heartbeat: Duration,
    /// Live packets per second at most (0: as fast as the backend goes).
    pub egress_packets_per_s: u64,
    /// Packets a class may have waiting to be sent before more are shed.
    pub queue_packets_max: usize,
    /// Also publish a speculative stream ([`crate::speculative`]) in the
    /// stream slot after the last class.
    pub speculative: bool,
}

impl PublisherConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if !(MTU_BYTES_MIN..=UDP_PAYLOAD_BYTES_MAX + IP_UDP_HEADER_BYTES).contains(&self.mtu_bytes) {
            return Err(Error::config(format!(
                "feed MTU {} is outside {MTU_BYTES_MIN}..={}",
                self.mtu_bytes,
                UDP_PAYLOAD_BYTES_MAX + IP_UDP_HEADER_BYTES
            )));
        }
        if self.ring_bytes < self.mtu_bytes * self.streams() {
            return Err(Error::config(format!(
                "feed retransmit ring of {} bytes holds less than one packet per class",
                self.ring_bytes
            )));
        }
        if self.heartbeat.is_zero() || self.heartbeat > Duration::from_secs(60) {
            return Err(Error::config("feed heartbeat must be within (0, 60 s]"));
        }
        if self.queue_packets_max == 0 {
            return Err(Error::config("feed egress queue must hold at least one packet"));
        }
        Ok(())
    }

    pub fn packet_bytes_max(&self) -> usize {
        self.mtu_bytes - IP_UDP_HEADER_BYTES
    }

    /// Streams published: one per class, and the speculative one if asked for.
    pub fn streams(&self) -> usize {
        self.classes.len() + usize::from(self.speculative)
    }
}

/// What the publisher shares with its retransmit service and status.
#[derive(Clone)]
pub struct Shared {
    pub session: u64,
    pub classes: Classes,
    pub speculative: bool,
    pub ring: Arc<Mutex<RetransmitRing>>,
    pub counters: Arc<Counters>,
}

impl Shared {
    /// Streams published: one per class, and the speculative one if any.
    pub fn streams(&self) -> usize {
        self.classes.len() + usize::from(self.speculative)
    }

    /// `class` is the speculative stream's slot.
    pub fn is_speculative_class(&self, class: u8) -> bool {
        self.speculative && class as usize == self.classes.len()
    }
}

pub struct Publisher {
    config: PublisherConfig,
    packers: Vec<StreamPacker>,
    shared: Shared,
    scheduler: crate::scheduler::Scheduler,
    /// When each class last queued a packet (data or heartbeat).
    last_queued: Vec<Instant>,
    /// Packets finished but not yet in the ring and the scheduler.
    finished: Vec<Packet>,
    sending: Vec<Packet>,
    /// The bytes of `sending`, shared with the backend for one call.
    sending_bytes: Vec<Arc<Vec<u8>>>,
    /// Speculative entries published and not yet resolved.
    tracker: Tracker,
    resolutions: Vec<Resolution>,
}

impl Publisher {
    pub fn new(config: PublisherConfig) -> Result<Publisher, Error> {
        config.validate()?;
        let classes = config.classes.len();
        let streams = config.streams();
        let now = Instant::now();
        let mut packers: Vec<StreamPacker> = (0..classes)
            .map(|c| StreamPacker::new(c as u8, config.session, config.packet_bytes_max()))
            .collect();
        let mut weights: Vec<u32> = config.classes.iter().map(|c| c.weight).collect();
        if config.speculative {
            packers.push(StreamPacker::new(classes as u8, config.session, config.packet_bytes_max()).speculative());
            // The speculative stream is served first in every round, with
            // the top class's share: it is worth something only while it
            // is ahead of the commit, and the weighted rounds still give
            // every class its share under overload.
            weights.push(weights[0]);
        }
        Ok(Publisher {
            packers,
            shared: Shared {
                session: config.session,
                classes: config.classes.clone(),
                speculative: config.speculative,
                ring: Arc::new(Mutex::new(RetransmitRing::new(streams, config.ring_bytes))),
                counters: Arc::new(Counters::default()),
            },
            scheduler: {
                let scheduler =
                    crate::scheduler::Scheduler::new(weights, config.queue_packets_max, config.egress_packets_per_s);
                if config.speculative {
                    scheduler.serve_first(classes)
                } else {
                    scheduler
                }
            },
            last_queued: vec![now; streams],
            finished: Vec::new(),
            sending: Vec::new(),
            sending_bytes: Vec::new(),
            tracker: Tracker::default(),
            resolutions: Vec::new(),
            config,
        })
    }

    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    /// Pack `records` (in global seq order) into their class streams and
    /// queue every finished packet; partial packets are finished too, so
    /// nothing waits for more records to come.
    pub fn publish<'a>(&mut self, records: impl IntoIterator<Item = RecordRef<'a>>, now: Instant) {
        let now_ns = wall_clock_ns();
        let mut count = 0u64;
        let mut last = None;
        let finished = &mut self.finished;
        for record in records {
            last = Some(record.seq);
            let Some(class) = self.shared.classes.classify(record.channel) else {
                continue;
            };
            self.packers[class as usize].push(&record, now_ns, &mut |p| finished.push(p));
            count += 1;
        }
        for packer in &mut self.packers[..self.config.classes.len()] {
            packer.flush(now_ns, &mut |p| finished.push(p));
        }
        let counters = &self.shared.counters;
        Counters::add(&counters.records_published, count);
        if let Some(last) = last {
            counters.last_record_seq.store(last, Ordering::Relaxed);
        }
        self.queue_finished(now);
    }

    /// Publish one round of the node's log events on the speculative
    /// stream: the records of appended entries, then the resolutions the
    /// events and the applied index settle ([`crate::speculative`]).
    /// Without a speculative stream this does nothing.
    pub fn publish_speculative(&mut self, update: &SpeculativeUpdate, now: Instant) {
        if !self.config.speculative {
            return;
        }
        let now_ns = wall_clock_ns();
        let slot = self.config.classes.len();
        let packer = &mut self.packers[slot];
        let finished = &mut self.finished;
        let counters = &self.shared.counters;
        let resolutions = &mut self.resolutions;
        for event in &update.events {
            match event {
                LogEvent::Appended(entry) => {
                    let mut published = 0u64;
                    let mut skipped = 0u64;
                    for (position, record) in entry.records.iter().enumerate() {
                        let Some(class) = self.shared.classes.classify(&record.channel) else {
                            continue;
                        };
                        let message = SpeculativeRef {
                            class,
                            term: entry.term,
                            index: entry.index,
                            position: position as u32,
                            channel: &record.channel,
                            txid: &record.txid,
                            payload: &record.payload,
                            sealed: record.sealed,
                        };
                        let bytes = speculative_overhead_bytes(&record.channel, &record.txid) + record.payload.len();
                        if packer.push_message(Message::Speculative(message), bytes, now_ns, &mut |p| finished.push(p))
                        {
                            published += 1;
                        } else {
                            skipped += 1;
                        }
                    }
                    Counters::add(&counters.speculative_records, published);
                    Counters::add(&counters.speculative_skipped, skipped);
                    if published > 0 {
                        self.tracker.appended(entry, resolutions);
                    }
                }
                LogEvent::TruncatedAfter(last) => self.tracker.truncated_after(*last, resolutions),
            }
            pack_resolutions(packer, resolutions, counters, now_ns, finished);
        }
        self.tracker.applied(update.applied_index, update.epoch, resolutions);
        pack_resolutions(packer, resolutions, counters, now_ns, finished);
        packer.flush(now_ns, &mut |p| finished.push(p));
        self.queue_finished(now);
    }

    fn queue_finished(&mut self, now: Instant) {
        if self.finished.is_empty() {
            return;
        }
        {
            let mut ring = self.shared.ring.lock().expect("feed ring lock poisoned");
            for packet in &self.finished {
                ring.push(packet.clone());
            }
        }
        for packet in self.finished.drain(..) {
            self.last_queued[packet.class as usize] = now;
            self.scheduler.push(packet);
        }
        self.shared
            .counters
            .packets_shed
            .store(self.scheduler.shed(), Ordering::Relaxed);
    }

    /// Queue a heartbeat on every class stream idle for the heartbeat interval.
    pub fn heartbeats(&mut self, now: Instant) {
        for class in 0..self.packers.len() {
            if now.saturating_duration_since(self.last_queued[class]) >= self.config.heartbeat {
                let packer = &self.packers[class];
                let bytes = packer.mark(PacketKind::Heartbeat, wall_clock_ns());
                self.scheduler.push(Packet {
                    class: class as u8,
                    first_seq: packer.next_seq(),
                    count: 0,
                    bytes: Arc::new(bytes),
                });
                self.last_queued[class] = now;
            }
        }
    }

    /// Send what pacing allows now, highest class first.
    pub fn send(&mut self, backend: &mut dyn Backend, now: Instant) -> io::Result<()> {
        loop {
            self.sending.clear();
            self.scheduler
                .next_batch(SEND_BATCH_PACKETS_MAX, now, &mut self.sending);
            if self.sending.is_empty() {
                return Ok(());
            }
            self.sending_bytes.clear();
            self.sending_bytes.extend(self.sending.iter().map(|p| p.bytes.clone()));
            let dropped = backend.send_shared(&self.sending_bytes)?;
            let counters = &self.shared.counters;
            let heartbeats = self.sending.iter().filter(|p| p.count == 0).count() as u64;
            Counters::add(&counters.heartbeats_sent, heartbeats);
            Counters::add(&counters.packets_sent, self.sending.len() as u64 - heartbeats);
            Counters::add(
                &counters.bytes_sent,
                self.sending_bytes.iter().map(|b| b.len() as u64).sum(),
            );
            self.sending_bytes.clear();
            Counters::add(&counters.datagrams_dropped, dropped);
        }
    }

    /// How long the run loop may wait for records before it has work of its own.
    pub fn idle_wait(&self, now: Instant) -> Duration {
        let heartbeat_due = self
            .last_queued
            .iter()
            .map(|&at| (at + self.config.heartbeat).saturating_duration_since(now))
            .min()
            .unwrap_or(self.config.heartbeat);
        match self.scheduler.next_send_in() {
            Some(pacing) => pacing.min(heartbeat_due),
            None => heartbeat_due,
        }
    }

    /// Packets waiting to be sent.
    pub fn backlog(&self) -> usize {
        self.scheduler.backlog()
    }

    /// Send what is queued (unpaced, bounded by `deadline`), then an
    /// end-of-session mark on every stream.
    pub fn end(&mut self, backend: &mut dyn Backend, deadline: Instant) -> io::Result<()> {
        while self.scheduler.backlog() > 0 && Instant::now() < deadline {
            self.send(backend, Instant::now())?;
            if self.scheduler.backlog() > 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let marks: Vec<Vec<u8>> = self
            .packers
            .iter()
            .map(|p| p.mark(PacketKind::EndOfSession, wall_clock_ns()))
            .collect();
        let refs: Vec<&[u8]> = marks.iter().map(Vec::as_slice).collect();
        backend.send(&refs)?;
        Ok(())
    }
}

/// Pack (and count) `resolutions` on the speculative stream's `packer`.
fn pack_resolutions(
    packer: &mut StreamPacker,
    resolutions: &mut Vec<Resolution>,
    counters: &Counters,
    now_ns: u64,
    finished: &mut Vec<Packet>,
) {
    for resolution in resolutions.drain(..) {
        let counter = match resolution.outcome {
            Outcome::Committed => &counters.speculative_committed,
            Outcome::RolledBack => &counters.speculative_rolled_back,
            Outcome::Unknown => &counters.speculative_unknown,
        };
        Counters::add(counter, 1);
        let packed = packer.push_message(Message::Resolution(resolution), RESOLUTION_BYTES, now_ns, &mut |p| {
            finished.push(p)
        });
        assert!(packed, "a resolution fits any packet");
    }
}

/// Where the publisher's records come from.
pub trait RecordSource: Send {
    /// Records after the last ones returned, in seq order; waits up to
    /// `timeout` for some to exist, or for log events when the source has
    /// a speculative side (an empty result is not an error).
    fn next(&mut self, timeout: Duration) -> io::Result<Vec<FeedRecord>>;

    /// The log events since the last call, for the speculative stream
    /// (`None`: this source has none).
    fn speculative(&mut self) -> Option<SpeculativeUpdate> {
        None
    }
}

/// Wall clock in nanoseconds since the Unix epoch.
pub fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Run `publisher` until `stop` is set: read, pack, send, heartbeat; then
/// end the session. A send error other than lack of buffer space is
/// returned (the feed stops; the node goes on without it).
pub fn run(
    mut publisher: Publisher,
    mut backend: Box<dyn Backend>,
    mut source: impl RecordSource,
    stop: &AtomicBool,
) -> io::Result<()> {
    /// Longest wait for records, so `stop` is seen promptly.
    const WAIT_MAX: Duration = Duration::from_millis(50);
    tracing::info!(
        session = publisher.config.session,
        backend = backend.name(),
        classes = %publisher.config.classes,
        "feed publisher started"
    );
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = publisher.idle_wait(now).min(WAIT_MAX);
        let records = source.next(wait)?;
        let now = Instant::now();
        if let Some(update) = source.speculative() {
            publisher.publish_speculative(&update, now);
        }
        if !records.is_empty() {
            publisher.publish(records.iter().map(FeedRecord::borrowed), now);
        }
        publisher.heartbeats(now);
        publisher.send(backend.as_mut(), now)?;
    }
    publisher.end(backend.as_mut(), Instant::now() + Duration::from_secs(1))?;
    tracing::info!(session = publisher.config.session, "feed publisher ended its session");
    Ok(())
}
