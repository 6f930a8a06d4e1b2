//! Mutual TLS on real nodes: who may connect (a certificate of the
//! cluster's CA, nothing else), who may speak Raft (node certificates
//! only), and certificates renewed on disk taken without a restart while a
//! broken file is refused and changes nothing.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use common::txlog;
use common::TestCluster;
use common::SERIAL;
use tokio::io::AsyncReadExt as _;
use tokio::io::AsyncWriteExt as _;
use tonic::Code;
use txlog_client::Client;
use txlog_client::ClientOptions;
use txlog_client::TlsFiles;
use txlog_client::TlsPem;
use txlog_proto::raft_service_client::RaftServiceClient;

const WAIT: Duration = Duration::from_secs(30);

fn options() -> ClientOptions {
    ClientOptions {
        attempts_max: 2,
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

/// The certificate `address` serves to a TLS client holding `client` (or
/// none) and trusting `ca`, once the server has also taken the client's
/// side: the first HTTP/2 bytes come back. An error otherwise.
async fn served_certificate(address: &str, ca: &TlsPem, client: Option<&TlsPem>) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca.ca_certificates()? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        Some(pem) => builder
            .with_client_auth_cert(pem.certificate_chain()?, pem.private_key()?)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(txlog_client::NODE_SERVER_NAME).expect("a DNS name");
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let served = stream.get_ref().1.peer_certificates().expect("a server certificate")[0].to_vec();
    // TLS 1.3 settles the client's certificate after the client's side of
    // the handshake: a refusal shows on the first read.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
        Ok(Ok(n)) if n > 0 => Ok(served),
        Ok(Ok(_)) => Err("closed by the server".into()),
        Ok(Err(e)) => Err(format!("refused: {e}")),
        Err(_) => Err("no answer".into()),
    }
}

/// A call that never reached a handler: the connection failed (hyper
/// reports a TLS alert as unavailable or as a cancelled call, depending on
/// when in the handshake it arrives), never an answer from the server.
fn refused_in_transport(err: &txlog_client::ClientError) -> bool {
    matches!(err.code(), Code::Unavailable | Code::Cancelled)
}

fn pem(files: &TlsFiles) -> TlsPem {
    files.read().expect("certificate files")
}

fn der_of(files: &TlsFiles) -> Vec<u8> {
    pem(files).certificate_chain().expect("a certificate")[0].to_vec()
}

fn certs(cluster: &TestCluster) -> &Path {
    cluster.certs_dir().expect("a secured cluster")
}

/// A `PreVote` with an empty message on `address`, over TLS as `holder`.
async fn pre_vote_as(address: &str, holder: &TlsPem) -> tonic::Status {
    let channel = txlog_client::endpoint(address, Some(holder.client_config()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    RaftServiceClient::new(channel)
        .pre_vote(txlog_proto::RaftMessage::default())
        .await
        .expect_err("an empty pre-vote is never granted")
}

/// Only a certificate of this cluster's CA gets a connection; only a node
/// certificate gets `RaftService`; the cluster itself commits throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_clusters_certificates_connect_and_only_nodes_speak_raft() {
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start_with_ids(&[7, 300, 65_536], &[]);
    let leader = cluster.wait_for_leader(WAIT).await;
    let client = cluster.client();
    client
        .append_one("orders", b"tls-1", b"first")
        .await
        .expect("append over TLS");
    let dir = certs(&cluster);
    let ours = pem(&txlog_testkit::client_tls_files(dir));
    let address = cluster.node(leader).address.clone();

    // Plain HTTP/2 to a TLS port: no answer a client could use.
    let credentials = client.credentials().cloned().expect("root credentials");
    let plain = Client::new(&cluster.addresses(), options())
        .expect("client")
        .with_credentials(credentials.clone());
    let err = plain
        .append_one("orders", b"plain", b"x")
        .await
        .expect_err("plain refused");
    // The transport fails either way: the connection is refused
    // (Unavailable), or the TLS server drops the HTTP/2 preface and the
    // stream dies under the client (Cancelled), as one CI run saw.
    assert!(matches!(err.code(), Code::Unavailable | Code::Cancelled), "{err}");

    // Another cluster's CA and client certificate: refused both ways (the
    // node is not trusted by it, and its certificate is not trusted here).
    let other = tempfile::tempdir().unwrap();
    let other_dir = other.path().to_str().unwrap();
    let (ok, _, err) = txlog("", &["certs", "init", "--dir", other_dir, "--client", "intruder"]);
    assert!(ok, "{err}");
    let intruder = pem(&TlsFiles::in_dir(other.path(), "client-intruder"));
    let err = Client::new(&cluster.addresses(), options())
        .expect("client")
        .with_credentials(credentials.clone())
        .with_tls(&intruder)
        .append_one("orders", b"intruder", b"x")
        .await
        .expect_err("a foreign CA is refused");
    assert!(refused_in_transport(&err), "{err}");
    let foreign_client = TlsPem {
        ca: ours.ca.clone(),
        ..intruder.clone()
    };
    let refused = served_certificate(&address, &ours, Some(&foreign_client)).await;
    assert!(refused.is_err(), "a client certificate of another CA was taken");
    // No client certificate at all.
    let refused = served_certificate(&address, &ours, None).await;
    assert!(refused.is_err(), "a connection without a client certificate was taken");
    // The cluster's own client certificate: taken, and the node shows a
    // node certificate of the cluster's CA.
    let served = served_certificate(&address, &ours, Some(&ours))
        .await
        .expect("our client");
    assert_eq!(served, der_of(&txlog_testkit::node_tls_files(dir, leader)));

    // RaftService: a client certificate is refused by name, a node
    // certificate gets through to the handler (which refuses the empty
    // message for what it is).
    let status = pre_vote_as(&address, &ours).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("only node certificates"), "{status:?}");
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    let node = pem(&txlog_testkit::node_tls_files(dir, follower));
    let status = pre_vote_as(&address, &node).await;
    assert_ne!(status.code(), Code::PermissionDenied, "{status:?}");

    // Each refusal is in the audit trail: handshakes without a
    // certificate of the CA, and the client certificate's Raft call.
    let cli = cluster.cli();
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, out, err) = txlog(&cli, &["audit", "tail"]);
        assert!(ok, "{err}");
        let handshakes = out
            .lines()
            .filter(|l| l.contains("refused Handshake from 127.0.0.1"))
            .count();
        if handshakes >= 1 && out.contains("refused Call from 127.0.0.1") && out.contains("only node certificates") {
            break;
        }
        assert!(Instant::now() < deadline, "refusals not audited:\n{out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Refused connections changed nothing: the cluster commits, the
    // record of the refused clients is nowhere.
    let next = client.append_one("orders", b"tls-2", b"second").await.expect("append");
    let records = cluster.read_all_from(leader).await;
    assert!(records.iter().any(|r| r.seq == next.seq));
    assert!(
        records
            .iter()
            .all(|r| r.txid != b"plain".as_slice() && r.txid != b"intruder".as_slice()),
        "a refused client's record was written"
    );
}

/// A renewed node certificate is served without a restart; a broken one
/// is refused and the renewed one stays; the cluster commits throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_are_taken_without_restart_and_broken_ones_refused() {
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start_with_ids(&[2, 41, 1000], &[]);
    cluster.wait_for_leader(WAIT).await;
    let client = cluster.client();
    client.append_one("orders", b"before", b"x").await.expect("append");
    let dir = certs(&cluster);
    let ours = pem(&txlog_testkit::client_tls_files(dir));
    let id = 41;
    let address = cluster.node(id).address.clone();
    let files = txlog_testkit::node_tls_files(dir, id);
    let old = der_of(&files);
    assert_eq!(served_certificate(&address, &ours, Some(&ours)).await.unwrap(), old);

    let (ok, _, err) = txlog("", &["certs", "issue", "--dir", dir.to_str().unwrap(), "--node", "n41"]);
    assert!(ok, "{err}");
    let renewed = der_of(&files);
    assert_ne!(renewed, old);
    let deadline = Instant::now() + WAIT;
    loop {
        let served = served_certificate(&address, &ours, Some(&ours)).await;
        if served.as_deref() == Ok(renewed.as_slice()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} still serves the old certificate: {served:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A certificate file cut short (a copy in progress): refused, logged,
    // and the node keeps serving the renewed one.
    let text = std::fs::read(&files.cert).unwrap();
    std::fs::write(&files.cert, &text[..text.len() / 2]).unwrap();
    let log = cluster.node(id).log_path();
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("TLS files changed but not taken")
    {
        assert!(Instant::now() < deadline, "no refusal logged\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        served_certificate(&address, &ours, Some(&ours)).await.unwrap(),
        renewed,
        "the certificate in force changed"
    );
    std::fs::write(&files.cert, &text).unwrap();

    // Peers still reach the renewed node and it them: a commit needs two.
    for i in 0..20 {
        client
            .append_one("orders", format!("after-{i}").as_bytes(), b"x")
            .await
            .expect("append after renewal");
    }
    let last = client.append_one("orders", b"last", b"x").await.expect("append").seq;
    cluster.wait_for_seq(id, last, WAIT).await;
}
