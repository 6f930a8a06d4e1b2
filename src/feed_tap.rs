//! The speculative feed's tap on the Raft log: what the WAL appends and
//! truncates, queued for the feed publisher's thread.
//!
//! The WAL calls the tap with its write lock held, on openraft's storage
//! path, so the tap only queues: a clone of each entry's frame (a memcpy of
//! the batch, paid only when `feed_speculative` is on) and its log id.
//! Decoding, opening a sealed batch and sealing its records for the feed
//! happen later on the publisher's thread ([`decode`]).
//!
//! The queue is bounded (`TAP_BYTES_MAX`). An append that finds it full
//! is dropped and counted: its records are simply not previewed (they still
//! reach the feed committed). A truncation is never dropped — a missed one
//! would let the stream call a replaced entry committed — and truncations
//! are few (one per change of leader that cut this log).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::entry::RaftEntry;
use openraft::EntryPayload;
use txlog_feed::AppendedEntry;
use txlog_feed::LogEvent;
use txlog_feed::SpeculativeRecord;
use txlog_raft::BatchFrame;
use txlog_raft::Keys;
use txlog_raft::StateMachineReader;
use txlog_raft::TypeConfig;

/// Bytes of appended frames the tap holds for the publisher, at most.
const TAP_BYTES_MAX: usize = 64 << 20;

/// An event as the WAL reported it, not yet decoded.
enum Tapped {
    Appended {
        term: u64,
        index: u64,
        epoch: u64,
        frame: BatchFrame,
    },
    TruncatedAfter(Option<u64>),
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Tapped>,
    bytes: usize,
    dropped: u64,
}

pub struct LogTap {
    queue: Mutex<Queue>,
    /// Wakes the publisher's thread when an event is queued.
    pub notify: tokio::sync::Notify,
    reader: StateMachineReader,
}

impl LogTap {
    /// A tap whose appends are stamped with `reader`'s install epoch.
    pub fn new(reader: StateMachineReader) -> Arc<LogTap> {
        Arc::new(LogTap {
            queue: Mutex::new(Queue::default()),
            notify: tokio::sync::Notify::new(),
            reader,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.queue.lock().expect("tap lock poisoned").events.is_empty()
    }

    /// Everything queued, oldest first, and the appends dropped since the last take.
    fn take(&self) -> (Vec<Tapped>, u64) {
        let mut queue = self.queue.lock().expect("tap lock poisoned");
        queue.bytes = 0;
        let dropped = std::mem::take(&mut queue.dropped);
        (queue.events.drain(..).collect(), dropped)
    }

    /// Take what is queued and decode it ([`decode`]); returns the events
    /// and how many appends were dropped or could not be read.
    pub fn take_events(&self, keys: Option<&Keys>) -> (Vec<LogEvent>, u64, u64) {
        let (tapped, dropped) = self.take();
        let mut unreadable = 0;
        let events = tapped
            .into_iter()
            .map(|event| match event {
                Tapped::TruncatedAfter(last) => LogEvent::TruncatedAfter(last),
                Tapped::Appended {
                    term,
                    index,
                    epoch,
                    frame,
                } => {
                    let records = decode(&frame, term, index, keys).unwrap_or_else(|err| {
                        unreadable += 1;
                        tracing::debug!(term, index, %err, "speculative feed cannot read an entry");
                        Vec::new()
                    });
                    LogEvent::Appended(AppendedEntry {
                        term,
                        index,
                        epoch,
                        records,
                    })
                }
            })
            .collect();
        (events, dropped, unreadable)
    }
}

impl txlog_storage::LogObserver<TypeConfig> for LogTap {
    fn appended(&self, entries: &[txlog_raft::Entry]) {
        let epoch = self.reader.install_epoch();
        let mut queue = self.queue.lock().expect("tap lock poisoned");
        for entry in entries {
            let EntryPayload::Normal(frame) = &entry.payload else {
                continue;
            };
            if queue.bytes + frame.0.len() > TAP_BYTES_MAX {
                queue.dropped += 1;
                continue;
            }
            queue.bytes += frame.0.len();
            let log_id = entry.log_id();
            queue.events.push_back(Tapped::Appended {
                term: log_id.leader_id.term,
                index: log_id.index,
                epoch,
                frame: frame.clone(),
            });
        }
        drop(queue);
        self.notify.notify_one();
    }

    fn truncated_after(&self, last: Option<u64>) {
        self.queue
            .lock()
            .expect("tap lock poisoned")
            .events
            .push_back(Tapped::TruncatedAfter(last));
        self.notify.notify_one();
    }
}

/// The records of the entry (`term`, `index`) carrying `frame`. A sealed
/// batch is opened with `keys` and each payload sealed again for the feed
/// ([`txlog_raft::SpeculativeKey`]): the feed never carries a sealed
/// cluster's plaintext.
fn decode(
    frame: &BatchFrame,
    term: u64,
    index: u64,
    keys: Option<&Keys>,
) -> txlog_raft::Result<Vec<SpeculativeRecord>> {
    let record = |r: &txlog_storage::NewRecordRef<'_>, payload: Vec<u8>, sealed: bool| SpeculativeRecord {
        channel: r.channel.to_string(),
        txid: r.txid.to_vec(),
        payload,
        sealed,
    };
    if !frame.is_sealed() {
        let decoded = frame.decode()?;
        return Ok(decoded
            .body
            .records
            .iter()
            .map(|r| record(r, r.payload.to_vec(), false))
            .collect());
    }
    let keys = keys.ok_or_else(|| txlog_raft::Error::Unauthorized("a sealed batch on a node without keys".into()))?;
    let opened = keys.open(frame)?;
    let key_id = opened.key_ids as u32;
    let key = keys
        .speculative_key(key_id, term)
        .ok_or_else(|| txlog_raft::Error::Unauthorized(format!("data key {key_id} is not in the ring")))?;
    let body = opened.body()?;
    Ok(body
        .records
        .iter()
        .enumerate()
        .map(|(position, r)| {
            let mut sealed = Vec::with_capacity(r.payload.len() + txlog_raft::TAG_BYTES + 5);
            key.seal(index, position as u32, r.payload, &mut sealed);
            record(r, sealed, true)
        })
        .collect())
}
