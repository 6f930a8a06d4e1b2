//! The README's path through the real binary: `txlog dev`, then append, read,
//! lookup, status (human and --json), then SIGTERM stops all three nodes, and
//! a second `txlog dev` on the same data dir still has every record.

mod common;

use std::io::BufRead;
use std::io::BufReader;
use std::net::TcpListener;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use common::txlog;
use common::Cli;
use common::SERIAL;
use txlog_client::Role;

/// `txlog status` calls tolerated while the cluster settles (200 ms apart).
const STATUS_ATTEMPTS_MAX: u32 = 50;

/// A JSON array of strings.
fn strings(array: &serde_json::Value) -> Vec<&str> {
    array.as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect()
}

/// A JSON array of unsigned numbers.
fn numbers(array: &serde_json::Value) -> Vec<u64> {
    array.as_array().unwrap().iter().map(|a| a.as_u64().unwrap()).collect()
}

/// Three consecutive free ports (best effort: probed, then released).
fn free_port_block() -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if base > 65000 {
            continue;
        }
        let all_free = (0..3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no block of three free ports");
}

/// Start `txlog dev` and wait for its "cluster is up" line.
/// A running `txlog dev`; dropped (a failed assertion), it is stopped with
/// SIGTERM so that it stops its nodes: a killed `txlog dev` would leave them
/// running, each in its own process group.
struct DevProcess(Option<Child>);

impl Drop for DevProcess {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else { return };
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn start_dev(data_dir: &std::path::Path, base_port: u16) -> (DevProcess, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_txlog"))
        .arg("dev")
        .arg("--data-dir")
        .arg(data_dir)
        // No feed: its ports are fixed, and these tests run beside other clusters.
        .args([
            "--base-port",
            &base_port.to_string(),
            "--metrics-base-port",
            "0",
            "--feed-base-port",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn txlog dev");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the banner so txlog dev never writes to a closed pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("logs:") {
                return (DevProcess(Some(child)), banner);
            }
        }
    }
    drop(DevProcess(Some(child)));
    panic!("txlog dev did not come up; output so far:\n{banner}");
}

fn stop_dev(mut dev: DevProcess) {
    let mut child = dev.0.take().expect("running");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "txlog dev exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "txlog dev did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_through_the_cli() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("dev");
    let base = free_port_block();
    let cluster = Cli {
        cluster: format!(
            "127.0.0.1:{},http://127.0.0.1:{},127.0.0.1:{}",
            base,
            base + 1,
            base + 2
        ),
        ..Cli::dev(base, &data_dir)
    };

    let (dev, banner) = start_dev(&data_dir, base);
    for region in ["paris", "frankfurt", "lyon"] {
        assert!(banner.contains(region), "banner lists {region}:\n{banner}");
    }
    assert!(banner.contains("leader"), "banner shows the leader:\n{banner}");

    let (ok, out, err) = txlog(
        &cluster,
        &[
            "append",
            "--channel",
            "order-book",
            "--txid",
            "order-1",
            "BUY 100 EURUSD",
        ],
    );
    assert!(ok, "append failed: {err}");
    // The seqs before the first append are the leader's key announcements.
    let first: u64 = out
        .trim()
        .strip_prefix("seq ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("append printed {out:?}"));
    assert!(first >= 3, "a signing key and a data key come first: {out}");
    let (ok, out, _) = txlog(
        &cluster,
        &[
            "append",
            "--channel",
            "order-book",
            "--txid",
            "order-1",
            "BUY 100 EURUSD",
            "--json",
        ],
    );
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["records"][0]["seq"], first, "a retried txid keeps its seq");
    assert_eq!(json["records"][0]["duplicate"], true);
    let (ok, out, _) = txlog(
        &cluster,
        &["append", "-c", "execution", "-t", "exec-1", "FILLED", "--json"],
    );
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["records"][0]["seq"], first + 1);

    let (ok, out, _) = txlog(&cluster, &["read", "--from", "1"]);
    assert!(ok);
    assert!(
        out.contains(&format!("seq={first} channel=order-book"))
            && out.contains(&format!("seq={} channel=execution", first + 1)),
        "{out}"
    );
    assert!(
        out.contains("seq=1 channel=_keys") && out.contains("payload=<signing key"),
        "key announcements read as what they announce: {out}"
    );
    let (ok, out, err) = txlog(&cluster, &["keys", "status"]);
    assert!(ok, "keys status: {err}");
    assert!(
        out.contains("signing") && out.contains("current, first key, proven under KEK 1"),
        "{out}"
    );
    // Rotation on demand: both keys, then only a data key; the rotated
    // data key is current, and a record appended after it reads back.
    let (ok, out, err) = txlog(&cluster, &["keys", "rotate", "--json"]);
    assert!(ok, "keys rotate: {err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let announced = strings(&json["announced"]);
    assert_eq!(announced.len(), 2, "{out}");
    assert!(
        announced[0].starts_with("signing key ") && announced[1].starts_with("data key "),
        "{out}"
    );
    assert!(json["log_index"].as_u64().unwrap() > 0, "{out}");
    let (ok, out, err) = txlog(&cluster, &["keys", "rotate", "--data"]);
    assert!(ok, "keys rotate --data: {err}");
    let data_key = out
        .split("announced data key ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("names one data key: {out}"))
        .to_string();
    let (ok, _, err) = txlog(&cluster, &["keys", "rotate", "--data", "--signing"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let (ok, out, err) = txlog(&cluster, &["keys", "status", "--json"]);
    assert!(ok, "keys status: {err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let current: Vec<&serde_json::Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "data" && r["current"] == true)
        .collect();
    assert_eq!(current.len(), 1, "{out}");
    assert_eq!(
        current[0]["id"].to_string(),
        data_key,
        "the rotated key is current: {out}"
    );
    let (ok, out, err) = txlog(
        &cluster,
        &["append", "-c", "execution", "-t", "after-rotation", "ROTATED", "--json"],
    );
    assert!(ok, "append after rotation: {err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rotated_seq = json["records"][0]["seq"].as_u64().unwrap();
    let (ok, out, _) = txlog(&cluster, &["read", "--from", &rotated_seq.to_string(), "--limit", "1"]);
    assert!(ok && out.contains("ROTATED"), "{out}");
    let (ok, out, _) = txlog(&cluster, &["lookup", "--txid", "exec-1", "--json"]);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["seq"], first + 1);
    let (ok, _, err) = txlog(&cluster, &["lookup", "--txid", "missing"]);
    assert!(!ok && err.contains("no committed record"), "{err}");
    let (ok, _, err) = txlog(&cluster, &["append", "-c", "Bad Channel", "-t", "x", "p"]);
    assert!(!ok && err.contains("channel name"), "{err}");

    // A loaded machine can show an election or a late heartbeat for a
    // moment: ask again until the cluster settles, then check the shape.
    let mut attempts = 0;
    let (status, roles) = loop {
        let (ok, out, err) = txlog(&cluster, &["status", "--json"]);
        assert!(ok, "{err}");
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        let roles: Vec<Role> = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| serde_json::from_value(n["role"].clone()).expect("a known role"))
            .collect();
        let settled = roles.iter().filter(|r| **r == Role::Leader).count() == 1
            && roles.iter().filter(|r| **r == Role::Follower).count() == 2;
        attempts += 1;
        if settled || attempts >= STATUS_ATTEMPTS_MAX {
            break (status, roles);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(roles.iter().filter(|r| **r == Role::Leader).count(), 1, "{roles:?}");
    assert_eq!(roles.iter().filter(|r| **r == Role::Follower).count(), 2, "{roles:?}");
    for node in nodes {
        assert!(node["id"].is_u64() && node["region"].is_string() && node["address"].is_string());
    }
    let mut attempts = 0;
    let out = loop {
        let (ok, out, _) = txlog(&cluster, &["status"]);
        attempts += 1;
        if (ok && out.contains("leader: node")) || attempts >= STATUS_ATTEMPTS_MAX {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(out.contains("leader: node"), "{out}");

    stop_dev(dev);
    let (ok, _, _) = txlog(&cluster, &["status"]);
    assert!(!ok, "no node answers after txlog dev stopped");

    // Same data dir again: every record is still there.
    let (dev, _) = start_dev(&data_dir, base);
    let (ok, out, err) = txlog(&cluster, &["read", "--from", "1", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let txids: Vec<&str> = json["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["channel"] != "_keys")
        .map(|r| r["txid"].as_str().unwrap())
        .collect();
    assert_eq!(txids, vec!["order-1", "exec-1", "after-rotation"]);
    stop_dev(dev);
}

/// Every node's KEK ids as `txlog status --json` reports them, once each
/// answers; polls until `want` holds or `STATUS_ATTEMPTS_MAX` tries pass.
fn wait_for_keks(cluster: &Cli, want: impl Fn(&[Vec<u64>]) -> bool) -> Vec<Vec<u64>> {
    let mut seen = Vec::new();
    for _ in 0..STATUS_ATTEMPTS_MAX {
        let (ok, out, _) = txlog(cluster, &["status", "--json"]);
        if ok {
            let status: serde_json::Value = serde_json::from_str(&out).unwrap();
            seen = status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| numbers(&n["kek_ids"]))
                .collect();
            if seen.len() == 3 && want(&seen) {
                return seen;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    seen
}

/// A KEK rotation end to end on `txlog dev` (whose nodes share one key
/// file): rotate-kek adds KEK 2 and rewraps every key; retire-kek refuses
/// while WALs hold announcements under KEK 1, then removes it once they
/// are compacted; nodes refuse a foreign key file; and the cluster,
/// restarted with only KEK 2, still reads every record and appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotation_through_the_cli() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("dev");
    let key_file = data_dir.join("cluster.key");
    let key_arg = key_file.to_str().unwrap();
    let base = free_port_block();
    let cluster = Cli::dev(base, &data_dir);
    let (dev, _) = start_dev(&data_dir, base);
    let append = |txid: &str| {
        let (ok, _, err) = txlog(
            &cluster,
            &["append", "-c", "orders", "-t", txid, &format!("payload of {txid}")],
        );
        assert!(ok, "append {txid}: {err}");
    };
    append("before-kek");
    // Another data key under KEK 1, so there are two to rewrap.
    let (ok, _, err) = txlog(&cluster, &["keys", "rotate", "--data"]);
    assert!(ok, "{err}");
    append("before-kek-2");

    let (ok, _, err) = txlog(&cluster, &["keys", "retire-kek", "--key-file", key_arg, "--id", "1"]);
    assert!(!ok && err.contains("is the newest"), "{err}");
    let (ok, out, err) = txlog(&cluster, &["keys", "rotate-kek", "--key-file", key_arg, "--json"]);
    assert!(ok, "rotate-kek: {err}");
    assert!(err.contains("added KEK 2"), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["kek"], 2, "{out}");
    let announced = strings(&json["announced"]);
    assert!(
        announced.iter().filter(|a| a.contains("rewrapped under KEK 2")).count() >= 2
            && announced.iter().any(|a| a.contains("proven under the new KEK")),
        "both data keys rewrapped, the first signing key proven again: {out}"
    );
    let (ok, out, err) = txlog(&cluster, &["keys", "rotate-kek", "--resume", "--key-file", key_arg]);
    assert!(
        ok && out.contains("already wrapped under KEK 2"),
        "a second run has nothing to do: {out}{err}"
    );
    let (ok, out, err) = txlog(&cluster, &["keys", "status", "--json"]);
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    for row in rows.as_array().unwrap() {
        let keks = numbers(&row["keks"]);
        assert!(
            keks.is_empty() || keks.contains(&2),
            "every key proven under KEK 2 (a chained signing key needs none): {row}"
        );
    }
    append("after-kek");

    // KEK 1 still proves announcements in the WALs.
    let (ok, _, err) = txlog(&cluster, &["keys", "retire-kek", "--key-file", key_arg, "--id", "1"]);
    assert!(!ok && err.contains("txlog admin compact"), "{err}");
    for step in ["snapshot", "compact"] {
        let (ok, out, err) = txlog(&cluster, &["admin", step]);
        assert!(ok, "admin {step}: {out}{err}");
    }
    let (ok, out, err) = txlog(&cluster, &["keys", "retire-kek", "--key-file", key_arg, "--id", "1"]);
    assert!(ok && out.contains("removed KEK 1"), "{out}{err}");
    let keks = wait_for_keks(&cluster, |nodes| nodes.iter().all(|k| k == &[2]));
    assert!(keks.iter().all(|k| k == &[2]), "every node reloaded the file: {keks:?}");

    // Another cluster's key file is refused by every node: keys would be stranded.
    let saved = std::fs::read(&key_file).unwrap();
    let foreign = dir.path().join("foreign.key");
    let (ok, _, err) = txlog(&cluster, &["keys", "init", "--out", foreign.to_str().unwrap()]);
    assert!(ok, "{err}");
    std::fs::copy(&foreign, &key_file).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let keks = wait_for_keks(&cluster, |_| true);
    assert!(
        keks.iter().all(|k| k == &[2]),
        "the foreign file is not taken: {keks:?}"
    );
    let log = std::fs::read_to_string(data_dir.join("paris/node.log")).unwrap();
    assert!(log.contains("key file changed but not taken"), "one clear line says so");
    std::fs::write(&key_file, &saved).unwrap();
    // Stopped with every WAL purged to its last entry: the restart below
    // also checks that the restored leader gets its followers back (they
    // once stayed at match 0, refusing the leader's snapshot of a log id
    // they had snapshotted themselves).
    stop_dev(dev);

    // Offline, with only KEK 2: the record file, WAL and snapshots verify.
    let (ok, out, err) = txlog(
        &cluster,
        &[
            "verify",
            "--data-dir",
            data_dir.join("lyon").to_str().unwrap(),
            "--key-file",
            key_arg,
        ],
    );
    assert!(ok && out.contains("verify: ok"), "{out}{err}");
    // Restarted with only KEK 2, every node rebuilds its keyring from the log.
    let (dev, _) = start_dev(&data_dir, base);
    append("after-restart");
    let (ok, out, err) = txlog(&cluster, &["read", "--from", "1", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let records: Vec<(String, String)> = json["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["channel"] == "orders")
        .map(|r| {
            (
                r["txid"].as_str().unwrap().to_string(),
                r["payload"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let txids = ["before-kek", "before-kek-2", "after-kek", "after-restart"];
    assert_eq!(
        records,
        txids
            .iter()
            .map(|t| (t.to_string(), format!("payload of {t}")))
            .collect::<Vec<_>>()
    );
    stop_dev(dev);
}

/// `txlog token secret` writes a 0600 secret file and never replaces one;
/// `txlog token issue` prints a token the node-side check accepts once,
/// for that method and request only; a TTL over 300 s and a secret file
/// others may read are refused.
#[test]
fn token_secret_and_issue() {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("desk.key");
    let secret_arg = secret.to_str().unwrap();
    let (ok, _, err) = txlog("", &["token", "secret", "--key-id", "desk-1", "--out", secret_arg]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    let (ok, _, err) = txlog("", &["token", "secret", "--key-id", "desk-1", "--out", secret_arg]);
    assert!(!ok && err.contains("never replaced"), "{err}");

    let request = txlog_proto::ReadRequest {
        from_seq: 7,
        limit: 10,
        ..Default::default()
    };
    let request_file = dir.path().join("read.bin");
    std::fs::write(&request_file, prost::Message::encode_to_vec(&request)).unwrap();
    let method = "/txlog.v1.LogService/Read";
    let issue = |ttl: &str| {
        txlog(
            "",
            &[
                "token",
                "issue",
                "--secret-file",
                secret_arg,
                "--role",
                "reader",
                "--ttl",
                ttl,
                "--method",
                method,
                "--request",
                request_file.to_str().unwrap(),
            ],
        )
    };
    let (ok, _, err) = issue("301s");
    assert!(!ok && err.contains("at most 300s"), "{err}");
    let (ok, out, err) = issue("60s");
    assert!(ok, "{err}");
    let bytes = base64::engine::general_purpose::STANDARD.decode(out.trim()).unwrap();
    let token: txlog_proto::RequestToken = prost::Message::decode(&bytes[..]).unwrap();
    assert_eq!(
        (token.key_id.as_str(), token.roles.clone()),
        ("desk-1", vec!["reader".to_string()])
    );

    let key = txlog_client::ClientSecret::parse(&std::fs::read_to_string(&secret).unwrap()).unwrap();
    let checker = txlog::token_check::TokenChecker::default();
    let now_ms = txlog_client::wall_clock_ms();
    let secret_of = |id: &str| (id == "desk-1").then(|| *key.secret());
    let digest = txlog_client::token_payload_digest(&request);
    let other = txlog_client::token_payload_digest(&txlog_proto::ReadRequest {
        from_seq: 8,
        ..request.clone()
    });
    assert!(
        checker.check(&token, method, &other, now_ms, secret_of).is_err(),
        "another payload"
    );
    checker
        .check(&token, method, &digest, now_ms, secret_of)
        .expect("the token is accepted");
    assert!(
        checker.check(&token, method, &digest, now_ms, secret_of).is_err(),
        "but only once"
    );

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = issue("60s");
    assert!(!ok && err.contains("chmod 600"), "{err}");
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else if path.is_file() {
            files.push(path);
        }
    }
    files
}

/// Client keys and roles through the CLI on `txlog dev`: a key needs its
/// roles defined first, a bad rule and a second add are refused with a
/// clear error, every node lists the same key and role at the same seqs,
/// a revocation shows everywhere, and the secret is on no node's disk in
/// clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_policy_through_the_cli() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("dev");
    let base = free_port_block();
    let cluster = Cli::dev(base, &data_dir);
    let (dev, _) = start_dev(&data_dir, base);
    let secret_file = dir.path().join("desk-1.key");
    let secret_arg = secret_file.to_str().unwrap();
    let add = || {
        txlog(
            &cluster,
            &[
                "admin",
                "key",
                "add",
                "--key-id",
                "desk-1",
                "--role",
                "trader",
                "--secret-file",
                secret_arg,
            ],
        )
    };
    let (ok, _, err) = add();
    assert!(!ok && err.contains("role \"trader\" is not defined"), "{err}");
    let (ok, _, err) = txlog(&cluster, &["admin", "role", "set", "trader", "--allow", "write:orders"]);
    assert!(!ok && err.contains("unknown operation"), "{err}");
    let (ok, out, err) = txlog(
        &cluster,
        &[
            "admin",
            "role",
            "set",
            "trader",
            "--allow",
            "append,read:orders",
            "--allow",
            "subscribe:md.*",
        ],
    );
    assert!(ok && out.contains("role \"trader\" set"), "{out}{err}");
    let (ok, out, err) = add();
    assert!(ok && out.contains("added client key \"desk-1\""), "{out}{err}");
    let (ok, _, err) = add();
    assert!(!ok && err.contains("revoke it first"), "{err}");
    let (ok, out, err) = txlog(&cluster, &["admin", "key", "revoke", "--key-id", "desk-1"]);
    assert!(ok && out.contains("revoked"), "{out}{err}");

    // Every node has applied the same policy.
    let listing = |node: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, out, err) = txlog(&cluster, &["admin", "key", "list", "--json", "--node", node]);
            assert!(ok, "{err}");
            let json: serde_json::Value = serde_json::from_str(&out).unwrap();
            if json["keys"][0]["revoked_seq"].is_u64() {
                return json;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} never applied the revocation: {out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let nodes: Vec<&str> = cluster.cluster.split(',').collect();
    let first = listing(nodes[0]);
    assert_eq!(first["keys"][0]["key_id"], "desk-1");
    assert_eq!(first["keys"][0]["roles"], serde_json::json!(["trader"]));
    for node in &nodes[1..] {
        assert_eq!(listing(node)["keys"], first["keys"], "node {node}");
    }
    let (ok, out, err) = txlog(&cluster, &["admin", "role", "list"]);
    assert!(ok && out.contains("append,read:orders subscribe:md.*"), "{out}{err}");

    // Readers see the access records, never their payloads.
    let (ok, out, err) = txlog(&cluster, &["read", "--from", "1", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let access: Vec<&serde_json::Value> = json["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["channel"] == "_access")
        .collect();
    assert_eq!(access.len(), 3, "role, key, revocation: {out}");
    assert!(access.iter().all(|r| r["payload"] == ""), "{out}");

    // The secret is sealed in the log: on no node's disk in clear.
    let line = std::fs::read_to_string(&secret_file).unwrap();
    let secret = txlog_client::ClientSecret::parse(&line).unwrap();
    stop_dev(dev);
    let hex = line.trim().split_once(':').unwrap().1.as_bytes().to_vec();
    let debug = format!("{:?}", secret.secret()).into_bytes();
    for file in files_under(&data_dir) {
        let bytes = std::fs::read(&file).unwrap();
        for form in [&secret.secret()[..], &hex[..], &debug[..]] {
            assert!(
                !bytes.windows(form.len()).any(|w| w == form),
                "the secret is in {} (as {} bytes)",
                file.display(),
                form.len()
            );
        }
    }
}
