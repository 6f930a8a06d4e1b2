//! txlog's feed: committed records as sequenced UDP streams, MoldUDP64
//! style, one stream per priority class, with gap recovery.
//!
//! **What it guarantees.** A subscriber that follows a feed gets every
//! record of its classes exactly once, in global seq order per class:
//! packets carry dense stream seqs, so a loss shows as a gap; the gap is
//! re-requested from the publisher's retransmit ring, and what the ring no
//! longer holds is read from the log itself ([`receiver`]). The feed is a
//! copy of the log, never the source of truth: every record in it is
//! committed and applied on the publishing node.
//!
//! **What it never does.** It never waits on the Raft path: the publisher
//! reads applied records on its own thread, UDP never blocks on a reader,
//! and egress sheds (counted, recoverable) rather than queue without bound.
//! It never publishes the cluster's own channels (`_keys`, `_audit`,
//! `_access`), and it never opens sealed payloads: a record sealed at rest
//! is published sealed, as the record file holds it.
//!
//! **Layout.** [`packet`] is the wire format (versioned, checksummed);
//! [`packer`] fills packets for one class stream; [`class`] maps channels
//! to classes; [`scheduler`] orders egress across classes; the
//! [`retransmit_ring`] and [`retransmit`] service answer re-requests;
//! [`publisher`] ties them to a [`Backend`] ([`kernel`]: UDP with
//! `sendmmsg`); [`receiver`] is the subscriber's logic without I/O (the
//! client library's `FeedSubscriber` drives it); the [`host_ring`] hands
//! one host's received records to any number of local readers through
//! shared memory, so a host pays for each packet once, not per reader.
//!
//! **Speculative stream (opt-in).** Besides its class streams a publisher
//! may run one more stream of records as its node's log appends them,
//! before commit, each entry followed by a commit, rollback or "unknown"
//! resolution ([`speculative`], [`speculative_receiver`]). It is a preview:
//! the class streams stay the truth and carry every committed record.

pub mod backend;
pub mod class;
pub mod counters;
pub mod describe;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod error;
pub mod frame;
pub mod host_ring;
pub mod kernel;
pub mod packer;
pub mod packet;
pub mod publisher;
pub mod receiver;
pub mod record;
pub mod retransmit;
pub mod retransmit_ring;
pub mod scheduler;
pub mod speculative;
pub mod speculative_receiver;
#[cfg(feature = "dpdk")]
pub mod veth;

pub use backend::Backend;
pub use class::Classes;
pub use class::PriorityClass;
pub use counters::Counters;
pub use describe::Description;
#[cfg(feature = "dpdk")]
pub use dpdk::DpdkBackend;
#[cfg(feature = "dpdk")]
pub use dpdk::DpdkConfig;
pub use error::Error;
pub use host_ring::HostRingCounters;
pub use host_ring::HostRingError;
pub use host_ring::HostRingReader;
pub use host_ring::HostRingWriter;
pub use kernel::KernelBackend;
pub use publisher::Publisher;
pub use publisher::PublisherConfig;
pub use publisher::RecordSource;
pub use receiver::Action;
pub use receiver::Delivered;
pub use receiver::Receiver;
pub use receiver::ReceiverConfig;
pub use receiver::ReceiverCounters;
pub use receiver::Via;
pub use record::FeedRecord;
pub use retransmit::RetransmitLimits;
pub use retransmit::RetransmitService;
pub use speculative::AppendedEntry;
pub use speculative::LogEvent;
pub use speculative::SpeculativeRecord;
pub use speculative::SpeculativeUpdate;
pub use speculative_receiver::SpeculativeConfig;
pub use speculative_receiver::SpeculativeCounters;
pub use speculative_receiver::SpeculativeDelivered;
pub use speculative_receiver::SpeculativeEvent;
pub use speculative_receiver::SpeculativeReceiver;

/// EAL arguments when none are configured: no hugepages, no PCI scan, no
/// shared config, no telemetry socket, 256 MiB of ordinary memory. The
/// lcore mapping (`--lcores 0@(<allowed CPUs>)`) is added at start so the
/// data-plane thread may run on any CPU the process may.
pub const EAL_ARGS_DEFAULT: &[&str] = &[
    "--no-huge",
    "--no-pci",
    "--no-shconf",
    "--no-telemetry",
    "-m",
    "256",
    "--log-level=*:warning",
];
/// Default IP packet size of feed packets: Ethernet's.
pub const MTU_BYTES_DEFAULT: usize = 1500;
/// Default bytes of recent packets kept for re-requests.
pub const RING_BYTES_DEFAULT: usize = 64 << 20;
/// Default heartbeat of an idle stream (MoldUDP64's: one a second).
pub const HEARTBEAT_MS_DEFAULT: u64 = 1000;
/// Default packets a class may have queued for egress.
pub const QUEUE_PACKETS_MAX_DEFAULT: usize = 16_384;
