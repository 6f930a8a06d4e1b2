//! The node's side of the UDP feed: a publisher thread that reads applied
//! records from the record store and a retransmit thread, both on the
//! feed address (`feed_listen`).
//!
//! The Raft path pays nothing for the feed: apply already publishes its
//! last seq on a watch (a ring of one, overwritten, never waited on); the
//! publisher thread wakes on it and reads the new records from the record
//! store itself, in seq order, from the page cache. So it can never make
//! apply wait, can never fall behind by dropping a record (it reads what
//! it has not yet published), and a slow publisher only delays the feed.
//! Records are published as the store holds them: sealed at rest in a
//! sealed cluster.
//!
//! A node's session is random at each start; it starts at the store's
//! last seq, so a subscriber gets older records from the log.
//!
//! With `feed_speculative`, the same thread also publishes the speculative
//! stream from the log's tap ([`crate::feed_tap`]): it wakes on either.

use std::io;
use std::net::IpAddr;
use std::net::UdpSocket;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use txlog_feed::FeedRecord;
use txlog_raft::StateMachineReader;

use crate::allowlist::Gate;
use crate::allowlist::ServiceClass;
use crate::config::Feed;
use crate::feed_tap::LogTap;
use crate::Error;
use crate::Result;

/// Records read from the store per publisher step.
const READ_RECORDS_MAX: usize = 4096;
const READ_BYTES_MAX: usize = 8 << 20;

/// Reads applied records in seq order from the record store, and the
/// log's tap for the speculative stream.
struct StoreSource {
    reader: StateMachineReader,
    last_seq: watch::Receiver<u64>,
    runtime: tokio::runtime::Handle,
    next_seq: u64,
    tap: Option<Arc<LogTap>>,
    /// Open sealed batches for the speculative stream.
    keys: Option<Arc<txlog_raft::Keys>>,
    counters: Arc<txlog_feed::Counters>,
}

impl txlog_feed::RecordSource for StoreSource {
    fn next(&mut self, timeout: Duration) -> io::Result<Vec<FeedRecord>> {
        if self.reader.last_seq() < self.next_seq {
            // Log events for the speculative stream end the wait too.
            let tapped = self.tap.as_ref().is_some_and(|tap| !tap.is_empty());
            if !tapped {
                let changed = self.last_seq.changed();
                let tap = self.tap.clone();
                let _ = self.runtime.block_on(async move {
                    let appended = async {
                        match &tap {
                            Some(tap) => tap.notify.notified().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::time::timeout(timeout, async {
                        tokio::select! {
                            _ = changed => {}
                            _ = appended => {}
                        }
                    })
                    .await
                });
            }
            if self.reader.last_seq() < self.next_seq {
                return Ok(Vec::new());
            }
        }
        let records = self
            .reader
            .store()
            .read(self.next_seq, READ_RECORDS_MAX, READ_BYTES_MAX, None)
            .map_err(io::Error::other)?;
        // A snapshot install clears the store and refills it: a read that
        // finds nothing (or a later seq first) waits and reads again.
        let records: Vec<FeedRecord> = records
            .into_iter()
            .take_while({
                let mut expected = self.next_seq;
                move |r| {
                    let ok = r.seq == expected;
                    expected += 1;
                    ok
                }
            })
            .map(|r| FeedRecord {
                seq: r.seq,
                channel_seq: r.channel_seq,
                channel: r.channel,
                txid: r.txid,
                payload: r.payload,
                sealed: r.sealed_at_rest,
            })
            .collect();
        if let Some(last) = records.last() {
            self.next_seq = last.seq + 1;
        }
        Ok(records)
    }

    fn speculative(&mut self) -> Option<txlog_feed::SpeculativeUpdate> {
        let tap = self.tap.as_ref()?;
        // The applied index before the events (see `txlog_feed::speculative`),
        // and the install epoch around it: an install under way or between
        // the two reads resolves nothing as committed this round.
        let before = self.reader.install_epoch();
        let applied_index = self.reader.last_applied().map_or(0, |id| id.index);
        let after = self.reader.install_epoch();
        let epoch = (before == after && before.is_multiple_of(2)).then_some(before);
        let (events, dropped, unreadable) = tap.take_events(self.keys.as_deref());
        txlog_feed::Counters::add(&self.counters.speculative_events_dropped, dropped);
        txlog_feed::Counters::add(&self.counters.speculative_skipped, unreadable);
        Some(txlog_feed::SpeculativeUpdate {
            applied_index,
            epoch,
            events,
        })
    }
}

/// The body of one of the feed's threads: runs until its flag is set.
type FeedThread = Box<dyn FnOnce(&AtomicBool) -> io::Result<()> + Send>;

/// The kernel socket `socket`, or the DPDK device `feed.dpdk` names.
fn backend(feed: &Feed, socket: UdpSocket) -> Result<Box<dyn txlog_feed::Backend>> {
    match &feed.dpdk {
        None => Ok(Box::new(
            txlog_feed::KernelBackend::new(socket, &feed.targets, 1)
                .map_err(|e| Error::Config(format!("feed targets {:?}: {e}", feed.targets)))?,
        )),
        #[cfg(feature = "dpdk")]
        Some(dpdk) => {
            let backend = txlog_feed::DpdkBackend::open(txlog_feed::DpdkConfig {
                eal_args: dpdk.eal_args.clone(),
                device: dpdk.device.clone(),
                source: dpdk.source,
                targets: dpdk.targets.clone(),
                next_hop_mac: dpdk.next_hop_mac,
                multicast_ttl: 1,
                receive: false,
            })
            .map_err(|e| Error::Config(format!("feed DPDK device {:?}: {e}", dpdk.device)))?;
            Ok(Box::new(backend))
        }
        #[cfg(not(feature = "dpdk"))]
        Some(dpdk) => Err(Error::Config(format!(
            "feed DPDK device {:?}: this txlog was built without DPDK",
            dpdk.device
        ))),
    }
}

/// Start the feed: bind `feed.listen`, then run the publisher and the
/// retransmit service on their own threads until `shutdown`. With `tap`
/// (`feed.speculative`), the publisher also runs the speculative stream;
/// `keys` open a sealed cluster's batches for it.
#[allow(clippy::too_many_arguments)]
pub fn start(
    feed: &Feed,
    reader: StateMachineReader,
    tap: Option<Arc<LogTap>>,
    keys: Option<Arc<txlog_raft::Keys>>,
    gate: Arc<Gate>,
    metrics: &crate::metrics::Metrics,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<()> {
    let socket = UdpSocket::bind(feed.listen)
        .map_err(|e| Error::Config(format!("cannot bind the feed address {}: {e}", feed.listen)))?;
    let service_address = socket
        .local_addr()
        .map_err(|e| Error::Internal(format!("feed socket: {e}")))?;
    let session = loop {
        let session: u64 = rand::random();
        if session != 0 {
            break session;
        }
    };
    let publisher =
        txlog_feed::Publisher::new(feed.publisher_config(session)).map_err(|e| Error::Config(e.to_string()))?;
    let shared = publisher.shared();
    metrics.set_feed(shared.counters.clone());
    let counters = shared.counters.clone();
    let clone = |socket: &UdpSocket| {
        socket
            .try_clone()
            .map_err(|e| Error::Internal(format!("feed socket: {e}")))
    };
    let backend = backend(feed, clone(&socket)?)?;
    let backend_name = backend.name();
    let admit = move |ip: IpAddr| gate.allowlist().allows(ServiceClass::Clients, ip);
    let service =
        txlog_feed::RetransmitService::new(socket, shared, txlog_feed::RetransmitLimits::default(), Box::new(admit));
    let last_seq = reader.watch_last_seq();
    let source = StoreSource {
        next_seq: reader.last_seq() + 1,
        reader,
        last_seq,
        runtime: tokio::runtime::Handle::current(),
        tap,
        keys,
        counters,
    };
    tracing::info!(
        listen = %service_address,
        targets = ?feed.targets,
        backend = backend_name,
        session,
        speculative = feed.speculative,
        from_seq = source.next_seq,
        "feed publishing"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |name: &str, run: FeedThread| {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Err(err) = run(&stop) {
                    tracing::error!(%err, "feed thread stopped; the node goes on without it");
                }
            })
            .map_err(|e| Error::Internal(format!("feed thread: {e}")))
    };
    let publishing = spawn(
        "feed-publisher",
        Box::new(move |stop| txlog_feed::publisher::run(publisher, backend, source, stop)),
    )?;
    let serving = spawn("feed-retransmit", Box::new(move |stop| service.run(stop)))?;
    tracker.spawn(async move {
        shutdown.cancelled().await;
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = publishing.join();
            let _ = serving.join();
        })
        .await;
    });
    Ok(())
}
