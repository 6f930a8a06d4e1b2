//! The audit trail on real nodes: refusals seen on any node (tokens,
//! handshakes) and admin calls land in the `_audit` channel, the hash
//! chain verifies across a leader change, and an audit learner holds a
//! copy that verifies on its own.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::txlog;
use common::Cli;
use common::TestCluster;
use common::SERIAL;
use tonic::Code;
use txlog_client::Client;
use txlog_client::ClientOptions;

const WAIT: Duration = Duration::from_secs(30);

/// `txlog audit tail` output, once it holds every one of `expected`.
fn wait_for_audit(cli: &Cli, cluster: &TestCluster, expected: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, out, err) = txlog(cli, &["audit", "tail"]);
        assert!(ok, "audit tail: {err}");
        if expected.iter().all(|e| out.contains(e)) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "the audit trail lacks one of {expected:?}:\n{out}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `txlog audit verify` output; it must succeed.
fn verify(cli: &Cli) -> (u64, String) {
    let (ok, out, err) = txlog(cli, &["audit", "verify"]);
    assert!(ok, "audit verify failed: {err}{out}");
    let records = out
        .split("verified: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no record count in {out:?}"));
    (records, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_admin_calls_are_chained_in_the_audit_channel() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start_with_ids(&[5, 77, 9000], &[]);
    let leader = cluster.wait_for_leader(WAIT).await;
    let cli = cluster.cli();
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    // Two nodes elect a leader; the third may not listen yet.
    cluster.wait_for_seq(follower, 0, WAIT).await;
    let tls = cluster
        .local_client_tls()
        .expect("a secured cluster has a client certificate");

    // An unsigned call to a follower: refused there, recorded through the leader.
    let unsigned = Client::new(
        &cluster.node(follower).address,
        ClientOptions {
            attempts_max: 1,
            ..ClientOptions::default()
        },
    )
    .unwrap()
    .with_tls(&tls);
    let err = unsigned.read(1, 1, None, true).await.expect_err("unsigned");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // A plain connection to the follower: its handshake fails there.
    let plain = Client::new(
        &cluster.node(follower).address,
        ClientOptions {
            attempts_max: 1,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    assert!(plain.read(1, 1, None, true).await.is_err());
    // An admin call on the leader.
    let (ok, _, err) = txlog(&cli, &["admin", "role", "set", "auditor", "--allow", "read:_audit"]);
    assert!(ok, "{err}");

    let trail = wait_for_audit(
        &cli,
        &cluster,
        &[
            &format!("node={follower} "),
            "refused Token from unsigned",
            "refused Handshake from 127.0.0.1",
            "admin SetRole by root",
        ],
    );
    assert!(trail.contains(": ok"), "{trail}");
    let (before, _) = verify(&cli);
    assert!(before >= 2, "{before} records");

    // A new leader picks the chain up where the old one left it.
    let next = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    cluster
        .client()
        .transfer_leader(next)
        .await
        .expect("transfer leadership");
    let deadline = Instant::now() + WAIT;
    while cluster.wait_for_leader(WAIT).await != next {
        assert!(Instant::now() < deadline, "leadership did not move to {next}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, _, err) = txlog(&cli, &["admin", "role", "set", "after", "--allow", "read:*"]);
    assert!(ok, "{err}");
    wait_for_audit(
        &cli,
        &cluster,
        &[
            "admin TransferLeader by root",
            "admin SetRole by root (SetRoleRequest { name: \"after\"",
        ],
    );
    let (after, out) = verify(&cli);
    assert!(after > before, "{after} records after, {before} before: {out}");

    // An audit learner in its own region: a full copy whose chain verifies
    // on its own (read there without asking the leader).
    cluster.start_joining_with(31, "audit", next, &["--learner"]);
    let last = cluster
        .client()
        .append_one("orders", b"after-learner", b"x")
        .await
        .expect("append")
        .seq;
    cluster.wait_for_seq(31, last, WAIT).await;
    let status = cluster.client().cluster_status().await.expect("status");
    let learner = status.nodes.iter().find(|n| n.id == 31).expect("node 31 listed");
    assert_eq!(learner.kind, txlog_client::Kind::Learner, "{status:?}");
    let at_learner = Cli {
        cluster: cluster.node(31).address.clone(),
        ..cli.clone()
    };
    let (ok, out, err) = txlog(&at_learner, &["audit", "verify", "--stale"]);
    assert!(ok, "{err}");
    assert!(out.contains("audit chain verified"), "{out}");
}
