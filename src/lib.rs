//! txlog: a replicated, durable, append-only transaction log.
//!
//! This crate wires a node together and holds everything users touch:
//!
//! * [`node`] — one txlog node: WAL + state machine + Raft + gRPC services +
//!   metrics, with graceful shutdown on SIGTERM/SIGINT.
//! * [`batcher`] — group commit: concurrent appends on the leader become one
//!   Raft entry, so one fsync on a quorum covers many records.
//! * `log_service`, `admin_service` — the gRPC `LogService` (clients) and
//!   `AdminService` (operators).
//! * [`client`] — the Rust client library the CLI, the bench and the tests
//!   use: leader discovery, bounded retries with backoff, txid-safe retries.
//! * [`config`] — node configuration: TOML file, flags, `TXLOG_*` variables.
//! * [`metrics`] — Prometheus metrics and the `/metrics` endpoint.
//! * [`health`] — `grpc.health.v1`: `SERVING` only with a leader and caught up;
//!   server reflection is registered beside it.
//! * [`log_throttle`] — one line per peer per few seconds for openraft's
//!   per-heartbeat warnings about a peer that is down.
//!
//! Guarantees this crate keeps: an append is acknowledged only after its
//! batch is committed (fsynced on a quorum) and applied here; a retried txid
//! returns its original sequence; reads are linearizable unless the caller
//! opts into `stale`; clients never see a raw openraft error.

pub mod admin_service;
pub mod batcher;
pub mod bench;
pub mod bench_cluster;
pub mod client;
pub mod config;
pub mod dev;
mod error;
pub mod health;
pub mod local_cluster;
pub mod log_service;
pub mod log_throttle;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod validate;

pub use error::Error;
pub use error::Result;

/// gRPC metadata key carrying the leader's address on `UNAVAILABLE`.
pub const LEADER_METADATA_KEY: &str = "txlog-leader";

/// Default client endpoints: the `txlog dev` cluster.
pub const DEV_CLUSTER: &str = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403";
