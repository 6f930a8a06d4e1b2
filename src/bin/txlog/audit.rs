//! `txlog audit`: the `_audit` channel (see `txlog::audit`).
//!
//! * `tail` prints its events, one line each, from a sequence number on;
//!   `--follow` keeps printing new ones.
//! * `verify` reads every `_audit` record and recomputes the hash chain;
//!   it prints the chain head, or the first record that breaks it and
//!   exits non-zero. `--stale` reads from the node named in `--cluster`
//!   without asking the leader, which is how an audit learner in its own
//!   region checks its copy.

use txlog::audit::AuditEvent;
use txlog::audit::AuditRecord;
use txlog::audit::ChainCheck;
use txlog::audit::AUDIT_CHANNEL;
use txlog_client::ClientError;

use crate::args::AuditCommand;
use crate::args::AuditTailArgs;
use crate::args::AuditVerifyArgs;
use crate::records::client;

/// Records per read.
const PAGE_RECORDS: u32 = 1000;
/// A progress line every so many records.
const PROGRESS_EVERY: u64 = 100_000;

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Tail(args) => tail(args).await,
        AuditCommand::Verify(args) => verify(args).await,
    }
}

async fn tail(args: AuditTailArgs) -> anyhow::Result<()> {
    let client = client(&args.cluster)?;
    let mut from = args.from;
    loop {
        let page = client.read(from, PAGE_RECORDS, Some(AUDIT_CHANNEL), args.stale).await?;
        let Some(last) = page.records.last().map(|r| r.seq) else {
            break;
        };
        for record in &page.records {
            print_record(record.seq, &record.payload, args.cluster.json);
        }
        from = last + 1;
    }
    if !args.follow {
        return Ok(());
    }
    let mut stream = client.subscribe(from, Some(AUDIT_CHANNEL)).await?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            next = stream.message() => match next {
                Ok(Some(record)) => print_record(record.seq, &record.payload, args.cluster.json),
                Ok(None) => anyhow::bail!("the node closed the stream"),
                Err(status) => return Err(ClientError::Status(status).into()),
            }
        }
    }
}

fn print_record(seq: u64, payload: &[u8], json: bool) {
    let record = match AuditRecord::decode(payload) {
        Ok(record) => record,
        Err(err) => {
            println!("seq={seq} undecodable: {err}");
            return;
        }
    };
    for entry in record.entries {
        if json {
            let value = serde_json::json!({
                "seq": seq, "node": entry.node, "at_ns": entry.at_ns, "event": entry.event,
            });
            println!("{value}");
            continue;
        }
        let at = format!("{}.{:03}", entry.at_ns / 1_000_000_000, entry.at_ns / 1_000_000 % 1000);
        let what = match entry.event {
            AuditEvent::Refused {
                what,
                source,
                reason,
                count,
                ..
            } => format!("refused {what:?} from {source} x{count}: {reason}"),
            AuditEvent::Admin {
                method,
                caller,
                detail,
                outcome,
            } => format!("admin {method} by {caller} ({detail}): {outcome}"),
            AuditEvent::CertificatesReloaded { file, taken, detail } => {
                format!(
                    "certificates {file} {}{detail}",
                    if taken { "reloaded" } else { "refused: " }
                )
            }
            AuditEvent::Dropped { count } => format!("{count} events dropped (bounds full)"),
        };
        println!("seq={seq} node={} at={at} {what}", entry.node);
    }
}

async fn verify(args: AuditVerifyArgs) -> anyhow::Result<()> {
    let client = client(&args.cluster)?;
    let mut check = ChainCheck::default();
    let mut from = 1;
    let mut next_progress = PROGRESS_EVERY;
    loop {
        let page = client.read(from, PAGE_RECORDS, Some(AUDIT_CHANNEL), args.stale).await?;
        let Some(last) = page.records.last().map(|r| r.seq) else {
            break;
        };
        for record in &page.records {
            check.push(record.seq, &record.payload);
        }
        if let Some((seq, why)) = &check.first_break {
            anyhow::bail!(
                "audit chain broken at seq {seq}: {why} ({} records before it verified)",
                check.records
            );
        }
        if check.records >= next_progress {
            eprintln!("… {} audit records verified (up to seq {last})", check.records);
            next_progress += PROGRESS_EVERY;
        }
        from = last + 1;
    }
    println!(
        "audit chain verified: {} records, {} events, head {}",
        check.records,
        check.entries,
        txlog::audit::hex(&check.head())
    );
    Ok(())
}
