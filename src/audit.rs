//! The audit trail: security events, appended to the reserved channel
//! [`AUDIT_CHANNEL`] of the log itself — replicated, sealed like every
//! batch, and hash-chained, so a record removed, reordered or altered
//! shows as a break in `txlog audit verify`.
//!
//! **What is recorded.** Refused connections (allowlist), failed TLS
//! handshakes, refused tokens (with the reason: expired, replayed, bad
//! MAC, unknown or revoked key…), permission denials, refused calls by
//! address, every changing admin call (membership, transfers, snapshots,
//! compaction, key rotations, client keys and roles) with its caller and
//! outcome, and certificate reloads taken or refused.
//!
//! **Bounded, so a flood cannot fill the log.** Each node gathers events
//! in memory and hands them on every [`AUDIT_FLUSH`]: refusals are
//! aggregated by (kind, source, reason) into one event with a count and
//! the first and last time, at most [`AUDIT_REFUSAL_KEYS_MAX`] distinct
//! ones per flush; other events at most [`AUDIT_EVENTS_MAX`] pending. What
//! does not fit is counted in one `Dropped` event (and in
//! `txlog_audit_events_dropped`). So a node adds at most a few records a
//! second, whatever is thrown at it.
//!
//! **Who writes.** Only the leader appends to `_audit`; a follower sends
//! its events to the leader (`AdminService.RecordAudit`, signed with the
//! root key) and keeps them to send again while that fails. The leader
//! chains: every record names the digest of the `_audit` record before it
//! ([`AuditRecord::prev`]). Its writes are serialised; after a change of
//! term, or an append whose answer was lost, it first waits until
//! everything in its log is applied (a read-index barrier, then its last
//! log index), then takes the chain head from its store — the last
//! `_audit` record, found through the channel index in one lookup.
//!
//! **Format** of one `_audit` record's payload: `version u8 (1) |
//! postcard(AuditRecord)`. Its digest, the next record's `prev`, is
//! SHA-256 over [`CHAIN_DOMAIN`] and the payload. The first record's
//! `prev` is 32 zero bytes.
//!
//! Not here: delivery is at least once across a leader change (a report
//! the old leader appended but did not acknowledge is sent again), and
//! events a node held when it crashed are lost with it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;
use txlog_client::methods;
use txlog_proto::AuditReport;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver as _;
use txlog_raft::Raft;
use txlog_raft::StateMachineReader;

use crate::batcher::Batcher;
use crate::log_service::known_leader;
use crate::metrics::Metrics;
use crate::peer_dial::PeerDial;
use crate::Error;
use crate::Result;

/// The reserved channel of the audit trail.
pub const AUDIT_CHANNEL: &str = "_audit";
/// How often a node hands its gathered events on.
pub const AUDIT_FLUSH: Duration = Duration::from_secs(1);
/// Distinct refusals (kind, source, reason) aggregated per flush.
pub const AUDIT_REFUSAL_KEYS_MAX: usize = 64;
/// Other events pending on one node (and events per `_audit` record).
pub const AUDIT_EVENTS_MAX: usize = 256;
/// Longest reason or detail kept in an event, in bytes.
pub const AUDIT_TEXT_BYTES_MAX: usize = 256;
/// How long a new leader waits for its log to be applied before it reads
/// the chain head (then it tries again at the next flush).
pub const AUDIT_HEAD_WAIT: Duration = Duration::from_secs(5);
/// Prefix of every chain digest.
pub const CHAIN_DOMAIN: &[u8] = b"txlog audit chain v1\0";
const RECORD_VERSION: u8 = 1;

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Refusal {
    /// A connection from an address in no allowlist.
    Connection,
    /// A TLS handshake that failed or timed out.
    Handshake,
    /// A call from an address outside its service's allowlist, or a Raft
    /// call without a node certificate.
    Call,
    /// A call whose token failed (the reason says which check).
    Token,
    /// A call the caller's roles do not allow.
    Permission,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditEvent {
    Refused {
        what: Refusal,
        /// An address, or a key id.
        source: String,
        reason: String,
        count: u64,
        first_ns: u64,
        last_ns: u64,
    },
    /// A changing admin call: who, what, and how it ended.
    Admin {
        method: String,
        caller: String,
        detail: String,
        outcome: String,
    },
    CertificatesReloaded {
        file: String,
        taken: bool,
        detail: String,
    },
    /// Events a node could not keep (its bounds were full).
    Dropped {
        count: u64,
    },
}

/// One event, where and when it was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub node: u64,
    pub at_ns: u64,
    pub event: AuditEvent,
}

/// One `_audit` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The digest of the `_audit` record before this one (zeros: none).
    pub prev: [u8; 32],
    pub entries: Vec<AuditEntry>,
}

impl AuditRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        out.extend(postcard::to_allocvec(self).expect("an audit record encodes"));
        out
    }

    pub fn decode(payload: &[u8]) -> std::result::Result<AuditRecord, String> {
        match payload.split_first() {
            Some((&RECORD_VERSION, body)) => {
                postcard::from_bytes(body).map_err(|e| format!("undecodable audit record: {e}"))
            }
            Some((version, _)) => Err(format!(
                "audit record version {version}, this build reads {RECORD_VERSION}"
            )),
            None => Err("empty audit record".into()),
        }
    }
}

/// The chain digest of a record's payload.
pub fn digest(payload: &[u8]) -> [u8; 32] {
    let mut hash = sha2::Sha256::new();
    hash.update(CHAIN_DOMAIN);
    hash.update(payload);
    hash.finalize().into()
}

/// Entries as sent in an [`AuditReport`]: version byte, postcard.
pub fn encode_entries(entries: &[AuditEntry]) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    out.extend(postcard::to_allocvec(entries).expect("audit entries encode"));
    out
}

pub fn decode_entries(bytes: &[u8]) -> std::result::Result<Vec<AuditEntry>, String> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| format!("undecodable audit entries: {e}"))
        }
        _ => Err("audit entries of an unknown version".into()),
    }
}

/// Checks a run of `_audit` records, in seq order, against the chain.
#[derive(Debug, Default)]
pub struct ChainCheck {
    prev: [u8; 32],
    pub records: u64,
    pub entries: u64,
    /// The first record that does not follow: its seq and why.
    pub first_break: Option<(u64, String)>,
}

impl ChainCheck {
    /// Check the record at `seq`; after a break, nothing more is checked.
    pub fn push(&mut self, seq: u64, payload: &[u8]) {
        if self.first_break.is_some() {
            return;
        }
        match AuditRecord::decode(payload) {
            Err(err) => self.first_break = Some((seq, err)),
            Ok(record) if record.prev != self.prev => {
                self.first_break = Some((
                    seq,
                    format!(
                        "names {} as the record before it, but the chain so far ends in {}",
                        hex(&record.prev),
                        hex(&self.prev)
                    ),
                ))
            }
            Ok(record) => {
                self.prev = digest(payload);
                self.records += 1;
                self.entries += record.entries.len() as u64;
            }
        }
    }

    /// The digest of the last record that followed: the chain's head.
    pub fn head(&self) -> [u8; 32] {
        self.prev
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cut(text: &str) -> String {
    if text.len() <= AUDIT_TEXT_BYTES_MAX {
        return text.to_string();
    }
    let mut end = AUDIT_TEXT_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What one node has gathered since its last flush.
#[derive(Default)]
struct Pending {
    refusals: HashMap<(Refusal, String, String), (u64, u64, u64)>,
    events: Vec<AuditEntry>,
    dropped: u64,
}

/// A node's collector of audit events; every part of the node that sees
/// one reports it here (see the module comment for the bounds).
pub struct Auditor {
    node: u64,
    pending: Mutex<Pending>,
    metrics: Arc<Metrics>,
}

impl Auditor {
    pub fn new(node: u64, metrics: Arc<Metrics>) -> Auditor {
        Auditor {
            node,
            pending: Mutex::default(),
            metrics,
        }
    }

    /// A refusal of `what` from `source` (an address or a key id).
    pub fn refused(&self, what: Refusal, source: &str, reason: &str) {
        let now = txlog_raft::wall_clock_ns();
        let mut pending = self.pending.lock().expect("audit lock poisoned");
        let key = (what, cut(source), cut(reason));
        let full = pending.refusals.len() >= AUDIT_REFUSAL_KEYS_MAX;
        match pending.refusals.get_mut(&key) {
            Some((count, _, last)) => {
                *count += 1;
                *last = now;
            }
            None if full => self.drop_one(&mut pending),
            None => {
                pending.refusals.insert(key, (1, now, now));
            }
        }
    }

    /// Any other event, seen now on this node.
    pub fn event(&self, event: AuditEvent) {
        let entry = AuditEntry {
            node: self.node,
            at_ns: txlog_raft::wall_clock_ns(),
            event,
        };
        self.absorb(vec![entry]);
    }

    /// A changing admin call of `method` by `caller` and its outcome.
    pub fn admin(&self, method: &str, caller: &str, detail: &str, outcome: std::result::Result<(), String>) {
        self.event(AuditEvent::Admin {
            method: method.to_string(),
            caller: cut(caller),
            detail: cut(detail),
            outcome: match outcome {
                Ok(()) => "ok".into(),
                Err(err) => cut(&err),
            },
        });
    }

    /// Entries seen elsewhere (a follower's report, or this node's own
    /// that could not be delivered), kept within the bound.
    pub fn absorb(&self, entries: Vec<AuditEntry>) {
        let mut pending = self.pending.lock().expect("audit lock poisoned");
        for entry in entries {
            if pending.events.len() >= AUDIT_EVENTS_MAX {
                let lost = match entry.event {
                    AuditEvent::Dropped { count } => count,
                    _ => 1,
                };
                pending.dropped += lost;
                self.metrics.audit_events_dropped.inc_by(lost);
            } else {
                pending.events.push(entry);
            }
        }
    }

    fn drop_one(&self, pending: &mut Pending) {
        pending.dropped += 1;
        self.metrics.audit_events_dropped.inc();
    }

    /// Everything gathered since the last call, refusals aggregated.
    fn take(&self) -> Vec<AuditEntry> {
        let mut pending = std::mem::take(&mut *self.pending.lock().expect("audit lock poisoned"));
        let now = txlog_raft::wall_clock_ns();
        let mut entries = std::mem::take(&mut pending.events);
        let mut refusals: Vec<_> = pending.refusals.into_iter().collect();
        refusals.sort_by_key(|(_, (_, first, _))| *first);
        entries.extend(
            refusals
                .into_iter()
                .map(|((what, source, reason), (count, first_ns, last_ns))| AuditEntry {
                    node: self.node,
                    at_ns: last_ns,
                    event: AuditEvent::Refused {
                        what,
                        source,
                        reason,
                        count,
                        first_ns,
                        last_ns,
                    },
                }),
        );
        if pending.dropped > 0 {
            entries.push(AuditEntry {
                node: self.node,
                at_ns: now,
                event: AuditEvent::Dropped { count: pending.dropped },
            });
        }
        entries
    }
}

/// Where this node's events go: the leader's chain.
pub struct AuditWriter {
    pub node: u64,
    pub raft: Raft,
    pub reader: StateMachineReader,
    pub batcher: Batcher,
    pub dial: PeerDial,
    pub guard: Arc<crate::access_guard::Guard>,
    /// The chain head this leader appended last, with its term; `None`
    /// until known (read from the store after a change of term).
    head: tokio::sync::Mutex<Option<(u64, [u8; 32])>>,
}

impl AuditWriter {
    pub fn new(
        node: u64,
        raft: Raft,
        reader: StateMachineReader,
        batcher: Batcher,
        dial: PeerDial,
        guard: Arc<crate::access_guard::Guard>,
    ) -> AuditWriter {
        AuditWriter {
            node,
            raft,
            reader,
            batcher,
            dial,
            guard,
            head: tokio::sync::Mutex::new(None),
        }
    }

    /// Append `entries` here if this node leads, else send them to the leader.
    async fn deliver(&self, entries: &[AuditEntry]) -> Result<()> {
        match known_leader(&self.raft) {
            Some((id, _)) if id == self.node => self.append(entries).await.map(drop),
            Some((_, address)) if !address.is_empty() => {
                let report = AuditReport {
                    node_id: self.node,
                    entries: encode_entries(entries).into(),
                };
                self.dial
                    .admin_client(&address)?
                    .max_encoding_message_size(crate::validate::MESSAGE_BYTES_MAX)
                    .record_audit(self.guard.node_request(methods::RECORD_AUDIT, report))
                    .await?;
                Ok(())
            }
            _ => Err(Error::Unavailable("no leader known to hand audit events to".into())),
        }
    }

    /// On the leader: append `entries` to the chain, in records of at most
    /// [`AUDIT_EVENTS_MAX`] entries. The seq of the last record.
    pub async fn append(&self, entries: &[AuditEntry]) -> Result<u64> {
        let mut head = self.head.lock().await;
        let term = self.raft.metrics().borrow_watched().current_term;
        let mut prev = match *head {
            Some((known_term, digest)) if known_term == term => digest,
            _ => self.head_from_store().await?,
        };
        *head = None;
        let mut seq = 0;
        for (i, chunk) in entries.chunks(AUDIT_EVENTS_MAX).enumerate() {
            let payload = AuditRecord {
                prev,
                entries: chunk.to_vec(),
            }
            .encode();
            let record = txlog_storage::NewRecord {
                txid: format!("{AUDIT_CHANNEL}/{}/{}/{i}", self.node, txlog_raft::wall_clock_ns())
                    .into_bytes()
                    .into(),
                channel: AUDIT_CHANNEL.into(),
                payload: payload.into(),
                client_time_ns: 0,
            };
            let next = digest(&record.payload);
            let outcome = self.batcher.append(vec![record]).await?;
            seq = outcome.first().map_or(0, |o| o.seq);
            prev = next;
        }
        *head = Some((term, prev));
        Ok(seq)
    }

    /// The digest of the last `_audit` record, once everything in this
    /// node's log is applied here: what earlier terms committed (the
    /// read-index barrier), and any audit append of this term whose answer
    /// was lost — it commits or, with the term, goes, before the head is read.
    async fn head_from_store(&self) -> Result<[u8; 32]> {
        self.raft
            .ensure_linearizable(txlog_raft::openraft::ReadPolicy::ReadIndex)
            .await
            .map_err(|e| crate::error::raft_error(e, "audit chain head"))?;
        let (term, last_log_index) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow_watched();
            (metrics.current_term, metrics.last_log_index)
        };
        self.raft
            .wait(Some(AUDIT_HEAD_WAIT))
            .applied_index_at_least(last_log_index, "audit chain head")
            .await
            .map_err(|e| Error::Unavailable(format!("audit chain head: {e}")))?;
        if self.raft.metrics().borrow_watched().current_term != term {
            return Err(Error::Unavailable("audit chain head: the term changed; retry".into()));
        }
        let Some(seq) = self.reader.store().last_seq_of_channel(AUDIT_CHANNEL)? else {
            return Ok([0; 32]);
        };
        let record = self
            .reader
            .read(seq, 1, usize::MAX, None)?
            .into_iter()
            .next()
            .filter(|r| r.seq == seq)
            .ok_or_else(|| Error::Internal(format!("audit record {seq} is indexed but not stored")))?;
        Ok(digest(&record.payload))
    }
}

/// Hand this node's events on every [`AUDIT_FLUSH`] until shutdown;
/// events that could not be delivered wait for the next flush.
pub async fn run(auditor: Arc<Auditor>, writer: Arc<AuditWriter>, shutdown: CancellationToken) {
    let mut failures = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(AUDIT_FLUSH) => {}
        }
        let entries = auditor.take();
        if entries.is_empty() {
            continue;
        }
        match writer.deliver(&entries).await {
            Ok(()) => failures = 0,
            Err(err) => {
                failures += 1;
                // One line at the first failure and then every minute or so.
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(%err, events = entries.len(), failures, "audit events not delivered yet; kept to retry");
                }
                auditor.absorb(entries);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> AuditEntry {
        AuditEntry {
            node: 7,
            at_ns: n,
            event: AuditEvent::Admin {
                method: "m".into(),
                caller: "root".into(),
                detail: format!("{n}"),
                outcome: "ok".into(),
            },
        }
    }

    /// A chain of records verifies; a removed, altered or reordered record
    /// is the first break, at its seq.
    #[test]
    fn the_chain_shows_a_removed_altered_or_reordered_record() {
        let mut prev = [0u8; 32];
        let mut payloads = Vec::new();
        for n in 0..5 {
            let payload = AuditRecord {
                prev,
                entries: vec![entry(n)],
            }
            .encode();
            prev = digest(&payload);
            payloads.push(payload);
        }
        let check = |records: &[(u64, Vec<u8>)]| {
            let mut check = ChainCheck::default();
            for (seq, payload) in records {
                check.push(*seq, payload);
            }
            check
        };
        let all: Vec<(u64, Vec<u8>)> = payloads
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, p)| (i as u64 + 10, p))
            .collect();
        let whole = check(&all);
        assert_eq!((whole.records, whole.entries, whole.first_break.clone()), (5, 5, None));
        assert_eq!(whole.head(), prev);

        let mut removed = all.clone();
        removed.remove(2);
        assert_eq!(check(&removed).first_break.map(|b| b.0), Some(13));
        let mut swapped = all.clone();
        swapped.swap(1, 3);
        assert_eq!(check(&swapped).first_break.map(|b| b.0), Some(13));
        let mut altered = all.clone();
        let last = altered[3].1.len() - 1;
        altered[3].1[last] ^= 1;
        let broken = check(&altered);
        assert_eq!(
            broken.first_break.map(|b| b.0),
            Some(14),
            "the record after the altered one"
        );
        let mut garbage = all;
        garbage[0].1 = vec![9, 9];
        assert!(check(&garbage).first_break.unwrap().1.contains("version"));
    }

    /// A flood of refusals becomes one event per distinct (kind, source,
    /// reason) with a count, at most so many per flush; the rest counted.
    #[test]
    fn refusals_aggregate_and_stay_bounded() {
        let auditor = Auditor::new(3, Arc::new(Metrics::new()));
        for _ in 0..10_000 {
            auditor.refused(Refusal::Token, "desk-1", "token expired");
        }
        for i in 0..(AUDIT_REFUSAL_KEYS_MAX + 10) {
            auditor.refused(Refusal::Connection, &format!("10.0.0.{i}"), "address in no allowlist");
        }
        for n in 0..(AUDIT_EVENTS_MAX as u64 + 5) {
            auditor.admin("m", "root", &n.to_string(), Ok(()));
        }
        let entries = auditor.take();
        let counted: Vec<u64> = entries
            .iter()
            .filter_map(|e| match &e.event {
                AuditEvent::Refused {
                    what: Refusal::Token,
                    count,
                    ..
                } => Some(*count),
                _ => None,
            })
            .collect();
        assert_eq!(counted, vec![10_000]);
        let refusals = entries
            .iter()
            .filter(|e| matches!(e.event, AuditEvent::Refused { .. }))
            .count();
        assert_eq!(refusals, AUDIT_REFUSAL_KEYS_MAX);
        let dropped = entries.iter().find_map(|e| match e.event {
            AuditEvent::Dropped { count } => Some(count),
            _ => None,
        });
        assert_eq!(dropped, Some(11 + 5), "one refusal key over, and five events over");
        assert!(auditor.take().is_empty(), "taken once");
        let encoded = encode_entries(&entries);
        assert_eq!(decode_entries(&encoded).unwrap(), entries);
    }
}
