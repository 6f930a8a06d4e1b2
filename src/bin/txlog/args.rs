//! The command line: every subcommand and flag with its `--help` text.
//! Nothing here runs anything; `main` hands each parsed command to the
//! module that does it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use clap::Parser;
use clap::Subcommand;
use txlog::config::NodeSettings;

use crate::duration::parse_duration;

#[derive(Parser)]
#[command(
    name = "txlog",
    version,
    about = "A replicated, durable, append-only transaction log",
    long_about = "txlog keeps one totally ordered log on a Raft group. Every append is fsynced on a \
                  quorum of nodes before it is acknowledged; every record gets a dense global \
                  sequence number; a retried txid returns its original sequence.\n\n\
                  Start a local three-region cluster with `txlog dev`, then use `txlog append`, \
                  `read`, `lookup`, `tail` and `status` against it (they default to that cluster)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct ClusterArgs {
    /// Comma-separated node addresses (HOST:PORT, `http://` optional).
    #[arg(long, env = "TXLOG_CLUSTER", default_value = txlog_client::DEV_CLUSTER)]
    pub cluster: String,
    /// Client secret file (`KEY_ID:SECRET`, mode 0600; from `txlog token secret`) to sign each
    /// request with [default: the dev cluster's root key, txlog-dev-data/root.secret, if it
    /// exists; else requests go unsigned, which only an --insecure cluster accepts].
    #[arg(long, env = "TXLOG_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
    /// A role the requests claim (repeat, or comma-separate, for several) [default: every role
    /// the cluster grants the key].
    #[arg(long = "claim-role", env = "TXLOG_CLAIM_ROLES", value_delimiter = ',')]
    pub claim_roles: Vec<String>,
    /// The cluster CA's certificate; with --tls-cert-file and --tls-key-file, connections are
    /// mutual TLS [default: the dev cluster's txlog-dev-data/certs/ca.pem and client-admin
    /// certificate, if they exist; else plain, which only an --insecure cluster accepts].
    #[arg(long, env = "TXLOG_CLIENT_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// This client's certificate (`txlog certs issue --client NAME`).
    #[arg(long, env = "TXLOG_CLIENT_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// This client's private key (mode 0600).
    #[arg(long, env = "TXLOG_CLIENT_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Print JSON instead of human-readable text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a local three-region cluster (paris, frankfurt, lyon) on loopback.
    Dev(DevArgs),
    /// Run one node.
    Node(Box<NodeSettings>),
    /// Append one record and print its sequence number.
    Append(AppendArgs),
    /// Read committed records by sequence number.
    Read(ReadArgs),
    /// Find a committed record by transaction id.
    Lookup(LookupArgs),
    /// Print committed records as they arrive (history first, then live).
    Tail(TailArgs),
    /// Show the leader, term, commit index and every node's role and region.
    Status(StatusArgs),
    /// Membership and maintenance: join, remove, transfer-leader, status, snapshot, compact.
    Admin(AdminArgs),
    /// Benchmarks: append load (default), failover time, resync bandwidth.
    Bench(Box<crate::bench::BenchCommand>),
    /// Sealing keys: create the cluster key file, list the keys announced in the log, rotate them now.
    Keys(KeysArgs),
    /// Client request tokens: make a client key's secret file, issue a token for one call.
    Token(TokenArgs),
    /// TLS certificates: make the cluster CA, issue node and client certificates.
    Certs(CertsArgs),
    /// The UDP feed: subscribe to it, show each node's publisher counters.
    Feed(FeedArgs),
    /// The audit trail (the `_audit` channel): print its events, verify its hash chain.
    Audit(AuditArgs),
    /// Check a stopped node's files offline: every CRC, signature and tag, and the hash chain.
    #[command(
        long_about = "Check a stopped node's data directory offline, changing nothing: every WAL \
                      segment and entry (CRC; for a sealed batch its signature and AEAD tag, and that \
                      no nonce sealed two different batches under one data key; for a key batch \
                      its announcements), every record segment (CRC, dense seqs, the hash \
                      chain recomputed at every record, the tag of every payload sealed at rest), \
                      and every snapshot (the same, and the chain's final value). A staged delta \
                      and a torn tail at the end of the WAL or the record file (what a crash leaves; \
                      the node removes or cuts them on its next start) are reported, not errors.\n\n\
                      Exit status: 0 when everything checks, 1 at the first bad position (printed \
                      with its file and offset or seq), 2 when it cannot check (no such directory, \
                      or sealed data without --key-file)."
    )]
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The node's data directory (its --data-dir). The node must be stopped.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The cluster key file (the nodes' --key-file), needed to check a sealed node's
    /// signatures and tags; public keys and wrapped data keys are read from the node's own log.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a new client key: a 32-byte secret from the OS generator, written as `KEY_ID:HEX`
    /// to a new file with mode 0600 (an existing file is never replaced).
    Secret(TokenSecretArgs),
    /// Print a request token for one call: HMAC-SHA256 under the client secret over the key
    /// id, roles, times, a fresh nonce, the method and the SHA-256 of the request message's
    /// protobuf encoding. It is accepted once, for at most --ttl (300 s at most). Send it in
    /// the binary gRPC metadata key `txlog-token-bin` (the client library and the CLI make
    /// their own; this is for calls made by hand).
    Issue(TokenIssueArgs),
}

#[derive(Args)]
pub struct TokenSecretArgs {
    /// The client key's id: 1-64 characters of [A-Za-z0-9._-].
    #[arg(long)]
    pub key_id: String,
    /// Where to write the secret.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct TokenIssueArgs {
    /// The client secret file (from `txlog token secret`; mode 0600).
    #[arg(long)]
    pub secret_file: PathBuf,
    /// A role the token claims (repeat for several; at most 16).
    #[arg(long)]
    pub role: Vec<String>,
    /// How long the token is valid, at most 300s.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub ttl: Duration,
    /// The full gRPC method the token is for, e.g. /txlog.v1.LogService/Append.
    #[arg(long)]
    pub method: String,
    /// A file holding the request message, protobuf-encoded; without it, the empty message.
    /// Nodes digest the message as they encode it again (fields in number order, packed,
    /// no unknown fields), so the file must hold exactly that encoding.
    #[arg(long)]
    pub request: Option<PathBuf>,
    /// Print `txlog-token-bin: <value>` (a header line) instead of the value alone.
    #[arg(long)]
    pub header: bool,
}

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Print the security events of the `_audit` channel, one line each: refused connections,
    /// handshakes, tokens and calls (aggregated, with counts), admin calls with their caller
    /// and outcome, certificate reloads.
    Tail(AuditTailArgs),
    /// Read every `_audit` record and recompute its hash chain; print the chain head, or the
    /// first record that breaks it (removed, reordered or altered records) and exit 1.
    Verify(AuditVerifyArgs),
}

#[derive(Args)]
pub struct AuditTailArgs {
    /// First sequence number to read from.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Keep printing new events until Ctrl-C.
    #[arg(long)]
    pub follow: bool,
    /// Read from the node in --cluster without asking the leader (an audit learner's copy).
    #[arg(long)]
    pub stale: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct AuditVerifyArgs {
    /// Read from the node in --cluster without asking the leader (an audit learner's copy).
    #[arg(long)]
    pub stale: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Make the cluster CA (ca.pem, and ca.key with mode 0600) in --dir, and the certificates
    /// named with --node and --client. Every node is given ca.pem and its own node certificate
    /// (--tls-ca-file, --tls-cert-file, --tls-key-file); clients get ca.pem and a client
    /// certificate. An existing CA is never replaced.
    Init(CertsInitArgs),
    /// Issue or renew node and client certificates with the CA in --dir. A renewed certificate
    /// replaces the old files; a running node takes it within seconds, without a restart.
    Issue(CertsInitArgs),
}

#[derive(Args)]
pub struct CertsInitArgs {
    /// The directory of the CA (created by `init` if absent).
    #[arg(long)]
    pub dir: PathBuf,
    #[command(flatten)]
    pub holders: CertHolders,
    /// How long each certificate is valid, in days (at most 3650).
    #[arg(long, default_value_t = txlog::certs::LEAF_DAYS_DEFAULT)]
    pub days: u32,
}

#[derive(Args)]
pub struct CertHolders {
    /// A node certificate to issue (repeat for several): node-NAME.pem and node-NAME.key,
    /// valid for server and client authentication. NAME: 1-63 of a-z, 0-9 and '-'.
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// A client certificate to issue (repeat for several): client-NAME.pem and
    /// client-NAME.key. It cannot speak Raft; request tokens decide what it may call.
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
}

#[derive(Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a cluster key file: one AES-256 key-encryption key, mode 0600. Give the same
    /// file to every node of the cluster with --key-file; data keys travel through the log
    /// wrapped under it. Refuses to replace an existing file.
    Init(KeysInitArgs),
    /// List the keys announced in the log: signing keys (per node, newest current) and data
    /// keys (the newest seals new entries), with age, the seq that announced each, the KEKs
    /// it is wrapped or proven under, and which records use it. A data key seals the records
    /// from its announcement to the next data key's (batches sealed just before a rotation
    /// applied may follow it); a signing key signs its node's batches while it leads, from
    /// its announcement to that node's next signing key.
    Status(KeysStatusArgs),
    /// Announce new keys now, through the log: a new data key (it seals every entry from
    /// then on) and a new signing key for the leader (signed by its previous one). Keys
    /// also rotate by themselves (data_key_rotate_s, signing_key_rotate_s); old keys stay
    /// in the keyring so older entries still open and verify.
    Rotate(KeysRotateArgs),
    /// Rotate the cluster key-encryption key (KEK): add a new KEK to the key file, wait
    /// until every node has loaded it (nodes reload their key file within 2 s of a change;
    /// copy the file to every node that does not share it), then have the leader wrap every
    /// data key and prove every first signing key again under it, through the log. Old KEKs
    /// stay in the file until `txlog keys retire-kek` removes them. With --resume, use the
    /// file's newest KEK instead of adding one (to finish a rotation that stopped waiting).
    RotateKek(KeysRotateKekArgs),
    /// Remove a KEK from the key file once nothing needs it: every key in the log must be
    /// wrapped (or proven) under another KEK of the file, and every node's WAL compacted
    /// past the last entry announced under it (`txlog admin compact`). Copy the file to every
    /// node afterwards; a node refuses a file that would leave a key it holds unreadable.
    RetireKek(KeysRetireKekArgs),
}

#[derive(Args)]
pub struct KeysRotateKekArgs {
    /// The cluster key file to add the new KEK to.
    #[arg(long)]
    pub key_file: PathBuf,
    /// Use the file's newest KEK; add none.
    #[arg(long)]
    pub resume: bool,
    /// How long to wait for every node to load the new KEK.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub wait: std::time::Duration,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct KeysRetireKekArgs {
    /// The cluster key file to remove the KEK from.
    #[arg(long)]
    pub key_file: PathBuf,
    /// Id of the KEK to remove (see `txlog keys status`).
    #[arg(long)]
    pub id: u32,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct KeysInitArgs {
    /// Where to write the key file.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct KeysRotateArgs {
    /// Only a new data key.
    #[arg(long, conflicts_with = "signing")]
    pub data: bool,
    /// Only a new signing key for the leader.
    #[arg(long)]
    pub signing: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct KeysStatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Add a node: it becomes a learner, catches up, then a voter (unless --learner).
    /// The node must be running (e.g. `txlog node --id 4 --region lyon ...`); prefer
    /// `txlog node --join`, which does this by itself.
    Join(JoinArgs),
    /// Take a node out of the cluster (voter or learner). Removing the leader first hands
    /// leadership to another voter.
    Remove(RemoveArgs),
    /// Make another voter the leader.
    TransferLeader(TransferLeaderArgs),
    /// Every node with role, match index, lag, heartbeat age, snapshot and WAL purge point,
    /// and the snapshot bytes the leader sent (delta vs full).
    Status(StatusArgs),
    /// Build a snapshot now on one node (--node) or on every member.
    Snapshot(SnapshotArgs),
    /// Purge the WAL behind the latest durable snapshot on one node (--node) or every member.
    Compact(CompactArgs),
    /// Client keys, kept in the log: add (with the roles the key may claim), revoke, list.
    /// Every call is signed by a key: the root key (--root-key-file) or one of these.
    #[command(subcommand)]
    Key(AdminKeyCommand),
    /// Roles, kept in the log: what each may do on which channels.
    #[command(subcommand)]
    Role(AdminRoleCommand),
    /// Address allowlists for every node, kept in the log: replace one, reset it to the
    /// nodes' config, list those in force.
    #[command(subcommand)]
    Allow(AdminAllowCommand),
}

/// Which allowlist: the `allow_*` config setting it replaces.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum AllowList {
    /// LogService, health and reflection (`allow_clients`).
    Clients,
    /// AdminService (`allow_admin`; peers may call it too).
    Admin,
    /// RaftService (`allow_peers`).
    Peers,
}

impl std::fmt::Display for AllowList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AllowList::Clients => "clients",
            AllowList::Admin => "admin",
            AllowList::Peers => "peers",
        })
    }
}

#[derive(Subcommand)]
pub enum AdminAllowCommand {
    /// Replace one list on every node (through the log, in force within moments): the
    /// addresses or CIDR blocks given, or every address when none is. Refused when it would
    /// shut out a member (peers) or your own address (admin). Connections already open stay
    /// open; their next call is judged by the new list.
    Set(AdminAllowSetArgs),
    /// Go back to each node's configured list.
    Reset(AdminAllowResetArgs),
    /// The lists in force on one node, and whether each comes from the log or the config.
    List(AdminListArgs),
}

#[derive(Args)]
pub struct AdminAllowSetArgs {
    pub list: AllowList,
    /// Addresses or CIDR blocks, e.g. 10.1.0.0/16 127.0.0.1 (at most 1024).
    pub cidrs: Vec<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct AdminAllowResetArgs {
    pub list: AllowList,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Subcommand)]
pub enum AdminKeyCommand {
    /// Add a client key: its secret (from --secret-file, made there with mode 0600 if the file
    /// does not exist) goes to the leader and into the log, sealed like every batch. Its roles
    /// must exist (`txlog admin role set`).
    Add(AdminKeyAddArgs),
    /// Revoke a client key: its tokens are refused from the revocation's seq on.
    Revoke(AdminKeyRevokeArgs),
    /// The client keys one node has applied (never their secrets).
    List(AdminListArgs),
}

#[derive(Args)]
pub struct AdminKeyAddArgs {
    /// The key's id: 1-64 characters of [A-Za-z0-9._-].
    #[arg(long)]
    pub key_id: String,
    /// A role the key may claim (repeat for several).
    #[arg(long, required = true)]
    pub role: Vec<String>,
    /// The client secret file (`KEY_ID:HEX`); created with a new secret if absent.
    #[arg(long)]
    pub secret_file: PathBuf,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct AdminKeyRevokeArgs {
    /// The key to revoke.
    #[arg(long)]
    pub key_id: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct AdminListArgs {
    /// HOST:PORT of the node to ask (default: the first of --cluster).
    #[arg(long)]
    pub node: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Subcommand)]
pub enum AdminRoleCommand {
    /// Define or replace a role. Each --allow is OPERATIONS:CHANNELS, with operations from
    /// append, read, subscribe, admin and channels `*`, a name, or a prefix ending in `*`:
    /// e.g. --allow subscribe:order-book, --allow read,subscribe:*, --allow append:orders.
    Set(AdminRoleSetArgs),
    /// The roles one node has applied.
    List(AdminListArgs),
}

#[derive(Args)]
pub struct AdminRoleSetArgs {
    /// The role's name: 1-64 characters of [A-Za-z0-9._-].
    pub name: String,
    /// A rule, OPERATIONS:CHANNELS (repeat for several).
    #[arg(long, required = true)]
    pub allow: Vec<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct DevArgs {
    /// Where the three nodes keep their data (one subdirectory per region).
    #[arg(long, env = "TXLOG_DEV_DATA_DIR", default_value = "txlog-dev-data")]
    pub data_dir: PathBuf,
    /// Client port of node 1; nodes 2 and 3 use the next two ports.
    #[arg(long, default_value_t = 7401)]
    pub base_port: u16,
    /// Metrics port of node 1; nodes 2 and 3 use the next two ports (0 = off).
    #[arg(long, default_value_t = 9401)]
    pub metrics_base_port: u16,
    /// Feed port of node 1 (its retransmit service); nodes 2 and 3 use the next two ports.
    /// All three publish to the multicast group 239.192.74.1:7410 on loopback (0 = no feed).
    #[arg(long, default_value_t = 7411)]
    pub feed_base_port: u16,
    /// Put the region latency model on the links between the nodes: `default` (one way
    /// paris-frankfurt 4.5 ms, paris-lyon 2.2 ms, frankfurt-lyon 4 ms, jitter 10 %) or items
    /// that change it, e.g. `paris-lyon=3ms,jitter=5%`. The nodes then listen on 127.0.0.11-13
    /// (each link is told apart by its IPs), so point the CLI at them with the TXLOG_CLUSTER the
    /// banner prints. Client calls are not delayed. Needs root (iptables and NFQUEUE).
    #[arg(long, num_args = 0..=1, default_missing_value = "default", value_name = "MODEL")]
    pub regions_latency: Option<String>,
    /// Where leadership goes back to once healthy: a region, or `auto` (the voter whose commit
    /// quorum is nearest, by the round trips the nodes measure; try it with --regions-latency).
    #[arg(long, default_value = "paris", value_name = "REGION|auto")]
    pub prefer_region: String,
}

#[derive(Args)]
pub struct AppendArgs {
    /// Channel name, e.g. order-book ([a-z0-9][a-z0-9._-]*).
    #[arg(long, short)]
    pub channel: String,
    /// Client transaction id (1-64 bytes); retrying with it never duplicates.
    #[arg(long, short)]
    pub txid: String,
    /// Record payload (UTF-8 text); use --payload-file for bytes.
    #[arg(required_unless_present = "payload_file")]
    pub payload: Option<String>,
    /// Read the payload from this file instead.
    #[arg(long, conflicts_with = "payload")]
    pub payload_file: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct ReadArgs {
    /// First sequence number to read.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Most records to return (server maximum 10000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Only this channel.
    #[arg(long)]
    pub channel: Option<String>,
    /// Read from any node without confirming leadership (may lag).
    #[arg(long)]
    pub stale: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct LookupArgs {
    #[arg(long, short)]
    pub txid: String,
    #[arg(long)]
    pub stale: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct TailArgs {
    #[arg(long)]
    pub channel: Option<String>,
    /// Start at this sequence (default: only new records).
    #[arg(long)]
    pub from: Option<u64>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct FeedArgs {
    #[command(subcommand)]
    pub command: FeedCommand,
}

#[derive(Subcommand)]
pub enum FeedCommand {
    /// Follow the feed: print each record once, in order per priority class, recovering gaps
    /// from the publisher's retransmit ring or, past it, from the log. A status line of
    /// packets, gaps, recovered records and fallback reads goes to stderr every second.
    Subscribe(Box<FeedSubscribeArgs>),
    /// Receive the feed once for this host and hand every record to local subscribers
    /// through a host ring in shared memory (`txlog feed subscribe --ring`): many
    /// subscribers on one host then cost one receive per packet, not one each. Gaps are
    /// recovered as `subscribe` does. Runs until Ctrl-C or SIGTERM; a status line goes to
    /// stderr every second.
    Hub(Box<FeedHubArgs>),
    /// Ask each node's feed for its session, classes and publisher counters.
    Status(FeedStatusArgs),
}

#[derive(Args)]
pub struct FeedHubArgs {
    /// The feed's address: a multicast group and port, or (unicast) the local port the nodes
    /// send to [default: the dev cluster's 239.192.74.1:7410].
    #[arg(long, env = "TXLOG_FEED", default_value = txlog_client::DEV_FEED_GROUP)]
    pub feed: String,
    /// Local interface address to join a multicast group on.
    #[arg(long, default_value = "127.0.0.1")]
    pub interface: std::net::Ipv4Addr,
    /// The ring file; an older ring there is replaced [default: /dev/shm/txlog-feed-PORT.ring,
    /// PORT the feed's].
    #[arg(long)]
    pub ring: Option<std::path::PathBuf>,
    /// Ring size in bytes: a power of two from 1 MiB to 1 GiB. 64 MiB holds ~190,000 records
    /// of 256 B; a subscriber further behind than the ring is told it was lapped.
    #[arg(long, default_value_t = txlog_client::feed::host_ring::HOST_RING_BYTES_DEFAULT)]
    pub ring_bytes: usize,
    /// Spin instead of blocking while no datagram arrives: the lowest latency, at the cost
    /// of one core kept busy.
    #[arg(long)]
    pub spin: bool,
    /// Never read the log: gaps the publisher's ring cannot fill are skipped and counted.
    #[arg(long)]
    pub no_log: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct FeedSubscribeArgs {
    /// The feed's address: a multicast group and port, or (unicast) the local port the nodes
    /// send to, e.g. 0.0.0.0:7500 [default: the dev cluster's 239.192.74.1:7410].
    #[arg(long, env = "TXLOG_FEED", default_value = txlog_client::DEV_FEED_GROUP)]
    pub feed: String,
    /// Local interface address to join a multicast group on.
    #[arg(long, default_value = "127.0.0.1")]
    pub interface: std::net::Ipv4Addr,
    /// Read from this host's hub (`txlog feed hub`) instead of the network: its ring file
    /// [default with no value: /dev/shm/txlog-feed-PORT.ring, PORT the --feed port]. Records
    /// from the moment it opens; what the ring loses (this reader lapped, a record too large
    /// for it, records while no hub ran) is read from the log unless --no-log. Not with
    /// --from, --class or --speculative.
    #[arg(long, num_args = 0..=1, value_name = "PATH")]
    pub ring: Option<Option<std::path::PathBuf>>,
    /// Print only this channel.
    #[arg(long)]
    pub channel: Option<String>,
    /// Print only these priority classes (by name; repeat or comma-separate).
    #[arg(long = "class", value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Start at this sequence: older records come from the log first [default: from the
    /// first record the feed carries after joining].
    #[arg(long)]
    pub from: Option<u64>,
    /// Exit after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit when no record arrived for this long (e.g. 10s) [default: never].
    #[arg(long, value_parser = parse_duration)]
    pub idle_exit: Option<Duration>,
    /// Print only the status line, not the records.
    #[arg(long)]
    pub quiet: bool,
    /// Never read the log: gaps the ring cannot fill are skipped and counted as unfilled.
    #[arg(long)]
    pub no_log: bool,
    /// Also follow the speculative stream of nodes started with --feed-speculative: records
    /// as the log appends them, before commit (printed `speculative ...`), then each entry's
    /// outcome (`committed`, `rolled-back`, or `unknown` when its publisher stopped or cannot
    /// tell). Committed records still come as usual and are the truth.
    #[arg(long)]
    pub speculative: bool,
    /// Open a sealed cluster's payloads with its key file (mode 0600; its data keys are read
    /// from the log) [default: the dev cluster's txlog-dev-data/cluster.key, if it exists; else
    /// sealed payloads print as <sealed, N bytes>].
    #[arg(long, env = "TXLOG_FEED_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct FeedStatusArgs {
    /// Comma-separated feed addresses of the nodes (their feed_listen).
    #[arg(long, env = "TXLOG_FEED_NODES", default_value = txlog_client::DEV_FEED_NODES)]
    pub nodes: String,
    /// How long to wait for each node's answer.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub timeout: Duration,
    /// Print JSON instead of human-readable text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Args)]
pub struct JoinArgs {
    /// The new node's id.
    #[arg(long)]
    pub id: u64,
    /// HOST:PORT the cluster reaches it at.
    #[arg(long)]
    pub address: String,
    /// Its region, e.g. lyon.
    #[arg(long)]
    pub region: String,
    /// Keep it a learner (replicated to, no vote).
    #[arg(long)]
    pub learner: bool,
    /// Give up waiting for it to catch up after this long (it stays a learner).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct RemoveArgs {
    #[arg(long)]
    pub id: u64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct TransferLeaderArgs {
    /// Id of the voter to lead.
    #[arg(long)]
    pub to: u64,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct SnapshotArgs {
    /// HOST:PORT of one node (default: every member).
    #[arg(long)]
    pub node: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args)]
pub struct CompactArgs {
    /// HOST:PORT of one node (default: every member).
    #[arg(long)]
    pub node: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Every subcommand's flags are consistent (no name used twice in one
    /// command, e.g. a flattened client flag against a subcommand's own):
    /// clap checks this only when the command is parsed, so it is checked
    /// here for all of them at once.
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
