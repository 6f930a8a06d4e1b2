//! Prometheus metrics and a minimal `/metrics` HTTP endpoint.
//!
//! Every number an operator would graph at 3 a.m.: appended records, batches
//! and their sizes, commit latency, WAL fsync latency, term, leader changes,
//! commit and applied indexes, and the last sequence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const REQUEST_BYTES_MAX: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// All of a node's metrics.
pub struct Metrics {
    registry: Registry,
    /// The feed publisher's counters, once it runs (`txlog_feed_*`).
    feed: std::sync::OnceLock<Arc<txlog_feed::Counters>>,
    pub appended_records: Counter,
    pub duplicate_records: Counter,
    pub append_batches: Counter,
    pub rejected_requests: Counter,
    /// Appends a node held because its leader was in doubt (`leader_wait.rs`).
    pub calls_held_for_leader: Counter,
    pub batch_records: Histogram,
    pub commit_latency_seconds: Histogram,
    pub wal_fsync_seconds: Histogram,
    pub append_streams: Gauge,
    pub term: Gauge,
    /// This node's quorum RTT (`txlog_raft::PeerLatency`), from its pings.
    pub quorum_rtt_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// This node's wall clock minus the median of its peers' (from pings).
    pub clock_offset_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub leader_changes: Counter,
    pub is_leader: Gauge,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub snapshot_index: Gauge,
    pub purged_index: Gauge,
    pub wal_bytes: Gauge,
    pub last_seq: Gauge,
    pub resync_delta_bytes: Counter,
    pub resync_full_bytes: Counter,
    pub resync_delta_transfers: Counter,
    pub resync_full_transfers: Counter,
    pub resync_delta_refused: Counter,
    /// Record stores replaced at start-up by a full copy (`drift_repair.rs`).
    pub drift_repairs: Counter,
    /// AppendEntries a follower refused as damaged on the way; resent.
    pub appends_refused: Counter,
    /// Connections closed at accept: the address is in no allowlist.
    pub connections_refused: Counter,
    /// Calls refused: the address is not in the allowlist of the method's class.
    pub calls_refused: Counter,
    /// Calls refused for their token: none, malformed, expired, replayed, bad MAC, unknown key.
    pub tokens_refused: Counter,
    /// Calls refused for their caller's roles.
    pub calls_denied: Counter,
    /// TLS handshakes that failed, timed out or found no free slot.
    pub tls_handshakes_failed: Counter,
    /// Changed certificate files put in force.
    pub tls_reloads: Counter,
    /// Changed certificate files refused (unreadable, wrong CA, key mismatch).
    pub tls_reloads_refused: Counter,
    /// Audit events a node could not keep (its bounds were full).
    pub audit_events_dropped: Counter,
    resync_seen: std::sync::Mutex<txlog_raft::ResyncCounts>,
    pub seal_verified_batches: Counter,
    pub seal_signature_batches: Counter,
    pub seal_rejected_batches: Counter,
    pub seal_opened_batches: Counter,
    pub key_events: Counter,
    pub key_announcements: Counter,
    seal_seen: std::sync::Mutex<txlog_raft::SealCounts>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Bring the resync counters up to `now` (the network keeps the source counts).
    pub fn observe_resync(&self, now: txlog_raft::ResyncCounts) {
        let mut seen = self.resync_seen.lock().expect("metrics lock poisoned");
        self.resync_delta_bytes.inc_by(now.delta_bytes - seen.delta_bytes);
        self.resync_full_bytes.inc_by(now.full_bytes - seen.full_bytes);
        self.resync_delta_transfers
            .inc_by(now.delta_transfers - seen.delta_transfers);
        self.resync_full_transfers
            .inc_by(now.full_transfers - seen.full_transfers);
        self.resync_delta_refused.inc_by(now.delta_refused - seen.delta_refused);
        self.appends_refused.inc_by(now.appends_refused - seen.appends_refused);
        *seen = now;
    }

    /// Bring the sealing counters up to `now` (the keyring keeps the source counts).
    pub fn observe_seal(&self, now: txlog_raft::SealCounts) {
        let mut seen = self.seal_seen.lock().expect("metrics lock poisoned");
        self.seal_verified_batches
            .inc_by(now.verified_batches - seen.verified_batches);
        self.seal_signature_batches
            .inc_by(now.signature_batches - seen.signature_batches);
        self.seal_rejected_batches
            .inc_by(now.rejected_batches - seen.rejected_batches);
        self.seal_opened_batches
            .inc_by(now.opened_batches - seen.opened_batches);
        self.key_events.inc_by(now.key_events - seen.key_events);
        *seen = now;
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("txlog");
        let m = Metrics {
            appended_records: Counter::default(),
            duplicate_records: Counter::default(),
            append_batches: Counter::default(),
            rejected_requests: Counter::default(),
            calls_held_for_leader: Counter::default(),
            batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            commit_latency_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            wal_fsync_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 18)),
            append_streams: Gauge::default(),
            term: Gauge::default(),
            quorum_rtt_seconds: Gauge::default(),
            clock_offset_seconds: Gauge::default(),
            leader_changes: Counter::default(),
            is_leader: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            purged_index: Gauge::default(),
            wal_bytes: Gauge::default(),
            last_seq: Gauge::default(),
            resync_delta_bytes: Counter::default(),
            resync_full_bytes: Counter::default(),
            resync_delta_transfers: Counter::default(),
            resync_full_transfers: Counter::default(),
            resync_delta_refused: Counter::default(),
            drift_repairs: Counter::default(),
            appends_refused: Counter::default(),
            connections_refused: Counter::default(),
            calls_refused: Counter::default(),
            tokens_refused: Counter::default(),
            calls_denied: Counter::default(),
            tls_handshakes_failed: Counter::default(),
            tls_reloads: Counter::default(),
            tls_reloads_refused: Counter::default(),
            audit_events_dropped: Counter::default(),
            resync_seen: Default::default(),
            seal_verified_batches: Counter::default(),
            seal_signature_batches: Counter::default(),
            seal_rejected_batches: Counter::default(),
            seal_opened_batches: Counter::default(),
            key_events: Counter::default(),
            key_announcements: Counter::default(),
            seal_seen: Default::default(),
            feed: Default::default(),
            registry: Registry::default(),
        };
        m.register_append(&mut registry);
        m.register_raft(&mut registry);
        m.register_resync(&mut registry);
        m.register_seal(&mut registry);
        Metrics { registry, ..m }
    }

    /// Sealing: entries checked before persisting, refused, opened; keys.
    fn register_seal(&self, registry: &mut Registry) {
        registry.register(
            "seal_verified_batches",
            "Entries from the leader whose CRC, signature and tag (or key event) verified before they reached the WAL",
            self.seal_verified_batches.clone(),
        );
        registry.register(
            "seal_signature_batches",
            "Runs of sealed entries of one AppendEntries whose signatures were checked together (each entry also counts in seal_verified_batches)",
            self.seal_signature_batches.clone(),
        );
        registry.register(
            "seal_rejected_batches",
            "Entries from the leader refused before the WAL: damaged, forged, or under unknown keys (the leader sends them again)",
            self.seal_rejected_batches.clone(),
        );
        registry.register(
            "seal_opened_batches",
            "Sealed batches opened (verified, decrypted) at apply",
            self.seal_opened_batches.clone(),
        );
        registry.register(
            "key_events",
            "Key announcements verified into this node's keyring",
            self.key_events.clone(),
        );
        registry.register(
            "key_announcements",
            "Key announcements this node proposed as leader (new signing or data keys)",
            self.key_announcements.clone(),
        );
    }

    /// The append path: records, batches, latencies, WAL fsyncs.
    fn register_append(&self, registry: &mut Registry) {
        registry.register(
            "connections_refused",
            "Connections closed at accept because the source address is in no allowlist",
            self.connections_refused.clone(),
        );
        registry.register(
            "calls_refused",
            "Calls refused because the source address is not in the allowlist of the method's class",
            self.calls_refused.clone(),
        );
        registry.register(
            "tls_handshakes_failed",
            "TLS handshakes that failed (no or wrong certificate, bad protocol), timed out, or found every handshake slot taken",
            self.tls_handshakes_failed.clone(),
        );
        registry.register(
            "tls_reloads",
            "Changed certificate files put in force without a restart",
            self.tls_reloads.clone(),
        );
        registry.register(
            "tls_reloads_refused",
            "Changed certificate files refused: unreadable, not a node certificate of the CA, or key and certificate apart",
            self.tls_reloads_refused.clone(),
        );
        registry.register(
            "audit_events_dropped",
            "Security events not recorded in the _audit channel because the node's audit bounds were full",
            self.audit_events_dropped.clone(),
        );
        registry.register(
            "tokens_refused",
            "Calls refused UNAUTHENTICATED: no token, or one malformed, expired, from the future, replayed, with a bad MAC or of an unknown or revoked key",
            self.tokens_refused.clone(),
        );
        registry.register(
            "calls_denied",
            "Calls refused PERMISSION_DENIED: the caller's roles do not allow the operation on the channel",
            self.calls_denied.clone(),
        );
        registry.register(
            "appended_records",
            "Records committed by appends on this node (leader)",
            self.appended_records.clone(),
        );
        registry.register(
            "duplicate_records",
            "Appends answered from the txid dedup index",
            self.duplicate_records.clone(),
        );
        registry.register(
            "append_batches",
            "Raft entries (batches) proposed by this node",
            self.append_batches.clone(),
        );
        registry.register(
            "rejected_requests",
            "Client requests rejected as invalid",
            self.rejected_requests.clone(),
        );
        registry.register(
            "calls_held_for_leader",
            "Appends held until an election settled (the leader had gone quiet or none was known)",
            self.calls_held_for_leader.clone(),
        );
        registry.register(
            "batch_records",
            "Records per proposed batch",
            self.batch_records.clone(),
        );
        registry.register(
            "commit_latency_seconds",
            "Time from proposing a batch to its commit and apply",
            self.commit_latency_seconds.clone(),
        );
        registry.register(
            "wal_fsync_seconds",
            "Duration of each WAL group-commit fdatasync",
            self.wal_fsync_seconds.clone(),
        );
        registry.register(
            "append_streams",
            "Client append streams open on this node",
            self.append_streams.clone(),
        );
    }

    /// Raft's term, leadership and indexes.
    fn register_raft(&self, registry: &mut Registry) {
        registry.register("raft_term", "Current Raft term", self.term.clone());
        registry.register(
            "quorum_rtt_seconds",
            "Median round trip to the voter that completes a commit quorum with this node (from peer pings)",
            self.quorum_rtt_seconds.clone(),
        );
        registry.register(
            "clock_offset_seconds",
            "This node's wall clock minus the median of its peers' clocks, from peer pings",
            self.clock_offset_seconds.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Times the known leader changed",
            self.leader_changes.clone(),
        );
        registry.register(
            "raft_is_leader",
            "1 when this node is the leader",
            self.is_leader.clone(),
        );
        registry.register(
            "raft_commit_index",
            "Highest committed log index known here",
            self.commit_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Highest log index applied to the state machine",
            self.applied_index.clone(),
        );
        registry.register(
            "raft_snapshot_index",
            "Log index of this node's latest snapshot",
            self.snapshot_index.clone(),
        );
        registry.register(
            "raft_purged_index",
            "Log index up to which this node's WAL is purged",
            self.purged_index.clone(),
        );
        registry.register(
            "wal_bytes",
            "Bytes of WAL segment files, as last measured by the snapshot policy",
            self.wal_bytes.clone(),
        );
        registry.register(
            "last_seq",
            "Highest record sequence applied here",
            self.last_seq.clone(),
        );
    }

    /// Snapshot bytes and transfers sent to lagging followers, by path.
    fn register_resync(&self, registry: &mut Registry) {
        registry.register(
            "resync_delta_bytes",
            "Bytes sent to lagging followers as delta snapshots (records they were missing)",
            self.resync_delta_bytes.clone(),
        );
        registry.register(
            "resync_full_bytes",
            "Bytes sent to lagging followers as full snapshots",
            self.resync_full_bytes.clone(),
        );
        registry.register(
            "resync_delta_transfers",
            "Delta snapshots delivered",
            self.resync_delta_transfers.clone(),
        );
        registry.register(
            "resync_full_transfers",
            "Full snapshots delivered",
            self.resync_full_transfers.clone(),
        );
        registry.register(
            "resync_delta_refused",
            "Deltas refused by a follower whose records diverged (a full snapshot followed)",
            self.resync_delta_refused.clone(),
        );
        registry.register(
            "drift_repairs",
            "Record stores found damaged or diverged at start-up and replaced by a full copy from a peer",
            self.drift_repairs.clone(),
        );
        registry.register(
            "appends_refused",
            "AppendEntries a follower refused as damaged on the way (a checksum or frame that did not check); the same entries are sent again",
            self.appends_refused.clone(),
        );
    }

    /// Export the feed publisher's counters from now on.
    pub fn set_feed(&self, counters: Arc<txlog_feed::Counters>) {
        let _ = self.feed.set(counters);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        if let Some(feed) = self.feed.get() {
            // The registry's text ends with the OpenMetrics EOF marker; the
            // feed's counters go before it.
            let eof = out.rfind("# EOF").unwrap_or(out.len());
            let mut lines = String::new();
            for (name, value) in feed.snapshot() {
                let kind = if name == "last_record_seq" { "gauge" } else { "counter" };
                let suffix = if kind == "counter" { "_total" } else { "" };
                lines.push_str(&format!(
                    "# TYPE txlog_feed_{name} {kind}\ntxlog_feed_{name}{suffix} {value}\n"
                ));
            }
            out.insert_str(eof, &lines);
        }
        out
    }
}

/// Serve `GET /metrics` until `shutdown` fires.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((mut socket, _)) = accepted else { continue };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; REQUEST_BYTES_MAX];
                let mut len = 0;
                let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
                    while len < buf.len() {
                        let n = socket.read(&mut buf[len..]).await?;
                        if n == 0 {
                            break;
                        }
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Ok::<(), std::io::Error>(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let request = String::from_utf8_lossy(&buf[..len]);
                let (status, content_type, body) = if request.starts_with("GET /metrics") {
                    ("200 OK", "text/plain; version=0.0.4", metrics.render())
                } else {
                    ("404 Not Found", "text/plain", "try /metrics\n".to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok(bound)
}
