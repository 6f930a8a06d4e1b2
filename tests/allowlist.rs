//! Address allowlists changed at runtime, through the log: every node
//! enforces the new list within moments, a change that would shut out a
//! member or the caller is refused, a reset goes back to the config, and
//! each change is in the audit trail.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::txlog;
use common::TestCluster;
use common::SERIAL;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlists_change_at_runtime_for_every_node() {
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::start_with_ids(&[12, 340, 5600], &[]);
    cluster.wait_for_leader(WAIT).await;
    let cli = cluster.cli();
    let client = cluster.client();
    client.append_one("orders", b"before", b"x").await.expect("append");
    let once = client.separate();
    let probe = |address: String| {
        let client = once.clone();
        async move { client.read_at(&address, 1, 1, true).await }
    };

    // Clients only from 10/8: every node refuses this (127.0.0.1) client.
    let (ok, out, err) = txlog(&cli, &["admin", "allow", "set", "clients", "10.0.0.0/8"]);
    assert!(ok, "{err}");
    assert!(out.contains("allow_clients set to 10.0.0.0/8"), "{out}");
    for id in cluster.ids() {
        let address = cluster.node(id).address.clone();
        let deadline = Instant::now() + WAIT;
        loop {
            match probe(address.clone()).await {
                Err(err) if err.code() == Code::PermissionDenied => {
                    assert!(err.to_string().contains("allow_clients"), "{err}");
                    break;
                }
                other => assert!(
                    Instant::now() < deadline,
                    "node {id} still serves 127.0.0.1: {other:?}\n{}",
                    cluster.logs()
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Admin calls are another list: still allowed.
    let (ok, out, err) = txlog(&cli, &["admin", "allow", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("allow_clients") && l.contains("log") && l.contains("10.0.0.0/8")),
        "{out}"
    );

    // Changes that would shut out a member or the caller are refused.
    let (ok, _, err) = txlog(&cli, &["admin", "allow", "set", "peers", "10.0.0.0/8"]);
    assert!(!ok && err.contains("would no longer be an allowed peer"), "{err}");
    let (ok, _, err) = txlog(&cli, &["admin", "allow", "set", "admin", "10.0.0.0/8"]);
    assert!(!ok && err.contains("could no longer make admin calls"), "{err}");
    let (ok, _, err) = txlog(&cli, &["admin", "allow", "set", "admin", "10.0.0.0/33"]);
    assert!(!ok && err.contains("prefix length"), "{err}");
    // A list that keeps everyone in is taken.
    let (ok, _, err) = txlog(&cli, &["admin", "allow", "set", "peers", "127.0.0.0/8", "10.0.0.0/8"]);
    assert!(ok, "{err}");

    // Back to the config: clients are served again, everywhere.
    let (ok, _, err) = txlog(&cli, &["admin", "allow", "reset", "clients"]);
    assert!(ok, "{err}");
    for id in cluster.ids() {
        let address = cluster.node(id).address.clone();
        let deadline = Instant::now() + WAIT;
        while let Err(err) = probe(address.clone()).await {
            assert!(Instant::now() < deadline, "node {id} still refuses: {err}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let fresh = cluster
        .client()
        .separate()
        .append_one("orders", b"after", b"x")
        .await
        .expect("append after the reset");
    assert!(fresh.seq > 1);

    // Every change, taken or refused, is in the audit trail.
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, out, err) = txlog(&cli, &["audit", "tail"]);
        assert!(ok, "{err}");
        let changes = out.lines().filter(|l| l.contains("admin SetAllowlist by root")).count();
        if changes >= 6 && out.contains("would no longer be an allowed peer") {
            break;
        }
        assert!(Instant::now() < deadline, "{changes} allowlist changes audited:\n{out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
