//! `FeedSubscriber`: follows a txlog UDP feed and hands out its records
//! exactly once, in order per priority class.
//!
//! It drives the feed's [`Receiver`] (all of the recovery logic, without
//! I/O) with a UDP socket and, for what the publisher's ring no longer
//! holds, reads from the log through a [`Client`]. Without a client, such
//! gaps are skipped and counted in `unfilled`.
//!
//! Selection: `classes` (by name) and `channel` narrow what is handed out;
//! the receiver still follows every class it hears, so switching classes
//! later needs no rejoin. Payloads of a sealed cluster arrive sealed from
//! the feed (`record.sealed`) and opened from the log.
//!
//! With `speculative` set it also follows a publisher's speculative stream
//! ([`txlog_feed::speculative_receiver`]): [`FeedSubscriber::next_event`]
//! then hands out its records and resolutions between the committed
//! records, as they arrive.
//!
//! Two ways to drive it. [`FeedSubscriber::next_event`] waits in the tokio
//! runtime: simple, and one wake-up per burst (~20–30 µs on a busy VM).
//! [`FeedSubscriber::poll_event`] never waits: a thread of its own calls it
//! in a loop (busy polling, as latency-bound feed handlers do), so a
//! datagram is handled as soon as the kernel has queued it. Several
//! subscribers can share one polling thread: each exposes its socket
//! ([`AsRawFd`]) for an `epoll` set, so only the ready ones are polled.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::fd::RawFd;

use tokio::io::unix::AsyncFd;
use txlog_feed::Action;
use txlog_feed::Classes;
use txlog_feed::Delivered;
use txlog_feed::FeedRecord;
use txlog_feed::Receiver;
use txlog_feed::ReceiverConfig;
use txlog_feed::ReceiverCounters;
use txlog_feed::SpeculativeConfig;
use txlog_feed::SpeculativeCounters;
use txlog_feed::SpeculativeDelivered;
use txlog_feed::SpeculativeEvent;
use txlog_feed::SpeculativeReceiver;

use crate::Client;
use crate::ClientError;

/// Records per log read while filling a gap.
const FILL_READ_LIMIT: u32 = 10_000;
/// Log reads one fill may take (10,000 records each).
const FILL_READS_MAX: usize = 10_000;
/// Datagrams taken from the socket in one pass before the receiver's
/// timers and actions run again.
const RECEIVE_BURST_MAX: usize = 256;

#[derive(Clone)]
pub struct FeedSubscriberOptions {
    /// Local address to receive on: the port the feed is sent to.
    pub listen: SocketAddr,
    /// A multicast group to join, with the interface address to join it on.
    pub group: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Deliver only these classes (by name); `None`: all.
    pub classes: Option<Vec<String>>,
    /// Deliver only this channel.
    pub channel: Option<String>,
    pub receiver: ReceiverConfig,
    /// Follow the speculative stream too (records before commit, then their
    /// outcome); `None`: committed records only.
    pub speculative: Option<SpeculativeConfig>,
    /// Fault injection for tests and benches: a received datagram (by its
    /// index, from 0) for which this returns true is dropped as if lost.
    pub drop_datagram: Option<std::sync::Arc<dyn Fn(u64) -> bool + Send + Sync>>,
}

impl FeedSubscriberOptions {
    /// Every class and channel from the first record after joining, with
    /// the receiver's defaults: the options of a plain subscriber.
    pub fn new(listen: SocketAddr, group: Option<(Ipv4Addr, Ipv4Addr)>) -> FeedSubscriberOptions {
        FeedSubscriberOptions {
            listen,
            group,
            classes: None,
            channel: None,
            receiver: ReceiverConfig::default(),
            speculative: None,
            drop_datagram: None,
        }
    }
}

/// A record read from the log, as the feed hands it out (opened: the log
/// serves payloads in the clear).
pub fn feed_record(record: txlog_proto::CommittedRecord) -> FeedRecord {
    FeedRecord {
        seq: record.seq,
        channel_seq: record.channel_seq,
        channel: record.channel,
        txid: record.txid.to_vec(),
        payload: record.payload.to_vec(),
        sealed: false,
    }
}

impl std::fmt::Debug for FeedSubscriberOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedSubscriberOptions")
            .field("listen", &self.listen)
            .field("group", &self.group)
            .field("classes", &self.classes)
            .field("channel", &self.channel)
            .field("receiver", &self.receiver)
            .field("speculative", &self.speculative)
            .field("drop_datagram", &self.drop_datagram.is_some())
            .finish()
    }
}

/// What a subscriber hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// A committed record, exactly once and in order per class.
    Committed(Delivered),
    /// A speculative record or an entry's resolution (opted in).
    Speculative(SpeculativeEvent),
}

/// Follows a feed; see the module docs.
pub struct FeedSubscriber {
    socket: FeedSocket,
    /// The runtime `join` ran in: `poll_event` runs log reads there.
    runtime: Option<tokio::runtime::Handle>,
    receiver: Receiver,
    speculative: Option<SpeculativeReceiver>,
    client: Option<Client>,
    options: FeedSubscriberOptions,
    ready: VecDeque<FeedEvent>,
    buffer: Vec<u8>,
    /// Datagrams received so far (the index `drop_datagram` is given).
    received: u64,
    /// Datagrams `drop_datagram` dropped.
    dropped: u64,
}

impl FeedSubscriber {
    /// Bind `options.listen` (shared with other subscribers on the same
    /// port), join the group if any. `client` reads the log for history and
    /// for gaps the ring cannot fill.
    pub fn join(options: FeedSubscriberOptions, client: Option<Client>) -> Result<FeedSubscriber, ClientError> {
        let io = |what: &str, err: std::io::Error| ClientError::Feed(format!("{what}: {err}"));
        let socket =
            reuse_bind(options.listen).map_err(|e| io(&format!("cannot bind feed address {}", options.listen), e))?;
        if let Some((group, interface)) = options.group {
            socket
                .join_multicast_v4(&group, &interface)
                .map_err(|e| io(&format!("cannot join multicast group {group} on {interface}"), e))?;
        }
        socket.set_nonblocking(true).map_err(|e| io("feed socket", e))?;
        txlog_feed::kernel::set_buffer(&socket, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
        Ok(FeedSubscriber {
            socket: FeedSocket {
                plain: Some(socket),
                registered: None,
            },
            runtime: tokio::runtime::Handle::try_current().ok(),
            receiver: Receiver::new(options.receiver.clone()),
            speculative: options.speculative.clone().map(SpeculativeReceiver::new),
            client,
            options,
            ready: VecDeque::new(),
            buffer: vec![0; txlog_feed::packet::UDP_PAYLOAD_BYTES_MAX],
            received: 0,
            dropped: 0,
        })
    }

    /// The address the subscriber receives on.
    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        self.socket
            .get()
            .local_addr()
            .map_err(|e| ClientError::Feed(format!("feed socket: {e}")))
    }

    pub fn counters(&self) -> &ReceiverCounters {
        self.receiver.counters()
    }

    /// The speculative stream's counters, when it is followed.
    pub fn speculative_counters(&self) -> Option<&SpeculativeCounters> {
        self.speculative.as_ref().map(SpeculativeReceiver::counters)
    }

    /// The next committed record, waiting up to `timeout` for one (`None`:
    /// none came). Speculative events, if any, are passed over.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Delivered>, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Some(FeedEvent::Committed(delivered)) => return Ok(Some(delivered)),
                Some(FeedEvent::Speculative(_)) => continue,
                None => return Ok(None),
            }
        }
    }

    /// The next committed record or speculative event, waiting up to
    /// `timeout` for one (`None`: none came).
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Option<FeedEvent>, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wake = self
                .next_deadline()
                .map(tokio::time::Instant::from_std)
                .map_or(deadline, |d| d.min(deadline));
            let mut out = Vec::new();
            let mut speculative = Vec::new();
            let mut actions = Vec::new();
            let socket = self
                .socket
                .registered()
                .map_err(|e| ClientError::Feed(format!("feed socket: {e}")))?;
            tokio::select! {
                readable = socket.readable() => {
                    // Readiness is cleared before the socket is drained, so a
                    // datagram queued after the drain sets it again.
                    readable.map_err(|e| ClientError::Feed(format!("feed receive: {e}")))?.clear_ready();
                    self.receive_burst(&mut out, &mut speculative, &mut actions)?;
                }
                _ = tokio::time::sleep_until(wake) => self.tick(Instant::now(), &mut speculative, &mut actions),
            }
            self.ready.extend(speculative.into_iter().map(FeedEvent::Speculative));
            self.act(actions, &mut out).await?;
            self.accept(out);
        }
    }

    /// The next committed record or speculative event if one is ready now,
    /// without waiting (`None`: nothing yet). For a thread that polls in a
    /// loop; it costs one `recvfrom` when nothing has arrived. A gap the
    /// publisher's ring cannot fill is read from the log on the runtime
    /// `join` ran in, this call blocking until it is read: call it from a
    /// thread outside that runtime (which must be a multi-thread one).
    pub fn poll_event(&mut self) -> Result<Option<FeedEvent>, ClientError> {
        if let Some(event) = self.ready.pop_front() {
            return Ok(Some(event));
        }
        let mut out = Vec::new();
        let mut speculative = Vec::new();
        let mut actions = Vec::new();
        self.receive_burst(&mut out, &mut speculative, &mut actions)?;
        let now = Instant::now();
        if self.next_deadline().is_some_and(|deadline| deadline <= now) {
            self.tick(now, &mut speculative, &mut actions);
        }
        self.ready.extend(speculative.into_iter().map(FeedEvent::Speculative));
        let can_read = self.client.is_some() && self.runtime.is_some();
        while let Some(read) = self.act_now(&mut actions, &mut out, can_read) {
            let (Some(client), Some(runtime)) = (&self.client, &self.runtime) else {
                unreachable!("reads are asked for only with a client and a runtime")
            };
            // A scoped thread, so this works whatever thread calls it.
            let records = std::thread::scope(|scope| {
                scope
                    .spawn(|| runtime.block_on(read.run(client)))
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })?;
            self.receiver.filled(
                read.class,
                read.fill_id,
                records,
                Instant::now(),
                &mut out,
                &mut actions,
            );
        }
        self.accept(out);
        Ok(self.ready.pop_front())
    }

    /// The earliest moment a receiver's timer is due.
    fn next_deadline(&self) -> Option<Instant> {
        self.receiver
            .next_deadline()
            .into_iter()
            .chain(self.speculative.as_ref().and_then(SpeculativeReceiver::next_deadline))
            .min()
    }

    /// Take what the socket holds, up to a burst, without waiting.
    fn receive_burst(
        &mut self,
        out: &mut Vec<Delivered>,
        speculative: &mut Vec<SpeculativeEvent>,
        actions: &mut Vec<Action>,
    ) -> Result<(), ClientError> {
        for _ in 0..RECEIVE_BURST_MAX {
            match self.socket.get().recv_from(&mut self.buffer) {
                Ok((len, from)) => self.on_datagram(len, from, out, speculative, actions),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(ClientError::Feed(format!("feed receive: {err}"))),
            }
        }
        Ok(())
    }

    fn tick(&mut self, now: Instant, speculative: &mut Vec<SpeculativeEvent>, actions: &mut Vec<Action>) {
        self.receiver.tick(now, actions);
        if let Some(speculative_receiver) = self.speculative.as_mut() {
            let (options, receiver) = (&self.options, &self.receiver);
            let keep = |r: &SpeculativeDelivered| selected(options, receiver, &r.channel, r.class);
            speculative_receiver.tick(now, &keep, speculative, actions);
        }
    }

    fn on_datagram(
        &mut self,
        len: usize,
        from: SocketAddr,
        out: &mut Vec<Delivered>,
        speculative: &mut Vec<SpeculativeEvent>,
        actions: &mut Vec<Action>,
    ) {
        let index = self.received;
        self.received += 1;
        if self.options.drop_datagram.as_ref().is_some_and(|drop| drop(index)) {
            self.dropped += 1;
            return;
        }
        let now = Instant::now();
        let datagram = &self.buffer[..len];
        self.receiver.on_datagram(datagram, from, now, out, actions);
        if let Some(speculative_receiver) = self.speculative.as_mut() {
            let (options, receiver) = (&self.options, &self.receiver);
            let keep = |r: &SpeculativeDelivered| selected(options, receiver, &r.channel, r.class);
            speculative_receiver.on_datagram(datagram, from, now, &keep, speculative, actions);
        }
    }

    /// Datagrams dropped by `drop_datagram`.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The publisher followed for `class` and its feed address, if any.
    pub fn following(&self, class: u8) -> Option<(u64, SocketAddr)> {
        self.receiver.following(class)
    }

    fn accept(&mut self, out: Vec<Delivered>) {
        for delivered in out {
            if selected(
                &self.options,
                &self.receiver,
                &delivered.record.channel,
                delivered.class,
            ) {
                self.ready.push_back(FeedEvent::Committed(delivered));
            }
        }
    }

    async fn act(&mut self, mut actions: Vec<Action>, out: &mut Vec<Delivered>) -> Result<(), ClientError> {
        while let Some(read) = self.act_now(&mut actions, out, self.client.is_some()) {
            let client = self.client.as_ref().expect("reads are asked for only with a client");
            let records = read.run(client).await?;
            self.receiver
                .filled(read.class, read.fill_id, records, Instant::now(), out, &mut actions);
        }
        Ok(())
    }

    /// Do the actions that need no waiting (sends; fills, when the log
    /// cannot be read: skipped and counted) until one is a log read that
    /// can be done (`can_read`): that one is returned, the rest stay.
    fn act_now(&mut self, actions: &mut Vec<Action>, out: &mut Vec<Delivered>, can_read: bool) -> Option<LogRead> {
        while let Some(action) = actions.pop() {
            match action {
                Action::Send { to, packet } => self.send(&packet, to),
                Action::ReadLog {
                    class,
                    fill_id,
                    after,
                    before,
                    classes,
                } => {
                    if can_read {
                        return Some(LogRead {
                            class,
                            fill_id,
                            after,
                            before,
                            classes,
                        });
                    }
                    self.receiver.fill_failed(class, fill_id, Instant::now(), out, actions);
                }
            }
        }
        None
    }

    /// Send a request to a publisher. A UDP send on a nonblocking socket
    /// fails only when the socket buffer is full; the receiver's timers
    /// ask again.
    fn send(&self, packet: &[u8], to: SocketAddr) {
        if let Err(err) = self.socket.get().send_to(packet, to) {
            tracing::debug!(%to, %err, "feed request not sent");
        }
    }
}

impl AsRawFd for FeedSubscriber {
    /// The feed socket, for an `epoll` set over several subscribers polled
    /// by one thread; reading it other than through the subscriber loses
    /// datagrams.
    fn as_raw_fd(&self) -> RawFd {
        self.socket.get().as_raw_fd()
    }
}

/// The subscriber's socket: plain until the first async wait registers it
/// with the runtime's reactor, so a subscriber only polled never needs one.
struct FeedSocket {
    plain: Option<UdpSocket>,
    registered: Option<AsyncFd<UdpSocket>>,
}

impl FeedSocket {
    fn get(&self) -> &UdpSocket {
        match (&self.registered, &self.plain) {
            (Some(registered), _) => registered.get_ref(),
            (None, Some(plain)) => plain,
            (None, None) => unreachable!("a feed socket is plain or registered"),
        }
    }

    fn registered(&mut self) -> std::io::Result<&AsyncFd<UdpSocket>> {
        if let Some(plain) = self.plain.take() {
            // SAFETY: the UdpSocket owns its fd, which stays open and the
            // same until the AsyncFd (its only owner from here) is dropped.
            match unsafe { AsyncFd::register_with_interest(plain, tokio::io::Interest::READABLE) } {
                Ok(registered) => self.registered = Some(registered),
                Err(err) => {
                    let (plain, err) = err.into_parts();
                    self.plain = Some(plain);
                    return Err(err);
                }
            }
        }
        Ok(self.registered.as_ref().expect("registered above"))
    }
}

/// A record of `channel` in `class` is in the selection (`channel`,
/// `classes` by name, as the followed publisher names them).
fn selected(options: &FeedSubscriberOptions, receiver: &Receiver, channel: &str, class: u8) -> bool {
    if options.channel.as_ref().is_some_and(|c| c != channel) {
        return false;
    }
    match &options.classes {
        None => true,
        Some(names) => receiver
            .class_name(class)
            .is_some_and(|name| names.iter().any(|n| n == name)),
    }
}

/// A log read the receiver asked for ([`Action::ReadLog`]).
struct LogRead {
    class: u8,
    fill_id: u64,
    after: u64,
    before: u64,
    classes: Classes,
}

impl LogRead {
    /// The records of the read's class, from the log.
    async fn run(&self, client: &Client) -> Result<Vec<FeedRecord>, ClientError> {
        read_range(client, self.after, self.before, |r| {
            self.classes.classify(&r.channel) == Some(self.class)
        })
        .await
    }
}

/// Every record with `after < seq < before` that `keep` accepts, from the log.
async fn read_range(
    client: &Client,
    after: u64,
    before: u64,
    keep: impl Fn(&FeedRecord) -> bool,
) -> Result<Vec<FeedRecord>, ClientError> {
    let mut records = Vec::new();
    let mut from = after + 1;
    for _ in 0..FILL_READS_MAX {
        if from >= before {
            return Ok(records);
        }
        let limit = (before - from).min(FILL_READ_LIMIT as u64) as u32;
        let response = client.read(from, limit, None, false).await?;
        let read = response.records.len();
        for record in response.records {
            if record.seq >= before {
                break;
            }
            let record = feed_record(record);
            if keep(&record) {
                records.push(record);
            }
        }
        if read == 0 || response.next_seq <= from {
            return Err(ClientError::Feed(format!(
                "the log has no records from {from} though the feed published up to {}",
                before - 1
            )));
        }
        from = response.next_seq;
    }
    Err(ClientError::Feed(format!(
        "gap {after}..{before} is over {FILL_READS_MAX} log reads"
    )))
}

/// Bind with SO_REUSEADDR, so several subscribers on one machine can
/// share a multicast port.
fn reuse_bind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use std::os::fd::FromRawFd;
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket calls; the fd is owned by the UdpSocket made from it.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let socket = std::net::UdpSocket::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let (storage, len) = txlog_feed::kernel::sockaddr(&addr);
        if libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(socket)
    }
}
