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

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use tokio::net::UdpSocket;
use txlog_feed::Action;
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
    socket: UdpSocket,
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
        let socket = UdpSocket::from_std(socket).map_err(|e| io("feed socket", e))?;
        Ok(FeedSubscriber {
            socket,
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
                .receiver
                .next_deadline()
                .into_iter()
                .chain(self.speculative.as_ref().and_then(SpeculativeReceiver::next_deadline))
                .min()
                .map(tokio::time::Instant::from_std)
                .map_or(deadline, |d| d.min(deadline));
            let mut out = Vec::new();
            let mut speculative = Vec::new();
            let mut actions = Vec::new();
            tokio::select! {
                received = self.socket.recv_from(&mut self.buffer) => {
                    let (len, from) = received.map_err(|e| ClientError::Feed(format!("feed receive: {e}")))?;
                    self.on_datagram(len, from, &mut out, &mut speculative, &mut actions);
                    // Take what else is queued without waiting, so a burst
                    // is handled in one pass.
                    for _ in 0..256 {
                        match self.socket.try_recv_from(&mut self.buffer) {
                            Ok((len, from)) => self.on_datagram(len, from, &mut out, &mut speculative, &mut actions),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    self.receiver.tick(now, &mut actions);
                    if let Some(speculative_receiver) = self.speculative.as_mut() {
                        let (options, receiver) = (&self.options, &self.receiver);
                        let keep = |r: &SpeculativeDelivered| selected(options, receiver, &r.channel, r.class);
                        speculative_receiver.tick(now, &keep, &mut speculative, &mut actions);
                    }
                }
            }
            self.ready.extend(speculative.into_iter().map(FeedEvent::Speculative));
            self.act(actions, &mut out).await?;
            self.accept(out);
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
        while let Some(action) = actions.pop() {
            match action {
                Action::Send { to, packet } => {
                    if let Err(err) = self.socket.send_to(&packet, to).await {
                        tracing::debug!(%to, %err, "feed request not sent");
                    }
                }
                Action::ReadLog {
                    class,
                    fill_id,
                    after,
                    before,
                    classes,
                } => {
                    let Some(client) = &self.client else {
                        self.receiver
                            .fill_failed(class, fill_id, Instant::now(), out, &mut actions);
                        continue;
                    };
                    let records =
                        read_range(client, after, before, |r| classes.classify(&r.channel) == Some(class)).await?;
                    self.receiver
                        .filled(class, fill_id, records, Instant::now(), out, &mut actions);
                }
            }
        }
        Ok(())
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
            let record = FeedRecord {
                seq: record.seq,
                channel_seq: record.channel_seq,
                channel: record.channel,
                txid: record.txid.to_vec(),
                payload: record.payload.to_vec(),
                sealed: false,
            };
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
