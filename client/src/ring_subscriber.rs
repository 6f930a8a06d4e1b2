//! `RingSubscriber`: a local subscriber that reads the host ring and never
//! loses a record to it.
//!
//! A [`HostRingReader`] alone hands out what the hub wrote while the reader
//! kept up. Three things put records out of its reach: a reader more than
//! the ring behind is *lapped*; a record over half the ring is *omitted*;
//! and a hub that stops (cleanly or `kill -9`) leaves the records that
//! commit before its successor starts in neither ring. With a [`Client`],
//! this subscriber fills all three from the log, so a reader gets every
//! record of its selection from its first one on, once, and in order per
//! class.
//!
//! **How a fill is exact without knowing the hub's class map.** Ring
//! records carry their class; the subscriber keeps, per class, the last seq
//! it handed out (`last_by_class`), and which class each channel it has
//! seen belongs to. When the ring loses records (lap or new hub), the
//! reader is at the writer's tail, and every record the hub wrote before
//! that point committed before the subscriber's next linearizable read.
//! So the subscriber reads the log from the lowest per-class seq on
//! through `last_seq` of its first read (`through`), skipping records its
//! class already handed out, and afterwards skips ring records at or below
//! `through`: the log gave them. Within a class, seqs only grow, so every
//! class stays in order. A record of a channel it has never seen was never
//! handed out, so the log's copy is taken.
//!
//! Without a client (`None`), a lap or a new hub is reported and reading
//! goes on from the tail, as with a bare reader.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use txlog_feed::host_ring::WriterState;
use txlog_feed::Delivered;
use txlog_feed::HostRingError;
use txlog_feed::HostRingReader;
use txlog_feed::Via;

use crate::feed_record;
use crate::Client;
use crate::ClientError;

/// Records per log read while filling.
const FILL_READ_LIMIT: u32 = 1_000;
/// Log reads of one fill, at most (1,000 records each): a reader asleep
/// for longer than 10 million records is told to start over from the log.
const FILL_READS_MAX: u64 = 10_000;
/// How often an idle subscriber checks whether its hub is still there.
const HUB_CHECK_EVERY: Duration = Duration::from_millis(250);
/// A hub silent this long (it heartbeats every 100 ms) is taken for gone,
/// so a successor's ring is followed even after a `kill -9`.
pub const HUB_SILENT_MS: u64 = 2_000;

/// What [`RingSubscriber::poll`] hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingEvent {
    Record(Delivered),
    /// The reader fell more than the ring behind. With a client, the
    /// records it missed follow from the log.
    Lapped {
        behind_bytes: u64,
        filled_from_log: bool,
    },
    /// The hub was replaced (stopped or silent, and a new one wrote the
    /// file). With a client, the records between the two follow from the
    /// log.
    NewHub {
        filled_from_log: bool,
    },
    /// A record too large for the ring, and no client to read it with.
    Omitted {
        seq: u64,
        bytes: u64,
    },
}

/// Counters beyond the reader's own ([`HostRingReader::counters`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingSubscriberCounters {
    /// Records handed out, from the ring and the log.
    pub records: u64,
    /// Of those, records read from the log (fills and omitted records).
    pub from_log: u64,
    /// Fills started (after a lap or a new hub).
    pub fills: u64,
    pub log_reads: u64,
    pub new_hubs: u64,
    /// Ring records skipped because a fill already handed them out.
    pub skipped: u64,
}

/// A fill in progress: log records with `next_from <= seq <= through`.
#[derive(Debug, Clone, Copy)]
struct Fill {
    next_from: u64,
    through: Option<u64>,
    reads: u64,
}

pub struct RingSubscriber {
    reader: HostRingReader,
    path: PathBuf,
    channel: Option<String>,
    client: Option<Client>,
    /// Per class, the last seq handed out.
    last_by_class: HashMap<u8, u64>,
    /// The class of each channel seen in the ring.
    class_of: HashMap<String, u8>,
    /// Ring records at or below this seq came from the log already.
    skip_through: u64,
    /// Every selected record at or below this seq was handed out (the end
    /// of the last fill).
    complete_through: u64,
    fill: Option<Fill>,
    ready: VecDeque<RingEvent>,
    hub_checked_at: Instant,
    counters: RingSubscriberCounters,
}

impl RingSubscriber {
    /// Open the ring at `path` (records from its tail on); `channel`
    /// narrows what is handed out; `client` fills what the ring lost.
    pub fn open(path: &Path, channel: Option<String>, client: Option<Client>) -> Result<RingSubscriber, ClientError> {
        let reader = HostRingReader::open(path, channel.clone()).map_err(ring_error)?;
        Ok(RingSubscriber {
            reader,
            path: path.to_path_buf(),
            channel,
            client,
            last_by_class: HashMap::new(),
            class_of: HashMap::new(),
            skip_through: 0,
            complete_through: 0,
            fill: None,
            ready: VecDeque::new(),
            hub_checked_at: Instant::now(),
            counters: RingSubscriberCounters::default(),
        })
    }

    pub fn reader(&self) -> &HostRingReader {
        &self.reader
    }

    pub fn counters(&self) -> RingSubscriberCounters {
        self.counters
    }

    /// True while records lost to the ring are being read from the log.
    pub fn filling(&self) -> bool {
        self.fill.is_some()
    }

    /// The next event if one is ready, without waiting for the ring; a
    /// fill or an omitted record waits for its log read.
    pub async fn poll(&mut self) -> Result<Option<RingEvent>, ClientError> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            if self.fill.is_some() {
                self.fill_step().await?;
                continue;
            }
            match self.reader.poll() {
                Ok(Some(delivered)) => {
                    if let Some(event) = self.ring_record(delivered) {
                        return Ok(Some(event));
                    }
                }
                Ok(None) => {
                    if self.hub_checked_at.elapsed() >= HUB_CHECK_EVERY {
                        self.hub_checked_at = Instant::now();
                        if self.follow_new_hub()? {
                            continue;
                        }
                    }
                    return Ok(None);
                }
                Err(HostRingError::Lapped { behind_bytes, .. }) => {
                    let filled_from_log = self.start_fill();
                    return Ok(Some(RingEvent::Lapped {
                        behind_bytes,
                        filled_from_log,
                    }));
                }
                Err(HostRingError::Omitted { seq, bytes }) => match self.read_one(seq).await? {
                    Some(event) => return Ok(Some(event)),
                    None if self.client.is_none() => return Ok(Some(RingEvent::Omitted { seq, bytes })),
                    None => {}
                },
                Err(err) => return Err(ring_error(err)),
            }
        }
    }

    /// A record from the ring: handed out unless a fill gave it already.
    fn ring_record(&mut self, delivered: Delivered) -> Option<RingEvent> {
        let record = &delivered.record;
        if record.seq <= self.skip_through {
            self.counters.skipped += 1;
            return None;
        }
        if !self.class_of.contains_key(&record.channel) {
            self.class_of.insert(record.channel.clone(), delivered.class);
        }
        Some(self.hand_out(delivered, true))
    }

    /// Count a record handed out; `class_known`: its class is the one its
    /// channel was seen in, so it is the class's last seq now. (A record of
    /// a channel never seen in the ring carries class 0 and leaves the
    /// per-class seqs alone: counting it against class 0 could make a
    /// later fill skip class 0's lost records.)
    fn hand_out(&mut self, delivered: Delivered, class_known: bool) -> RingEvent {
        if class_known {
            let last = self.last_by_class.entry(delivered.class).or_insert(0);
            *last = (*last).max(delivered.record.seq);
        }
        self.counters.records += 1;
        if delivered.via == Via::Log {
            self.counters.from_log += 1;
        }
        RingEvent::Record(delivered)
    }

    /// Begin filling from the log what the ring lost; false without a
    /// client, or before any record was handed out (a reader promises
    /// records from its first one on).
    fn start_fill(&mut self) -> bool {
        if self.client.is_none() {
            return false;
        }
        // Every selected record up to `lowest` is handed out.
        let lowest = match self.last_by_class.values().min() {
            Some(&last) => last.max(self.complete_through),
            None if self.complete_through > 0 => self.complete_through,
            None => return false,
        };
        self.counters.fills += 1;
        // A fill under way continues from where it is: its start is lower.
        let next_from = self.fill.map_or(lowest + 1, |f| f.next_from.min(lowest + 1));
        self.fill = Some(Fill {
            next_from,
            through: None,
            reads: 0,
        });
        true
    }

    /// One log read of the fill; the fill ends once it passed `through`.
    async fn fill_step(&mut self) -> Result<(), ClientError> {
        let Some(mut fill) = self.fill else {
            return Ok(());
        };
        let client = self.client.as_ref().expect("fills run only with a client");
        if fill.reads >= FILL_READS_MAX {
            self.fill = None;
            return Err(ClientError::Feed(format!(
                "the host ring reader fell over {} records behind; read from the log with `--from {}`",
                FILL_READS_MAX * FILL_READ_LIMIT as u64,
                fill.next_from
            )));
        }
        let response = client
            .read(fill.next_from, FILL_READ_LIMIT, self.channel.as_deref(), false)
            .await?;
        fill.reads += 1;
        self.counters.log_reads += 1;
        // Everything the hub wrote before the reader's position committed
        // before this (linearizable) read: `last_seq` covers it.
        let through = *fill.through.get_or_insert(response.last_seq);
        self.skip_through = self.skip_through.max(through);
        let read = response.records.len();
        for record in response.records {
            if record.seq > through {
                break;
            }
            let class = self.class_of.get(&record.channel).copied();
            let seen = class
                .and_then(|c| self.last_by_class.get(&c))
                .is_some_and(|&last| record.seq <= last);
            if seen {
                continue;
            }
            let delivered = Delivered {
                class: class.unwrap_or(0),
                record: feed_record(record),
                via: Via::Log,
                send_time_ns: 0,
            };
            let event = self.hand_out(delivered, class.is_some());
            self.ready.push_back(event);
        }
        fill.next_from = response.next_seq.max(fill.next_from);
        self.fill = if read == 0 || fill.next_from > through {
            // Every selected record up to `through` is handed out now.
            self.complete_through = self.complete_through.max(through);
            None
        } else {
            Some(fill)
        };
        Ok(())
    }

    /// Record `seq` from the log, if a client is there and it is selected.
    async fn read_one(&mut self, seq: u64) -> Result<Option<RingEvent>, ClientError> {
        let Some(client) = &self.client else {
            return Ok(None);
        };
        if seq <= self.skip_through {
            self.counters.skipped += 1;
            return Ok(None);
        }
        let response = client.read(seq, 1, None, false).await?;
        self.counters.log_reads += 1;
        let record = response
            .records
            .into_iter()
            .find(|r| r.seq == seq)
            .ok_or_else(|| ClientError::Feed(format!("the log has no record {seq}, which the feed published")))?;
        // The ring's entry has no channel or class: the filter applies here,
        // and the record counts against the class its channel was seen in.
        if self.channel.as_ref().is_some_and(|c| *c != record.channel) {
            return Ok(None);
        }
        let class = self.class_of.get(&record.channel).copied();
        let delivered = Delivered {
            class: class.unwrap_or(0),
            record: feed_record(record),
            via: Via::Log,
            send_time_ns: 0,
        };
        Ok(Some(self.hand_out(delivered, class.is_some())))
    }

    /// If the hub is gone and this ring is read to its end, open the
    /// successor's ring when there is one: true if it did.
    fn follow_new_hub(&mut self) -> Result<bool, ClientError> {
        let gone = match self.reader.writer_state() {
            WriterState::Closed => true,
            WriterState::Alive { heartbeat_age_ms } => heartbeat_age_ms > HUB_SILENT_MS,
        };
        if !gone || self.reader.behind_bytes() > 0 {
            return Ok(false);
        }
        let Ok(next) = HostRingReader::open(&self.path, self.channel.clone()) else {
            return Ok(false);
        };
        if next.writer_id() == self.reader.writer_id() {
            return Ok(false);
        }
        self.reader = next;
        self.counters.new_hubs += 1;
        let filled_from_log = self.start_fill();
        self.ready.push_back(RingEvent::NewHub { filled_from_log });
        Ok(true)
    }
}

fn ring_error(err: HostRingError) -> ClientError {
    ClientError::Feed(err.to_string())
}
