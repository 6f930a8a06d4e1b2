//! The txlog client library: what the CLI, the benches, the chaos harness
//! and the tests use to talk to a cluster. It depends on the wire protocols
//! (`txlog-proto`, and `txlog-feed` for the UDP feed's format and its
//! subscriber logic) and nothing of the server: no sled, no openraft.
//!
//! **What it owns.** A [`Client`] knows a list of node addresses and keeps
//! one lazily connected channel per address. Every RPC it makes goes through
//! one retry helper (`retry.rs`), which picks the target, puts a deadline on
//! the call and decides from the answer whether to try again:
//!
//! * Leader-bound calls go to the last leader seen. An `UNAVAILABLE` answer
//!   carrying the leader's address (metadata [`LEADER_METADATA_KEY`])
//!   redirects at once — also to a leader that is not in the list, whose
//!   channel is then cached like the others. At most
//!   [`LEADER_REDIRECTS_MAX`] redirects happen without a pause, so nodes
//!   with stale views naming each other cannot spin a call.
//! * Any other transient failure moves to the next listed node after a
//!   bounded, growing backoff; every call gives up after
//!   [`ClientOptions::attempts_max`] attempts with [`ClientError::Exhausted`].
//! * Calls to one named node (`read_at`, `node_status`, `snapshot_node`,
//!   `compact_node`) are tried once: their caller wants that node's answer.
//!
//! **Invariants.** Every unary call carries a deadline (`options.rs` says
//! which); a streaming call (`subscribe`, `join`) has a deadline on opening
//! and then lives as long as its stream. Every retry loop has a maximum. A
//! call that is not idempotent (membership changes, snapshot, compact) is
//! retried only on `UNAVAILABLE`, which a node answers before doing
//! anything; appends and reads are retried on any transient failure — an
//! append is safe to retry because records carry txids and a txid that
//! already committed returns its original sequence instead of writing
//! again.
//!
//! **Security.** [`Client::with_credentials`] signs every attempt of every
//! call with a fresh request token; [`Client::with_tls`] speaks mutual TLS
//! and accepts only a node certificate from the cluster CA on the other
//! end (`tls.rs`). Both are off only against an `--insecure` cluster.
//!
//! **Status.** [`Client::cluster_status`] asks every node it knows of and
//! returns a [`ClusterStatus`] with a typed [`Role`] and [`Kind`] per node;
//! the strings on the wire are parsed in exactly one place (`status.rs`).

mod address;
mod admin;
mod append_stream;
mod client;
mod credentials;
mod error;
mod feed_hub;
mod feed_subscriber;
mod local_file;
mod log_calls;
pub mod methods;
mod options;
mod retry;
mod ring_subscriber;
mod status;
mod tls;
mod token;

pub use address::normalize_address;
pub use client::Client;
pub use credentials::Credentials;
pub use credentials::CLIENT_TOKEN_TTL;
pub use error::ClientError;
pub use feed_hub::FeedHub;
pub use feed_hub::HubCounters;
pub use feed_hub::HubWait;
pub use feed_subscriber::feed_record;
pub use feed_subscriber::FeedEvent;
pub use feed_subscriber::FeedSubscriber;
pub use feed_subscriber::FeedSubscriberOptions;
pub use options::ClientOptions;
pub use options::ADMIN_RPC_TIMEOUT;
pub use options::SNAPSHOT_RPC_TIMEOUT;
pub use options::STATUS_RPC_TIMEOUT;
pub use retry::LEADER_REDIRECTS_MAX;
pub use ring_subscriber::RingEvent;
pub use ring_subscriber::RingSubscriber;
pub use ring_subscriber::RingSubscriberCounters;
pub use ring_subscriber::HUB_SILENT_MS;
pub use status::ClusterStatus;
pub use status::Kind;
pub use status::NodeView;
pub use status::ResyncSent;
pub use status::Role;
pub use tls::endpoint;
pub use tls::TlsFiles;
pub use tls::TlsPem;
pub use tls::NODE_SERVER_NAME;
pub use tls::TLS_FILE_BYTES_MAX;
pub use token::check_token_name;
pub use token::token_mac;
pub use token::token_mac_input;
pub use token::token_mac_matches;
pub use token::token_payload_digest;
pub use token::ClientSecret;
pub use token::TokenError;
pub use token::CLIENT_SECRET_BYTES;
pub use token::TOKEN_MAC_BYTES;
pub use token::TOKEN_METADATA_KEY;
pub use token::TOKEN_NAME_BYTES_MAX;
pub use token::TOKEN_NONCE_BYTES;
pub use token::TOKEN_ROLES_MAX;
pub use token::TOKEN_TTL_MAX;
pub use token::TOKEN_VERSION;
pub use txlog_feed as feed;

/// gRPC metadata key carrying the leader's address on `UNAVAILABLE`; nodes
/// set it, the client follows it.
pub const LEADER_METADATA_KEY: &str = "txlog-leader";

/// Default client endpoints: the `txlog dev` cluster.
pub const DEV_CLUSTER: &str = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403";

/// The `txlog dev` cluster's feed: every node publishes to this multicast
/// group and port, on loopback.
pub const DEV_FEED_GROUP: &str = "239.192.74.1:7410";
/// The `txlog dev` nodes' feed addresses (their retransmit services).
pub const DEV_FEED_NODES: &str = "127.0.0.1:7411,127.0.0.1:7412,127.0.0.1:7413";

/// Most bytes in one gRPC request or response, on both sides of the wire:
/// nodes refuse larger messages with `RESOURCE_EXHAUSTED`, and the client
/// refuses to send them.
pub const MESSAGE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Current time in nanoseconds since the Unix epoch (a record's
/// `client_time_ns`; 0 if the clock is before 1970).
pub fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Current time in milliseconds since the Unix epoch: the clock request
/// tokens are issued and checked by.
pub fn wall_clock_ms() -> u64 {
    wall_clock_ns() / 1_000_000
}
