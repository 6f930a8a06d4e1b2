//! txlog: a replicated, durable, append-only transaction log.
//!
//! This crate wires a node together and holds everything users touch:
//!
//! * [`node`] — one txlog node: WAL + state machine + Raft + gRPC services +
//!   metrics, with graceful shutdown on SIGTERM/SIGINT.
//! * [`batcher`] — group commit: concurrent appends on the leader become one
//!   Raft entry, so one fsync on a quorum covers many records.
//! * `raft_runtime` — openraft runs on a runtime of its own, so heartbeats
//!   never wait behind client work.
//! * `key_rotation` — while this node leads, it announces its signing key
//!   and new data keys through the log when they are due; the batcher seals
//!   every batch under the applied ones (`txlog_raft::Sealer`).
//! * `log_service`, `admin_service` — the gRPC `LogService` (clients) and
//!   `AdminService` (operators); [`leader_wait`] — a follower holds an append
//!   while its leader is in doubt and redirects it once a live one is known.
//! * [`access_guard`] — who may call what: request tokens checked
//!   (`token_check`), the caller's roles against the policy kept in the log
//!   (`access_policy`); [`allowlist`] — which addresses may connect;
//!   [`tls`] — mutual TLS on the port, certificates reloaded when their
//!   files change ([`certs`] makes them); [`audit`] — security events,
//!   hash-chained in the `_audit` channel; [`peer_dial`] — how a node
//!   reaches its peers' admin services.
//! * [`drift_repair`] — a record store that fails its start-up check is
//!   replaced by a full copy from a peer, without an operator.
//! * `clock_guard` — a leader whose wall clock disagrees with most of its
//!   peers' (request tokens are checked against it) hands leadership on.
//! * [`config`] — node configuration: TOML file, flags, `TXLOG_*` variables.
//! * [`metrics`] — Prometheus metrics and the `/metrics` endpoint.
//! * [`health`] — `grpc.health.v1`: `SERVING` only with a leader and caught up;
//!   server reflection is registered beside it.
//! * [`log_throttle`] — one line per peer per few seconds for openraft's
//!   per-heartbeat warnings about a peer that is down.
//!
//! The client library is crate `txlog-client`; local clusters of node
//! processes (`txlog dev`, the benches, tests) are crate `txlog-testkit`;
//! the `txlog` command (parsing, printing, `dev`, the benches) lives under
//! `src/bin/txlog/` and uses this library only to run a node.
//!
//! Guarantees this crate keeps: an append is acknowledged only after its
//! batch is committed (fsynced on a quorum) and applied here; a retried txid
//! returns its original sequence; reads are linearizable unless the caller
//! opts into `stale`; clients never see a raw openraft error.

pub mod access_guard;
pub mod access_policy;
pub mod admin_service;
pub mod allowlist;
pub mod append_stream;
pub mod audit;
pub mod batcher;
pub mod certs;
mod clock_guard;
pub mod config;
pub mod drift_repair;
mod error;
pub mod failure_detector;
pub mod feed_publisher;
pub mod feed_tap;
pub mod health;
pub mod join;
mod key_file_watch;
mod key_rotation;
pub mod leader_wait;
pub mod log_service;
pub mod log_throttle;
pub mod metrics;
pub mod node;
pub mod peer_dial;
mod peer_ping;
pub mod prefer_region;
mod raft_runtime;
pub mod snapshot_trigger;
pub mod tls;
pub mod token_check;
pub mod validate;

pub use error::Error;
pub use error::Result;

/// The metadata key nodes set and clients follow, and the dev cluster's
/// addresses: the client crate owns both.
pub use txlog_client::DEV_CLUSTER;
pub use txlog_client::LEADER_METADATA_KEY;
