//! `txlog keys`: the cluster key file and the keyring in the log.
//!
//! * `init` writes a new key file (one AES-256 key-encryption key, mode
//!   0600) that every node of one cluster is given with `--key-file`.
//! * `status` reads the key announcements from the log (the reserved
//!   `_keys` channel) and lists each key: kind, id, node, age, the
//!   sequence number that announced it, the KEKs it is wrapped under and
//!   the records it seals or signs.
//! * `rotate` asks the leader to announce new keys now.
//! * `rotate-kek` adds a KEK to the key file, waits until every node has
//!   loaded it, and has the leader rewrap the keyring under it;
//!   `retire-kek` removes an old KEK once nothing needs it.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use txlog_raft::KeyEvent;
use txlog_raft::SigningProof;
use txlog_raft::KEYS_CHANNEL;
use txlog_storage::Kek;
use txlog_storage::KekFile;

use crate::args::ClusterArgs;
use crate::args::KeysCommand;
use crate::args::KeysRetireKekArgs;
use crate::args::KeysRotateArgs;
use crate::args::KeysRotateKekArgs;
use crate::records::client;
use crate::status::cluster_status;

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
        KeysCommand::RotateKek(args) => rotate_kek(&args).await,
        KeysCommand::RetireKek(args) => retire_kek(&args).await,
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

/// One key announcement read from the log.
struct Announcement {
    seq: u64,
    log_index: u64,
    event: KeyEvent,
}

/// Key events announced in the log, in log order.
async fn key_events(cluster: &ClusterArgs) -> anyhow::Result<Vec<Announcement>> {
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
            events.push(Announcement {
                seq: record.seq,
                log_index: record.log_index,
                event,
            });
        }
    }
    Ok(events)
}

/// One key as `status` shows it.
#[derive(serde::Serialize)]
struct KeyRow {
    kind: &'static str,
    id: u32,
    node: u64,
    created_ns: u64,
    /// The seq of its announcement.
    seq: u64,
    /// The newest signing key of its node, or the newest data key.
    current: bool,
    /// The KEKs it is wrapped (proven) under in the log; empty for a
    /// signing key signed by its predecessor.
    keks: BTreeSet<u32>,
    /// A signing key's proof: "first key" or "signed by key N".
    proof: Option<String>,
    /// The records it seals (data key) or whose batches it signs while its
    /// node leads (signing key) run from `seq` up to this one (exclusive;
    /// none while it is current).
    until_seq: Option<u64>,
}

impl KeyRow {
    /// The row of a first announcement (a data or signing key).
    fn announced(a: &Announcement) -> KeyRow {
        let (kind, id, node, created_ns, proof) = match &a.event {
            KeyEvent::Data(d) => ("data", d.id, d.by_node, d.created_ns, None),
            KeyEvent::Signing(s) => ("signing", s.id, s.node_id, s.created_ns, Some(proof_name(&s.proof))),
            KeyEvent::Rewrap(_) | KeyEvent::Reprove(_) => unreachable!("a rewrap is of a key announced before"),
        };
        KeyRow {
            kind,
            id,
            node,
            created_ns,
            seq: a.seq,
            current: true,
            keks: a.event.kek_id().into_iter().collect(),
            proof,
            until_seq: None,
        }
    }
}

/// One row per key, in the order they were announced.
fn key_rows(events: &[Announcement]) -> Vec<KeyRow> {
    let mut rows: Vec<KeyRow> = Vec::new();
    for a in events {
        match &a.event {
            KeyEvent::Data(_) | KeyEvent::Signing(_) => {
                let row = KeyRow::announced(a);
                // The key before it in its series (the data keys; one
                // node's signing keys) stops being current here.
                if let Some(previous) = rows
                    .iter_mut()
                    .rev()
                    .find(|r| r.kind == row.kind && (r.kind == "data" || r.node == row.node))
                {
                    previous.current = false;
                    previous.until_seq.get_or_insert(a.seq);
                }
                rows.push(row);
            }
            KeyEvent::Rewrap(d) => {
                if let Some(row) = rows.iter_mut().find(|r| r.kind == "data" && r.id == d.id) {
                    row.keks.insert(d.kek_id);
                }
            }
            KeyEvent::Reprove(s) => {
                if let Some(row) = rows.iter_mut().find(|r| r.kind == "signing" && r.id == s.id) {
                    row.keks.extend(a.event.kek_id());
                }
            }
        }
    }
    rows
}

async fn status(cluster: &ClusterArgs) -> anyhow::Result<()> {
    let events = key_events(cluster).await?;
    let rows = key_rows(&events);
    if cluster.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no keys in the log yet (the cluster is unsealed, or its first leader has not announced them)");
        return Ok(());
    }
    let now = txlog_raft::wall_clock_ns();
    println!(
        "{:<8} {:>10} {:>6} {:>9} {:>10} {:>8} {:>21}  NOTE",
        "KIND", "ID", "NODE", "AGE", "SEQ", "KEKS", "USED FOR SEQS"
    );
    for r in &rows {
        let current = if r.current { "current" } else { "" };
        let note = [current, r.proof.as_deref().unwrap_or("")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        let keks = match r.keks.is_empty() {
            true => "-".to_string(),
            false => r.keks.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
        };
        let used = match r.until_seq {
            Some(until) => format!("{}..{}", r.seq, until),
            None => format!("{}..", r.seq),
        };
        let age = format_age(now.saturating_sub(r.created_ns) / 1_000_000_000);
        println!(
            "{:<8} {:>10} {:>6} {age:>9} {:>10} {keks:>8} {used:>21}  {note}",
            r.kind, r.id, r.node, r.seq
        );
    }
    println!("(a data key seals the records of its range; a signing key signs its node's batches in its range while that node leads)");
    Ok(())
}

/// How often `rotate-kek` reports which nodes it still waits for.
const KEK_WAIT_REPORT_EVERY: Duration = Duration::from_secs(5);
const KEK_WAIT_POLL: Duration = Duration::from_millis(500);

async fn rotate_kek(args: &KeysRotateKekArgs) -> anyhow::Result<()> {
    let path = &args.key_file;
    let mut file = KekFile::load(path).with_context(|| format!("key file {}", path.display()))?;
    let kek_id = if args.resume {
        file.current().id
    } else {
        let id = file
            .keks
            .iter()
            .map(|k| k.id)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .context("no free KEK id")?;
        file.keks.push(Kek {
            id,
            created_ns: txlog_raft::wall_clock_ns(),
            key: txlog_raft::random_key()?,
        });
        file.store(path)
            .with_context(|| format!("write key file {}", path.display()))?;
        eprintln!(
            "added KEK {id} to {} (it holds KEKs {:?}); copy it to every node that does not share it",
            path.display(),
            file.keks.iter().map(|k| k.id).collect::<Vec<_>>()
        );
        id
    };
    let client = client(&args.cluster)?;
    let deadline = Instant::now() + args.wait;
    let mut reported = Instant::now();
    loop {
        let status = cluster_status(&client, &args.cluster).await?;
        let behind: Vec<String> = status
            .nodes
            .iter()
            .filter(|n| !n.is_up() || n.kek_current != kek_id)
            .map(|n| match n.is_up() {
                false => format!("{} (down)", n.id),
                true => format!("{} (holds KEKs {:?})", n.id, n.kek_ids),
            })
            .collect();
        if behind.is_empty() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node(s) {} did not load KEK {kek_id} within {:?}: copy {} to them (a node reloads its key file within 2 s of a change), then run `txlog keys rotate-kek --resume --key-file {}`",
            behind.join(", "),
            args.wait,
            path.display(),
            path.display()
        );
        if reported.elapsed() >= KEK_WAIT_REPORT_EVERY {
            eprintln!("waiting for node(s) {} to load KEK {kek_id}", behind.join(", "));
            reported = Instant::now();
        }
        tokio::time::sleep(KEK_WAIT_POLL).await;
    }
    let response = client
        .rotate_kek(kek_id)
        .await
        .with_context(|| {
            format!(
                "rewrap under KEK {kek_id} did not finish (the rewraps already committed stay); once there is a leader, run `txlog keys rotate-kek --resume --key-file {}`",
                path.display()
            )
        })?;
    let older: Vec<u32> = file.keks.iter().map(|k| k.id).filter(|&id| id != kek_id).collect();
    if args.cluster.json {
        println!(
            "{}",
            serde_json::json!({
                "kek": kek_id,
                "announced": response.announced,
                "log_index": response.log_index,
                "leader_id": response.leader_id,
                "older_keks": older,
            })
        );
        return Ok(());
    }
    match response.announced.len() {
        0 => println!("every key in the log was already wrapped under KEK {kek_id}"),
        n => println!(
            "leader {} wrapped {n} key(s) again under KEK {kek_id} (log index {})",
            response.leader_id, response.log_index
        ),
    }
    for id in older {
        println!(
            "to retire KEK {id}: `txlog admin snapshot` and `txlog admin compact` (every node), then `txlog keys retire-kek --key-file {} --id {id}`",
            path.display()
        );
    }
    Ok(())
}

async fn retire_kek(args: &KeysRetireKekArgs) -> anyhow::Result<()> {
    let path = &args.key_file;
    let mut file = KekFile::load(path).with_context(|| format!("key file {}", path.display()))?;
    let held: Vec<u32> = file.keks.iter().map(|k| k.id).collect();
    anyhow::ensure!(
        held.contains(&args.id),
        "{} holds no KEK {} (it holds {held:?})",
        path.display(),
        args.id
    );
    anyhow::ensure!(
        file.current().id != args.id,
        "KEK {} is the newest in {}: new keys are wrapped under it; rotate first (txlog keys rotate-kek --key-file {})",
        args.id,
        path.display(),
        path.display()
    );
    let remaining: BTreeSet<u32> = held.iter().copied().filter(|&id| id != args.id).collect();
    let events = key_events(&args.cluster).await?;
    let stranded: Vec<String> = key_rows(&events)
        .iter()
        .filter(|r| !r.keks.is_empty() && r.keks.is_disjoint(&remaining))
        .map(|r| format!("{} key {}", r.kind, r.id))
        .collect();
    anyhow::ensure!(
        stranded.is_empty(),
        "{} {} wrapped only under KEK {}: run `txlog keys rotate-kek --resume --key-file {}` first",
        stranded.join(", "),
        if stranded.len() == 1 { "is" } else { "are" },
        args.id,
        path.display()
    );
    let last_index = events
        .iter()
        .filter(|a| a.event.kek_id() == Some(args.id))
        .map(|a| a.log_index)
        .max();
    if let Some(last_index) = last_index {
        let status = cluster_status(&client(&args.cluster)?, &args.cluster).await?;
        let holding: Vec<String> = status
            .nodes
            .iter()
            .filter(|n| !n.is_up() || n.purged_index < last_index)
            .map(|n| match n.is_up() {
                false => format!("{} (down)", n.id),
                true => format!("{} (purged up to {})", n.id, n.purged_index),
            })
            .collect();
        anyhow::ensure!(
            holding.is_empty(),
            "the WAL of node(s) {} may still hold entries announced under KEK {} (up to log index {last_index}), which a node reading them back would need it for: run `txlog admin snapshot` and `txlog admin compact` first",
            holding.join(", "),
            args.id
        );
    }
    file.keks.retain(|k| k.id != args.id);
    file.store(path)
        .with_context(|| format!("write key file {}", path.display()))?;
    println!(
        "removed KEK {} from {} (it holds KEKs {:?}); copy it to every node that does not share it (nodes reload it within 2 s)",
        args.id,
        path.display(),
        remaining
    );
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
