//! Node configuration: one declaration of every setting ([`NodeSettings`]),
//! read from a TOML file and overridden field by field by command-line flags
//! or `TXLOG_*` environment variables (flags win over variables, variables
//! over the file). The same struct derives the TOML deserializer and the
//! `txlog node` flags, so the two cannot drift; defaults are the named
//! constants below and are applied in [`NodeConfig::resolve`].
//!
//! ```toml
//! id = 1
//! region = "paris"
//! listen = "127.0.0.1:7401"
//! data_dir = "/var/lib/txlog"
//! peers = ["1=paris@127.0.0.1:7401", "2=frankfurt@127.0.0.1:7402", "3=lyon@127.0.0.1:7403"]
//! # join = "127.0.0.1:7401"  # instead of peers: join a running cluster through any member
//! # prefer_region = "paris"  # move leadership back to this region when it is healthy;
//! #                          # "auto": to the voter whose commit quorum is nearest
//! # allow_clients = ["10.1.0.0/16"]  # who may call LogService; absent: any address
//! # allow_admin = ["10.1.9.0/24"]    # AdminService
//! # allow_peers = ["10.1.0.11", "10.2.0.11", "10.3.0.11"]  # RaftService
//! metrics_listen = "127.0.0.1:9401"
//! timing = "regional"       # or "lan", "wan"; the *_ms fields below override it
//! # heartbeat_interval_ms = 10
//! # election_timeout_ms_min = 25
//! # election_timeout_ms_max = 50
//! # rpc_deadline_ms_min = 40
//! payload_bytes_max = 1048576
//! batch_bytes_max = 4194304
//! batch_records_max = 8192
//! snapshot_logs_since_last = 10000
//! log_entries_kept_after_snapshot = 1000
//! snapshot_wal_bytes_max = 134217728
//! segment_bytes_max = 67108864
//! key_file = "/etc/txlog/cluster.key"  # from `txlog keys init`; mode 0600
//! root_key_file = "/etc/txlog/root.secret"  # from `txlog token secret --key-id root`; mode 0600
//! tls_ca_file = "/etc/txlog/certs/ca.pem"  # from `txlog certs init`
//! tls_cert_file = "/etc/txlog/certs/node-paris.pem"  # `txlog certs issue --node paris`
//! tls_key_file = "/etc/txlog/certs/node-paris.key"  # mode 0600
//! # insecure = true  # instead of root_key_file and tls_*: no TLS, no tokens, every call allowed
//! signing_key_rotate_s = 86400
//! data_key_rotate_s = 3600
//! # feed_listen = "10.1.0.11:7500"   # the UDP feed: source and retransmit address; absent: no feed
//! # feed_targets = ["239.192.0.1:7500"]  # a multicast group, or unicast subscribers
//! # feed_classes = "market-data=8:market-data*;order-book=4:order-book*;execution=2:execution*;other=1:*"
//! # feed_mtu_bytes = 1500
//! # feed_ring_bytes = 67108864
//! # feed_heartbeat_ms = 1000
//! # feed_egress_packets_per_s = 0   # 0: unpaced
//! # feed_dpdk_device = "net_af_packet0,iface=eth1"  # publish through DPDK (build with --features dpdk)
//! # feed_dpdk_eal_args = "--no-huge --no-pci --no-shconf --no-telemetry -m 256"
//! # feed_dpdk_next_hop_mac = "02:00:0a:00:00:01"  # unicast targets' next hop (no ARP in DPDK)
//! # feed_speculative = false   # also publish records before commit, then their outcome
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use txlog_raft::timing::Timing;
use txlog_raft::NodeInfo;

use crate::Error;
use crate::Result;

/// One cluster member as given in `peers`: `ID=REGION@HOST:PORT` or `ID=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub info: NodeInfo,
}

impl std::str::FromStr for Peer {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (id, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("peer {s:?} must look like ID=REGION@HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("peer id {id:?} is not a number"))?;
        if id == 0 {
            return Err("peer id 0 is reserved".into());
        }
        let (region, address) = match rest.split_once('@') {
            Some((r, a)) => (r.trim().to_string(), a.trim().to_string()),
            None => ("default".to_string(), rest.trim().to_string()),
        };
        validate_address(&address)?;
        Ok(Peer {
            id,
            info: NodeInfo { address, region },
        })
    }
}

pub fn validate_address(address: &str) -> std::result::Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("address {address:?} must be HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("address {address:?} has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("address {address:?} has a bad port"))?;
    Ok(())
}

/// Region of a node that names none.
pub const REGION_DEFAULT: &str = "default";
/// Listen address of a node that names none.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7401";
/// Timing profile of a node that names none.
pub const TIMING_DEFAULT: &str = "regional";
/// Most bytes of records grouped into one Raft entry.
pub const BATCH_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// Largest `batch_bytes_max` accepted: half the batch frame's limit.
pub const BATCH_BYTES_MAX_LIMIT: usize = txlog_raft::BATCH_BYTES_MAX / 2;
/// Most records grouped into one Raft entry.
pub const BATCH_RECORDS_MAX_DEFAULT: usize = 8192;
/// Log entries between two snapshots.
pub const SNAPSHOT_LOGS_SINCE_LAST_DEFAULT: u64 = 10_000;
/// Log entries kept behind a snapshot for briefly lagging followers.
pub const LOG_ENTRIES_KEPT_AFTER_SNAPSHOT_DEFAULT: u64 = 1000;
/// WAL bytes above which a snapshot is built (so the WAL can be purged):
/// two default segments. Snapshots share the record file, so building one
/// costs about the same at any log size.
pub const SNAPSHOT_WAL_BYTES_MAX_DEFAULT: u64 = 128 * 1024 * 1024;
/// Largest payload limit a node may be configured with.
pub const PAYLOAD_BYTES_MAX_LIMIT: usize = 16 * 1024 * 1024;
/// A leader announces a new signing key of its own after this long.
pub const SIGNING_KEY_ROTATE_S_DEFAULT: u64 = 24 * 3600;
/// A leader announces a new data key after this long.
pub const DATA_KEY_ROTATE_S_DEFAULT: u64 = 3600;
/// Smallest WAL segment size accepted.
pub const SEGMENT_BYTES_MIN: u64 = 4096;

/// Every node setting, declared once: the TOML file's keys and the
/// `txlog node` flags (each also read from `TXLOG_<NAME>`). Every field is
/// optional so the file, the variables and the flags can each fill some;
/// [`NodeConfig::resolve`] merges two of these and applies the defaults.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// TOML config file (flags and TXLOG_* variables override its keys).
    #[arg(long, env = "TXLOG_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Node id (1 or more, unique in the cluster; need not be small or dense).
    #[arg(long, env = "TXLOG_ID")]
    pub id: Option<u64>,
    /// Region name, e.g. paris [default: default].
    #[arg(long, env = "TXLOG_REGION")]
    pub region: Option<String>,
    /// Address to listen on for clients, operators and peers [default: 127.0.0.1:7401].
    #[arg(long, env = "TXLOG_LISTEN")]
    pub listen: Option<String>,
    /// Address others use to reach this node [default: --listen].
    #[arg(long, env = "TXLOG_ADVERTISE")]
    pub advertise: Option<String>,
    /// Data directory: WAL, state machine, snapshots [default: txlog-data/node-ID].
    #[arg(long, env = "TXLOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Initial members, comma-separated ID=REGION@HOST:PORT. The lowest id initialises a fresh cluster.
    #[arg(long, env = "TXLOG_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Join a running cluster through this member (HOST:PORT) instead of --peers: the node
    /// starts empty, is added as a learner, catches up and becomes a voter. Harmless on
    /// restart: a node that is already a voter is left as it is.
    #[arg(long, env = "TXLOG_JOIN")]
    pub join: Option<String>,
    /// With --join: stay a learner that holds a full copy of the log but never votes (an audit
    /// copy in a region of its own, which serves `txlog audit verify --stale`).
    #[arg(long, env = "TXLOG_LEARNER", num_args = 0..=1, default_missing_value = "true")]
    pub learner: Option<bool>,
    /// Hand leadership back to a healthy voter in this region (e.g. paris) whenever
    /// another region leads; `auto`: to the voter whose commit quorum is nearest (the smallest
    /// quorum round trip, measured by the nodes' pings), when it is at least 20 % and 0.5 ms
    /// nearer than the leader's.
    #[arg(long, env = "TXLOG_PREFER_REGION")]
    pub prefer_region: Option<String>,
    /// Addresses that may call LogService, health and reflection: comma-separated CIDR blocks
    /// or addresses (e.g. 10.1.0.0/16,127.0.0.1) [default: any].
    #[arg(long, env = "TXLOG_ALLOW_CLIENTS", value_delimiter = ',')]
    pub allow_clients: Option<Vec<String>>,
    /// Addresses that may call AdminService (membership, snapshots, keys) [default: any].
    #[arg(long, env = "TXLOG_ALLOW_ADMIN", value_delimiter = ',')]
    pub allow_admin: Option<Vec<String>>,
    /// Addresses that may call RaftService: the other members [default: any]. A connection
    /// from an address in none of the three lists is closed at once.
    #[arg(long, env = "TXLOG_ALLOW_PEERS", value_delimiter = ',')]
    pub allow_peers: Option<Vec<String>>,
    /// Address for the Prometheus /metrics endpoint ("off" to disable) [default: off].
    #[arg(long, env = "TXLOG_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Timing profile: regional (10 ms heartbeat, 25-50 ms election timeout, a dead leader
    /// noticed 50-60 ms after its last heartbeat, and no heartbeat or vote given less than
    /// 40 ms to be answered: for one site and for regions a few ms apart), lan (the same
    /// without that floor) or wan (100 ms, 500-1000 ms) [default: regional].
    #[arg(long, env = "TXLOG_TIMING")]
    pub timing: Option<String>,
    /// Heartbeat interval, overriding the profile's.
    #[arg(long, env = "TXLOG_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Shortest election timeout, overriding the profile's.
    #[arg(long, env = "TXLOG_ELECTION_TIMEOUT_MS_MIN")]
    pub election_timeout_ms_min: Option<u64>,
    /// Longest election timeout, overriding the profile's.
    #[arg(long, env = "TXLOG_ELECTION_TIMEOUT_MS_MAX")]
    pub election_timeout_ms_max: Option<u64>,
    /// Shortest deadline of a heartbeat or vote RPC (0: openraft's, the heartbeat interval
    /// and the shortest election timeout), overriding the profile's.
    #[arg(long, env = "TXLOG_RPC_DEADLINE_MS_MIN")]
    pub rpc_deadline_ms_min: Option<u64>,
    /// Largest record payload accepted, bytes [default: 1048576; at most 16777216].
    #[arg(long, env = "TXLOG_PAYLOAD_BYTES_MAX")]
    pub payload_bytes_max: Option<usize>,
    /// Most bytes grouped into one Raft entry [default: 4194304; at most 33554432].
    #[arg(long, env = "TXLOG_BATCH_BYTES_MAX")]
    pub batch_bytes_max: Option<usize>,
    /// Most records grouped into one Raft entry [default: 8192].
    #[arg(long, env = "TXLOG_BATCH_RECORDS_MAX")]
    pub batch_records_max: Option<usize>,
    /// Build a snapshot after this many log entries (raised by up to half, by the node's rank among the members, so nodes build apart); 0: only by WAL size [default: 10000].
    #[arg(long, env = "TXLOG_SNAPSHOT_LOGS_SINCE_LAST")]
    pub snapshot_logs_since_last: Option<u64>,
    /// Log entries kept behind a snapshot, so a briefly lagging follower catches up from the log [default: 1000].
    #[arg(long, env = "TXLOG_LOG_ENTRIES_KEPT_AFTER_SNAPSHOT")]
    pub log_entries_kept_after_snapshot: Option<u64>,
    /// Also snapshot and purge while the WAL holds more than this many bytes (raised by up to half, by the node's rank); 0 turns it off, else at least twice segment_bytes_max [default: 134217728, or twice segment_bytes_max if larger].
    #[arg(long, env = "TXLOG_SNAPSHOT_WAL_BYTES_MAX")]
    pub snapshot_wal_bytes_max: Option<u64>,
    /// WAL segment size before rolling to a new file, bytes [default: 67108864; at least 4096].
    #[arg(long, env = "TXLOG_SEGMENT_BYTES_MAX")]
    pub segment_bytes_max: Option<u64>,
    /// The cluster key file (key-encryption keys; made by `txlog keys init`, mode 0600, the same
    /// file on every node). Every entry is sealed: LZ4, AES-256-GCM under a data key wrapped with
    /// it, ed25519-signed by the leader.
    #[arg(long, env = "TXLOG_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Seconds before a leader announces a new signing key of its own [default: 86400].
    #[arg(long, env = "TXLOG_SIGNING_KEY_ROTATE_S")]
    pub signing_key_rotate_s: Option<u64>,
    /// Seconds before the leader announces a new data key [default: 3600].
    #[arg(long, env = "TXLOG_DATA_KEY_ROTATE_S")]
    pub data_key_rotate_s: Option<u64>,
    /// The root client key's secret file (from `txlog token secret --key-id root --out FILE`,
    /// mode 0600, the same file on every node). Calls need a request token; the root key may do
    /// everything, other keys what their roles allow (`txlog admin key|role`). Required unless
    /// --insecure.
    #[arg(long, env = "TXLOG_ROOT_KEY_FILE")]
    pub root_key_file: Option<PathBuf>,
    /// The cluster CA's certificate (`ca.pem` from `txlog certs init`, the same on every node).
    /// Every connection, in and out, is mutual TLS with certificates this CA issued. Required
    /// unless --insecure.
    #[arg(long, env = "TXLOG_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// This node's certificate (`txlog certs issue --node NAME`); reloaded when it changes.
    #[arg(long, env = "TXLOG_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// This node's private key (mode 0600); reloaded when it changes.
    #[arg(long, env = "TXLOG_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// No TLS, and every call accepted without a token or role check (a warning is logged at
    /// every start). Only for a cluster that nothing untrusted can reach.
    #[arg(long, env = "TXLOG_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
    /// Seal entries (on by default). Off only to measure what sealing costs: an unsealed node
    /// cannot join a sealed cluster, nor the other way round.
    #[arg(long, env = "TXLOG_SEAL", hide = true)]
    pub seal: Option<bool>,
    /// UDP address of this node's feed: its packets leave from it and its retransmit service
    /// answers there ("off" or absent: no feed).
    #[arg(long, env = "TXLOG_FEED_LISTEN")]
    pub feed_listen: Option<String>,
    /// Where the feed goes: a multicast group (e.g. 239.192.0.1:7500) or unicast subscribers,
    /// comma-separated. Needed with --feed-listen.
    #[arg(long, env = "TXLOG_FEED_TARGETS", value_delimiter = ',')]
    pub feed_targets: Option<Vec<String>>,
    /// Priority classes, highest first: NAME=WEIGHT:PATTERN[,PATTERN…];… (a pattern is a
    /// channel, a prefix ending in *, or *) [default: market-data=8:market-data*;
    /// order-book=4:order-book*;execution=2:execution*;other=1:*].
    #[arg(long, env = "TXLOG_FEED_CLASSES")]
    pub feed_classes: Option<String>,
    /// IP packet size of feed packets [default: 1500].
    #[arg(long, env = "TXLOG_FEED_MTU_BYTES")]
    pub feed_mtu_bytes: Option<usize>,
    /// Bytes of recent feed packets kept for re-requests [default: 67108864].
    #[arg(long, env = "TXLOG_FEED_RING_BYTES")]
    pub feed_ring_bytes: Option<usize>,
    /// Heartbeat of an idle feed stream, ms [default: 1000].
    #[arg(long, env = "TXLOG_FEED_HEARTBEAT_MS")]
    pub feed_heartbeat_ms: Option<u64>,
    /// Most live feed packets per second (a link's limit); 0: unpaced [default: 0].
    #[arg(long, env = "TXLOG_FEED_EGRESS_PACKETS_PER_S")]
    pub feed_egress_packets_per_s: Option<u64>,
    /// Publish the feed through DPDK on this virtual device instead of the kernel:
    /// net_af_packet0,iface=IF (a real interface; needs CAP_NET_RAW), net_null0 or net_ring0.
    /// Needs a txlog built with --features dpdk. Re-requests are still answered on feed_listen.
    #[arg(long, env = "TXLOG_FEED_DPDK_DEVICE")]
    pub feed_dpdk_device: Option<String>,
    /// DPDK EAL arguments, space-separated [default: --no-huge --no-pci --no-shconf
    /// --no-telemetry -m 256 --log-level=*:warning].
    #[arg(long, env = "TXLOG_FEED_DPDK_EAL_ARGS")]
    pub feed_dpdk_eal_args: Option<String>,
    /// Ethernet address of the next hop for unicast feed targets (DPDK does no ARP);
    /// multicast targets need none.
    #[arg(long, env = "TXLOG_FEED_DPDK_NEXT_HOP_MAC")]
    pub feed_dpdk_next_hop_mac: Option<String>,
    /// Also publish a speculative stream: records as this node's log appends them, before
    /// commit, each entry then marked committed, rolled back or unknown. Opt-in for
    /// subscribers (`txlog feed subscribe --speculative`); the class streams stay the truth.
    #[arg(long, env = "TXLOG_FEED_SPECULATIVE", num_args = 0..=1, default_missing_value = "true")]
    pub feed_speculative: Option<bool>,
}

impl NodeSettings {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))
    }

    /// Each field of `self`, or `file`'s where `self` has none.
    fn or(self, file: NodeSettings) -> NodeSettings {
        macro_rules! merge {
            ($($field:ident),* $(,)?) => {
                NodeSettings { $($field: self.$field.or(file.$field)),* }
            };
        }
        merge!(
            config,
            id,
            region,
            listen,
            advertise,
            data_dir,
            peers,
            join,
            learner,
            prefer_region,
            allow_clients,
            allow_admin,
            allow_peers,
            metrics_listen,
            timing,
            heartbeat_interval_ms,
            election_timeout_ms_min,
            election_timeout_ms_max,
            rpc_deadline_ms_min,
            payload_bytes_max,
            batch_bytes_max,
            batch_records_max,
            snapshot_logs_since_last,
            log_entries_kept_after_snapshot,
            snapshot_wal_bytes_max,
            segment_bytes_max,
            key_file,
            signing_key_rotate_s,
            data_key_rotate_s,
            root_key_file,
            tls_ca_file,
            tls_cert_file,
            tls_key_file,
            insecure,
            seal,
            feed_listen,
            feed_targets,
            feed_classes,
            feed_mtu_bytes,
            feed_ring_bytes,
            feed_heartbeat_ms,
            feed_egress_packets_per_s,
            feed_dpdk_device,
            feed_dpdk_eal_args,
            feed_dpdk_next_hop_mac,
            feed_speculative,
        )
    }

    /// These settings (flags and variables) over the file they name, if any.
    pub fn resolve(self) -> Result<NodeConfig> {
        let file = match &self.config {
            Some(path) => NodeSettings::load(path)?,
            None => NodeSettings::default(),
        };
        NodeConfig::resolve(file, self)
    }
}

/// A node's resolved configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub region: String,
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this node.
    pub advertise: String,
    pub data_dir: PathBuf,
    pub peers: BTreeMap<u64, NodeInfo>,
    /// A member to ask for admission (`txlog node --join`).
    pub join: Option<String>,
    /// Join as a learner and stay one (`--learner`).
    pub learner: bool,
    /// Leadership is handed back to a healthy voter of this region, or, set
    /// to `auto`, to the voter whose commit quorum is nearest.
    pub prefer_region: Option<String>,
    /// Who may call which services (`allowlist.rs`).
    pub allowlist: crate::allowlist::Allowlist,
    pub metrics_listen: Option<SocketAddr>,
    pub timing: Timing,
    pub payload_bytes_max: usize,
    pub batch_bytes_max: usize,
    pub batch_records_max: usize,
    pub snapshot_logs_since_last: u64,
    /// Log entries kept behind a snapshot so lagging followers catch up without one.
    pub log_entries_kept_after_snapshot: u64,
    /// A snapshot is also built once the WAL holds more bytes than this (0: never).
    pub snapshot_wal_bytes_max: u64,
    pub segment_bytes_max: u64,
    /// How entries are sealed; `None` only when sealing is turned off.
    pub sealing: Option<Sealing>,
    /// Whether calls need tokens, and the root key's file (`access_guard.rs`).
    pub access: Access,
    /// The UDP feed, if this node publishes one.
    pub feed: Option<Feed>,
}

/// Feed settings of a node.
#[derive(Debug, Clone)]
pub struct Feed {
    pub listen: SocketAddr,
    pub targets: Vec<SocketAddr>,
    pub classes: txlog_feed::Classes,
    pub mtu_bytes: usize,
    pub ring_bytes: usize,
    pub heartbeat: std::time::Duration,
    /// Publish through DPDK instead of the kernel socket.
    pub dpdk: Option<FeedDpdk>,
    pub egress_packets_per_s: u64,
    /// Publish the speculative stream too.
    pub speculative: bool,
}

/// Sealing settings of a node.
#[derive(Debug, Clone)]
pub struct Sealing {
    pub key_file: PathBuf,
    pub signing_key_rotate: std::time::Duration,
    pub data_key_rotate: std::time::Duration,
}

impl NodeConfig {
    /// Merge `overrides` (flags/env) over `file`, apply defaults and validate.
    pub fn resolve(file: NodeSettings, overrides: NodeSettings) -> Result<Self> {
        let s = overrides.or(file);
        let id =
            s.id.ok_or_else(|| Error::Config("node id is required (--id or `id` in the config file)".into()))?;
        if id == 0 {
            return Err(Error::Config("node id 0 is reserved; use 1 or more".into()));
        }
        let region = s.region.clone().unwrap_or_else(|| REGION_DEFAULT.to_string());
        let listen_text = s.listen.clone().unwrap_or_else(|| LISTEN_DEFAULT.to_string());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|e| Error::Config(format!("listen address {listen_text:?}: {e}")))?;
        let advertise = s.advertise.clone().unwrap_or_else(|| listen.to_string());
        validate_address(&advertise).map_err(Error::Config)?;
        let data_dir = s
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("txlog-data/node-{id}")));
        let peers = peers_of(&s, id, &advertise)?;
        let join = join_of(&s, &peers)?;
        let prefer_region = s.prefer_region.clone().filter(|r| !r.trim().is_empty());
        let list = |setting: &str, entries: &Option<Vec<String>>| {
            crate::allowlist::Allowlist::parse_list(setting, entries.as_deref().unwrap_or_default())
                .map_err(Error::Config)
        };
        let allowlist = crate::allowlist::Allowlist {
            clients: list("allow_clients", &s.allow_clients)?,
            admin: list("allow_admin", &s.allow_admin)?,
            peers: list("allow_peers", &s.allow_peers)?,
        };
        let metrics_listen = metrics_listen_of(&s)?;
        let timing = timing_of(&s)?;
        let payload_bytes_max = s
            .payload_bytes_max
            .unwrap_or(crate::validate::PAYLOAD_BYTES_MAX_DEFAULT);
        if payload_bytes_max == 0 || payload_bytes_max > PAYLOAD_BYTES_MAX_LIMIT {
            return Err(Error::Config(format!(
                "payload_bytes_max must be in 1..={PAYLOAD_BYTES_MAX_LIMIT}"
            )));
        }
        let batch_bytes_max = s.batch_bytes_max.unwrap_or(BATCH_BYTES_MAX_DEFAULT);
        let batch_records_max = s.batch_records_max.unwrap_or(BATCH_RECORDS_MAX_DEFAULT);
        if batch_records_max == 0 || batch_bytes_max == 0 {
            return Err(Error::Config("batch limits must be positive".into()));
        }
        // A batch is one frame, which refuses bodies over its limit. The
        // batcher stops adding records once `batch_bytes_max` is reached, so
        // a batch can be one payload (at most 16 MiB) larger; half the frame
        // limit leaves room for that and the encoding.
        if batch_bytes_max > BATCH_BYTES_MAX_LIMIT {
            return Err(Error::Config(format!(
                "batch_bytes_max must be at most {BATCH_BYTES_MAX_LIMIT} (half the batch frame's limit)"
            )));
        }
        let snapshot_logs_since_last = s.snapshot_logs_since_last.unwrap_or(SNAPSHOT_LOGS_SINCE_LAST_DEFAULT);
        let log_entries_kept_after_snapshot = s
            .log_entries_kept_after_snapshot
            .unwrap_or(LOG_ENTRIES_KEPT_AFTER_SNAPSHOT_DEFAULT);
        let segment_bytes_max = s.segment_bytes_max.unwrap_or(txlog_storage::SEGMENT_BYTES_MAX_DEFAULT);
        if segment_bytes_max < SEGMENT_BYTES_MIN {
            return Err(Error::Config(format!(
                "segment_bytes_max must be at least {SEGMENT_BYTES_MIN}"
            )));
        }
        // The WAL always keeps its active segment, so a limit under two
        // segments could never be met: snapshots and purges would run
        // every check, past the kept window, for nothing.
        let two_segments = segment_bytes_max.saturating_mul(2);
        let snapshot_wal_bytes_max = s
            .snapshot_wal_bytes_max
            .unwrap_or(SNAPSHOT_WAL_BYTES_MAX_DEFAULT.max(two_segments));
        if snapshot_wal_bytes_max != 0 && snapshot_wal_bytes_max < two_segments {
            return Err(Error::Config(format!(
                "snapshot_wal_bytes_max must be 0 (off) or at least twice segment_bytes_max ({two_segments})"
            )));
        }
        let sealing = sealing_of(&s)?;
        let access = access_of(&s)?;
        let feed = feed_of(&s)?;
        let learner = s.learner == Some(true);
        if learner && join.is_none() {
            return Err(Error::Config(
                "--learner needs --join: a learner is added to a running cluster".into(),
            ));
        }
        Ok(NodeConfig {
            id,
            region,
            listen,
            advertise,
            data_dir,
            peers,
            join,
            learner,
            prefer_region,
            allowlist,
            metrics_listen,
            timing,
            payload_bytes_max,
            batch_bytes_max,
            batch_records_max,
            snapshot_logs_since_last,
            log_entries_kept_after_snapshot,
            snapshot_wal_bytes_max,
            segment_bytes_max,
            sealing,
            access,
            feed,
        })
    }
}

/// The feed's DPDK backend settings.
#[derive(Debug, Clone)]
pub struct FeedDpdk {
    /// `feed_listen` and `feed_targets` as the IPv4 addresses DPDK frames carry.
    pub source: std::net::SocketAddrV4,
    pub targets: Vec<std::net::SocketAddrV4>,
    pub device: String,
    pub eal_args: Vec<String>,
    pub next_hop_mac: Option<txlog_feed::frame::Mac>,
}

/// Most feed targets (each packet is sent once per target).
const FEED_TARGETS_MAX: usize = 256;

fn feed_of(s: &NodeSettings) -> Result<Option<Feed>> {
    let listen = match s.feed_listen.as_deref().map(str::trim) {
        None | Some("") | Some("off") => {
            if s.feed_speculative == Some(true) {
                return Err(Error::Config(
                    "feed_speculative needs feed_listen (the speculative stream is part of the feed)".into(),
                ));
            }
            if s.feed_targets.as_ref().is_some_and(|t| !t.is_empty()) {
                return Err(Error::Config(
                    "feed_targets needs feed_listen (the feed's own address)".into(),
                ));
            }
            return Ok(None);
        }
        Some(text) => text
            .parse::<SocketAddr>()
            .map_err(|e| Error::Config(format!("feed_listen {text:?}: {e}")))?,
    };
    let targets = s
        .feed_targets
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            t.trim()
                .parse::<SocketAddr>()
                .map_err(|e| Error::Config(format!("feed target {t:?}: {e} (HOST:PORT, an IP address)")))
        })
        .collect::<Result<Vec<_>>>()?;
    if targets.is_empty() || targets.len() > FEED_TARGETS_MAX {
        return Err(Error::Config(format!(
            "feed_listen needs 1..={FEED_TARGETS_MAX} feed_targets (a multicast group or subscribers)"
        )));
    }
    if targets.iter().any(|t| t.ip().is_multicast()) && !listen.is_ipv4() {
        return Err(Error::Config("multicast feed targets need an IPv4 feed_listen".into()));
    }
    let classes = match &s.feed_classes {
        Some(spec) => txlog_feed::Classes::parse(spec).map_err(|e| Error::Config(e.to_string()))?,
        None => txlog_feed::Classes::default(),
    };
    let dpdk = feed_dpdk_of(s, &listen, &targets)?;
    let feed = Feed {
        listen,
        targets,
        classes,
        mtu_bytes: s.feed_mtu_bytes.unwrap_or(txlog_feed::MTU_BYTES_DEFAULT),
        ring_bytes: s.feed_ring_bytes.unwrap_or(txlog_feed::RING_BYTES_DEFAULT),
        heartbeat: std::time::Duration::from_millis(s.feed_heartbeat_ms.unwrap_or(txlog_feed::HEARTBEAT_MS_DEFAULT)),
        egress_packets_per_s: s.feed_egress_packets_per_s.unwrap_or(0),
        dpdk,
        speculative: s.feed_speculative == Some(true),
    };
    feed.publisher_config(0)
        .validate()
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(Some(feed))
}

fn feed_dpdk_of(s: &NodeSettings, listen: &SocketAddr, targets: &[SocketAddr]) -> Result<Option<FeedDpdk>> {
    let device = match s.feed_dpdk_device.as_deref().map(str::trim) {
        None | Some("") | Some("off") => {
            if s.feed_dpdk_eal_args.is_some() || s.feed_dpdk_next_hop_mac.is_some() {
                return Err(Error::Config(
                    "feed_dpdk_eal_args and feed_dpdk_next_hop_mac need feed_dpdk_device".into(),
                ));
            }
            return Ok(None);
        }
        Some(device) => device.to_owned(),
    };
    if !cfg!(feature = "dpdk") {
        return Err(Error::Config(format!(
            "feed_dpdk_device {device:?}: this txlog was built without DPDK; build it with `cargo build --release --features dpdk` (needs libdpdk-dev)"
        )));
    }
    let ipv4 = |address: &SocketAddr| match address {
        SocketAddr::V4(v4) => Ok(*v4),
        SocketAddr::V6(_) => Err(Error::Config(
            "the DPDK feed backend sends IPv4 only: feed_listen and feed_targets must be IPv4".into(),
        )),
    };
    let source = ipv4(listen)?;
    let targets = targets.iter().map(ipv4).collect::<Result<Vec<_>>>()?;
    let next_hop_mac = s
        .feed_dpdk_next_hop_mac
        .as_deref()
        .map(|m| txlog_feed::frame::parse_mac(m).map_err(|e| Error::Config(format!("feed_dpdk_next_hop_mac: {e}"))))
        .transpose()?;
    if next_hop_mac.is_none() && targets.iter().any(|t| !t.ip().is_multicast()) {
        return Err(Error::Config(
            "unicast feed_targets through DPDK need feed_dpdk_next_hop_mac (DPDK does no ARP)".into(),
        ));
    }
    let eal_args = match &s.feed_dpdk_eal_args {
        Some(args) => args.split_whitespace().map(str::to_owned).collect(),
        None => txlog_feed::EAL_ARGS_DEFAULT.iter().map(|a| a.to_string()).collect(),
    };
    Ok(Some(FeedDpdk {
        source,
        targets,
        device,
        eal_args,
        next_hop_mac,
    }))
}

impl Feed {
    /// The publisher's configuration for a session.
    pub fn publisher_config(&self, session: u64) -> txlog_feed::PublisherConfig {
        txlog_feed::PublisherConfig {
            session,
            mtu_bytes: self.mtu_bytes,
            classes: self.classes.clone(),
            ring_bytes: self.ring_bytes,
            heartbeat: self.heartbeat,
            egress_packets_per_s: self.egress_packets_per_s,
            queue_packets_max: txlog_feed::QUEUE_PACKETS_MAX_DEFAULT,
            speculative: self.speculative,
        }
    }
}

/// Whether connections are mutual TLS and calls need tokens: both, unless
/// `--insecure`. Tokens are checked against the root key in this file
/// (read when the node starts) and the keys in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// `--insecure`: plain connections, no token asked, every call allowed.
    Insecure,
    Secured {
        root_key_file: PathBuf,
        tls: txlog_client::TlsFiles,
    },
}

/// Secured with the root key from `root_key_file` and the three TLS
/// files, unless `insecure`.
fn access_of(s: &NodeSettings) -> Result<Access> {
    if s.insecure == Some(true) {
        return Ok(Access::Insecure);
    }
    let tls = match (&s.tls_ca_file, &s.tls_cert_file, &s.tls_key_file) {
        (Some(ca), Some(cert), Some(key)) => txlog_client::TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => {
            return Err(Error::Config(
                "connections are mutual TLS, so --tls-ca-file, --tls-cert-file and --tls-key-file \
                 (`tls_ca_file`, `tls_cert_file`, `tls_key_file`) are all required: create a CA with \
                 `txlog certs init --dir DIR` and this node's certificate with `txlog certs issue \
                 --dir DIR --node NAME`; or run with --insecure where nothing untrusted can reach the node"
                    .into(),
            ))
        }
    };
    let root_key_file = s.root_key_file.clone().ok_or_else(|| {
        Error::Config(
            "calls need request tokens, so a root key file is required: create one with \
             `txlog token secret --key-id root --out FILE` (the same file for every node) and give it \
             with --root-key-file or `root_key_file`; or run with --insecure where nothing untrusted \
             can reach the node"
                .into(),
        )
    })?;
    Ok(Access::Secured { root_key_file, tls })
}

/// The sealing settings, `None` when sealing is off; a sealed node needs
/// a key file.
fn sealing_of(s: &NodeSettings) -> Result<Option<Sealing>> {
    if s.seal == Some(false) {
        return Ok(None);
    }
    let key_file = s.key_file.clone().ok_or_else(|| {
        Error::Config(
            "entries are sealed, so a key file is required: create one with `txlog keys init --out FILE` \
             (the same file for every node) and give it with --key-file or `key_file`"
                .into(),
        )
    })?;
    let positive = |name: &str, value: Option<u64>, default: u64| -> Result<std::time::Duration> {
        match value.unwrap_or(default) {
            0 => Err(Error::Config(format!("{name} must be at least 1"))),
            v => Ok(std::time::Duration::from_secs(v)),
        }
    };
    Ok(Some(Sealing {
        key_file,
        signing_key_rotate: positive(
            "signing_key_rotate_s",
            s.signing_key_rotate_s,
            SIGNING_KEY_ROTATE_S_DEFAULT,
        )?,
        data_key_rotate: positive("data_key_rotate_s", s.data_key_rotate_s, DATA_KEY_ROTATE_S_DEFAULT)?,
    }))
}
/// `peers` as a map, each listed once; this node's entry must match its advertised address.
fn peers_of(s: &NodeSettings, id: u64, advertise: &str) -> Result<BTreeMap<u64, NodeInfo>> {
    let mut peers = BTreeMap::new();
    for text in s.peers.iter().flatten() {
        for item in text.split(',').filter(|s| !s.trim().is_empty()) {
            let peer: Peer = item.parse().map_err(Error::Config)?;
            if peers.insert(peer.id, peer.info).is_some() {
                return Err(Error::Config(format!("peer id {} listed twice", peer.id)));
            }
        }
    }
    if let Some(me) = peers.get(&id) {
        if me.address != advertise {
            return Err(Error::Config(format!(
                "peers list node {id} at {} but this node advertises {advertise}",
                me.address
            )));
        }
    }
    Ok(peers)
}

/// `join`, valid and not given together with `peers`.
fn join_of(s: &NodeSettings, peers: &BTreeMap<u64, NodeInfo>) -> Result<Option<String>> {
    let join = s.join.clone().filter(|j| !j.trim().is_empty());
    if let Some(join) = &join {
        validate_address(join).map_err(|e| Error::Config(format!("--join: {e}")))?;
        if !peers.is_empty() {
            return Err(Error::Config(
                "give either peers (to found a cluster) or join (to enter a running one), not both".into(),
            ));
        }
    }
    Ok(join)
}

/// The metrics address, `None` when off.
fn metrics_listen_of(s: &NodeSettings) -> Result<Option<SocketAddr>> {
    let metrics_listen = match s.metrics_listen.clone() {
        Some(text) if text.is_empty() || text == "off" => None,
        Some(text) => Some(
            text.parse()
                .map_err(|e| Error::Config(format!("metrics address {text:?}: {e}")))?,
        ),
        None => None,
    };
    Ok(metrics_listen)
}

/// The timing profile with any `*_ms` overrides, validated.
fn timing_of(s: &NodeSettings) -> Result<Timing> {
    let profile = s.timing.clone().unwrap_or_else(|| TIMING_DEFAULT.to_string());
    let mut timing = Timing::profile(&profile)
        .ok_or_else(|| Error::Config(format!("unknown timing profile {profile:?}; use {}", Timing::PROFILES)))?;
    if let Some(v) = s.heartbeat_interval_ms {
        timing.heartbeat_interval_ms = v;
    }
    if let Some(v) = s.election_timeout_ms_min {
        timing.election_timeout_ms_min = v;
    }
    if let Some(v) = s.election_timeout_ms_max {
        timing.election_timeout_ms_max = v;
    }
    if let Some(v) = s.rpc_deadline_ms_min {
        timing.rpc_deadline_ms_min = v;
    }
    timing.validate().map_err(|e| Error::Config(e.to_string()))?;
    Ok(timing)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags override the file, defaults fill the rest, and bad values are clear errors.
    #[test]
    fn merge_and_validate() {
        let file: NodeSettings = toml::from_str(
            r#"
            id = 1
            region = "paris"
            listen = "127.0.0.1:7401"
            peers = ["1=paris@127.0.0.1:7401", "2=frankfurt@127.0.0.1:7402"]
            timing = "wan"
            key_file = "cluster.key"
            insecure = true
            "#,
        )
        .unwrap();
        let overrides = NodeSettings {
            region: Some("lyon".into()),
            heartbeat_interval_ms: Some(50),
            ..Default::default()
        };
        let config = NodeConfig::resolve(file, overrides).unwrap();
        assert_eq!(config.region, "lyon");
        assert_eq!(config.timing.heartbeat_interval_ms, 50);
        assert_eq!(
            config.timing.election_timeout_ms_min,
            Timing::WAN.election_timeout_ms_min
        );
        assert_eq!(config.peers[&2].region, "frankfurt");

        assert!(
            NodeConfig::resolve(NodeSettings::default(), NodeSettings::default()).is_err(),
            "id is required"
        );
        let bad_peer = NodeSettings {
            id: Some(1),
            peers: Some(vec!["x=127.0.0.1:1".into()]),
            ..Default::default()
        };
        assert!(NodeConfig::resolve(bad_peer, NodeSettings::default()).is_err());
        let bad_timing = NodeSettings {
            id: Some(1),
            timing: Some("moon".into()),
            ..Default::default()
        };
        assert!(NodeConfig::resolve(bad_timing, NodeSettings::default()).is_err());
        assert!(
            toml::from_str::<NodeSettings>("idd = 1").is_err(),
            "unknown keys are rejected"
        );
        let huge_batch = NodeSettings {
            id: Some(1),
            batch_bytes_max: Some(BATCH_BYTES_MAX_LIMIT + 1),
            ..Default::default()
        };
        let err = NodeConfig::resolve(huge_batch, NodeSettings::default()).unwrap_err();
        assert!(err.to_string().contains("batch_bytes_max"), "{err}");

        // The WAL limit must leave room for two segments; its default does.
        let wal = |segment: u64, limit: Option<u64>| {
            let settings = NodeSettings {
                id: Some(1),
                segment_bytes_max: Some(segment),
                snapshot_wal_bytes_max: limit,
                seal: Some(false),
                insecure: Some(true),
                ..Default::default()
            };
            NodeConfig::resolve(settings, NodeSettings::default()).map(|c| c.snapshot_wal_bytes_max)
        };
        let err = wal(1 << 20, Some((2 << 20) - 1)).unwrap_err();
        assert!(err.to_string().contains("snapshot_wal_bytes_max"), "{err}");
        assert_eq!(wal(1 << 20, Some(2 << 20)).unwrap(), 2 << 20);
        assert_eq!(wal(1 << 20, Some(0)).unwrap(), 0);
        assert_eq!(wal(1 << 20, None).unwrap(), SNAPSHOT_WAL_BYTES_MAX_DEFAULT);
        assert_eq!(wal(1 << 30, None).unwrap(), 2 << 30);
    }

    /// Sealing is on by default and then needs a key file (any node id
    /// will do); rotation periods default and refuse zero.
    #[test]
    fn sealing_needs_a_key_file_and_a_small_id() {
        let resolve = |settings: NodeSettings| NodeConfig::resolve(settings, NodeSettings::default());
        let err = resolve(NodeSettings {
            id: Some(1),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("txlog keys init"), "{err}");
        let sealed = |id: u64| NodeSettings {
            id: Some(id),
            key_file: Some("k".into()),
            insecure: Some(true),
            ..Default::default()
        };
        let sealing = resolve(sealed(1 << 40)).unwrap().sealing.unwrap();
        assert_eq!(sealing.data_key_rotate.as_secs(), DATA_KEY_ROTATE_S_DEFAULT);
        assert_eq!(sealing.signing_key_rotate.as_secs(), SIGNING_KEY_ROTATE_S_DEFAULT);
        let zero = NodeSettings {
            data_key_rotate_s: Some(0),
            ..sealed(1)
        };
        assert!(resolve(zero).is_err());
        let unsealed = NodeSettings {
            id: Some(1 << 40),
            seal: Some(false),
            insecure: Some(true),
            ..Default::default()
        };
        assert!(resolve(unsealed).unwrap().sealing.is_none());
    }

    /// Access control is on unless `--insecure`, and then needs a root key
    /// file and all three TLS files; the flag takes no value (or an
    /// explicit one).
    #[test]
    fn access_needs_a_root_key_and_tls_or_insecure() {
        let base = || NodeSettings {
            id: Some(1),
            seal: Some(false),
            ..Default::default()
        };
        let secured = || NodeSettings {
            root_key_file: Some("/etc/txlog/root.secret".into()),
            tls_ca_file: Some("/etc/txlog/ca.pem".into()),
            tls_cert_file: Some("/etc/txlog/node-paris.pem".into()),
            tls_key_file: Some("/etc/txlog/node-paris.key".into()),
            ..base()
        };
        let err = NodeConfig::resolve(base(), NodeSettings::default()).unwrap_err();
        assert!(
            err.to_string().contains("--tls-ca-file") && err.to_string().contains("--insecure"),
            "{err}"
        );
        for missing in ["root", "ca", "cert", "key"] {
            let mut settings = secured();
            match missing {
                "root" => settings.root_key_file = None,
                "ca" => settings.tls_ca_file = None,
                "cert" => settings.tls_cert_file = None,
                _ => settings.tls_key_file = None,
            }
            let err = NodeConfig::resolve(settings, NodeSettings::default()).unwrap_err();
            let named = if missing == "root" {
                "--root-key-file"
            } else {
                "--tls-cert-file"
            };
            assert!(err.to_string().contains(named), "without {missing}: {err}");
        }
        assert_eq!(
            NodeConfig::resolve(secured(), NodeSettings::default()).unwrap().access,
            Access::Secured {
                root_key_file: "/etc/txlog/root.secret".into(),
                tls: txlog_client::TlsFiles {
                    ca: "/etc/txlog/ca.pem".into(),
                    cert: "/etc/txlog/node-paris.pem".into(),
                    key: "/etc/txlog/node-paris.key".into(),
                },
            }
        );
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: NodeSettings,
        }
        for (args, insecure) in [
            (&["txlog", "--insecure"][..], Access::Insecure),
            (&["txlog", "--insecure", "true"][..], Access::Insecure),
        ] {
            let flags = Cli::parse_from(args).settings;
            assert_eq!(NodeConfig::resolve(base(), flags).unwrap().access, insecure, "{args:?}");
        }
        let off = Cli::parse_from(["txlog", "--insecure", "false"]).settings;
        assert!(
            NodeConfig::resolve(base(), off).is_err(),
            "--insecure false still needs a root key and certificates"
        );
    }

    /// Allowlists parse from the file and from flags; a bad entry names its list.
    #[test]
    fn allowlists() {
        let file: NodeSettings = toml::from_str(
            r#"
            id = 1
            seal = false
            insecure = true
            allow_peers = ["10.1.0.11", "10.2.0.0/16"]
            "#,
        )
        .unwrap();
        let config = NodeConfig::resolve(file.clone(), NodeSettings::default()).unwrap();
        assert_eq!(config.allowlist.peers.len(), 2);
        assert!(config.allowlist.clients.is_empty() && config.allowlist.admin.is_empty());
        let bad = NodeSettings {
            allow_admin: Some(vec!["10.0.0.1/8".into()]),
            ..Default::default()
        };
        let err = NodeConfig::resolve(file, bad).unwrap_err().to_string();
        assert!(err.contains("allow_admin") && err.contains("host bits"), "{err}");
    }

    /// Every key of the module's example file parses, and the file and the flags are one
    /// struct: a value given both ways takes the flag's.
    #[test]
    fn example_file_and_flags_agree() {
        let doc: String = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        let file: NodeSettings = toml::from_str(&doc).expect("the documented example parses");
        let config = NodeConfig::resolve(file.clone(), NodeSettings::default()).unwrap();
        assert_eq!(
            config.timing,
            Timing::REGIONAL,
            "the example's timing comments match the regional profile"
        );
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: NodeSettings,
        }
        let flags = Cli::parse_from(["txlog", "--region", "lyon", "--peers", "1=a@127.0.0.1:7401,2=b@h:2"]).settings;
        let config = NodeConfig::resolve(file, flags).unwrap();
        assert_eq!(config.region, "lyon");
        assert_eq!(config.peers.len(), 2);
    }
}

#[cfg(test)]
mod feed_tests {
    use super::*;

    fn settings(extra: &str) -> NodeSettings {
        toml::from_str(&format!(
            "feed_listen = \"10.1.0.11:7500\"\nfeed_targets = [\"10.1.0.20:7500\"]\n{extra}"
        ))
        .expect("toml")
    }

    /// The speculative stream is off unless asked for, and needs a feed.
    #[test]
    fn speculative_feed_needs_a_feed() {
        let feed = feed_of(&settings("")).expect("valid").expect("a feed");
        assert!(!feed.speculative && !feed.publisher_config(1).speculative);
        let feed = feed_of(&settings("feed_speculative = true"))
            .expect("valid")
            .expect("a feed");
        assert!(feed.speculative && feed.publisher_config(1).speculative);
        let alone: NodeSettings = toml::from_str("feed_speculative = true").expect("toml");
        let err = feed_of(&alone).expect_err("no feed_listen");
        assert!(err.to_string().contains("feed_speculative needs feed_listen"), "{err}");
        let off: NodeSettings = toml::from_str("feed_speculative = false").expect("toml");
        assert!(feed_of(&off).expect("valid").is_none());
    }

    /// The DPDK settings say what is missing or wrong, and name the setting.
    #[test]
    fn dpdk_feed_settings_are_checked() {
        assert!(feed_of(&settings(""))
            .expect("kernel feed")
            .expect("a feed")
            .dpdk
            .is_none());
        let err = feed_of(&settings("feed_dpdk_next_hop_mac = \"02:00:00:00:00:01\"")).expect_err("no device");
        assert!(err.to_string().contains("need feed_dpdk_device"), "{err}");
        let with_device = feed_of(&settings("feed_dpdk_device = \"net_af_packet0,iface=eth1\""));
        if cfg!(feature = "dpdk") {
            let err = with_device.expect_err("unicast target without a MAC");
            assert!(err.to_string().contains("feed_dpdk_next_hop_mac"), "{err}");
            let err = feed_of(&settings(
                "feed_dpdk_device = \"net_null0\"\nfeed_dpdk_next_hop_mac = \"02:00:00:00:01\"",
            ))
            .expect_err("short MAC");
            assert!(err.to_string().contains("feed_dpdk_next_hop_mac"), "{err}");
            let feed = feed_of(&settings(
                "feed_dpdk_device = \"net_null0\"\nfeed_dpdk_next_hop_mac = \"02:00:00:00:00:01\"",
            ))
            .expect("valid")
            .expect("a feed");
            let dpdk = feed.dpdk.expect("dpdk");
            assert_eq!(dpdk.next_hop_mac, Some([2, 0, 0, 0, 0, 1]));
            assert_eq!(dpdk.eal_args[0], "--no-huge");
        } else {
            let err = with_device.expect_err("built without DPDK");
            assert!(err.to_string().contains("--features dpdk"), "{err}");
        }
    }
}
