//! `txlog keys`: the cluster key file and the keyring in the log.
//!
//! * `init` writes a new key file (one AES-256 key-encryption key, mode
//!   0600) that every node of one cluster is given with `--key-file`.
//! * `status` reads the key announcements from the log (the reserved
//!   `_keys` channel) and lists each key: kind, id, node, age, and the
//!   sequence number that announced it.
//! * `rotate` asks the leader to announce new keys now.

use std::path::Path;

use anyhow::Context;
use txlog_raft::KeyEvent;
use txlog_raft::SigningProof;
use txlog_raft::KEYS_CHANNEL;
use txlog_storage::Kek;
use txlog_storage::KekFile;

use crate::args::ClusterArgs;
use crate::args::KeysCommand;
use crate::args::KeysRotateArgs;
use crate::records::client;

pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Init(args) => {
            init(&args.out)?;
            println!(
                "wrote {} (mode 0600): give the same file to every node with --key-file",
                args.out.display()
            );
            Ok(())
        }
        KeysCommand::Status(args) => status(&args.cluster).await,
        KeysCommand::Rotate(args) => rotate(&args).await,
    }
}

async fn rotate(args: &KeysRotateArgs) -> anyhow::Result<()> {
    let client = client(&args.cluster)?;
    let response = client
        .rotate_keys(args.data, args.signing)
        .await
        .context("key rotation failed")?;
    if args.cluster.json {
        println!(
            "{}",
            serde_json::json!({
                "announced": response.announced,
                "log_index": response.log_index,
                "leader_id": response.leader_id,
            })
        );
        return Ok(());
    }
    println!(
        "leader {} announced {} at log index {}",
        response.leader_id,
        response.announced.join(" and "),
        response.log_index
    );
    Ok(())
}

/// Write a new key file at `out`, refusing to replace one.
pub fn init(out: &Path) -> anyhow::Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let kek = Kek {
        id: 1,
        created_ns: txlog_raft::wall_clock_ns(),
        key: txlog_raft::random_key()?,
    };
    KekFile::create(out, kek)?;
    Ok(())
}

/// Key events announced in the log, with their seqs.
async fn key_events(cluster: &ClusterArgs) -> anyhow::Result<Vec<(u64, KeyEvent)>> {
    let client = client(cluster)?;
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page = client
            .read(from, 1000, Some(KEYS_CHANNEL), false)
            .await
            .with_context(|| format!("no node of {} answered", cluster.cluster))?;
        let Some(last) = page.records.last() else { break };
        from = last.seq + 1;
        for record in &page.records {
            let event = KeyEvent::decode(&record.payload)
                .with_context(|| format!("key event at seq {} does not decode", record.seq))?;
            events.push((record.seq, event));
        }
    }
    Ok(events)
}

/// One announced key as `status` shows it.
struct KeyRow<'a> {
    seq: u64,
    kind: &'static str,
    id: u32,
    node: u64,
    created_ns: u64,
    /// The newest signing key of its node, or the newest data key.
    current: bool,
    event: &'a KeyEvent,
}

/// The rows of `events`, in log order.
fn key_rows(events: &[(u64, KeyEvent)]) -> Vec<KeyRow<'_>> {
    let current_data = events.iter().rev().find_map(|(_, e)| match e {
        KeyEvent::Data(a) => Some(a.id),
        KeyEvent::Signing(_) => None,
    });
    let newest_signing: std::collections::HashMap<u64, u32> = events
        .iter()
        .filter_map(|(_, e)| match e {
            KeyEvent::Signing(a) => Some((a.node_id, a.id)),
            KeyEvent::Data(_) => None,
        })
        .collect();
    events
        .iter()
        .map(|(seq, event)| {
            let (kind, id, node, created_ns, current) = match event {
                KeyEvent::Signing(a) => (
                    "signing",
                    a.id,
                    a.node_id,
                    a.created_ns,
                    newest_signing.get(&a.node_id) == Some(&a.id),
                ),
                KeyEvent::Data(a) => ("data", a.id, a.by_node, a.created_ns, current_data == Some(a.id)),
            };
            KeyRow {
                seq: *seq,
                kind,
                id,
                node,
                created_ns,
                current,
                event,
            }
        })
        .collect()
}

async fn status(cluster: &ClusterArgs) -> anyhow::Result<()> {
    let events = key_events(cluster).await?;
    let rows = key_rows(&events);
    if cluster.json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut row = serde_json::json!({
                    "kind": r.kind, "id": r.id, "node": r.node, "created_ns": r.created_ns, "seq": r.seq,
                    "current": r.current,
                });
                let (name, value) = match r.event {
                    KeyEvent::Signing(a) => ("proof", serde_json::json!(proof_name(&a.proof))),
                    KeyEvent::Data(a) => ("kek", serde_json::json!(a.kek_id)),
                };
                row[name] = value;
                row
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no keys in the log yet (the cluster is unsealed, or its first leader has not announced them)");
        return Ok(());
    }
    let now = txlog_raft::wall_clock_ns();
    println!(
        "{:<8} {:>10} {:>6} {:>9} {:>10}  NOTE",
        "KIND", "ID", "NODE", "AGE", "SEQ"
    );
    for r in &rows {
        let current = if r.current { "current, " } else { "" };
        let note = match r.event {
            KeyEvent::Signing(a) => proof_name(&a.proof),
            KeyEvent::Data(a) => format!("wrapped under KEK {}", a.kek_id),
        };
        let age = format_age(now.saturating_sub(r.created_ns) / 1_000_000_000);
        println!(
            "{:<8} {:>10} {:>6} {age:>9} {:>10}  {current}{note}",
            r.kind, r.id, r.node, r.seq
        );
    }
    Ok(())
}

fn proof_name(proof: &SigningProof) -> String {
    match proof {
        SigningProof::Kek { kek_id, .. } => format!("first key, proven under KEK {kek_id}"),
        SigningProof::Previous { id, .. } => format!("signed by previous key {id}"),
    }
}

fn format_age(s: u64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
