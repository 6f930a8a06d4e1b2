//! One txlog node: storage, Raft, services, metrics, shutdown.
//!
//! Start-up order: open the WAL (recovering a torn tail), open the state
//! machine (rebuilding the record store from the newest snapshot if it is
//! behind it),
//! build Raft, start the gRPC server (clients, admin and peers share one
//! port), then — on a fresh cluster — the lowest-numbered peer initialises
//! the membership from `peers`. Shutdown (SIGTERM/SIGINT or the token): stop
//! accepting RPCs, stop Raft, flush the record store, return.

use std::sync::Arc;
use std::time::Duration;
use txlog_raft::openraft::type_config::async_runtime::WatchReceiver;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;
use txlog_proto::admin_service_server::AdminServiceServer;
use txlog_proto::log_service_server::LogServiceServer;
use txlog_raft::openraft::ServerState;
use txlog_raft::LogStore;
use txlog_raft::Network;
use txlog_raft::Raft;
use txlog_raft::RaftServer;
use txlog_raft::StateMachine;
use txlog_storage::WalOptions;

use crate::admin_service::AdminServer;
use crate::batcher::BatchLimits;
use crate::batcher::Batcher;
use crate::config::NodeConfig;
use crate::log_service::LogServer;
use crate::metrics::Metrics;
use crate::raft_runtime::RaftRuntime;
use crate::validate;
use crate::Error;
use crate::Result;

/// Resets of not-yet-accepted HTTP/2 streams tolerated per connection (h2's default is 20).
const HTTP2_PENDING_RESETS_MAX: usize = 1_000;
/// How often counters kept outside Raft's metrics reach `/metrics` on a
/// node whose Raft metrics do not change.
const COUNTERS_SYNC_EVERY: Duration = Duration::from_secs(1);

/// A running node.
pub struct Node {
    pub raft: Raft,
    pub config: NodeConfig,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    reader: txlog_raft::StateMachineReader,
    /// Where openraft runs; shut down in [`Node::stop`] after Raft.
    raft_runtime: RaftRuntime,
}

impl Node {
    /// Open storage, start Raft and serve on `config.listen`.
    pub async fn start(config: NodeConfig, shutdown: CancellationToken) -> Result<Node> {
        let metrics = Arc::new(Metrics::new());
        let keys = open_keys(&config)?;
        let resync_stats = txlog_raft::ResyncStats::new();
        let tls = open_tls(&config)?;
        // Peer traffic leaves from the listen IP unless the node listens on all interfaces.
        let dial = crate::peer_dial::PeerDial {
            source: Some(config.listen.ip()).filter(|ip| !ip.is_unspecified()),
            tls: match &tls {
                Some((_, in_force)) => in_force.client.subscribe(),
                None => crate::peer_dial::PeerDial::plain(None).tls,
            },
        };
        let peer_network = |state_machine: &StateMachine| {
            Network::new(state_machine.reader(), resync_stats.clone())
                .with_source_address(dial.source)
                .with_tls(dial.tls.clone())
                .with_data_runtime(tokio::runtime::Handle::current())
                .with_deadline_min(Duration::from_millis(config.timing.rpc_deadline_ms_min))
        };
        let (mut log_store, state_machine) =
            open_storage(&config, &metrics, keys.clone(), &peer_network, &shutdown).await?;
        let reader = state_machine.reader();
        // Set before Raft starts, so the speculative feed sees every append.
        let tap = config.feed.as_ref().filter(|feed| feed.speculative).map(|_| {
            let tap = crate::feed_tap::LogTap::new(reader.clone());
            log_store.set_observer(tap.clone());
            tap
        });
        let sealer = match &keys {
            Some(keys) => {
                let applied = reader.last_applied().map(|l| l.index);
                let received = keys.observe_log_tail(&mut log_store, applied).await?;
                if received > 0 {
                    tracing::info!(
                        key_events = received,
                        "keyring holds key events from the unapplied WAL tail"
                    );
                }
                Some(Arc::new(txlog_raft::Sealer::open(
                    config.id,
                    &config.data_dir,
                    keys.clone(),
                )?))
            }
            None => {
                tracing::warn!("sealing is off: entries are neither encrypted nor signed");
                None
            }
        };
        let network = peer_network(&state_machine);
        let pinger = network.clone();
        let raft_runtime = RaftRuntime::start()?;
        let raft = build_raft(&raft_runtime, &config, network, log_store, state_machine).await?;

        let tracker = TaskTracker::new();
        let latency = txlog_raft::PeerLatency::new(config.id);
        tracker.spawn(crate::peer_ping::run(
            raft.clone(),
            pinger,
            latency.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        let contact = txlog_raft::LeaderContact::default();
        let audit = Arc::new(crate::audit::Auditor::new(config.id, metrics.clone()));
        let guard = Arc::new(crate::access_guard::Guard::new(
            access_mode(&config)?,
            metrics.clone(),
            audit.clone(),
        ));
        tracker.spawn(crate::clock_guard::run(
            raft.clone(),
            latency.clone(),
            metrics.clone(),
            guard.clock_suspect.clone(),
            shutdown.clone(),
        ));
        if !guard.is_enforced() {
            tracing::warn!("access control is off (--insecure): every call is accepted without a token or role check");
        }
        // In force before the first call is served.
        let mut policy = crate::access_policy::AccessPolicy::default();
        crate::access_guard::fold_access_records(&reader, &mut policy)?;
        guard.policy.publish(policy);
        // Operator key rotations: the admin service's end, and the rotation task's.
        let rotations = sealer.as_ref().map(|_| crate::key_rotation::rotations());
        let parts = Parts {
            config: &config,
            raft: &raft,
            reader: &reader,
            metrics: &metrics,
            resync: &resync_stats,
            contact: &contact,
            latency: &latency,
            keys: keys.as_ref(),
            tap: tap.clone(),
            sealer: sealer.as_ref(),
            rotations: rotations.as_ref().map(|(rotations, _)| rotations.clone()),
            dial,
            tls: tls.as_ref(),
            guard: &guard,
            audit: &audit,
            tracker: &tracker,
            shutdown: &shutdown,
        };
        let health_reporter = parts.serve().await?;
        if let Some(addr) = config.metrics_listen {
            let bound = crate::metrics::serve(addr, metrics.clone(), shutdown.clone())
                .await
                .map_err(|e| Error::Config(format!("cannot serve metrics on {addr}: {e}")))?;
            tracing::info!(%bound, "metrics at http://{bound}/metrics");
        }
        parts.spawn_tasks(health_reporter, rotations.map(|(_, requests)| requests));

        let node = Node {
            raft,
            config,
            metrics,
            shutdown,
            tracker,
            reader,
            raft_runtime,
        };
        node.bootstrap().await?;
        tracing::info!(
            id = node.config.id,
            region = %node.config.region,
            listen = %node.config.listen,
            data_dir = %node.config.data_dir.display(),
            "node started"
        );
        Ok(node)
    }

    /// On a fresh cluster, the lowest peer id initialises the membership.
    async fn bootstrap(&self) -> Result<()> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        if initialized || self.config.peers.is_empty() {
            return Ok(());
        }
        let lowest = *self.config.peers.keys().next().expect("non-empty");
        if lowest != self.config.id {
            tracing::info!(initializer = lowest, "waiting to be contacted by the cluster");
            return Ok(());
        }
        tracing::info!(peers = ?self.config.peers.keys().collect::<Vec<_>>(), "initializing a new cluster");
        match self.raft.initialize(self.config.peers.clone()).await {
            Ok(()) => Ok(()),
            Err(err) => {
                tracing::warn!(%err, "initialize refused (already initialized elsewhere?)");
                Ok(())
            }
        }
    }

    pub fn reader(&self) -> &txlog_raft::StateMachineReader {
        &self.reader
    }

    /// Run until `shutdown` fires, then stop everything.
    pub async fn run_until_shutdown(self) -> Result<()> {
        self.shutdown.cancelled().await;
        self.stop().await
    }

    pub async fn stop(self) -> Result<()> {
        tracing::info!(id = self.config.id, "node stopping");
        self.shutdown.cancel();
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(%err, "raft shutdown reported an error");
        }
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 5s");
        }
        // openraft's state-machine worker and its applies end with the runtime.
        self.raft_runtime.stop().await;
        self.reader.store().flush()?;
        tracing::info!(id = self.config.id, "node stopped");
        Ok(())
    }
}

/// Whether calls need tokens; the root key from its file when they do.
fn access_mode(config: &NodeConfig) -> Result<crate::access_guard::AccessMode> {
    use crate::access_guard::AccessMode;
    match &config.access {
        crate::config::Access::Insecure => Ok(AccessMode::Insecure),
        crate::config::Access::Secured { root_key_file, .. } => {
            let root = txlog_client::ClientSecret::read_file(root_key_file)
                .map_err(|e| Error::Config(format!("root key: {e}")))?;
            Ok(AccessMode::enforced(root))
        }
    }
}

/// The certificates to serve and dial with, checked, on a secured node.
fn open_tls(config: &NodeConfig) -> Result<Option<(txlog_client::TlsFiles, Arc<crate::tls::InForce>)>> {
    let crate::config::Access::Secured { tls: files, .. } = &config.access else {
        tracing::warn!("TLS is off (--insecure): connections are plain, peers and clients unauthenticated");
        return Ok(None);
    };
    let loaded = crate::tls::load(files).map_err(|e| Error::Config(format!("TLS: {e}")))?;
    Ok(Some((files.clone(), Arc::new(crate::tls::InForce::new(loaded)))))
}

/// The cluster's keyring, from the key file, in a sealed cluster.
fn open_keys(config: &NodeConfig) -> Result<Option<Arc<txlog_raft::Keys>>> {
    let Some(sealing) = &config.sealing else {
        return Ok(None);
    };
    let file = txlog_storage::KekFile::load(&sealing.key_file)
        .map_err(|e| Error::Config(format!("key file {}: {e}", sealing.key_file.display())))?;
    Ok(Some(Arc::new(txlog_raft::Keys::new(&file))))
}

/// The WAL (recovering a torn tail) and the state machine (rebuilding the
/// record store from the newest snapshot if it is behind it). A record
/// store that fails its check, or does not open for damage, is replaced
/// by a full copy from a peer before anything else runs (`drift_repair.rs`).
async fn open_storage(
    config: &NodeConfig,
    metrics: &Metrics,
    keys: Option<Arc<txlog_raft::Keys>>,
    peer_network: &dyn Fn(&StateMachine) -> Network,
    shutdown: &CancellationToken,
) -> Result<(LogStore, StateMachine)> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::Config(format!("cannot create data dir {}: {e}", config.data_dir.display())))?;
    let fsync_hist = metrics.wal_fsync_seconds.clone();
    let wal_options = WalOptions {
        segment_bytes_max: config.segment_bytes_max,
        fsync_observer: Some(Arc::new(move |d: Duration| fsync_hist.observe(d.as_secs_f64()))),
    };
    let mut log_store = LogStore::open(config.data_dir.join("wal"), wal_options)?;
    let (state_machine, damage) = match StateMachine::open_with_keys(config.data_dir.join("state"), keys.clone()) {
        Ok(state_machine) => {
            let damage = crate::drift_repair::check(config, &state_machine, &mut log_store).await?;
            (Some(state_machine), damage)
        }
        // Damaged data (not a missing permission or a full disk): repairable.
        Err(err) if err.kind() == std::io::ErrorKind::InvalidData => (None, Some(err.to_string())),
        Err(err) => return Err(err.into()),
    };
    let Some(why) = damage else {
        return Ok((log_store, state_machine.expect("opened when undamaged")));
    };
    let known = state_machine.as_ref().map(|s| s.reader().members()).unwrap_or_default();
    let configured: Vec<(u64, String)> = config
        .peers
        .iter()
        .map(|(id, info)| (*id, info.address.clone()))
        .collect();
    let leader = {
        use txlog_raft::openraft::storage::RaftLogReader;
        log_store
            .read_vote()
            .await?
            .filter(|vote| vote.is_committed())
            .map(|vote| vote.leader_id().node_id)
    };
    let repair = crate::drift_repair::Repair {
        config,
        metrics,
        keys,
        network: peer_network,
        peers: crate::drift_repair::peer_addresses(config.id, &known, &configured, config.join.as_deref(), leader),
        shutdown,
    };
    let repaired = crate::drift_repair::repair(repair, &why, state_machine, &mut log_store).await?;
    Ok((log_store, repaired))
}

/// Start Raft on `runtime`, where openraft then spawns all its tasks.
async fn build_raft(
    runtime: &RaftRuntime,
    config: &NodeConfig,
    network: Network,
    log_store: LogStore,
    state_machine: StateMachine,
) -> Result<Raft> {
    let raft_config = config
        .timing
        .to_openraft_config(config.log_entries_kept_after_snapshot)
        .map_err(|e| Error::Config(e.to_string()))?;
    let id = config.id;
    runtime
        .run(async move { Raft::new(id, Arc::new(raft_config), network, log_store, state_machine).await })
        .await?
        .map_err(|e| Error::Internal(format!("raft failed to start: {e}")))
}

/// What the services and background tasks of a starting node share.
struct Parts<'a> {
    config: &'a NodeConfig,
    raft: &'a Raft,
    reader: &'a txlog_raft::StateMachineReader,
    metrics: &'a Arc<Metrics>,
    resync: &'a Arc<txlog_raft::ResyncStats>,
    contact: &'a txlog_raft::LeaderContact,
    /// Member round trips and quorum RTTs (peer pings), for leader placement.
    latency: &'a txlog_raft::PeerLatency,
    keys: Option<&'a Arc<txlog_raft::Keys>>,
    /// The log's tap for the speculative feed, when it is on.
    tap: Option<Arc<crate::feed_tap::LogTap>>,
    sealer: Option<&'a Arc<txlog_raft::Sealer>>,
    /// Asks the key-rotation task for keys now; `None` when sealing is off.
    rotations: Option<crate::key_rotation::Rotations>,
    dial: crate::peer_dial::PeerDial,
    /// The TLS files and the certificates in force; `None` on an `--insecure` node.
    tls: Option<&'a (txlog_client::TlsFiles, Arc<crate::tls::InForce>)>,
    guard: &'a Arc<crate::access_guard::Guard>,
    audit: &'a Arc<crate::audit::Auditor>,
    tracker: &'a TaskTracker,
    shutdown: &'a CancellationToken,
}

impl Parts<'_> {
    /// Bind `config.listen` and serve the log, admin, Raft, health and
    /// reflection services on it until shutdown. Returns the health reporter
    /// that [`crate::health::report`] keeps current.
    async fn serve(&self) -> Result<tonic_health::server::HealthReporter> {
        let config = self.config;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", config.listen)))?;
        let gate = Arc::new(crate::allowlist::Gate::new(
            config.allowlist.clone(),
            self.guard.policy.clone(),
            self.metrics.clone(),
            self.audit.clone(),
        ));
        if !gate.is_open() {
            tracing::info!(allowlist = %gate.allowlist().describe(), "connections limited by allowlist");
        }
        if let Some(feed) = &config.feed {
            // The retransmit service answers only addresses the clients' allowlist admits.
            crate::feed_publisher::start(
                feed,
                self.reader.clone(),
                self.tap.clone(),
                self.keys.cloned(),
                gate.clone(),
                self.metrics,
                self.tracker,
                self.shutdown.clone(),
            )?;
        }
        // Allowlist, then TLS handshake, then the server (see `tls.rs`).
        let incoming = crate::tls::accept(
            listener,
            gate.clone(),
            self.tls.map(|(_, in_force)| in_force.server.subscribe()),
            self.metrics.clone(),
            self.tracker,
            self.shutdown.clone(),
        );
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let reflection_service = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(txlog_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Internal(format!("reflection service: {e}")))?;
        let raft_server = RaftServer::new(
            self.raft.clone(),
            self.reader.clone(),
            self.contact.clone(),
            Duration::from_millis(self.config.timing.election_timeout_ms_max),
            self.keys.cloned(),
            self.latency.clone(),
            self.resync.clone(),
        );
        let log_server = self.log_server();
        let batcher = log_server.batcher.clone();
        let audit_writer = Arc::new(crate::audit::AuditWriter::new(
            config.id,
            self.raft.clone(),
            self.reader.clone(),
            batcher.clone(),
            self.dial.clone(),
            self.guard.clone(),
        ));
        self.tracker.spawn(crate::audit::run(
            self.audit.clone(),
            audit_writer.clone(),
            self.shutdown.clone(),
        ));
        let router = Server::builder()
            // Peers cancel RPCs that miss openraft's deadline (a heartbeat
            // gets 10 ms on LAN), and each cancel is an HTTP/2 reset. h2's
            // default allows 20 resets of not-yet-accepted streams before it
            // drops the whole connection — every in-flight RPC with it —
            // which turned brief CPU stalls into replication stalls.
            .http2_max_pending_accept_reset_streams(Some(HTTP2_PENDING_RESETS_MAX))
            // tonic's codec answers an undecodable request INTERNAL and an
            // over-size one OUT_OF_RANGE, before any handler runs; clients
            // get INVALID_ARGUMENT and RESOURCE_EXHAUSTED instead, on every
            // service of this port (see `error::rewrite_codec_status`).
            .layer(tower::util::MapResponseLayer::new(crate::error::rewrite_codec_status))
            // Each call's source address against its service's allowlist.
            .layer(crate::allowlist::GateLayer(gate))
            .add_service(
                LogServiceServer::new(log_server)
                    .max_decoding_message_size(validate::MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(validate::MESSAGE_BYTES_MAX),
            )
            .add_service(
                AdminServiceServer::new(self.admin_server(batcher, audit_writer))
                    .max_decoding_message_size(validate::MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(validate::MESSAGE_BYTES_MAX),
            )
            .add_service(raft_server.into_service())
            .add_service(health_service)
            .add_service(reflection_service);
        let server_shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            if let Err(err) = router
                .serve_with_incoming_shutdown(incoming, server_shutdown.cancelled_owned())
                .await
            {
                tracing::error!(%err, "grpc server failed");
            }
        });
        Ok(health_reporter)
    }

    /// `LogService`, with its group-commit batcher.
    fn log_server(&self) -> LogServer {
        let config = self.config;
        let batcher = Batcher::start(
            self.raft.clone(),
            config.id,
            BatchLimits {
                batch_records_max: config.batch_records_max,
                batch_bytes_max: config.batch_bytes_max,
            },
            self.sealer.cloned(),
            self.metrics.clone(),
            self.shutdown.clone(),
            self.tracker,
        );
        LogServer {
            node_id: config.id,
            raft: self.raft.clone(),
            reader: self.reader.clone(),
            batcher,
            metrics: self.metrics.clone(),
            payload_bytes_max: config.payload_bytes_max,
            shutdown: self.shutdown.clone(),
            guard: self.guard.clone(),
            leader: crate::leader_wait::LeaderWait::new(
                self.raft.clone(),
                config.id,
                self.contact.clone(),
                &config.timing,
                self.metrics.calls_held_for_leader.clone(),
            ),
        }
    }

    /// `AdminService`; access changes go through the log service's `batcher`.
    fn admin_server(&self, batcher: Batcher, audit_writer: Arc<crate::audit::AuditWriter>) -> AdminServer {
        AdminServer {
            node_id: self.config.id,
            region: self.config.region.clone(),
            address: self.config.advertise.clone(),
            raft: self.raft.clone(),
            reader: self.reader.clone(),
            timing: self.config.timing,
            resync: self.resync.clone(),
            dial: self.dial.clone(),
            membership_lock: Arc::default(),
            rotations: self.rotations.clone(),
            keys: self.keys.cloned(),
            batcher: Some(batcher),
            access_lock: Arc::default(),
            guard: self.guard.clone(),
            audit: self.audit.clone(),
            allowlist: self.config.allowlist.clone(),
            audit_writer: Some(audit_writer),
        }
    }

    /// Health reporting, metrics mirroring, the failure detector, and (when
    /// configured) prefer-region and joining a running cluster.
    ///
    /// `rotations`: where the key-rotation task takes operator requests
    /// from, in a sealed cluster.
    fn spawn_tasks(
        &self,
        health_reporter: tonic_health::server::HealthReporter,
        rotations: Option<crate::key_rotation::RotationRequests>,
    ) {
        let (config, raft, shutdown) = (self.config, self.raft, self.shutdown);
        self.tracker.spawn(crate::health::report(
            raft.clone(),
            self.contact.clone(),
            health_reporter,
            shutdown.clone(),
        ));
        self.tracker.spawn(crate::access_guard::follow(
            self.guard.policy.clone(),
            self.reader.clone(),
            shutdown.clone(),
        ));
        self.tracker.spawn(watch_raft(
            raft.clone(),
            self.reader.clone(),
            self.metrics.clone(),
            self.resync.clone(),
            self.keys.cloned(),
            shutdown.clone(),
        ));
        if let Some((files, in_force)) = self.tls {
            self.tracker.spawn(crate::tls::watch_files(
                files.clone(),
                in_force.clone(),
                self.metrics.clone(),
                self.audit.clone(),
                shutdown.clone(),
            ));
        }
        if let (Some(keys), Some(sealing)) = (self.keys, &config.sealing) {
            self.tracker.spawn(crate::key_file_watch::run(
                sealing.key_file.clone(),
                keys.clone(),
                shutdown.clone(),
            ));
        }
        if let (Some(sealer), Some(sealing), Some(requests)) = (self.sealer, &config.sealing, rotations) {
            self.tracker.spawn(crate::key_rotation::run(
                raft.clone(),
                config.id,
                sealer.clone(),
                sealing.clone(),
                self.metrics.clone(),
                requests,
                shutdown.clone(),
            ));
        }
        self.tracker.spawn(crate::failure_detector::failure_detector(
            raft.clone(),
            config.id,
            self.contact.clone(),
            config.timing,
            shutdown.clone(),
        ));
        self.tracker.spawn(crate::snapshot_trigger::run(
            raft.clone(),
            crate::snapshot_trigger::SnapshotPolicy {
                id: config.id,
                wal_dir: config.data_dir.join("wal"),
                logs_since_last: config.snapshot_logs_since_last,
                wal_bytes_max: config.snapshot_wal_bytes_max,
            },
            self.metrics.clone(),
            shutdown.clone(),
        ));
        if let Some(setting) = config.prefer_region.as_deref() {
            self.tracker.spawn(crate::prefer_region::prefer_region(
                raft.clone(),
                config.id,
                crate::prefer_region::Placement::parse(setting),
                self.latency.clone(),
                config.timing,
                shutdown.clone(),
            ));
        }
        if let Some(join) = config.join.clone() {
            let joining = crate::join::Joining {
                via: join,
                id: config.id,
                address: config.advertise.clone(),
                region: config.region.clone(),
                dial: self.dial.clone(),
                access: self.guard.mode().clone(),
                learner: config.learner,
            };
            self.tracker
                .spawn(crate::join::join_cluster(self.raft.clone(), joining, shutdown.clone()));
        }
    }
}

/// Mirror Raft's metrics into Prometheus and log role/term/leader changes.
async fn watch_raft(
    raft: Raft,
    reader: txlog_raft::StateMachineReader,
    metrics: Arc<Metrics>,
    resync: Arc<txlog_raft::ResyncStats>,
    keys: Option<Arc<txlog_raft::Keys>>,
    shutdown: CancellationToken,
) {
    let mut rx = raft.metrics();
    let mut last_leader = None;
    let mut last_state = None;
    loop {
        {
            let m = rx.borrow_and_update().clone();
            metrics.term.set(m.current_term as i64);
            metrics.is_leader.set(i64::from(m.state == ServerState::Leader));
            metrics
                .commit_index
                .set(m.local_committed.map(|l| l.index as i64).unwrap_or(0));
            metrics
                .applied_index
                .set(m.last_applied.map(|l| l.index as i64).unwrap_or(0));
            metrics
                .snapshot_index
                .set(m.snapshot.map(|l| l.index as i64).unwrap_or(0));
            metrics.purged_index.set(m.purged.map(|l| l.index as i64).unwrap_or(0));
            metrics.last_seq.set(reader.last_seq() as i64);
            metrics.observe_resync(resync.counts());
            if let Some(keys) = &keys {
                metrics.observe_seal(keys.stats.counts());
            }
            if m.current_leader != last_leader {
                metrics.leader_changes.inc();
                tracing::info!(leader = ?m.current_leader, term = m.current_term, "leader changed");
                last_leader = m.current_leader;
            }
            if Some(m.state) != last_state {
                tracing::info!(role = ?m.state, term = m.current_term, "role changed");
                last_state = Some(m.state);
            }
        }
        // Counters kept elsewhere (sealing, resync) change without Raft's
        // metrics changing: an idle node still brings them up to date.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(COUNTERS_SYNC_EVERY) => {}
        }
    }
}
