//! `txlog verify`: check a stopped node's data directory offline, changing
//! nothing (see `VerifyArgs` for what is checked and the exit status).
//!
//! Order matters for a sealed node: the record file comes first, since its
//! `_keys` records are the applied key announcements — the keyring the
//! payloads sealed at rest and the WAL's older entries need. The WAL then
//! adds the announcements it holds beyond those, in log order, before the
//! entries sealed under them.

use std::fmt::Display;
use std::path::Path;

use openraft::EntryPayload;
use txlog_raft::Keys;
use txlog_raft::KEYS_CHANNEL;
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
    log_gaps: u64,
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
    let mut checker = Checker {
        keys: keys.as_ref(),
        tally: Tally::default(),
    };
    println!(
        "verifying {} ({})",
        dir.display(),
        match &args.key_file {
            Some(path) => format!("seals checked with {}", path.display()),
            None => "no key file: an unsealed node".into(),
        }
    );

    let records_dir = dir.join("state/records/segments");
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
        "wal: {} segment(s), entries {}..={} ({} gap(s) behind purges); {} sealed batches (CRC, signature, tag), {} key batches, {} plain batches, {} blank or membership{}",
        wal.segments,
        t.first_index.unwrap_or(0),
        t.last_index.unwrap_or(0),
        t.log_gaps,
        t.sealed_batches,
        t.key_batches,
        t.plain_batches,
        t.other_entries,
        torn(&wal.torn_tail),
    );

    for (kind, path) in files::snapshots_in(&dir.join("state/snapshots")).map_err(failed)? {
        let before = checker.tally.sealed_payloads;
        let count = files::snapshot(&kind, &path, |record| checker.record(&path, record)).map_err(failed)?;
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
        txlog_storage::Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            CannotCheck(err.to_string()).into()
        }
        other => anyhow::anyhow!("verify: FAILED: {other}"),
    }
}

fn torn(tail: &Option<String>) -> String {
    match tail {
        Some(problem) => format!("; torn tail (cut on the next start): {problem}"),
        None => String::new(),
    }
}

struct Checker<'a> {
    keys: Option<&'a Keys>,
    tally: Tally,
}

/// A check that failed at `what` in `path`.
fn bad(path: &Path, what: impl Display, err: impl Display) -> txlog_storage::Error {
    txlog_storage::Error::Corruption {
        path: path.to_path_buf(),
        detail: format!("{what}: {err}"),
    }
}

impl Checker<'_> {
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
        if record.channel == KEYS_CHANNEL {
            if let Some(keys) = self.keys {
                keys.observe(&record.payload, Some(record.seq))
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
        let at = |index: Option<u64>| match index {
            Some(index) => format!("offset {offset} (log index {index})"),
            None => format!("offset {offset}"),
        };
        let entry: txlog_raft::Entry = postcard::from_bytes(body).map_err(|e| bad(path, at(None), e))?;
        let index = entry.log_id.index;
        if let Some(last) = self.tally.last_index {
            if index <= last {
                return Err(bad(path, at(Some(index)), format_args!("follows log index {last}")));
            }
            if index != last + 1 {
                // Only a segment started behind a purge may open with a gap.
                if offset != files::FIRST_FRAME_OFFSET {
                    return Err(bad(path, at(Some(index)), format_args!("gap after log index {last}")));
                }
                self.tally.log_gaps += 1;
            }
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
            return Ok(());
        }
        let decoded = frame.decode().map_err(|e| bad(path, at(Some(index)), e))?;
        let key_batch = decoded.body.records.iter().all(|r| r.channel == KEYS_CHANNEL);
        match self.keys {
            // A sealed node's rule for plain batches: key announcements only, each verifying.
            Some(keys) => keys.check_frame(frame).map_err(|e| bad(path, at(Some(index)), e))?,
            None if key_batch && !decoded.body.records.is_empty() => {
                return Err(txlog_storage::Error::InvalidInput(format!(
                    "log entry {index} announces sealing keys: this node is sealed; pass the cluster key file with --key-file"
                )))
            }
            None => {}
        }
        if key_batch {
            self.tally.key_batches += 1;
        } else {
            self.tally.plain_batches += 1;
        }
        Ok(())
    }
}
