//! A publisher's counters: shared by its thread, its retransmit service,
//! the node's metrics and `txlog feed status`.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Counters {
            /// Every counter by name, for status and metrics.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Records handed to the feed (each once, whatever its fragments).
    records_published,
    /// Global seq of the last record published.
    last_record_seq,
    /// Data packets sent live (per packet, not per target).
    packets_sent,
    bytes_sent,
    heartbeats_sent,
    /// Packets not sent live because their class's egress queue was full
    /// (still in the retransmit ring).
    packets_shed,
    /// Datagrams the backend dropped for lack of buffer space.
    datagrams_dropped,
    rerequests,
    /// Re-requests refused by the per-subscriber rate limit or allowlist.
    rerequests_refused,
    /// Re-requests for packets the ring no longer holds.
    rerequests_gone,
    packets_retransmitted,
    describe_requests,
    /// Datagrams on the retransmit port that were not valid requests.
    malformed_received,
    /// Records published on the speculative stream.
    speculative_records,
    /// Appended records left off the speculative stream: larger than a
    /// packet, or in an entry the publisher could not read (they still
    /// arrive on their committed stream).
    speculative_skipped,
    /// Log events the node could not hand to the speculative stream (its
    /// queue was full); their records still arrive committed.
    speculative_events_dropped,
    speculative_committed,
    speculative_rolled_back,
    speculative_unknown,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
