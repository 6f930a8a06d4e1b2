//! txlog-chaos: Jepsen-style tests for txlog.
//!
//! A run starts real `txlog node` processes, lets K client workers append
//! unique values and read the log while a nemesis injects faults on a seeded
//! schedule, heals everything, reads every node's whole log, and checks the
//! recorded history:
//!
//! - [`history`]: the events (invoke / ok / fail / info) and their JSONL form;
//! - [`checker`]: a pure function from a history to a verdict, with Jepsen's
//!   anomaly names;
//! - [`synthetic`]: histories of a correct log, for tests;
//! - [`node_ids`]: the seeded, sparse node ids of a run (node ids are
//!   identity only; placement and labels go by index);
//! - the rest (cluster, network faults, nemesis, workload, report) drives a
//!   run and is used by the `txlog-chaos` binary.
//!
//! What a run cannot see: faults shorter than the nemesis interval, and
//! anomalies that need more than one channel (every append goes to one
//! channel, so the log's global order is what is checked).

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod netns;
pub mod node_ids;
pub mod proxy;
pub mod report;
pub mod run;
pub mod synthetic;
pub mod workload;
