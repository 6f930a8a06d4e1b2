//! Link faults without privileges: a user-space proxy in front of every
//! node. Node i listens on a private port and advertises the proxy's port
//! on the same IP, so peers, clients and leader hints all go through the
//! proxy. Nodes bind their outgoing peer connections to their own IP, so
//! the proxy knows which node a connection comes from; connections from
//! anything else (the run's clients) are never faulted.
//!
//! A cut direction stops forwarding: bytes wait in the proxy (the sender's
//! TCP window fills, as with silently dropped packets) and flow again when
//! the cut heals. A delayed direction holds every chunk for the delay.

use std::collections::HashMap;
use std::collections::HashSet;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bytes read per chunk.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks held per direction before the proxy stops reading (backpressure).
const HELD_CHUNKS_MAX: usize = 1_024;

/// Which directions are cut or delayed, by (from node, to node).
#[derive(Debug, Clone, Default)]
struct Rules {
    cut: HashSet<(usize, usize)>,
    delay: HashMap<(usize, usize), Duration>,
}

pub struct Proxy {
    rules: watch::Sender<Rules>,
    stop: CancellationToken,
}

impl Proxy {
    /// Listen on `public[i]` and forward to `backend[i]`; `ips[i]` is the IP node i connects from.
    pub async fn start(public: &[SocketAddr], backend: &[SocketAddr], ips: &[Ipv4Addr]) -> anyhow::Result<Proxy> {
        let (rules, _) = watch::channel(Rules::default());
        let stop = CancellationToken::new();
        for (to, (&listen, &target)) in public.iter().zip(backend).enumerate() {
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("fault proxy: listen on {listen}"))?;
            let rules = rules.clone();
            let stop = stop.clone();
            let ips = ips.to_vec();
            tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        _ = stop.cancelled() => return,
                        accepted = listener.accept() => accepted,
                    };
                    let Ok((inbound, peer)) = accepted else { continue };
                    let from = match peer.ip() {
                        IpAddr::V4(ip) => ips.iter().position(|&n| n == ip),
                        IpAddr::V6(_) => None,
                    };
                    let rules = rules.subscribe();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        // Requests flow from→to, responses to→from.
                        let link_up = from.map(|f| (f, to));
                        let link_down = from.map(|f| (to, f));
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = pump(in_read, out_write, link_up, rules.clone()) => {}
                            _ = pump(out_read, in_write, link_down, rules) => {}
                        }
                    });
                }
            });
        }
        Ok(Proxy { rules, stop })
    }

    pub fn cut(&self, from: usize, to: usize) {
        self.rules.send_modify(|r| {
            r.cut.insert((from, to));
        });
    }

    pub fn delay(&self, from: usize, to: usize, delay: Duration) {
        self.rules.send_modify(|r| {
            r.delay.insert((from, to), delay);
        });
    }

    pub fn heal(&self) {
        self.rules.send_replace(Rules::default());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Forward one direction of one connection, obeying the rules for `link`
/// (`None`: not between two nodes, never faulted).
async fn pump(
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    link: Option<(usize, usize)>,
    mut rules: watch::Receiver<Rules>,
) {
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut open = true;
    loop {
        let (cut, delay) = {
            let r = rules.borrow_and_update();
            match link {
                Some(l) => (r.cut.contains(&l), r.delay.get(&l).copied().unwrap_or_default()),
                None => (false, Duration::ZERO),
            }
        };
        let due = held.front().map(|(at, _)| *at + delay);
        let can_read = open && held.len() < HELD_CHUNKS_MAX;
        tokio::select! {
            changed = rules.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            n = read.read(&mut buf), if can_read => match n {
                Ok(0) | Err(_) => open = false,
                // The common case, a link without faults: forward at once.
                Ok(n) if !cut && delay.is_zero() && held.is_empty() => {
                    if write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Ok(n) => held.push_back((Instant::now(), buf[..n].to_vec())),
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() && !cut => {
                let (_, chunk) = held.pop_front().expect("due implies a held chunk");
                if write.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        }
        if !open && held.is_empty() {
            let _ = write.shutdown().await;
            return;
        }
    }
}
