//! The one way to start local txlog clusters: real `txlog node` processes
//! on this machine, for `txlog dev`, the cluster benches, the chaos harness
//! and the end-to-end tests.
//!
//! **What it owns.** [`LocalCluster`] spawns, signals and reaps node
//! processes described by [`NodeSpec`]s; [`free_port`] finds ports for them;
//! [`catch_up_with_trickle`] waits for a restarted node to reach the
//! others; [`REGIONS`] names the regions local clusters use;
//! [`RegionLinks`] puts a [`LatencyModel`] between them. It talks to
//! nodes only through `txlog-client` and knows nothing of the server's
//! code: it runs the `txlog` binary ([`txlog_binary`], or one the caller
//! names, as tests do with `env!("CARGO_BIN_EXE_txlog")`).
//!
//! **Invariants.** A node runs `txlog node` with flags built in one place
//! (`local_cluster.rs`), so every harness starts nodes the same way; its
//! output is appended to `<data_dir>/node.log`, which survives restarts. A
//! node process belongs to its `LocalCluster` until it is reaped: every
//! signal goes to a pid that has not been waited for, so it cannot hit a
//! reused pid. Dropping a `LocalCluster` kills every node it still runs.
//! By default nodes get their own process group, so a Ctrl-C reaches the
//! parent, which stops them itself; tests keep them in the caller's group
//! ([`LocalCluster::in_caller_process_group`]) so an interrupted test run
//! takes its nodes with it.
//!
//! **Access.** Nodes run sealed and with access control on, like
//! production: the testkit makes the cluster key file and the root client
//! key beside the data directories before the first start, and
//! [`LocalCluster::client`] signs with the root key. `unsealed()` and
//! `insecure()` turn either off, only to measure what they cost.
//!
//! **Data flow.** Specs in, processes out: `with_exe(specs)` fixes the
//! founding members (`--peers`), `start(i)` runs node `i`, `stop`/`kill`/
//! `pause`/`resume` act on it, `add` brings in a node that joins through
//! `--join`. Nothing here reads node state except through the client.

mod catch_up;
mod local_cluster;
mod ports;
mod region_latency;

pub use catch_up::catch_up_with_trickle;
pub use catch_up::wait_for_seq;
pub use local_cluster::cli_env;
pub use local_cluster::client_tls_files;
pub use local_cluster::node_tls_files;
pub use local_cluster::txlog_binary;
pub use local_cluster::Launch;
pub use local_cluster::LocalCluster;
pub use local_cluster::LocalNode;
pub use local_cluster::NodeSpec;
pub use local_cluster::Stopped;
pub use local_cluster::CERTS_DIR;
pub use local_cluster::CLIENT_CERT_NAME;
pub use local_cluster::KEY_FILE;
pub use local_cluster::ROOT_KEY_FILE;
pub use local_cluster::ROOT_KEY_ID;
pub use ports::free_port;
pub use ports::free_port_on;
pub use region_latency::remove_stale_chains;
pub use region_latency::LatencyModel;
pub use region_latency::RegionLinks;

/// Regions of local clusters, by node position: a three-node cluster (`txlog
/// dev`, the benches) is paris, frankfurt, lyon; five-node test clusters add
/// london and milan.
pub const REGIONS: [&str; 5] = ["paris", "frankfurt", "lyon", "london", "milan"];

/// The loopback IP of node `i` when its peer links carry the region
/// latency model (each node needs an IP of its own; see [`RegionLinks`]).
pub fn region_node_ip(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, 11 + i as u8)
}
