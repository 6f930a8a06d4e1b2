//! The retransmit service: answers subscribers' re-requests from the ring,
//! and Describe requests with the publisher's description, on the feed
//! address (the source address of the feed's packets).
//!
//! Every datagram is checked before anything is looked up; a malformed one
//! is dropped and counted. Each subscriber address has a token bucket in
//! packets: a subscriber that asks for more than its share is refused
//! (counted) and falls back to reading the log, so one subscriber cannot
//! turn the service into a flood.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use crate::counters::Counters;
use crate::describe::Description;
use crate::kernel::BatchReceiver;
use crate::packet::PacketHeader;
use crate::packet::PacketKind;
use crate::publisher::wall_clock_ns;
use crate::publisher::Shared;
use crate::retransmit_ring::Lookup;

/// Packets one re-request is answered with at most; the subscriber asks
/// again for the rest.
pub const PACKETS_PER_REREQUEST_MAX: usize = 64;
/// Subscribers whose rate the service tracks; beyond it, idle ones are
/// forgotten and, if none is idle, new ones are refused.
const SUBSCRIBERS_TRACKED_MAX: usize = 4096;
const SUBSCRIBER_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct RetransmitLimits {
    /// Packets per second each subscriber may have retransmitted.
    pub packets_per_s: u64,
    /// Packets a subscriber may take at once after being quiet.
    pub burst_packets: u64,
}

impl Default for RetransmitLimits {
    fn default() -> RetransmitLimits {
        RetransmitLimits {
            packets_per_s: 20_000,
            burst_packets: 2_000,
        }
    }
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

pub struct RetransmitService {
    socket: UdpSocket,
    shared: Shared,
    limits: RetransmitLimits,
    buckets: HashMap<SocketAddr, Bucket>,
    admit: Box<dyn Fn(IpAddr) -> bool + Send>,
}

impl RetransmitService {
    /// Serve on `socket` (the publisher's, cloned). `admit` says which
    /// source addresses may ask (the node's client allowlist).
    pub fn new(
        socket: UdpSocket,
        shared: Shared,
        limits: RetransmitLimits,
        admit: Box<dyn Fn(IpAddr) -> bool + Send>,
    ) -> RetransmitService {
        crate::kernel::set_buffer(&socket, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
        RetransmitService {
            socket,
            shared,
            limits,
            buckets: HashMap::new(),
            admit,
        }
    }

    /// Serve until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool) -> io::Result<()> {
        self.socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let mut receiver = BatchReceiver::new(64, crate::packet::UDP_PAYLOAD_BYTES_MAX);
        let mut replies = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let n = receiver.receive(&self.socket)?;
            for i in 0..n {
                let (datagram, source) = receiver.datagram(i);
                let Some(source) = source else { continue };
                replies.clear();
                self.handle(datagram, source, Instant::now(), &mut replies);
                for reply in &replies {
                    if let Err(err) = self.socket.send_to(reply, source) {
                        tracing::debug!(%source, %err, "feed retransmit reply not sent");
                    }
                }
            }
        }
        Ok(())
    }

    /// Answer one datagram from `source`: the packets to send back.
    pub fn handle(
        &mut self,
        datagram: &[u8],
        source: SocketAddr,
        now: Instant,
        replies: &mut Vec<std::sync::Arc<Vec<u8>>>,
    ) {
        let counters = self.shared.counters.clone();
        let header = match crate::packet::parse(datagram) {
            Ok((header, _)) if matches!(header.kind, PacketKind::ReRequest | PacketKind::Describe) => header,
            Ok((header, _)) => {
                Counters::add(&counters.malformed_received, 1);
                tracing::debug!(%source, kind = ?header.kind, "feed retransmit port got a packet that is not a request");
                return;
            }
            Err(err) => {
                Counters::add(&counters.malformed_received, 1);
                tracing::debug!(%source, %err, "feed retransmit port dropped a datagram");
                return;
            }
        };
        if !(self.admit)(source.ip()) {
            Counters::add(&counters.rerequests_refused, 1);
            return;
        }
        if header.kind == PacketKind::Describe {
            Counters::add(&counters.describe_requests, 1);
            if !self.take(source, 1, now) {
                Counters::add(&counters.rerequests_refused, 1);
                return;
            }
            let description = Description {
                session: self.shared.session,
                classes: self.shared.classes.clone(),
                counters: counters
                    .snapshot()
                    .into_iter()
                    .map(|(n, v)| (n.to_string(), v))
                    .collect(),
            };
            replies.push(std::sync::Arc::new(
                self.reply_header(PacketKind::Description, 0, 0)
                    .packet(&description.encode()),
            ));
            return;
        }
        Counters::add(&counters.rerequests, 1);
        if header.session != self.shared.session || header.class as usize >= self.shared.streams() {
            // Another session's packets are not here: the subscriber reads the log.
            Counters::add(&counters.rerequests_gone, 1);
            replies.push(std::sync::Arc::new(
                self.reply_header(PacketKind::NotAvailable, header.class, 0).packet(&[]),
            ));
            return;
        }
        let lookup = self.shared.ring.lock().expect("feed ring lock poisoned").lookup(
            header.class,
            header.first_seq,
            header.count,
            PACKETS_PER_REREQUEST_MAX,
        );
        match lookup {
            Lookup::Found(packets) => {
                let wanted = packets.len();
                if !self.take(source, wanted as u64, now) {
                    Counters::add(&counters.rerequests_refused, 1);
                    return;
                }
                Counters::add(&counters.packets_retransmitted, wanted as u64);
                replies.extend(packets.into_iter().map(|p| p.bytes));
            }
            Lookup::Gone { oldest } => {
                Counters::add(&counters.rerequests_gone, 1);
                replies.push(std::sync::Arc::new(
                    self.reply_header(PacketKind::NotAvailable, header.class, oldest)
                        .packet(&[]),
                ));
            }
            // Asked for the future: the subscriber saw a heartbeat before
            // the packets it announces were sent; nothing to answer.
            Lookup::Ahead => {}
        }
    }

    fn reply_header(&self, kind: PacketKind, class: u8, first_seq: u64) -> PacketHeader {
        PacketHeader {
            kind,
            class,
            flags: if self.shared.is_speculative_class(class) {
                crate::packet::FLAG_SPECULATIVE
            } else {
                0
            },
            count: 0,
            session: self.shared.session,
            first_seq,
            send_time_ns: wall_clock_ns(),
        }
    }

    /// Take `packets` tokens from `source`'s bucket.
    fn take(&mut self, source: SocketAddr, packets: u64, now: Instant) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= SUBSCRIBERS_TRACKED_MAX {
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.refilled) < SUBSCRIBER_IDLE);
            if self.buckets.len() >= SUBSCRIBERS_TRACKED_MAX {
                return false;
            }
        }
        let limits = self.limits;
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: limits.burst_packets as f64,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limits.packets_per_s as f64).min(limits.burst_packets as f64);
        bucket.refilled = now;
        if bucket.tokens < packets as f64 {
            return false;
        }
        bucket.tokens -= packets as f64;
        true
    }
}

/// A re-request for `count` messages of `class` from `first_seq` in `session`.
pub fn rerequest(session: u64, class: u8, first_seq: u64, count: u16) -> Vec<u8> {
    rerequest_flagged(0, session, class, first_seq, count)
}

/// [`rerequest`] for a speculative stream's messages, flagged as its
/// packets are (the service answers by the class slot either way).
pub fn speculative_rerequest(session: u64, class: u8, first_seq: u64, count: u16) -> Vec<u8> {
    rerequest_flagged(crate::packet::FLAG_SPECULATIVE, session, class, first_seq, count)
}

fn rerequest_flagged(flags: u8, session: u64, class: u8, first_seq: u64, count: u16) -> Vec<u8> {
    PacketHeader {
        kind: PacketKind::ReRequest,
        class,
        flags,
        count,
        session,
        first_seq,
        send_time_ns: wall_clock_ns(),
    }
    .packet(&[])
}

/// A Describe request.
pub fn describe_request() -> Vec<u8> {
    PacketHeader {
        kind: PacketKind::Describe,
        class: 0,
        flags: 0,
        count: 0,
        session: 0,
        first_seq: 0,
        send_time_ns: wall_clock_ns(),
    }
    .packet(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::class::Classes;
    use crate::packet::RecordRef;
    use crate::publisher::Publisher;
    use crate::publisher::PublisherConfig;

    fn service(limits: RetransmitLimits) -> (Publisher, RetransmitService) {
        let publisher = Publisher::new(PublisherConfig {
            session: 5,
            mtu_bytes: 1500,
            classes: Classes::default(),
            ring_bytes: 1 << 20,
            heartbeat: Duration::from_secs(1),
            egress_packets_per_s: 0,
            queue_packets_max: 1 << 16,
            speculative: false,
        })
        .expect("valid config");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let service = RetransmitService::new(socket, publisher.shared(), limits, Box::new(|ip| ip.is_loopback()));
        (publisher, service)
    }

    fn publish(publisher: &mut Publisher, count: u64) {
        let payload = [7u8; 256];
        let records: Vec<RecordRef<'_>> = (1..=count)
            .map(|seq| RecordRef {
                seq,
                channel_seq: seq,
                channel: "market-data",
                txid: b"tx",
                payload: &payload,
                sealed: false,
            })
            .collect();
        publisher.publish(records, Instant::now());
    }

    const SUBSCRIBER: &str = "127.0.0.1:9999";

    /// A re-request is answered with the original packets covering it.
    #[test]
    fn rerequest_answered_from_the_ring() {
        let (mut publisher, mut service) = service(RetransmitLimits::default());
        publish(&mut publisher, 100);
        let mut replies = Vec::new();
        service.handle(
            &rerequest(5, 0, 10, 3),
            SUBSCRIBER.parse().unwrap(),
            Instant::now(),
            &mut replies,
        );
        assert_eq!(replies.len(), 1, "records 10..13 share a packet");
        let (header, _) = crate::packet::parse(&replies[0]).expect("valid");
        assert!(header.first_seq <= 10 && header.first_seq + header.count as u64 > 12);
        replies.clear();
        service.handle(
            &rerequest(6, 0, 10, 3),
            SUBSCRIBER.parse().unwrap(),
            Instant::now(),
            &mut replies,
        );
        let (header, _) = crate::packet::parse(&replies[0]).expect("valid");
        assert_eq!(
            header.kind,
            PacketKind::NotAvailable,
            "another session's seqs are not here"
        );
    }

    /// Garbage, truncated, checksum-damaged and non-request packets are
    /// dropped and counted; the service still answers afterwards.
    #[test]
    fn malformed_requests_are_dropped_and_counted() {
        let (mut publisher, mut service) = service(RetransmitLimits::default());
        publish(&mut publisher, 10);
        let from: SocketAddr = SUBSCRIBER.parse().unwrap();
        let mut damaged = rerequest(5, 0, 1, 1);
        damaged[20] ^= 1;
        let heartbeat = PacketHeader {
            kind: PacketKind::Heartbeat,
            class: 0,
            flags: 0,
            count: 0,
            session: 5,
            first_seq: 1,
            send_time_ns: 0,
        }
        .packet(&[0; 8]);
        let huge = vec![0xAB; 65_000];
        let mut replies = Vec::new();
        for bad in [
            &b""[..],
            b"TF",
            &damaged,
            &heartbeat,
            &huge,
            &rerequest(5, 0, 1, 1)[..20],
        ] {
            service.handle(bad, from, Instant::now(), &mut replies);
        }
        assert!(replies.is_empty());
        assert_eq!(service.shared.counters.malformed_received.load(Ordering::Relaxed), 6);
        service.handle(&rerequest(5, 200, 1, 1), from, Instant::now(), &mut replies);
        assert_eq!(
            crate::packet::parse(&replies[0]).expect("valid").0.kind,
            PacketKind::NotAvailable,
            "unknown class"
        );
        replies.clear();
        service.handle(&rerequest(5, 0, 1, 1), from, Instant::now(), &mut replies);
        assert_eq!(replies.len(), 1);
    }

    /// Beyond its burst a subscriber is refused until its bucket refills;
    /// others are not affected; sources the allowlist refuses get nothing.
    #[test]
    fn rate_limited_per_subscriber() {
        let limits = RetransmitLimits {
            packets_per_s: 10,
            burst_packets: 3,
        };
        let (mut publisher, mut service) = service(limits);
        publish(&mut publisher, 400);
        let now = Instant::now();
        let mut replies = Vec::new();
        for _ in 0..5 {
            service.handle(&rerequest(5, 0, 1, 1), SUBSCRIBER.parse().unwrap(), now, &mut replies);
        }
        assert_eq!(replies.len(), 3);
        service.handle(
            &rerequest(5, 0, 1, 1),
            "127.0.0.2:1".parse().unwrap(),
            now,
            &mut replies,
        );
        assert_eq!(replies.len(), 4, "another subscriber has its own bucket");
        service.handle(
            &rerequest(5, 0, 1, 1),
            SUBSCRIBER.parse().unwrap(),
            now + Duration::from_millis(200),
            &mut replies,
        );
        assert_eq!(replies.len(), 5, "refilled at 10/s");
        service.handle(&rerequest(5, 0, 1, 1), "10.1.1.1:1".parse().unwrap(), now, &mut replies);
        assert_eq!(replies.len(), 5, "not admitted");
        assert_eq!(service.shared.counters.rerequests_refused.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn describe_names_classes_and_counters() {
        let (mut publisher, mut service) = service(RetransmitLimits::default());
        publish(&mut publisher, 3);
        let mut replies = Vec::new();
        service.handle(
            &describe_request(),
            SUBSCRIBER.parse().unwrap(),
            Instant::now(),
            &mut replies,
        );
        let (header, body) = crate::packet::parse(&replies[0]).expect("valid");
        assert_eq!(header.kind, PacketKind::Description);
        let description = Description::decode(body).expect("valid");
        assert_eq!(description.session, 5);
        assert_eq!(description.classes, Classes::default());
        assert!(description.counters.contains(&("records_published".to_string(), 3)));
    }
}
