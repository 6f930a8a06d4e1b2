//! The network faults on loopback, with real sockets: a cut link drops
//! packets one way, a delayed link holds them for the delay, healing
//! restores both, and the chain is gone after drop. Needs root and
//! iptables; without them the test says so and checks nothing else.

use std::io::Read;
use std::io::Write;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::time::Duration;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use txlog_chaos::net::iptables_usable;
use txlog_chaos::net::Firewall;
use txlog_chaos::net::RulePlace;

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 230);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 231);

/// An echo server on B; returns its address.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind((B, 0)).unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// Connect from A to `to` and time the connect plus one echo round trip;
/// None when the connection cannot be made within 1 s.
fn round_trip(to: SocketAddr) -> Option<Duration> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let started = Instant::now();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((A, 0))).unwrap();
        let mut stream = tokio::time::timeout(Duration::from_secs(1), socket.connect(to))
            .await
            .ok()?
            .ok()?;
        stream.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(started.elapsed())
    })
}

#[test]
fn cut_delay_heal() {
    if !iptables_usable() {
        eprintln!("skipped: iptables is not usable here (needs root and the iptables package)");
        return;
    }
    let server = echo_server();
    let baseline = round_trip(server).expect("no fault: the link works");

    let mut firewall = Firewall::install(RulePlace::Loopback, vec![A, B]).unwrap();
    firewall.cut(0, 1).unwrap();
    assert!(round_trip(server).is_none(), "A→B is cut, yet A connected to B");
    firewall.heal().unwrap();
    assert!(round_trip(server).is_some(), "healed, yet A cannot reach B");

    let delay = Duration::from_millis(100);
    firewall.delay(0, 1, delay).unwrap();
    firewall.delay(1, 0, delay).unwrap();
    let delayed = round_trip(server).expect("a delayed link still works");
    // Connect (SYN, SYN-ACK) and one echo cross the link four times.
    assert!(delayed >= delay * 4, "round trip {delayed:?} with {delay:?} each way");
    firewall.heal().unwrap();
    let healed = round_trip(server).unwrap();
    assert!(
        healed < delayed,
        "healed {healed:?} vs delayed {delayed:?} (baseline {baseline:?})"
    );

    drop(firewall);
    let chains = std::process::Command::new("iptables").args(["-S"]).output().unwrap();
    let chains = String::from_utf8_lossy(&chains.stdout);
    assert!(
        !chains.contains(&format!("TXLOG-CHAOS-{}", std::process::id())),
        "chain left behind:\n{chains}"
    );
}
