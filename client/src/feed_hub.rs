//! `FeedHub`: one host's receiver of the feed, handing every record to
//! local readers through a host ring ([`txlog_feed::host_ring`]).
//!
//! A hub is a [`FeedSubscriber`] of every class (with its full recovery:
//! re-requests, log reads, session switches) whose records go into the
//! ring instead of to a caller. Readers ([`HostRingReader`]) open the
//! ring file by path, in this process or any other on the host, and each
//! costs a few memory loads per record instead of a `recvfrom` per packet.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use std::os::fd::AsRawFd;
use txlog_feed::HostRingWriter;

use crate::ClientError;
use crate::FeedEvent;
use crate::FeedSubscriber;

/// Records one `pump` moves at most.
const PUMP_RECORDS_MAX: u64 = 4096;
/// How often the hub tells its readers it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
/// Longest wait for the socket when nothing is ready, so the receiver's
/// timers (re-requests, session timeouts) run on time.
const IDLE_WAIT_MS_MAX: i32 = 1;
/// How long a blocking hub keeps spinning after it last moved a record: a
/// publisher sends a burst's packets some µs apart (a loopback send costs
/// ~7 µs here), and a wake-up per packet was most of the hub's latency.
const HUB_SPIN_AFTER_RECORDS: Duration = Duration::from_micros(100);

/// How the hub waits when nothing has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubWait {
    /// Spin: lowest latency, one core always busy.
    Spin,
    /// Spin for `HUB_SPIN_AFTER_RECORDS` after the last record, then
    /// block in `poll(2)` on the feed socket: the packets of a burst are
    /// caught while spinning, and only a burst's first pays a wake-up
    /// (~25–45 µs on a busy 2-core VM).
    Block,
}

/// Counters of a running hub.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HubCounters {
    pub records: u64,
    /// Records over half the ring, written as omitted entries.
    pub omitted: u64,
}

pub struct FeedHub {
    subscriber: FeedSubscriber,
    ring: HostRingWriter,
    counters: HubCounters,
}

impl FeedHub {
    /// A hub that follows the feed through `subscriber` (its class and
    /// channel selection applies) and writes a fresh ring of `ring_bytes`
    /// at `ring_path`, replacing any older one there.
    pub fn new(subscriber: FeedSubscriber, ring_path: &Path, ring_bytes: usize) -> Result<FeedHub, ClientError> {
        let ring = HostRingWriter::create(ring_path, ring_bytes).map_err(|e| ClientError::Feed(e.to_string()))?;
        Ok(FeedHub {
            subscriber,
            ring,
            counters: HubCounters::default(),
        })
    }

    pub fn subscriber(&self) -> &FeedSubscriber {
        &self.subscriber
    }

    pub fn counters(&self) -> HubCounters {
        self.counters
    }

    /// Move what has arrived into the ring, without waiting, up to
    /// `PUMP_RECORDS_MAX`; returns the records moved. Speculative events
    /// are not carried by the ring.
    pub fn pump(&mut self) -> Result<u64, ClientError> {
        let mut moved = 0;
        // Bounded, so `run` sees its stop flag and heartbeats under any load.
        while moved < PUMP_RECORDS_MAX {
            let Some(event) = self.subscriber.poll_event()? else {
                break;
            };
            if let FeedEvent::Committed(delivered) = event {
                if !self.ring.append(&delivered) {
                    self.counters.omitted += 1;
                }
                self.counters.records += 1;
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Pump until `stop` is set, waiting as `wait` says, heartbeating the
    /// ring; `on_tick` runs about every `HEARTBEAT_EVERY` (status lines).
    /// Run it on a thread of its own outside the runtime the subscriber
    /// was joined in (log reads for gaps run there).
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        wait: HubWait,
        mut on_tick: impl FnMut(&FeedHub),
    ) -> Result<(), ClientError> {
        let mut beat_at = Instant::now();
        let mut moved_at = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let moved = self.pump()?;
            let now = Instant::now();
            if now >= beat_at {
                beat_at = now + HEARTBEAT_EVERY;
                self.ring.heartbeat();
                on_tick(self);
            }
            if moved > 0 {
                moved_at = now;
            } else if wait == HubWait::Block && now.duration_since(moved_at) >= HUB_SPIN_AFTER_RECORDS {
                self.wait_readable();
            } else {
                std::hint::spin_loop();
            }
        }
        Ok(())
    }

    /// Block until the feed socket is readable or the idle bound passes.
    fn wait_readable(&self) {
        let mut fd = libc::pollfd {
            fd: self.subscriber.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call; an error
        // (EINTR) only ends the wait early.
        unsafe {
            libc::poll(&mut fd, 1, IDLE_WAIT_MS_MAX);
        }
    }
}
