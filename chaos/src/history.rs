//! The history of a run: every client operation as an `invoke` event and a
//! completion (`ok`, `fail` or `info`), nemesis faults as start/stop pairs,
//! and one final read of each node's whole log, all stamped with one
//! monotonic clock. Stored as JSON lines, one event per line.
//!
//! Completion types follow Jepsen: `ok` happened, `fail` definitely did not
//! happen, `info` is unknown (a timeout or a lost connection) and may have
//! happened at any time after the invoke.

use std::collections::HashMap;
use std::io::BufRead;
use std::io::Write;
use std::path::Path;

use anyhow::bail;
use anyhow::Context;
use serde::Deserialize;
use serde::Serialize;

/// Process id of nemesis events.
pub const NEMESIS_PROCESS: u64 = u64::MAX;
/// Process id of the final reads.
pub const FINAL_PROCESS: u64 = u64::MAX - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Function {
    /// Append one record whose payload is `value`.
    Append,
    /// Linearizable read of a window of the log.
    Read,
    /// After the run: one node's whole log, read from that node.
    FinalRead,
    /// A fault: invoke = injected, ok = healed.
    Nemesis,
}

/// What a read saw: the values at sequences `from ..`, and `last`, the
/// log's length at the read (at least `from + values.len() - 1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadValue {
    pub from: u64,
    pub values: Vec<u64>,
    pub last: u64,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Nanoseconds since the run started (one monotonic clock).
    pub time_ns: u64,
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub f: Function,
    /// Append: the value appended (unique in a run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// Append `ok`: the sequence number the cluster acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Read / final read `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<ReadValue>,
    /// Final read: the node read; otherwise the node the client last used, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// Nemesis: what was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    pub fn new(time_ns: u64, process: u64, kind: Kind, f: Function) -> Event {
        Event {
            time_ns,
            process,
            kind,
            f,
            value: None,
            seq: None,
            read: None,
            node: None,
            fault: None,
            error: None,
        }
    }
}

/// An invoke paired with its completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub process: u64,
    pub f: Function,
    pub invoke_ns: u64,
    /// `None` for `info` (may take effect any time after the invoke) and
    /// for an invoke the history never completed.
    pub complete_ns: Option<u64>,
    /// `Ok`, `Fail` or `Info`.
    pub outcome: Kind,
    pub value: Option<u64>,
    pub seq: Option<u64>,
    pub read: Option<ReadValue>,
    pub node: Option<u64>,
    pub fault: Option<String>,
}

/// Pair every invoke with the next completion of the same process. An
/// invoke left open at the end counts as `info`.
pub fn pair(events: &[Event]) -> anyhow::Result<Vec<Operation>> {
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut ops: Vec<Operation> = Vec::with_capacity(events.len() / 2);
    for (line, event) in events.iter().enumerate() {
        match event.kind {
            Kind::Invoke => {
                if open.contains_key(&event.process) {
                    bail!(
                        "event {line}: process {} invoked again before completing",
                        event.process
                    );
                }
                open.insert(event.process, ops.len());
                ops.push(Operation {
                    process: event.process,
                    f: event.f,
                    invoke_ns: event.time_ns,
                    complete_ns: None,
                    outcome: Kind::Info,
                    value: event.value,
                    seq: None,
                    read: None,
                    node: event.node,
                    fault: event.fault.clone(),
                });
            }
            kind => {
                let Some(index) = open.remove(&event.process) else {
                    bail!("event {line}: process {} completed without an invoke", event.process);
                };
                let op = &mut ops[index];
                if op.f != event.f {
                    bail!(
                        "event {line}: completion {:?} does not match invoke {:?}",
                        event.f,
                        op.f
                    );
                }
                if event.time_ns < op.invoke_ns {
                    bail!("event {line}: completes before its invoke");
                }
                op.outcome = kind;
                op.complete_ns = (kind != Kind::Info).then_some(event.time_ns);
                op.seq = event.seq;
                op.read = event.read.clone();
                op.node = event.node.or(op.node);
                if kind == Kind::Ok && op.f == Function::Append && op.seq.is_none() {
                    bail!("event {line}: append ok without a seq");
                }
                if kind == Kind::Ok && matches!(op.f, Function::Read | Function::FinalRead) && op.read.is_none() {
                    bail!("event {line}: read ok without a value");
                }
            }
        }
    }
    Ok(ops)
}

/// Appends events to a JSONL file as they happen.
pub struct HistoryWriter {
    out: std::io::BufWriter<std::fs::File>,
}

impl HistoryWriter {
    pub fn create(path: &Path) -> anyhow::Result<HistoryWriter> {
        let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        Ok(HistoryWriter {
            out: std::io::BufWriter::new(file),
        })
    }

    pub fn write(&mut self, event: &Event) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    pub fn finish(mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(())
    }
}

/// Read a JSONL history; a malformed line is an error naming the line.
pub fn load(path: &Path) -> anyhow::Result<Vec<Event>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut events = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not a history event", path.display(), n + 1))?;
        events.push(event);
    }
    Ok(events)
}
