//! The DPDK backend for real (feature `dpdk`; the namespace test needs
//! root, as CI has): EAL without hugepages, frames built by the backend.
//!
//! - `net_ring`: TX loops back to RX; every frame is read back and its
//!   headers and payload checked byte for byte.
//! - `net_af_packet` on one end of a veth pair whose other end is in a
//!   network namespace made here: a publisher's records reach kernel UDP
//!   subscribers in that namespace (unicast and multicast), each record
//!   once, in order.
//! - Bad devices fail with a message that says what is wrong.
//!
//! All tests share one EAL (one per process); each opens its own devices.
#![cfg(feature = "dpdk")]

use std::net::SocketAddrV4;
use std::net::UdpSocket;
use std::time::Duration;
use std::time::Instant;

use txlog_feed::dpdk::DpdkConfig;
use txlog_feed::frame;
use txlog_feed::veth::VethNamespace;
use txlog_feed::Action;
use txlog_feed::Backend;
use txlog_feed::Classes;
use txlog_feed::Delivered;
use txlog_feed::DpdkBackend;
use txlog_feed::FeedRecord;
use txlog_feed::Publisher;
use txlog_feed::PublisherConfig;
use txlog_feed::Receiver;
use txlog_feed::ReceiverConfig;
use txlog_feed::RetransmitLimits;
use txlog_feed::RetransmitService;
use txlog_feed::Via;

fn config(device: &str, source: &str, targets: &[&str], next_hop_mac: Option<frame::Mac>, receive: bool) -> DpdkConfig {
    DpdkConfig {
        eal_args: DpdkConfig::eal_args_default(),
        device: device.to_owned(),
        source: source.parse().expect("source"),
        targets: targets.iter().map(|t| t.parse().expect("target")).collect(),
        next_hop_mac,
        multicast_ttl: 1,
        receive,
    }
}

/// Every packet sent through a `net_ring` port comes back as a well-formed
/// frame to each target, in order, with the payload intact.
#[test]
fn ring_port_frames_read_back_intact() {
    let targets = ["10.213.7.2:7420", "239.192.74.9:7421"];
    let mut backend = DpdkBackend::open(config(
        "net_ring_rb",
        "10.213.7.1:7420",
        &targets,
        Some([2, 0, 0, 0, 7, 2]),
        true,
    ))
    .expect("net_ring port opens");
    let packets: Vec<Vec<u8>> = (0..3000usize)
        .map(|i| (0..(i * 37) % 1473).map(|j| (i + j) as u8).collect())
        .collect();
    for chunk in packets.chunks(100) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        assert_eq!(backend.send(&refs).expect("send"), 0, "nothing dropped");
    }
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Only datagrams to the feed's port are kept: the unicast target's
    // port equals the source port here, the multicast one's does not.
    while received.len() < packets.len() && Instant::now() < deadline {
        backend.receive(&mut received);
        std::thread::sleep(Duration::from_millis(5));
    }
    let counters = backend.counters();
    assert_eq!(received.len(), packets.len(), "{counters:?}");
    for ((source, payload), sent) in received.iter().zip(&packets) {
        assert_eq!(*source, "10.213.7.1:7420".parse::<SocketAddrV4>().expect("addr"));
        assert_eq!(payload, sent);
    }
    assert_eq!(counters.frames_sent, 2 * packets.len() as u64, "{counters:?}");
    assert_eq!(counters.frames_dropped, 0);
    // The multicast frames came back too, and were set aside as not ours.
    assert_eq!(counters.frames_ignored, packets.len() as u64, "{counters:?}");
}

/// `net_null` takes whatever it is given: the counters add up.
#[test]
fn null_port_counts_every_frame() {
    let mut backend = DpdkBackend::open(config(
        "net_null_txlog_count",
        "10.213.8.1:7410",
        &["239.192.74.8:7410"],
        None,
        false,
    ))
    .expect("net_null port opens");
    let packet = vec![7u8; 1400];
    let refs = vec![packet.as_slice(); 256];
    let mut dropped = 0;
    for _ in 0..200 {
        dropped += backend.send(&refs).expect("send");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !backend.is_drained() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    wait_until_settled(&backend);
    let counters = backend.counters();
    assert_eq!(
        counters.frames_sent + counters.frames_dropped,
        200 * 256,
        "{counters:?}"
    );
    assert!(dropped <= counters.frames_dropped);
    assert!(counters.frames_sent > 0);
}

/// Waits until the data-plane thread has sent what it took (its counters
/// settle), without closing the port.
fn wait_until_settled(backend: &DpdkBackend) {
    let mut last = backend.counters();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = backend.counters();
        if now == last {
            return;
        }
        last = now;
    }
}

#[test]
fn bad_devices_fail_clearly() {
    let err = DpdkBackend::open(config("eth0", "10.213.9.1:7410", &["239.192.74.9:7410"], None, false))
        .err()
        .expect("not a virtual net device");
    assert!(err.to_string().contains("not a virtual net device"), "{err}");
    let err = DpdkBackend::open(config(
        "net_af_packet_txlog_missing,iface=txlog-nosuch0",
        "10.213.9.1:7410",
        &["239.192.74.9:7410"],
        None,
        false,
    ))
    .err()
    .expect("no such interface");
    assert!(err.to_string().contains("net_af_packet_txlog_missing"), "{err}");
    let err = DpdkBackend::open(config(
        "net_null_txlog_unicast",
        "10.213.9.1:7410",
        &["10.213.9.2:7410"],
        None,
        false,
    ))
    .err()
    .expect("unicast without a MAC");
    assert!(err.to_string().contains("next hop's MAC"), "{err}");
}

/// `count` records over four channels (every class), 256-byte payloads.
fn records(count: u64) -> Vec<FeedRecord> {
    const CHANNELS: [&str; 4] = ["market-data", "order-book", "execution", "orders"];
    let mut channel_seqs = [0u64; 4];
    (1..=count)
        .map(|seq| {
            let c = (seq % 4) as usize;
            channel_seqs[c] += 1;
            FeedRecord {
                seq,
                channel_seq: channel_seqs[c],
                channel: CHANNELS[c].to_string(),
                txid: format!("tx-{seq}").into_bytes(),
                payload: (0..256).map(|i| (i as u64 * 31 + seq) as u8).collect(),
                sealed: false,
            }
        })
        .collect()
}

/// Publisher → DPDK (`net_af_packet` on a veth end) → kernel UDP sockets in
/// another namespace, unicast and multicast: every record arrives once and
/// in order per class. The return path (re-requests, describe) is not
/// DPDK's: in a node it is the retransmit service's kernel socket. Here
/// the subscriber hands those requests to the publisher's service directly,
/// and reads what the service no longer has from the log.
#[test]
fn af_packet_over_veth_reaches_kernel_subscribers_in_a_namespace() {
    // SAFETY: plain query.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test makes a network namespace and needs root"
    );
    let veth = VethNamespace::create("feed", false).expect("veth pair and namespace");
    let unicast = veth
        .socket("10.213.0.2:7420".parse().expect("addr"), None)
        .expect("socket");
    let multicast = veth
        .socket(
            "0.0.0.0:7421".parse().expect("addr"),
            Some("239.192.74.7".parse().expect("group")),
        )
        .expect("socket");
    let mut backend = DpdkBackend::open(config(
        &format!("net_af_packet_txlog_e2e,iface={}", veth.outer),
        "10.213.0.1:7411",
        &["10.213.0.2:7420", "239.192.74.7:7421"],
        Some(veth.inner_mac().expect("inner MAC")),
        false,
    ))
    .expect("af_packet port opens (needs CAP_NET_RAW)");
    let mut publisher = Publisher::new(PublisherConfig {
        session: 77,
        mtu_bytes: 1500,
        classes: Classes::default(),
        ring_bytes: 64 << 20,
        heartbeat: Duration::from_secs(1),
        // Paced below what a veth and one receiving thread keep up with.
        egress_packets_per_s: 50_000,
        queue_packets_max: 1 << 20,
        speculative: false,
    })
    .expect("publisher");
    let log = records(20_000);
    let subscribers: Vec<_> = [unicast, multicast]
        .into_iter()
        .map(|socket| {
            let log = log.clone();
            let service = RetransmitService::new(
                UdpSocket::bind("127.0.0.1:0").expect("bind"),
                publisher.shared(),
                RetransmitLimits::default(),
                Box::new(|_| true),
            );
            std::thread::spawn(move || subscribe(socket, service, &log))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for batch in log.chunks(100) {
        publisher.publish(batch.iter().map(FeedRecord::borrowed), Instant::now());
        publisher.send(&mut backend, Instant::now()).expect("send");
    }
    while publisher.backlog() > 0 && Instant::now() < deadline {
        publisher.send(&mut backend, Instant::now()).expect("send");
        std::thread::sleep(Duration::from_micros(200));
    }
    publisher.end(&mut backend, deadline).expect("end");
    for subscriber in subscribers {
        let delivered = subscriber.join().expect("subscriber");
        let live = delivered.iter().filter(|d| d.via == Via::Live).count();
        for class in 0..4u8 {
            let got: Vec<u64> = delivered
                .iter()
                .filter(|d| d.class == class)
                .map(|d| d.record.seq)
                .collect();
            let want: Vec<u64> = log
                .iter()
                .filter(|r| Classes::default().classify(&r.channel) == Some(class))
                .map(|r| r.seq)
                .collect();
            let first_difference = got.iter().zip(&want).position(|(g, w)| g != w);
            assert!(
                got == want,
                "class {class}: every record once, in order: got {} of {}, first difference at {first_difference:?}; {} live, counters {:?}",
                got.len(),
                want.len(),
                live,
                backend.counters()
            );
        }
        for d in &delivered {
            assert_eq!(d.record, log[d.record.seq as usize - 1]);
        }
        assert!(
            live * 2 > delivered.len(),
            "most records should arrive live over the veth: {live} of {}",
            delivered.len()
        );
    }
    let counters = backend.counters();
    assert!(counters.frames_sent > 0, "{counters:?}");
}

/// Receive until every record of `log` is delivered (30 s at most).
fn subscribe(socket: UdpSocket, mut service: RetransmitService, log: &[FeedRecord]) -> Vec<Delivered> {
    let mut receiver = Receiver::new(ReceiverConfig {
        from_seq: Some(1),
        ..ReceiverConfig::default()
    });
    let mut delivered = Vec::new();
    let mut actions = Vec::new();
    let mut buffer = vec![0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.len() < log.len() && Instant::now() < deadline {
        if let Ok((n, from)) = socket.recv_from(&mut buffer) {
            receiver.on_datagram(&buffer[..n], from, Instant::now(), &mut delivered, &mut actions);
        }
        receiver.tick(Instant::now(), &mut actions);
        while let Some(action) = actions.pop() {
            match action {
                Action::Send { to, packet } => {
                    let mut replies = Vec::new();
                    service.handle(
                        &packet,
                        "127.0.0.1:9".parse().expect("addr"),
                        Instant::now(),
                        &mut replies,
                    );
                    for reply in replies {
                        receiver.on_datagram(&reply, to, Instant::now(), &mut delivered, &mut actions);
                    }
                }
                Action::ReadLog {
                    class,
                    fill_id,
                    after,
                    before,
                    classes,
                } => {
                    let records = log
                        .iter()
                        .filter(|r| r.seq > after && r.seq < before && classes.classify(&r.channel) == Some(class))
                        .cloned()
                        .collect();
                    receiver.filled(class, fill_id, records, Instant::now(), &mut delivered, &mut actions);
                }
            }
        }
    }
    delivered
}
