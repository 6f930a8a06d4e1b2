//! `txlog verify`: check a stopped node's data directory offline, changing
//! nothing (see `VerifyArgs` for what is checked and the exit status).
//!
//! Order matters for a sealed node: the record file comes first, since its
//! `_keys` records are the applied key announcements — the keyring the
//! payloads sealed at rest and the WAL's older entries need. The WAL then
//! adds the announcements it holds beyond those, in log order, before the
//! entries sealed under them.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt::Display;
use std::path::Path;

use openraft::EntryPayload;
use txlog_raft::Keys;
use txlog_raft::KEYS_CHANNEL;
use txlog_raft::NONCE_BYTES;
use txlog_raft::TAG_BYTES;
use txlog_storage::verify as files;
use txlog_storage::StoredRecord;

use crate::args::VerifyArgs;

/// Why `verify` could not check at all (exit status 2), as opposed to a
/// bad position found (1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CannotCheck(pub String);

/// What the checks found, for the summary.
#[derive(Default)]
struct Tally {
    sealed_batches: u64,
    key_batches: u64,
    plain_batches: u64,
    other_entries: u64,
    first_index: Option<u64>,
    last_index: Option<u64>,
    /// Entries at or below the purge point still in a segment.
    behind_purge: u64,
    key_events: u64,
    sealed_payloads: u64,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    if !dir.join("wal").is_dir() {
        return Err(CannotCheck(format!(
            "{} is not a txlog data directory (it has no wal/)",
            dir.display()
        ))
        .into());
    }
    let keys = match &args.key_file {
        Some(path) => {
            let kek_file = txlog_storage::KekFile::load(path)
                .map_err(|e| CannotCheck(format!("key file {}: {e}", path.display())))?;
            Some(Keys::new(&kek_file))
        }
        None => None,
    };
    let purged = match files::wal_purge_point(&dir.join("wal")).map_err(failed)? {
        Some(bytes) => Some(
            postcard::from_bytes::<txlog_raft::LogId>(&bytes)
                .map_err(|e| anyhow::anyhow!("verify: FAILED: {}: purge point: {e}", dir.join("wal/purged").display()))?
                .index,
        ),
        None => None,
    };
    let mut checker = Checker::new(keys.as_ref(), purged);
    println!(
        "verifying {} ({})",
        dir.display(),
        match &args.key_file {
            Some(path) => format!("seals checked with {}", path.display()),
            None => "no key file: an unsealed node".into(),
        }
    );

    let records_dir = dir.join("state/records/segments");
    if let Some(keys) = &keys {
        // Rewraps first: an announcement under a KEK retired since verifies
        // by a later rewrap of its key, as on the node's own start.
        let mut events = Vec::new();
        files::records(&records_dir, |_, record| {
            if record.channel == KEYS_CHANNEL {
                events.extend(txlog_raft::KeyEvent::decode(&record.payload).ok());
            }
            Ok(())
        })
        .map_err(failed)?;
        keys.learn_rewraps(&events);
    }
    let records = files::records(&records_dir, |path, record| checker.record(path, record)).map_err(failed)?;
    let t = &checker.tally;
    println!(
        "record file: {} segment(s), {} records, hash chain checked at every record; {} payloads sealed at rest opened, {} key announcements{}",
        records.segments,
        records.frames,
        t.sealed_payloads,
        t.key_events,
        torn(&records.torn_tail),
    );

    let wal = files::wal(&dir.join("wal"), |path, offset, body| {
        checker.wal_entry(path, offset, body)
    })
    .map_err(failed)?;
    let t = &checker.tally;
    println!(
        "wal: {} segment(s), {} (purged up to {}, {} of those still in segments); {} sealed batches (CRC, signature, tag; each nonce used once), {} key batches, {} plain batches, {} blank or membership{}",
        wal.segments,
        match (t.first_index, t.last_index) {
            (Some(first), Some(last)) => format!("entries {first}..={last}"),
            _ => "no entries".to_string(),
        },
        checker.purged.map_or("none".to_string(), |p| p.to_string()),
        t.behind_purge,
        t.sealed_batches,
        t.key_batches,
        t.plain_batches,
        t.other_entries,
        torn(&wal.torn_tail),
    );

    for (kind, path) in files::snapshots_in(&dir.join("state/snapshots")).map_err(failed)? {
        let before = checker.tally.sealed_payloads;
        let checked = files::snapshot(&kind, &path, |record| checker.record(&path, record));
        let count = match (&kind, checked) {
            (_, Ok(count)) => count,
            // A delta being received is a leftover the node removes on its
            // next start (a crash mid-transfer leaves one cut short).
            (files::SnapshotKind::StagedDelta, Err(err)) => {
                println!("staged delta (removed on the next start, not checked further): {err}");
                continue;
            }
            (files::SnapshotKind::Snapshot, Err(err)) => return Err(failed(err)),
        };
        println!(
            "{} {}: {count} records{}, {} payloads sealed at rest opened",
            match kind {
                files::SnapshotKind::Snapshot => "snapshot",
                files::SnapshotKind::StagedDelta => "staged delta",
            },
            path.file_name().unwrap_or_default().to_string_lossy(),
            match kind {
                files::SnapshotKind::Snapshot => ", hash chain checked",
                files::SnapshotKind::StagedDelta => "",
            },
            checker.tally.sealed_payloads - before,
        );
    }
    println!("verify: ok");
    Ok(())
}

/// A storage error as `verify` reports it: what it could not check, or
/// the first bad position.
fn failed(err: txlog_storage::Error) -> anyhow::Error {
    match err {
        txlog_storage::Error::InvalidInput(m) => CannotCheck(m).into(),
        other => anyhow::anyhow!("verify: FAILED: {other}"),
    }
}

fn torn(tail: &Option<String>) -> String {
    match tail {
        Some(problem) => format!("; torn tail (cut on the next start): {problem}"),
        None => String::new(),
    }
}

/// How often a long check says where it is (on stderr).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Says every [`PROGRESS_EVERY`] where a long check is.
struct Progress {
    last: std::time::Instant,
}

impl Progress {
    fn tick(&mut self, what: impl FnOnce() -> String) {
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = std::time::Instant::now();
            eprintln!("verify: {}", what());
        }
    }
}

struct Checker<'a> {
    keys: Option<&'a Keys>,
    progress: Progress,
    /// The WAL's purge point.
    purged: Option<u64>,
    /// The last WAL entry after the purge point seen so far.
    kept_last: Option<u64>,
    /// Every sealed entry's nonce under its data key, with its tag and log
    /// index: a nonce sealing two different ciphertexts breaks AES-GCM.
    nonces: HashMap<(u32, [u8; NONCE_BYTES]), ([u8; TAG_BYTES], u64)>,
    tally: Tally,
}

/// A check that failed at `what` in `path`.
fn bad(path: &Path, what: impl Display, err: impl Display) -> txlog_storage::Error {
    txlog_storage::Error::Corruption {
        path: path.to_path_buf(),
        detail: format!("{what}: {err}"),
    }
}

impl<'a> Checker<'a> {
    fn new(keys: Option<&'a Keys>, purged: Option<u64>) -> Checker<'a> {
        Checker {
            keys,
            progress: Progress {
                last: std::time::Instant::now(),
            },
            purged,
            kept_last: None,
            nonces: HashMap::new(),
            tally: Tally::default(),
        }
    }

    fn keys_for(&self, what: impl Display) -> txlog_storage::Result<&Keys> {
        self.keys.ok_or_else(|| {
            txlog_storage::Error::InvalidInput(format!(
                "{what} is sealed: pass the cluster key file with --key-file to check it"
            ))
        })
    }

    /// A record of the record file, a snapshot or a delta: a key
    /// announcement joins the keyring (it must verify); a payload sealed at
    /// rest must open.
    fn record(&mut self, path: &Path, record: &StoredRecord) -> txlog_storage::Result<()> {
        self.progress
            .tick(|| format!("{}: at seq {}", path.display(), record.seq));
        if record.channel == KEYS_CHANNEL {
            if let Some(keys) = self.keys {
                txlog_raft::KeyEvent::decode(&record.payload)
                    .and_then(|event| keys.observe_loaded(event, record.seq))
                    .map_err(|e| bad(path, format_args!("key announcement at seq {}", record.seq), e))?;
            }
            self.tally.key_events += 1;
        }
        if record.sealed_at_rest {
            let keys = self.keys_for(format_args!("record {}", record.seq))?;
            keys.open_at_rest(record.seq, &record.payload)
                .map_err(|e| bad(path, format_args!("seq {}", record.seq), e))?;
            self.tally.sealed_payloads += 1;
        }
        Ok(())
    }

    fn wal_entry(&mut self, path: &Path, offset: u64, body: &[u8]) -> txlog_storage::Result<()> {
        self.progress.tick(|| format!("{}: at offset {offset}", path.display()));
        let at = |index: Option<u64>| match index {
            Some(index) => format!("offset {offset} (log index {index})"),
            None => format!("offset {offset}"),
        };
        let entry: txlog_raft::Entry = postcard::from_bytes(body).map_err(|e| bad(path, at(None), e))?;
        let index = entry.log_id.index;
        // The log store's rule: entries up to the purge point may linger in
        // segments not yet deleted; after it the log is contiguous, starting
        // right after the purge point.
        if self.purged.is_some_and(|purged| index <= purged) {
            // No longer part of the log (the node never reads it back): its
            // CRC was checked; its seals may be under keys retired since.
            self.tally.behind_purge += 1;
            self.tally.first_index.get_or_insert(index);
            self.tally.last_index = Some(index);
            return Ok(());
        } else {
            let expected = self.kept_last.map(|last| last + 1).or(self.purged.map(|p| p + 1));
            if let Some(expected) = expected.filter(|&expected| expected != index) {
                return Err(bad(
                    path,
                    at(Some(index)),
                    format_args!("log index {index} where {expected} was expected"),
                ));
            }
            self.kept_last = Some(index);
        }
        self.tally.first_index.get_or_insert(index);
        self.tally.last_index = Some(index);
        let EntryPayload::Normal(frame) = &entry.payload else {
            self.tally.other_entries += 1;
            return Ok(());
        };
        if frame.is_sealed() {
            let keys = self.keys_for(format_args!("log entry {index}"))?;
            keys.check_frame(frame).map_err(|e| bad(path, at(Some(index)), e))?;
            self.tally.sealed_batches += 1;
            return self.nonce_once(path, index, frame);
        }
        let decoded = frame.decode().map_err(|e| bad(path, at(Some(index)), e))?;
        let key_batch =
            !decoded.body.records.is_empty() && decoded.body.records.iter().all(|r| r.channel == KEYS_CHANNEL);
        let sealed_node = self.tally.key_events > 0 || self.tally.sealed_batches > 0 || self.tally.key_batches > 0;
        match self.keys {
            // Key announcements must verify, each under the keys before it;
            // a sealed node takes no other plain batch (its followers refuse
            // one before their WAL, as `check_frame` does here).
            Some(keys) if key_batch || sealed_node => {
                keys.check_frame(frame).map_err(|e| bad(path, at(Some(index)), e))?
            }
            None if key_batch => {
                return Err(txlog_storage::Error::InvalidInput(format!(
                    "log entry {index} announces sealing keys: this node is sealed; pass the cluster key file with --key-file"
                )))
            }
            // A client batch in clear on a node that has shown no key
            // material: an unsealed node's (its CRC is checked).
            _ => {}
        }
        if key_batch {
            self.tally.key_batches += 1;
        } else {
            self.tally.plain_batches += 1;
        }
        Ok(())
    }

    /// A sealed entry's nonce must be new under its data key, unless the
    /// entry is the same sealed batch again (same tag: same ciphertext,
    /// nothing revealed). Two different ciphertexts under one nonce are
    /// what a restart that reused a nonce counter would leave.
    fn nonce_once(&mut self, path: &Path, index: u64, frame: &txlog_raft::BatchFrame) -> txlog_storage::Result<()> {
        let Some(seal) = frame.seal_nonce() else {
            return Ok(());
        };
        match self.nonces.entry((seal.data_key_id, seal.nonce)) {
            Entry::Vacant(slot) => {
                slot.insert((seal.tag, index));
                Ok(())
            }
            Entry::Occupied(seen) if seen.get().0 == seal.tag => Ok(()),
            Entry::Occupied(seen) => Err(bad(
                path,
                format_args!("log index {index}"),
                format_args!(
                    "nonce {} under data key {} already sealed log index {} (another ciphertext): a nonce was reused",
                    hex(&seal.nonce),
                    seal.data_key_id,
                    seen.get().1
                ),
            )),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two batches sealed under one nonce with different contents are
    /// refused, naming the first's log index; the same sealed batch twice,
    /// and the next nonce, pass.
    #[test]
    fn a_nonce_sealing_two_ciphertexts_is_refused() {
        let key = txlog_raft::DataKey::new(9, &[1; 32]);
        let signer = txlog_raft::Signer::new(3, &[2; 32]);
        let with = txlog_raft::SealWith {
            node_id: 7,
            data_key: &key,
            signer: &signer,
        };
        let body = |payload: &str| txlog_raft::BatchBody {
            created_ns: 1,
            records: vec![txlog_storage::NewRecord {
                txid: "t".into(),
                channel: "orders".into(),
                payload: payload.to_string().into(),
                client_time_ns: 0,
            }],
        };
        let first = txlog_raft::BatchFrame::seal(7, &body("a"), &with, 1);
        let next = txlog_raft::BatchFrame::seal(7, &body("b"), &with, 2);
        let reused = txlog_raft::BatchFrame::seal(7, &body("b"), &with, 1);
        let mut checker = Checker::new(None, None);
        let path = Path::new("wal/00000001.seg");
        checker.nonce_once(path, 1, &first).unwrap();
        checker.nonce_once(path, 2, &first.clone()).unwrap();
        checker.nonce_once(path, 3, &next).unwrap();
        let err = checker.nonce_once(path, 4, &reused).unwrap_err().to_string();
        assert!(
            err.contains("log index 4") && err.contains("already sealed log index 1") && err.contains("reused"),
            "{err}"
        );
    }
}
