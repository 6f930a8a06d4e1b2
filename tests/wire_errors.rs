//! What a client sees at the wire, with real `txlog node` processes: the
//! status codes for undecodable and over-size requests, per-call answers on
//! an append stream, the CLI reaching
//! the leader through a follower's `txlog-leader` hint, and one throttled
//! warning line for a joined node that never comes up.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use bytes::Buf;
use bytes::BufMut;
use bytes::Bytes;
use prost::Message;
use tonic::codec::Codec;
use tonic::codec::DecodeBuf;
use tonic::codec::Decoder;
use tonic::codec::EncodeBuf;
use tonic::codec::Encoder;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tonic::Code;
use tonic::Status;
use txlog_client::methods;
use txlog_client::token_payload_digest;
use txlog_client::wall_clock_ms;
use txlog_client::Client;
use txlog_client::ClientError;
use txlog_client::ClientOptions;
use txlog_client::ClientSecret;
use txlog_client::Credentials;
use txlog_client::MESSAGE_BYTES_MAX;
use txlog_client::TOKEN_METADATA_KEY;
use txlog_proto::log_service_client::LogServiceClient;
use txlog_proto::AddClientKeyRequest;
use txlog_proto::AppendCall;
use txlog_proto::AppendReply;
use txlog_proto::AppendRequest;
use txlog_proto::AppendStreamRequest;
use txlog_proto::JoinRequest;
use txlog_proto::RaftMessage;
use txlog_proto::ReadRequest;
use txlog_proto::Record;
use txlog_proto::RequestToken;
use txlog_proto::RAFT_MESSAGE_VERSION;
use txlog_testkit::LocalCluster;
use txlog_testkit::NodeSpec;
use txlog_testkit::REGIONS;

/// Clusters are heavy on a two-core machine: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(30);

/// Running nodes, a client for all of them, and the directory their data lives in.
struct Cluster {
    local: LocalCluster,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Start nodes with these ids (not only 1, 2, 3) and wait for a leader.
    async fn start(ids: &[u64]) -> Cluster {
        Cluster::start_sealed(ids, true).await
    }

    /// [`Cluster::start`], sealed or not.
    async fn start_sealed(ids: &[u64], sealed: bool) -> Cluster {
        Cluster::start_with(ids, sealed, &[]).await
    }

    /// [`Cluster::start_sealed`], with more `txlog node` flags for every node.
    async fn start_with(ids: &[u64], sealed: bool, extra_args: &[&str]) -> Cluster {
        Cluster::start_access(ids, sealed, false, extra_args).await
    }

    /// Sealed nodes with access control enforced; the client signs with the root key.
    async fn start_secured(ids: &[u64]) -> Cluster {
        Cluster::start_access(ids, true, true, &[]).await
    }

    async fn start_access(ids: &[u64], sealed: bool, secured: bool, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let specs = ids
            .iter()
            .zip(REGIONS)
            .map(|(&id, region)| {
                let mut spec = NodeSpec::loopback(id, region, dir.path().join(region)).expect("free port");
                spec.metrics = Some(format!("127.0.0.1:{}", txlog_testkit::free_port().expect("free port")));
                spec.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
                spec
            })
            .collect();
        let mut local =
            LocalCluster::with_exe(specs, PathBuf::from(env!("CARGO_BIN_EXE_txlog"))).in_caller_process_group();
        if !sealed {
            local = local.unsealed();
        }
        // Most tests here send malformed and over-limit messages with the
        // raw generated clients; access control has tests of its own.
        if !secured {
            local = local.insecure();
        }
        for i in 0..ids.len() {
            local.start(i).expect("start node");
        }
        let client = local.client(ClientOptions::default()).expect("client");
        client.wait_for_leader(WAIT).await.expect("a leader within 30 s");
        let cluster = Cluster {
            local,
            client,
            _dir: dir,
        };
        // A leader needs only two nodes; the tests talk to a chosen one.
        for node in &cluster.local.nodes {
            let deadline = Instant::now() + WAIT;
            while cluster.client.node_status(&node.spec.address).await.is_err() {
                assert!(
                    Instant::now() < deadline,
                    "node {} never answered\n{}",
                    node.spec.id,
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        cluster
    }

    /// The value of the unlabelled metric `name` on node `id`.
    async fn metric(&self, id: u64, name: &str) -> f64 {
        self.try_metric(id, name)
            .await
            .unwrap_or_else(|text| panic!("no {name} on node {id}:\n{text}"))
    }

    /// [`Self::metric`], or what came back instead (a node starting up may
    /// not serve metrics yet).
    async fn try_metric(&self, id: u64, name: &str) -> Result<f64, String> {
        let node = self.local.nodes.iter().find(|n| n.spec.id == id).expect("node id");
        let address = node.spec.metrics.as_deref().expect("metrics address");
        common::scrape_metric(address, name).await
    }

    fn address(&self, id: u64) -> String {
        let i = self.local.index_of(id).expect("member");
        self.local.nodes[i].spec.address.clone()
    }

    /// Every node's log, one after the other.
    fn logs(&self) -> String {
        self.local
            .nodes
            .iter()
            .map(|n| std::fs::read_to_string(n.spec.log_path()).unwrap_or_default())
            .collect()
    }

    /// A node that follows a leader it knows, with the membership that
    /// gives the leader's address (a node that just started may know the
    /// leader's id before the membership entry reaches it). Leadership may
    /// have moved since `start`.
    async fn follower(&self) -> u64 {
        let watched = Instant::now();
        let deadline = watched + WAIT;
        loop {
            for node in &self.local.nodes {
                let id = node.spec.id;
                if let Ok(status) = self.client.node_status(&node.spec.address).await {
                    let knows_address = status.members.iter().any(|m| m.id == status.leader_id);
                    if status.leader_id != 0 && status.leader_id != id && status.role == "follower" && knows_address {
                        return id;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no follower learned the leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends and receives message bodies as they are, so a test can put any
/// bytes on the wire where a protobuf message belongs.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

async fn channel(address: &str) -> Channel {
    Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// One unary call to `path` with `body` as the message bytes.
async fn raw_unary(address: &str, path: &'static str, body: Bytes) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(channel(address).await);
    grpc.ready().await.expect("channel ready");
    grpc.unary(tonic::Request::new(body), PathAndQuery::from_static(path), RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// Garbage where the protobuf belongs gets INVALID_ARGUMENT on both client
/// services; an Append over the message limit gets RESOURCE_EXHAUSTED naming
/// the limit; the node serves normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_oversize_requests() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(&[3, 7, 11]).await;
    // Any node will do: codec errors are answered before leadership matters.
    let node = cluster.address(7);

    // An 11-byte varint: prost refuses it whatever the message type.
    let garbage = Bytes::from_static(&[0xff; 11]);
    for path in ["/txlog.v1.LogService/Append", "/txlog.v1.AdminService/Remove"] {
        let status = raw_unary(&node, path, garbage.clone()).await.expect_err(path);
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(status.message().contains("decode"), "{path}: {status:?}");
    }

    // The generated client has no send limit of its own, so the node judges.
    let mut client = LogServiceClient::new(channel(&node).await);
    let record = Record {
        txid: Bytes::from_static(b"too-big"),
        channel: "orders".to_string(),
        payload: vec![b'x'; MESSAGE_BYTES_MAX + 1].into(),
        client_time_ns: 0,
    };
    let status = client
        .append(AppendRequest { records: vec![record] })
        .await
        .expect_err("an append over the message limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(&MESSAGE_BYTES_MAX.to_string()), "{status:?}");

    // The peer replication stream: bytes that are not a message, and a
    // message whose checksum does not match its body, end it with
    // INVALID_ARGUMENT before openraft sees anything.
    let bad_crc = RaftMessage {
        version: RAFT_MESSAGE_VERSION,
        body: Bytes::from_static(b"not postcard"),
        crc32: 1,
    }
    .encode_to_vec();
    for (body, expected) in [(garbage.clone(), "not a valid message"), (bad_crc.into(), "checksum")] {
        let status = raw_stream(&node, "/txlog.v1.RaftService/StreamAppend", body)
            .await
            .expect_err("a bad replication message");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }

    let result = cluster
        .client
        .append_one("orders", b"after", b"fine")
        .await
        .expect("append");
    let all = cluster.client.read(1, 100, None, false).await.expect("read");
    let clients: Vec<_> = all.records.iter().filter(|r| !r.channel.starts_with('_')).collect();
    assert_eq!(clients.len(), 1, "no bad request wrote anything: {clients:?}");
    assert_eq!(clients[0].seq, result.seq);
}

/// One message on a bidirectional stream to `path`; the replies up to the
/// status the stream ended with.
async fn raw_stream(address: &str, path: &'static str, body: Bytes) -> Result<Vec<Bytes>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel(address).await);
    grpc.ready().await.expect("channel ready");
    let request = tonic::Request::new(tokio_stream::iter([body]));
    let mut inbound = grpc
        .streaming(request, PathAndQuery::from_static(path), RawCodec)
        .await?
        .into_inner();
    let mut replies = Vec::new();
    while let Some(reply) = tokio::time::timeout(WAIT, inbound.message())
        .await
        .expect("the stream ends within 30 s")?
    {
        replies.push(reply);
    }
    Ok(replies)
}

fn record(txid: &str, channel: &str) -> Record {
    Record {
        txid: Bytes::copy_from_slice(txid.as_bytes()),
        channel: channel.to_string(),
        payload: Bytes::from_static(b"BUY 100"),
        client_time_ns: 0,
    }
}

/// Send `messages` on one append stream to `address`; the replies by id
/// once `expected` calls are answered, or the status the stream ended with.
async fn append_stream(
    address: &str,
    messages: Vec<AppendStreamRequest>,
    expected: usize,
) -> Result<std::collections::BTreeMap<u64, AppendReply>, Status> {
    let mut client = LogServiceClient::new(channel(address).await);
    let mut inbound = client.append_stream(tokio_stream::iter(messages)).await?.into_inner();
    let mut replies = std::collections::BTreeMap::new();
    while replies.len() < expected {
        let message = tokio::time::timeout(WAIT, inbound.message())
            .await
            .expect("an answer within 30 s")?
            .expect("the stream stays open until every call is answered");
        for reply in message.replies {
            assert!(replies.insert(reply.id, reply).is_none(), "one answer per call");
        }
    }
    Ok(replies)
}

/// On an append stream every call gets its own answer: committed, a
/// duplicate txid with the original seq, a refusal of a bad record (the
/// other calls of the message still commit), and on a follower a refusal
/// naming the leader. A message with too many calls, or bytes that are not
/// a message, end the stream with INVALID_ARGUMENT, and nothing is written.
/// Calls spread over many batches commit in the order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_stream_answers_each_call() {
    use tokio_stream::StreamExt;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(&[21, 1000, 40_000]).await;
    let follower = cluster.follower().await;
    let status = cluster
        .client
        .node_status(&cluster.address(follower))
        .await
        .expect("status");
    let leader_id = status.leader_id;
    let leader = cluster.address(leader_id);
    let call = |id, records| AppendCall { id, records };

    let replies = append_stream(
        &leader,
        vec![
            AppendStreamRequest {
                token: None,
                calls: vec![
                    call(10, vec![record("s-1", "orders")]),
                    call(11, vec![record("s-2", "orders"), record("s-3", "BAD CHANNEL")]),
                ],
            },
            AppendStreamRequest {
                token: None,
                calls: vec![
                    call(12, vec![record("s-1", "orders")]),
                    call(13, vec![record("s-4", "fills")]),
                ],
            },
        ],
        4,
    )
    .await
    .expect("stream");
    assert_eq!(replies[&10].error, None);
    assert_eq!(replies[&10].results.len(), 1);
    let first = replies[&10].results[0];
    assert!(!first.duplicate);
    let refused = replies[&11].error.as_ref().expect("a bad record refuses its call");
    assert_eq!(refused.code, Code::InvalidArgument as i32, "{refused:?}");
    assert!(refused.message.contains("record 1"), "{refused:?}");
    assert!(replies[&11].results.is_empty());
    assert_eq!(
        replies[&12].results,
        vec![txlog_proto::AppendResult {
            duplicate: true,
            ..first
        }]
    );
    assert_eq!(replies[&13].results.len(), 1, "{:?}", replies[&13]);
    assert_eq!(
        replies[&13].results[0].seq,
        first.seq + 1,
        "the refused call wrote nothing"
    );

    let on_follower = append_stream(
        &cluster.address(follower),
        vec![AppendStreamRequest {
            token: None,
            calls: vec![call(1, vec![record("s-5", "orders")])],
        }],
        1,
    )
    .await
    .expect("stream");
    let refused = on_follower[&1].error.as_ref().expect("a follower refuses");
    assert_eq!(refused.code, Code::Unavailable as i32, "{refused:?}");
    assert_eq!(refused.leader, leader, "{}", cluster.logs());

    let too_many = AppendStreamRequest {
        token: None,
        calls: (0..=txlog_proto::APPEND_STREAM_MESSAGE_CALLS_MAX as u64)
            .map(|id| call(id, vec![record(&format!("many-{id}"), "orders")]))
            .collect(),
    };
    let status = append_stream(&leader, vec![too_many], 1)
        .await
        .expect_err("too many calls");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains(&txlog_proto::APPEND_STREAM_MESSAGE_CALLS_MAX.to_string()),
        "{status:?}"
    );

    let mut grpc = tonic::client::Grpc::new(channel(&leader).await);
    grpc.ready().await.expect("channel ready");
    let garbage = tokio_stream::iter(vec![Bytes::from_static(&[0xff; 11])]).chain(tokio_stream::pending());
    let outcome = grpc
        .streaming(
            tonic::Request::new(garbage),
            PathAndQuery::from_static("/txlog.v1.LogService/AppendStream"),
            RawCodec,
        )
        .await;
    let status = match outcome {
        Err(status) => status,
        Ok(response) => response
            .into_inner()
            .message()
            .await
            .expect_err("garbage ends the stream with an error"),
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // A stream stays open while its client keeps its side open, and is
    // counted in txlog_append_streams; once the client closes its side it
    // gets every answer, then the end of the stream, and the node lets go
    // of it. Every stream above has ended by now.
    let streams = || cluster.metric(leader_id, "txlog_append_streams");
    let settled = |want: f64, what: &'static str| async move {
        let deadline = Instant::now() + WAIT;
        while streams().await != want {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    settled(0.0, "streams that ended are still counted").await;
    let (requests, outgoing) = tokio::sync::mpsc::channel(1);
    requests
        .send(AppendStreamRequest {
            token: None,
            calls: vec![call(1, vec![record("s-6", "orders")])],
        })
        .await
        .expect("queue a message");
    let mut client = LogServiceClient::new(channel(&leader).await);
    let mut inbound = client
        .append_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .expect("open")
        .into_inner();
    let message = tokio::time::timeout(WAIT, inbound.message())
        .await
        .expect("an answer within 30 s")
        .expect("a message")
        .expect("a reply");
    assert_eq!(message.replies.len(), 1);
    assert_eq!(message.replies[0].error, None, "{:?}", message.replies[0]);
    assert_eq!(streams().await, 1.0, "the open stream is counted");
    drop(requests);
    let end = tokio::time::timeout(WAIT, inbound.message())
        .await
        .expect("the stream ends once every call is answered");
    assert!(matches!(end, Ok(None)), "{end:?}");
    settled(0.0, "the ended stream is still counted").await;

    let read = cluster.client.read(1, 100, None, false).await.expect("read");
    let txids: Vec<_> = read
        .records
        .iter()
        .filter(|r| !r.channel.starts_with('_'))
        .map(|r| r.txid.clone())
        .collect();
    assert_eq!(
        txids,
        vec![
            Bytes::from_static(b"s-1"),
            Bytes::from_static(b"s-4"),
            Bytes::from_static(b"s-6")
        ]
    );

    // Calls commit in the order the stream sent them, however many batches
    // they span (the batcher proposes batches in order, and several are in
    // flight at once). Without that, one round in about six came back out
    // of order; a few rounds make a regression hard to miss.
    const CALLS: u64 = 512;
    const ROUNDS: u64 = 4;
    let batches = || cluster.metric(leader_id, "txlog_append_batches_total");
    let mut most_batches = 0.0f64;
    for round in 0..ROUNDS {
        let batches_before = batches().await;
        let messages = (0..CALLS)
            .map(|id| AppendStreamRequest {
                token: None,
                calls: vec![call(id, vec![record(&format!("ordered-{round}-{id}"), "orders")])],
            })
            .collect();
        let replies = append_stream(&leader, messages, CALLS as usize).await.expect("stream");
        let seqs: Vec<u64> = replies
            .values()
            .map(|reply| {
                assert_eq!(reply.error, None, "{reply:?}");
                assert_eq!(reply.results.len(), 1, "one result per one-record call: {reply:?}");
                reply.results[0].seq
            })
            .collect();
        assert!(
            seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "round {round}: calls committed out of the order they were sent: {seqs:?}"
        );
        most_batches = most_batches.max(batches().await - batches_before);
    }
    // Only calls spread over several batches test the order between batches.
    assert!(
        most_batches >= 2.0,
        "every round of {CALLS} calls went in one batch: nothing was tested"
    );
}

/// `txlog append --cluster <one follower>` reaches the leader through the
/// follower's `txlog-leader` hint (the leader is not in the list), after a
/// redirect or two rather than the whole retry budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_follows_the_leader_hint() {
    const REDIRECT_RETRIES_MAX: usize = 3 * txlog_client::LEADER_REDIRECTS_MAX as usize;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(&[2, 5, 9]).await;
    let follower = cluster.address(cluster.follower().await);

    let out = Command::new(env!("CARGO_BIN_EXE_txlog"))
        .args(["append", "--channel", "orders", "--txid", "via-follower", "BUY 1"])
        .args(["--cluster", &follower])
        .env("TXLOG_LOG", "txlog_client=debug")
        .output()
        .expect("run txlog");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "append through {follower} failed: {stderr}");
    // The seqs before it are the leader's key announcements.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seq: u64 = stdout
        .trim()
        .strip_prefix("seq ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("append printed {stdout:?}"));
    // Normally one redirect; an election during the call (a loaded machine)
    // can add a few. Before the fix the client never reached the leader and
    // gave up after 40 attempts.
    let retries = stderr.lines().filter(|l| l.contains("retrying")).count();
    assert!(
        (1..=REDIRECT_RETRIES_MAX).contains(&retries),
        "expected a redirect or a few, saw {retries}:\n{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_txlog"))
        .args(["read", "--from", "1", "--cluster", &follower])
        .output()
        .expect("run txlog");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("seq={seq} channel=orders")));
}

/// A learner joined at an address where nothing runs: the leader writes one
/// throttled line per few seconds with a count of the failures it held back,
/// not openraft's warning for every heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_failures_to_a_down_learner_are_throttled() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(&[4, 6, 8]).await;
    let nowhere = format!("127.0.0.1:{}", txlog_testkit::free_port().expect("free port"));
    let mut progress = cluster
        .client
        .join(JoinRequest {
            node_id: 12,
            address: nowhere,
            region: "milan".to_string(),
            learner_only: true,
            timeout_ms: 500,
        })
        .await
        .expect("join accepted");
    // The join gives up after its timeout; the learner stays in the membership.
    while let Ok(Some(_)) = progress.message().await {}

    // Read every node's log: leadership may move while the test runs.
    let watched = Instant::now();
    let deadline = watched + WAIT;
    let summary = |l: &&str| l.contains("heartbeats to a peer are failing") && l.contains("peer=12 ");
    let logs = loop {
        let logs = cluster.logs();
        if logs.lines().filter(summary).any(|l| !l.contains("suppressed=0 ")) {
            break logs;
        }
        assert!(Instant::now() < deadline, "no throttled line with a count:\n{logs}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let raw = logs.lines().filter(|l| l.contains("HeartbeatWorker(")).count();
    assert_eq!(raw, 0, "openraft's per-heartbeat warning got through:\n{logs}");
    // Unthrottled, the leader wrote ~80 lines a second. Throttled, each node
    // that leads meanwhile writes at most one line per 5 s window (plus its
    // first): a bound that holds however slow the machine is.
    let windows = watched.elapsed().as_secs() / 5 + 2;
    let allowed = 3 * windows as usize;
    let summaries = logs.lines().filter(summary).count();
    assert!(
        summaries <= allowed,
        "{summaries} lines about node 12, at most {allowed} allowed:\n{logs}"
    );
}

/// A snapshot and a purge show in the node's metrics (snapshot and purged
/// index), and so does the WAL's size as the snapshot policy measures it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_purge_and_wal_metrics() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(&[12, 14, 16]).await;
    for i in 0..20 {
        cluster
            .client
            .append_one("orders", format!("m-{i}").as_bytes(), b"x")
            .await
            .expect("append");
    }
    let address = cluster.address(14);
    let snapshot = cluster.client.snapshot_node(&address).await.expect("snapshot");
    let compact = cluster.client.compact_node(&address).await.expect("compact");
    assert!(snapshot.snapshot_index > 0);
    let deadline = Instant::now() + WAIT;
    loop {
        let snapshot_index = cluster.metric(14, "txlog_raft_snapshot_index").await;
        let purged_index = cluster.metric(14, "txlog_raft_purged_index").await;
        let wal_bytes = cluster.metric(14, "txlog_wal_bytes").await;
        if snapshot_index == snapshot.snapshot_index as f64
            && purged_index == compact.purged_index as f64
            && wal_bytes > 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics: snapshot {snapshot_index}, purged {purged_index}, wal {wal_bytes}; want {} and {}",
            snapshot.snapshot_index,
            compact.purged_index
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The term, leader and index of the leader's last committed entry, once
/// `follower` holds it too (the leader's view of its match index), so an
/// AppendEntries built on it is one the follower would take.
async fn leader_entry_held_by(cluster: &Cluster, follower: u64) -> (u64, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = cluster.client.cluster_status().await.expect("status");
        let held = status
            .nodes
            .iter()
            .any(|n| n.id == follower && n.match_index >= status.commit_index);
        if held {
            return (status.term, status.leader_id.expect("a leader"), status.commit_index);
        }
        assert!(
            Instant::now() < deadline,
            "follower {follower} never caught up: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An AppendEntries from the current leader (`term`, `leader`) whose log
/// ends at `last_index`, carrying `frame` as the next entry: a request
/// openraft would accept.
fn append_request(
    frame: txlog_raft::BatchFrame,
    term: u64,
    leader: u64,
    last_index: u64,
) -> txlog_raft::openraft::raft::AppendEntriesRequest<txlog_raft::TypeConfig> {
    use txlog_raft::openraft::testing::log_id;
    use txlog_raft::TypeConfig;
    let prev = log_id::<TypeConfig>(term, leader, last_index);
    txlog_raft::openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: txlog_raft::Vote::new_committed(term, leader),
        prev_log_id: Some(prev),
        entries: vec![txlog_raft::Entry {
            log_id: log_id::<TypeConfig>(term, leader, last_index + 1),
            payload: txlog_raft::openraft::EntryPayload::Normal(frame),
        }],
        leader_commit: Some(prev),
    }
}

/// [`append_request`] as a peer message.
fn append_entries_with(frame: txlog_raft::BatchFrame, term: u64, leader: u64, last_index: u64) -> Bytes {
    let body = postcard::to_allocvec(&append_request(frame, term, leader, last_index)).expect("encode");
    RaftMessage {
        version: RAFT_MESSAGE_VERSION,
        crc32: crc32fast::hash(&body),
        body: body.into(),
    }
    .encode_to_vec()
    .into()
}

/// A batch body of one record.
fn one_record(txid: &'static [u8], channel: &str, payload: &'static [u8]) -> txlog_raft::BatchBody {
    txlog_raft::BatchBody {
        created_ns: 1,
        records: vec![txlog_storage::NewRecord {
            txid: Bytes::from_static(txid),
            channel: channel.into(),
            payload: Bytes::from_static(payload),
            client_time_ns: 0,
        }],
    }
}

/// A follower refuses, before its WAL, an entry that is plain, sealed under
/// keys the cluster never announced, or a key announcement proven under
/// another cluster's key file: PERMISSION_DENIED, counted, nothing written;
/// the cluster goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_entries_never_reach_a_follower() {
    use txlog_raft::BatchFrame;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(&[5, 700, 90_000]).await;
    let ok = cluster
        .client
        .append_one("orders", b"real", b"fine")
        .await
        .expect("append");
    let follower = cluster.follower().await;
    let node = cluster.address(follower);
    // The leader's last entry (its own, in its term) once the follower has it too.
    let (term, leader, last_index) = leader_entry_held_by(&cluster, follower).await;
    let rejected_before = cluster.metric(follower, "txlog_seal_rejected_batches_total").await;

    let body = one_record(b"forged", "orders", b"FORGED PAYLOAD");
    let plain = BatchFrame::encode(1, &body);
    let stranger_key = txlog_raft::DataKey::new(7, &[9; 32]);
    let stranger = txlog_raft::Signer::new(8, &[10; 32]);
    let with = txlog_raft::SealWith {
        node_id: 1,
        data_key: &stranger_key,
        signer: &stranger,
    };
    let sealed_by_stranger = BatchFrame::seal(1, &body, &with, 1);
    let foreign_kek = txlog_storage::KekFile {
        keks: vec![txlog_storage::Kek {
            id: 1,
            created_ns: 0,
            key: [42; 32],
        }],
    };
    let foreign = txlog_raft::Keys::new(&foreign_kek);
    let foreign_announcement = txlog_raft::KeyEvent::frame(1, &[foreign.new_data_key(1).expect("key")]);
    for (what, frame, expected) in [
        ("a plain batch", plain, "accepts only sealed batches"),
        ("a batch under unknown keys", sealed_by_stranger, "unknown key"),
        ("another cluster's data key", foreign_announcement, "does not unwrap"),
    ] {
        let message = append_entries_with(frame, term, leader, last_index);
        let status = raw_unary(&node, "/txlog.v1.RaftService/AppendEntries", message)
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
        assert!(status.message().contains(expected), "{what}: {status:?}");
    }
    // The counter reaches /metrics within a second or so (see node.rs).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rejected = cluster.metric(follower, "txlog_seal_rejected_batches_total").await;
        if rejected - rejected_before == 3.0 || Instant::now() > deadline {
            assert_eq!(rejected - rejected_before, 3.0, "each refusal is counted");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing forged was written anywhere; the cluster still commits.
    let next = cluster
        .client
        .append_one("orders", b"after", b"fine")
        .await
        .expect("append");
    assert!(next.seq > ok.seq);
    let read = cluster.client.read(1, 100, None, false).await.expect("read");
    assert!(
        read.records.iter().all(|r| &r.payload[..] != b"FORGED PAYLOAD"),
        "{:?}",
        read.records
    );
    assert!(cluster.metric(follower, "txlog_seal_verified_batches_total").await >= 1.0);
}

/// Rotating keys on an unsealed cluster is refused with a reason, not
/// retried or ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_keys_needs_sealing() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_sealed(&[42], false).await;
    let err = cluster
        .client
        .rotate_keys(true, false)
        .await
        .expect_err("no keys to rotate");
    let message = err.to_string();
    assert!(message.contains("sealing is off"), "{message}");
    let status = cluster.client.cluster_status().await.expect("status");
    assert_eq!(status.leader_id, Some(42), "the node still serves");
}

/// An AppendEntries a follower refuses as damaged (a batch frame whose CRC
/// does not match) is answered INVALID_ARGUMENT, and the sender counts it
/// as refused (openraft then sends the same entries again); a forged one
/// (a plain client batch in a sealed cluster: PERMISSION_DENIED) is not
/// counted as damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_appends_are_counted_by_the_sender() {
    use txlog_raft::openraft::network::v2::RaftNetworkV2;
    use txlog_raft::openraft::network::RPCOption;
    use txlog_raft::openraft::RaftNetworkFactory;
    use txlog_raft::BatchFrame;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(&[3, 30, 300]).await;
    cluster
        .client
        .append_one("orders", b"real", b"fine")
        .await
        .expect("append");
    let follower = cluster.follower().await;
    let (term, leader, last_index) = leader_entry_held_by(&cluster, follower).await;

    // A sender of our own: a network with its own counters, over a state
    // machine of its own (it only serves delta resyncs, unused here).
    let dir = tempfile::tempdir().expect("tempdir");
    let state_machine = txlog_raft::StateMachine::open(dir.path()).expect("state machine");
    let stats = txlog_raft::ResyncStats::new();
    let mut network = txlog_raft::Network::new(state_machine.reader(), stats.clone());
    let node = txlog_raft::NodeInfo {
        address: cluster.address(follower),
        region: "frankfurt".into(),
    };
    let mut peer = network.new_client(follower, &node).await;
    let request = |frame: BatchFrame| append_request(frame, term, leader, last_index);
    let body = one_record(b"damaged", "_keys", b"not a key event");
    let mut damaged = BatchFrame::encode(1, &body);
    let last = damaged.0.len() - 1;
    damaged.0[last] ^= 0x01;
    let option = RPCOption::new(Duration::from_secs(5));
    let refused = peer.append_entries(request(damaged), option.clone()).await;
    assert!(refused.is_err(), "a damaged entry is refused: {refused:?}");
    assert_eq!(stats.counts().appends_refused, 1);

    let client_batch = one_record(b"damaged", "orders", b"not a key event");
    let forged = BatchFrame::encode(1, &client_batch);
    let refused = peer.append_entries(request(forged), option).await;
    assert!(refused.is_err(), "a forged entry is refused: {refused:?}");
    assert_eq!(stats.counts().appends_refused, 1, "a forgery is not damage");
}

/// A follower that comes back behind the leader gets its missing entries
/// many to an AppendEntries, and checks their signatures with batch
/// verification: after catching up on 300 sealed batches it has counted
/// batch verifications, and every entry as verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catching_up_follower_verifies_in_batches() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(&[21, 500, 9_000]).await;
    let status = cluster.client.cluster_status().await.expect("status");
    let leader = status.leader_id.expect("leader");
    let follower = *[21, 500, 9_000].iter().find(|&&id| id != leader).expect("a follower");
    let i = cluster.local.index_of(follower).expect("member");
    cluster.local.kill(i);
    let mut last = 0;
    for n in 0..300 {
        last = cluster
            .client
            .append_one("orders", format!("behind-{n}").as_bytes(), b"while a follower is down")
            .await
            .expect("append with two of three up")
            .seq;
    }
    cluster.local.start(i).expect("restart the follower");
    let address = cluster.address(follower);
    let deadline = Instant::now() + WAIT;
    loop {
        let applied = cluster.client.node_status(&address).await.map_or(0, |s| s.last_seq);
        let batches = cluster
            .try_metric(follower, "txlog_seal_signature_batches_total")
            .await
            .unwrap_or(0.0);
        let verified = cluster
            .try_metric(follower, "txlog_seal_verified_batches_total")
            .await
            .unwrap_or(0.0);
        if applied >= last && batches > 0.0 && verified >= 300.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follower {follower}: applied {applied} of {last}, {batches} batch verifications, {verified} verified\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A unary call to `path` on `address`, from the local address `from`.
async fn raw_unary_from(address: &str, from: &str, path: &'static str, body: Bytes) -> Result<Bytes, Status> {
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .local_address(Some(from.parse().expect("an IP address")))
        .connect()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

/// Allowlists by source address and service: with peers and admin limited
/// to 127.0.0.1 and clients to 127.0.0.1 and 127.0.0.2, a call from
/// 127.0.0.2 to RaftService or AdminService is PERMISSION_DENIED naming the
/// list, while its read is served; a connection from 127.0.0.3 (in no
/// list) is closed before any reply. Refusals are counted and logged; the
/// cluster's own traffic (127.0.0.1) keeps committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlists_refuse_by_address_and_service() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_with(
        &[31, 700, 12_000],
        true,
        &[
            "--allow-peers",
            "127.0.0.1",
            "--allow-admin",
            "127.0.0.1/32",
            "--allow-clients",
            "127.0.0.1,127.0.0.2",
        ],
    )
    .await;
    let first = cluster
        .client
        .append_one("orders", b"allowed", b"from 127.0.0.1")
        .await
        .expect("append from an allowed address");
    let node = cluster.address(700);

    let status = raw_unary_from(&node, "127.0.0.2", "/txlog.v1.RaftService/Vote", Bytes::new())
        .await
        .expect_err("a vote from a client address");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("allow_peers"), "{status:?}");
    let status = raw_unary_from(&node, "127.0.0.2", "/txlog.v1.AdminService/Status", Bytes::new())
        .await
        .expect_err("admin from a client address");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("allow_admin"), "{status:?}");
    let read = txlog_proto::ReadRequest {
        from_seq: 1,
        limit: 10,
        stale: true,
        ..Default::default()
    };
    raw_unary_from(
        &node,
        "127.0.0.2",
        "/txlog.v1.LogService/Read",
        prost::Message::encode_to_vec(&read).into(),
    )
    .await
    .expect("a read from an allowed client address");

    // In no list: the connection is closed before any reply.
    let (closed, _) = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt as _;
        use tokio::io::AsyncWriteExt as _;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        let mut stream = socket.connect(node.parse().unwrap()).await.unwrap();
        let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 64];
        (matches!(stream.read(&mut buf).await, Ok(0) | Err(_)), ())
    })
    .await
    .expect("closed within 5 s");
    assert!(closed, "a connection from 127.0.0.3 got an answer");

    let deadline = Instant::now() + WAIT;
    loop {
        let connections = cluster
            .try_metric(700, "txlog_connections_refused_total")
            .await
            .unwrap_or(0.0);
        let calls = cluster
            .try_metric(700, "txlog_calls_refused_total")
            .await
            .unwrap_or(0.0);
        if connections >= 1.0 && calls >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refusals counted: {connections} connections, {calls} calls"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = cluster.logs();
    assert!(logs.contains("connection refused: address in no allowlist"), "{logs}");
    // And audited, by source address.
    let deadline = Instant::now() + WAIT;
    loop {
        let events = audit_events(&cluster.client).await;
        let from = |what: txlog::audit::Refusal, address: &str| {
            events
                .iter()
                .filter(|e| {
                    matches!(e, txlog::audit::AuditEvent::Refused { what: w, source, .. } if *w == what && source == address)
                })
                .count()
        };
        let connections = from(txlog::audit::Refusal::Connection, "127.0.0.3");
        let calls = from(txlog::audit::Refusal::Call, "127.0.0.2");
        if connections >= 1 && calls >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audited: {connections} connections from 127.0.0.3, {calls} calls from 127.0.0.2\n{events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let next = cluster
        .client
        .append_one("orders", b"still", b"committing")
        .await
        .expect("the cluster still commits");
    assert!(next.seq > first.seq);
}

/// Every event of the `_audit` channel, read through `client`; the chain
/// must hold.
async fn audit_events(client: &Client) -> Vec<txlog::audit::AuditEvent> {
    let mut check = txlog::audit::ChainCheck::default();
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page = client
            .read(from, 1000, Some(txlog::audit::AUDIT_CHANNEL), false)
            .await
            .expect("read _audit")
            .records;
        let Some(last) = page.last().map(|r| r.seq) else {
            break;
        };
        for record in &page {
            check.push(record.seq, &record.payload);
            let decoded = txlog::audit::AuditRecord::decode(&record.payload).expect("an audit record");
            events.extend(decoded.entries.into_iter().map(|e| e.event));
        }
        from = last + 1;
    }
    assert_eq!(check.first_break, None, "the audit chain holds");
    events
}

/// A client of `cluster` signing as `secret` claiming `roles`.
fn client_as(cluster: &Cluster, secret: &ClientSecret, roles: &[&str]) -> Client {
    let credentials =
        Credentials::new(secret.clone(), roles.iter().map(|r| r.to_string()).collect()).expect("credentials");
    anonymous(cluster).with_credentials(credentials)
}

/// A client of `cluster` that speaks TLS (with the local client
/// certificate) but signs nothing.
fn anonymous(cluster: &Cluster) -> Client {
    let tls = cluster
        .local
        .client_tls()
        .expect("client certificate")
        .expect("a secured cluster");
    Client::connect(&cluster.local.addresses())
        .expect("client")
        .with_tls(&tls)
}

fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (Code, String) {
    let err = result.expect_err("refused");
    (err.code(), err.to_string())
}

/// A `Read` of `request` sent to `address` with `token` (or none) in its metadata.
async fn raw_read(
    cluster: &Cluster,
    address: &str,
    request: ReadRequest,
    token: Option<&RequestToken>,
) -> Result<(), tonic::Status> {
    let mut call = tonic::Request::new(request);
    if let Some(token) = token {
        call.metadata_mut().insert_bin(
            TOKEN_METADATA_KEY,
            tonic::metadata::MetadataValue::from_bytes(&token.encode_to_vec()),
        );
    }
    let tls = cluster
        .local
        .client_tls()
        .expect("client certificate")
        .expect("a secured cluster");
    let channel = txlog_client::endpoint(address, Some(tls.client_config()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    LogServiceClient::new(channel).read(call).await.map(|_| ())
}

async fn refusals(cluster: &Cluster, id: u64) -> (f64, f64) {
    (
        cluster.metric(id, "txlog_tokens_refused_total").await,
        cluster.metric(id, "txlog_calls_denied_total").await,
    )
}

/// Keys and roles added through the root key decide what each client may
/// do; expired, future-dated, replayed, wrongly keyed and revoked tokens are
/// refused UNAUTHENTICATED, role violations PERMISSION_DENIED; a
/// subscription of a revoked key is closed ABORTED; and none of it writes a
/// record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_decide_every_call() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_secured(&[11, 2000, 70_000]).await;
    let root = cluster.client.clone();
    root.append_one("orders", b"o-1", b"first")
        .await
        .expect("the root key appends");

    // Unsigned calls are refused before anything happens.
    let anonymous = anonymous(&cluster);
    let (code, message) = code_of(anonymous.append_one("orders", b"anon", b"x").await);
    assert_eq!(code, Code::Unauthenticated, "{message}");
    assert!(message.contains("needs a request token"), "{message}");
    let (code, _) = code_of(anonymous.cluster_status().await.map(|_| ()));
    assert_ne!(code, Code::Ok);

    for (role, rule) in [
        ("writer", "append,read:orders"),
        ("reader", "read,subscribe:*"),
        ("md-bot", "subscribe:order-book"),
    ] {
        root.set_role(role, vec![rule.to_string()]).await.expect("set role");
    }
    let desk = ClientSecret::generate("desk-1").unwrap();
    let risk = ClientSecret::generate("risk-1").unwrap();
    let bot = ClientSecret::generate("bot-1").unwrap();
    for (key, role) in [(&desk, "writer"), (&risk, "reader"), (&bot, "md-bot")] {
        root.add_client_key(AddClientKeyRequest {
            key_id: key.key_id().to_string(),
            secret: key.secret().to_vec().into(),
            roles: vec![role.to_string()],
        })
        .await
        .expect("add key");
    }
    let (code, message) = code_of(
        root.add_client_key(AddClientKeyRequest {
            key_id: "root".into(),
            secret: vec![1; 32].into(),
            roles: vec!["writer".into()],
        })
        .await,
    );
    assert_eq!(
        code,
        Code::InvalidArgument,
        "the root key's id is not for the log: {message}"
    );

    // What each key may do.
    let desk_client = client_as(&cluster, &desk, &["writer"]);
    desk_client
        .append_one("orders", b"o-2", b"buy")
        .await
        .expect("a writer appends to orders");
    desk_client
        .read(1, 10, Some("orders"), false)
        .await
        .expect("a writer reads orders");
    let (code, message) = code_of(desk_client.append_one("fills", b"f-1", b"x").await);
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(message.contains("may not append on channel \"fills\""), "{message}");
    let (code, _) = code_of(desk_client.read(1, 10, None, false).await);
    assert_eq!(code, Code::PermissionDenied, "reading every channel needs a * rule");
    let (code, _) = code_of(desk_client.cluster_status().await.map(|_| ()));
    assert_eq!(code, Code::PermissionDenied, "status is an admin call");

    let risk_client = client_as(&cluster, &risk, &[]);
    risk_client
        .read(1, 10, None, false)
        .await
        .expect("a reader reads everything, claiming every role it has");
    let (code, message) = code_of(risk_client.append_one("orders", b"r-1", b"x").await);
    assert_eq!(code, Code::PermissionDenied, "a reader appending: {message}");
    let found = risk_client.lookup(b"o-2", false).await.expect("lookup");
    assert!(found.is_some());
    let refused_append = client_as(&cluster, &desk, &["writer"])
        .lookup(b"r-1", false)
        .await
        .expect("lookup");
    assert!(refused_append.is_none(), "a refused append wrote nothing");

    let claims_other = client_as(&cluster, &desk, &["reader"]);
    let (code, message) = code_of(claims_other.read(1, 10, None, false).await);
    assert_eq!(
        code,
        Code::PermissionDenied,
        "a role claimed but not granted: {message}"
    );

    // Tokens that fail a check, sent by hand.
    let leader_id = root
        .cluster_status()
        .await
        .expect("status")
        .leader_id
        .expect("a leader");
    let leader = cluster.address(leader_id);
    let request = ReadRequest {
        from_seq: 1,
        limit: 10,
        channel: Some("orders".into()),
        stale: false,
    };
    let digest = token_payload_digest(&request);
    let issue = |key: &ClientSecret, at_ms: u64, ttl_s: u64| {
        key.issue(
            &["writer".into()],
            Duration::from_secs(ttl_s),
            at_ms,
            methods::READ,
            &digest,
        )
        .unwrap()
    };
    let refused = |result: Result<(), tonic::Status>, code: Code, says: &str| {
        let status = result.expect_err(says);
        assert_eq!(status.code(), code, "{says}: {status:?}");
        assert!(status.message().contains(says), "{says}: {status:?}");
        assert!(
            !status.message().contains(&desk.to_line()[7..]),
            "no secret in {status:?}"
        );
    };
    let good = issue(&desk, wall_clock_ms(), 60);
    raw_read(&cluster, &leader, request.clone(), Some(&good))
        .await
        .expect("a good token");
    refused(
        raw_read(&cluster, &leader, request.clone(), Some(&good)).await,
        Code::Unauthenticated,
        "already used",
    );
    refused(
        raw_read(
            &cluster,
            &leader,
            request.clone(),
            Some(&issue(&desk, wall_clock_ms() - 400_000, 60)),
        )
        .await,
        Code::Unauthenticated,
        "expired",
    );
    refused(
        raw_read(
            &cluster,
            &leader,
            request.clone(),
            Some(&issue(&desk, wall_clock_ms() + 300_000, 60)),
        )
        .await,
        Code::Unauthenticated,
        "in the future",
    );
    let forged = ClientSecret::new("desk-1", [7; 32]).unwrap();
    refused(
        raw_read(
            &cluster,
            &leader,
            request.clone(),
            Some(&issue(&forged, wall_clock_ms(), 60)),
        )
        .await,
        Code::Unauthenticated,
        "MAC does not match",
    );
    let other_payload = ReadRequest {
        channel: Some("fills".into()),
        ..request.clone()
    };
    refused(
        raw_read(
            &cluster,
            &leader,
            other_payload,
            Some(&issue(&desk, wall_clock_ms(), 60)),
        )
        .await,
        Code::Unauthenticated,
        "MAC does not match",
    );
    refused(
        raw_read(
            &cluster,
            &leader,
            request.clone(),
            Some(&issue(&ClientSecret::generate("nobody").unwrap(), wall_clock_ms(), 60)),
        )
        .await,
        Code::Unauthenticated,
        "unknown key",
    );

    // A subscription of a key that is then revoked is closed, retryably.
    let bot_client = client_as(&cluster, &bot, &["md-bot"]);
    let mut stream = bot_client.subscribe(1, Some("order-book")).await.expect("subscribe");
    let (code, _) = code_of(bot_client.subscribe(1, Some("orders")).await.map(|_| ()));
    assert_eq!(code, Code::PermissionDenied);
    root.append_one("order-book", b"ob-1", b"bid").await.expect("append");
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a record within 30 s")
        .expect("stream open")
        .expect("a record");
    assert_eq!(first.channel, "order-book");
    root.revoke_client_key("bot-1").await.expect("revoke");
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("closed within 30 s");
    let status = ended.expect_err("closed with a status");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    let (code, message) = code_of(bot_client.subscribe(1, Some("order-book")).await.map(|_| ()));
    assert_eq!(code, Code::Unauthenticated, "a revoked key: {message}");

    // A flood of bad tokens: every one refused and counted, nothing written.
    let (refused_before, _) = refusals(&cluster, leader_id).await;
    let last_before = root.read(1, 1, None, false).await.expect("read").last_seq;
    let flood = 10_000;
    let forged_flood = {
        let flooder = client_as(&cluster, &forged, &["writer"]);
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let flooder = flooder.separate();
            tasks.push(tokio::spawn(async move {
                let mut refused = 0;
                for i in (worker..flood).step_by(8) {
                    let txid = format!("flood-{i}");
                    if let Err(err) = flooder.append_one("orders", txid.as_bytes(), b"x").await {
                        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
                        refused += 1;
                    }
                }
                refused
            }));
        }
        let mut refused = 0;
        for task in tasks {
            refused += task.await.expect("flooder");
        }
        refused
    };
    assert_eq!(forged_flood, flood, "every forged append refused");
    let (refused_after, _) = refusals(&cluster, leader_id).await;
    assert!(
        refused_after - refused_before >= flood as f64,
        "counted: {refused_before} -> {refused_after}"
    );
    // Refused calls wrote nothing but their audit records, aggregated: a
    // handful for the whole flood, not one per call.
    let written = root
        .read(last_before + 1, 10_000, None, false)
        .await
        .expect("read")
        .records;
    assert!(
        written.iter().all(|r| r.channel == txlog::audit::AUDIT_CHANNEL),
        "refused calls wrote records: {:?}",
        written.iter().map(|r| (r.seq, r.channel.clone())).collect::<Vec<_>>()
    );
    assert!(
        written.len() < 50,
        "{} audit records for {flood} refusals",
        written.len()
    );

    // Each refusal above is in the audit trail, with its reason; the flood
    // as a few aggregated events whose counts add up to it.
    use txlog::audit::AuditEvent;
    use txlog::audit::Refusal;
    let refused_for = |events: &[AuditEvent], what: Refusal, says: &str| -> u64 {
        events
            .iter()
            .filter_map(|e| match e {
                AuditEvent::Refused {
                    what: w, reason, count, ..
                } if *w == what && reason.contains(says) => Some(*count),
                _ => None,
            })
            .sum()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let events = audit_events(&root).await;
        let missing: Vec<&str> = [
            (Refusal::Token, "needs a request token"),
            (Refusal::Token, "already used"),
            (Refusal::Token, "expired"),
            (Refusal::Token, "in the future"),
            (Refusal::Token, "unknown key"),
            (Refusal::Token, "revoked"),
            (Refusal::Permission, "may not append on channel \"fills\""),
            (Refusal::Permission, "may not append on channel \"orders\""),
        ]
        .into_iter()
        .filter(|(what, says)| refused_for(&events, *what, says) == 0)
        .map(|(_, says)| says)
        .collect();
        let flooded = refused_for(&events, Refusal::Token, "MAC does not match");
        let admin_calls = events
            .iter()
            .filter(|e| matches!(e, AuditEvent::Admin { method, .. } if method == "AddClientKey" || method == "RevokeClientKey"))
            .count();
        if missing.is_empty() && flooded >= flood as u64 && admin_calls >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit trail lacks {missing:?}; {flooded} MAC refusals of {flood}; {admin_calls} key changes\n{events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, denied) = refusals(&cluster, leader_id).await;
    assert!(denied >= 1.0, "denials counted on the leader");
}
