//! `txlog feed subscribe | status`: the UDP feed from a subscriber's side
//! (`hub` and `subscribe --ring`: `feed_hub.rs`).

use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use txlog_client::feed::packet::Outcome;
use txlog_client::feed::Delivered;
use txlog_client::feed::Description;
use txlog_client::feed::ReceiverConfig;
use txlog_client::feed::SpeculativeConfig;
use txlog_client::feed::SpeculativeEvent;
use txlog_client::feed::Via;
use txlog_client::FeedEvent;
use txlog_client::FeedSubscriber;
use txlog_client::FeedSubscriberOptions;

use crate::args::FeedCommand;
use crate::args::FeedStatusArgs;
use crate::args::FeedSubscribeArgs;
use crate::feed_open::PayloadOpener;

const STATUS_EVERY: Duration = Duration::from_secs(1);

pub async fn run(command: FeedCommand) -> anyhow::Result<()> {
    match command {
        FeedCommand::Subscribe(args) => subscribe(*args).await,
        FeedCommand::Hub(args) => crate::feed_hub::hub(*args).await,
        FeedCommand::Status(args) => status(args),
    }
}

/// The feed address given, the local address to receive it on, and the
/// multicast group to join (with the interface), if it is one.
pub(crate) type FeedAddress = (SocketAddr, SocketAddr, Option<(Ipv4Addr, Ipv4Addr)>);

pub(crate) fn feed_address(feed: &str, interface: Ipv4Addr) -> anyhow::Result<FeedAddress> {
    let address: SocketAddr = feed
        .parse()
        .with_context(|| format!("--feed {feed:?} is not IP:PORT"))?;
    Ok(match address {
        SocketAddr::V4(v4) if v4.ip().is_multicast() => (
            address,
            SocketAddr::from(([0, 0, 0, 0], v4.port())),
            Some((*v4.ip(), interface)),
        ),
        other => (other, other, None),
    })
}

async fn subscribe(args: FeedSubscribeArgs) -> anyhow::Result<()> {
    if args.ring.is_some() {
        return crate::feed_hub::subscribe_ring(args).await;
    }
    let (feed, listen, group) = feed_address(&args.feed, args.interface)?;
    let client = if args.no_log {
        None
    } else {
        Some(crate::records::client(&args.cluster)?)
    };
    let options = FeedSubscriberOptions {
        listen,
        group,
        classes: (!args.classes.is_empty()).then(|| args.classes.clone()),
        channel: args.channel.clone(),
        receiver: ReceiverConfig {
            from_seq: args.from,
            ..ReceiverConfig::default()
        },
        speculative: args.speculative.then(SpeculativeConfig::default),
        drop_datagram: None,
    };
    let mut opener = payload_opener(&args, client.as_ref()).await?;
    let mut subscriber = FeedSubscriber::join(options, client)?;
    eprintln!("txlog feed: listening on {feed}");
    let mut printed = 0u64;
    let mut last_record = Instant::now();
    let mut last_status = Instant::now();
    loop {
        let next = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            next = subscriber.next_event(STATUS_EVERY) => next?,
        };
        let next = match next {
            Some(FeedEvent::Speculative(event)) => {
                if !args.quiet {
                    print_speculative(&event, opener.as_mut()).await;
                }
                None
            }
            Some(FeedEvent::Committed(delivered)) => Some(delivered),
            None => None,
        };
        if let Some(delivered) = next {
            last_record = Instant::now();
            if print_and_count(&args, &delivered, opener.as_mut(), &mut printed).await {
                break;
            }
        }
        if last_status.elapsed() >= STATUS_EVERY {
            last_status = Instant::now();
            eprintln!("{}", status_line(&subscriber, printed));
        }
        if args.idle_exit.is_some_and(|idle| last_record.elapsed() >= idle) {
            break;
        }
    }
    eprintln!("{}", status_line(&subscriber, printed));
    Ok(())
}

/// The opener of a sealed cluster's payloads: with `--key-file`, or the dev
/// cluster's key file when there is one; `None` without either.
pub(crate) async fn payload_opener(
    args: &FeedSubscribeArgs,
    client: Option<&txlog_client::Client>,
) -> anyhow::Result<Option<PayloadOpener>> {
    let key_file = args
        .key_file
        .clone()
        .or_else(|| crate::records::dev_file(txlog_testkit::KEY_FILE));
    Ok(match (key_file, client) {
        (Some(path), Some(client)) => Some(PayloadOpener::new(&path, client.clone()).await?),
        (Some(_), None) if args.key_file.is_some() => {
            anyhow::bail!("--key-file needs the log (its data keys are there): drop --no-log")
        }
        _ => None,
    })
}

/// Count a committed record and print it unless `--quiet`: true once
/// `--count` records are in.
pub(crate) async fn print_and_count(
    args: &FeedSubscribeArgs,
    delivered: &Delivered,
    opener: Option<&mut PayloadOpener>,
    printed: &mut u64,
) -> bool {
    *printed += 1;
    if !args.quiet {
        print_committed(delivered, opener).await;
    }
    args.count.is_some_and(|c| *printed >= c)
}

/// Print one committed record, its payload opened when it is sealed and
/// there is an opener.
async fn print_committed(delivered: &Delivered, opener: Option<&mut PayloadOpener>) {
    let r = &delivered.record;
    let payload = match (r.sealed, opener) {
        (false, _) => String::from_utf8_lossy(&r.payload).into_owned(),
        (true, None) => format!("<sealed, {} bytes>", r.payload.len()),
        (true, Some(opener)) => shown(opener.open_committed(r.seq, &r.payload).await, r.payload.len()),
    };
    let via = match delivered.via {
        Via::Live => "live",
        Via::Retransmit => "retransmit",
        Via::Log => "log",
    };
    println!(
        "seq={} channel={} channel_seq={} txid={} via={via} payload={payload}",
        r.seq,
        r.channel,
        r.channel_seq,
        String::from_utf8_lossy(&r.txid)
    );
}

/// An opened payload as text, or why it could not be opened.
fn shown(opened: anyhow::Result<Vec<u8>>, sealed_bytes: usize) -> String {
    match opened {
        Ok(plain) => String::from_utf8_lossy(&plain).into_owned(),
        Err(err) => format!("<sealed, {sealed_bytes} bytes; cannot open: {err:#}>"),
    }
}

async fn print_speculative(event: &SpeculativeEvent, opener: Option<&mut PayloadOpener>) {
    match event {
        SpeculativeEvent::Record(r) => {
            let payload = match (r.sealed, opener) {
                (false, _) => String::from_utf8_lossy(&r.payload).into_owned(),
                (true, None) => format!("<sealed, {} bytes>", r.payload.len()),
                (true, Some(opener)) => shown(
                    opener.open_speculative(r.term, r.index, r.position, &r.payload).await,
                    r.payload.len(),
                ),
            };
            println!(
                "speculative term={} index={} position={} channel={} txid={} payload={payload}",
                r.term,
                r.index,
                r.position,
                r.channel,
                String::from_utf8_lossy(&r.txid)
            );
        }
        SpeculativeEvent::Resolved(resolution) => {
            let outcome = match resolution.outcome {
                Outcome::Committed => "committed",
                Outcome::RolledBack => "rolled-back",
                Outcome::Unknown => "unknown",
            };
            println!("{outcome} term={} index={}", resolution.term, resolution.index);
        }
    }
}

fn status_line(subscriber: &FeedSubscriber, printed: u64) -> String {
    let speculative = subscriber.speculative_counters().map_or(String::new(), |s| {
        format!(
            "; speculative: records {}, committed {}, rolled back {}, unknown {}, lost {}",
            s.records, s.committed, s.rolled_back, s.unknown, s.lost
        )
    });
    status_counters(subscriber, printed) + &speculative
}

pub(crate) fn status_counters(subscriber: &FeedSubscriber, printed: u64) -> String {
    let c = subscriber.counters();
    format!(
        "feed: records {printed}, packets {}, gaps {}, re-requests {}, recovered {}, fallback reads {} ({} records), duplicates {}, malformed {}, session switches {}, unfilled {}",
        c.packets,
        c.gaps,
        c.rerequests,
        c.recovered,
        c.fallback_reads,
        c.records_from_log,
        c.duplicate_packets,
        c.malformed,
        c.session_switches,
        c.unfilled
    )
}

fn status(args: FeedStatusArgs) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding a local UDP socket")?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut failed = 0;
    for node in args.nodes.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let address: SocketAddr = node.parse().with_context(|| format!("{node:?} is not IP:PORT"))?;
        match describe(&socket, address, args.timeout) {
            Ok(description) if args.json => {
                let counters: serde_json::Map<String, serde_json::Value> = description
                    .counters
                    .iter()
                    .map(|(k, v)| (k.clone(), (*v).into()))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "node": node,
                        "session": description.session,
                        "classes": description.classes.to_string(),
                        "counters": counters,
                    })
                );
            }
            Ok(description) => {
                println!(
                    "{node}  session {:016x}  classes {}",
                    description.session, description.classes
                );
                let counters: Vec<String> = description.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("  {}", counters.join(" "));
            }
            Err(err) => {
                failed += 1;
                println!("{node}  no answer: {err}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} feed(s) did not answer");
    }
    Ok(())
}

/// Ask `address` for its description, retrying every 200 ms until `timeout`.
fn describe(socket: &UdpSocket, address: SocketAddr, timeout: Duration) -> anyhow::Result<Description> {
    let deadline = Instant::now() + timeout;
    let mut buffer = vec![0u8; txlog_client::feed::packet::UDP_PAYLOAD_BYTES_MAX];
    let mut sent_at = None::<Instant>;
    while Instant::now() < deadline {
        if sent_at.is_none_or(|at| at.elapsed() >= Duration::from_millis(200)) {
            socket.send_to(&txlog_client::feed::retransmit::describe_request(), address)?;
            sent_at = Some(Instant::now());
        }
        let Ok((len, from)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        if from != address {
            continue;
        }
        let Ok((header, body)) = txlog_client::feed::packet::parse(&buffer[..len]) else {
            continue;
        };
        if header.kind == txlog_client::feed::packet::PacketKind::Description {
            return Ok(Description::decode(body)?);
        }
    }
    anyhow::bail!("nothing within {timeout:?} (is the node's feed on, at this address?)")
}
