//! The user-space fault proxy with real sockets (no privileges needed):
//! traffic from a node's IP is held while the link is cut and delivered
//! after healing, delayed links add the delay, and traffic from other
//! addresses (clients) is never faulted.

use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;
use txlog_chaos::proxy::Proxy;

const NODE_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 240);
const NODE_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 241);

async fn echo_server(ip: Ipv4Addr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((ip, 0).into()).unwrap();
    socket.connect(to).await.unwrap()
}

/// One echo round trip; None if no answer within `wait`.
async fn echo(stream: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.write_all(b"ping").await.ok()?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(wait, stream.read_exact(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(started.elapsed())
}

#[tokio::test]
async fn cut_delay_heal_through_the_proxy() {
    let backend = echo_server(NODE_B).await;
    let public = {
        let probe = std::net::TcpListener::bind((NODE_B, 0)).unwrap();
        probe.local_addr().unwrap()
    };
    // Node 0 is A (no server needed), node 1 is B behind the proxy.
    let unused_a: SocketAddr = (NODE_A, 1).into();
    let a_public = {
        let probe = std::net::TcpListener::bind((NODE_A, 0)).unwrap();
        probe.local_addr().unwrap()
    };
    let proxy = Proxy::start(&[a_public, public], &[unused_a, backend], &[NODE_A, NODE_B])
        .await
        .unwrap();

    let mut from_a = connect_from(NODE_A, public).await;
    let mut from_client = connect_from(Ipv4Addr::LOCALHOST, public).await;
    let baseline = echo(&mut from_a, Duration::from_secs(2))
        .await
        .expect("no fault: echo works");

    proxy.cut(0, 1);
    assert!(
        echo(&mut from_a, Duration::from_millis(300)).await.is_none(),
        "A→B is cut, yet B answered"
    );
    assert!(
        echo(&mut from_client, Duration::from_secs(2)).await.is_some(),
        "a client connection must never be faulted"
    );
    proxy.heal();
    // The held "ping" is delivered on healing: its echo arrives now.
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(2), from_a.read_exact(&mut buf))
        .await
        .expect("the held bytes flow after healing")
        .unwrap();
    assert_eq!(&buf, b"ping");

    let delay = Duration::from_millis(100);
    proxy.delay(0, 1, delay);
    proxy.delay(1, 0, delay);
    let delayed = echo(&mut from_a, Duration::from_secs(2))
        .await
        .expect("a delayed link still works");
    assert!(delayed >= delay * 2, "round trip {delayed:?} with {delay:?} each way");
    proxy.heal();
    let healed = echo(&mut from_a, Duration::from_secs(2)).await.unwrap();
    assert!(
        healed < delayed,
        "healed {healed:?}, delayed {delayed:?}, baseline {baseline:?}"
    );
}
