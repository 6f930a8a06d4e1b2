//! Mutual TLS on the node's port (access control, item 1).
//!
//! **What it guarantees.** Every connection to a node that runs secured
//! (not `--insecure`) is TLS 1.2 or 1.3 (rustls, ring), and the caller must
//! present a certificate issued by the cluster CA — a client certificate
//! or a node certificate — before a byte of HTTP/2 is read. `RaftService`
//! takes only node certificates: a node certificate is one valid for
//! [`txlog_client::NODE_SERVER_NAME`], which `txlog certs` puts in node
//! certificates and never in client ones. A node calls its peers (Raft,
//! join, forwarded admin calls) with its own node certificate and checks
//! that the peer holds one too.
//!
//! **Order at accept.** Allowlist (by source address, closed at once), then
//! the handshake, on its own task with a deadline
//! ([`TLS_HANDSHAKE_TIMEOUT`]) and a bound on handshakes in progress
//! ([`TLS_HANDSHAKES_MAX`]), so a slow or silent peer holds neither the
//! accept loop nor anyone else's handshake. A failed handshake is counted
//! (`txlog_tls_handshakes_failed`) and logged at most once per source per
//! interval.
//!
//! **Reload.** Every [`TLS_FILES_POLL`] the three files are checked for a
//! change of size or modification time; a changed set is read, checked
//! (the certificate is a node certificate of the CA in the CA file, and
//! the key is its key) and put in force for new connections, both
//! accepted and dialled. A set that fails the check is logged and the
//! certificates in force stay: a half-copied file never takes a node off
//! the network. Connections already open keep the session they have.
//!
//! Not here: the client certificate's name plays no part in what a caller
//! may do; request tokens and roles decide that (`access_guard.rs`).

use std::net::IpAddr;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::UnixTime;
use rustls::ServerConfig;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::ClientTlsConfig;
use txlog_client::TlsFiles;
use txlog_client::TlsPem;
use txlog_client::NODE_SERVER_NAME;

use crate::allowlist::Gate;
use crate::audit::AuditEvent;
use crate::audit::Refusal;
use crate::log_throttle::RateLimiter;
use crate::metrics::Metrics;

/// A peer that has not finished its handshake by then is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; a connection beyond them is closed at
/// accept (a handshake flood costs CPU, not memory without bound).
pub const TLS_HANDSHAKES_MAX: usize = 256;
/// How often the certificate files are checked for a change.
pub const TLS_FILES_POLL: Duration = Duration::from_secs(2);
/// Accepted connections (handshake done) waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;
/// At most one handshake-failure line per source address per this interval.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(5);
const FAILURE_SOURCES_MAX: usize = 4096;
/// Pause after an accept error (out of file descriptors) before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The certificates in force: what the server presents and asks for, and
/// what the node presents when it dials a peer.
#[derive(Clone)]
pub struct Loaded {
    pub server: Arc<ServerConfig>,
    pub client: ClientTlsConfig,
}

/// Read and check `files`: the certificate must be a node certificate of
/// the CA in the CA file, and the key must be its key.
pub fn load(files: &TlsFiles) -> Result<Loaded, String> {
    let pem = files.read()?;
    let server = server_config(&pem).map_err(|e| format!("{}: {e}", files.cert.display()))?;
    Ok(Loaded {
        server,
        client: pem.client_config(),
    })
}

fn server_config(pem: &TlsPem) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in pem.ca_certificates()? {
        roots.add(ca).map_err(|e| format!("CA certificate refused: {e}"))?;
    }
    let roots = Arc::new(roots);
    let chain = pem.certificate_chain()?;
    // The node's own certificate, checked as its peers will check it.
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| format!("CA: {e}"))?;
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &node_name(), &[], UnixTime::now())
        .map_err(|e| format!("not a node certificate of this cluster's CA: {e}"))?;
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| format!("CA: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, pem.private_key()?)
        .map_err(|e| format!("certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn node_name() -> ServerName<'static> {
    ServerName::try_from(NODE_SERVER_NAME).expect("a valid DNS name")
}

/// Whether `certificate` (already verified against the CA at the
/// handshake) is a node certificate.
pub fn is_node_certificate(certificate: &CertificateDer<'_>) -> bool {
    webpki::EndEntityCert::try_from(certificate)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&node_name()).is_ok())
}

/// What a call knows of its connection (a request extension).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote: Option<SocketAddr>,
    /// `None` on a plain (`--insecure`) connection.
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl ConnectionInfo {
    pub fn remote_ip(&self) -> Option<IpAddr> {
        self.remote.map(|a| a.ip())
    }

    /// `RaftService` is for nodes: on a TLS connection the caller must
    /// hold a node certificate. (A plain connection exists only on an
    /// `--insecure` node, which checks nothing.)
    pub fn require_node(&self, path: &str) -> Result<(), tonic::Status> {
        match &self.peer_certificates {
            None => Ok(()),
            Some(chain) if chain.first().is_some_and(is_node_certificate) => Ok(()),
            Some(_) => Err(tonic::Status::permission_denied(format!(
                "{path} accepts only node certificates; this connection presented a client certificate"
            ))),
        }
    }
}

/// One accepted connection, plain or TLS.
pub enum Connection {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        match self {
            Connection::Plain(stream) => ConnectionInfo {
                remote: stream.peer_addr().ok(),
                peer_certificates: None,
            },
            Connection::Tls(stream) => {
                let (tcp, session) = stream.get_ref();
                ConnectionInfo {
                    remote: tcp.peer_addr().ok(),
                    peer_certificates: Some(Arc::new(
                        session.peer_certificates().map(|c| c.to_vec()).unwrap_or_default(),
                    )),
                }
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(s) => s.is_write_vectored(),
            Connection::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_flush(cx),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Connection::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accept on `listener` until shutdown: allowlist, then (with `tls`) the
/// handshake under the certificates in force at that moment. Returns the
/// stream of ready connections for the gRPC server.
pub fn accept(
    listener: TcpListener,
    gate: Arc<Gate>,
    tls: Option<watch::Receiver<Arc<ServerConfig>>>,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Connection>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(TLS_HANDSHAKES_MAX));
    let failures = Arc::new(RateLimiter::new(FAILURE_LOG_INTERVAL, FAILURE_SOURCES_MAX));
    let handshake_tracker = tracker.clone();
    tracker.spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(%err, "accept failed; pausing");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
            };
            // A connection from an address in no allowlist is closed here,
            // before its first byte is read.
            if !gate.accept(peer.ip()) {
                continue;
            }
            // Without it a response larger than one segment waited for the
            // client's delayed ACK: every 100-record read took ~44 ms.
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(%err, %peer, "cannot set TCP_NODELAY");
            }
            let Some(tls) = &tls else {
                if tx.send(Ok(Connection::Plain(stream))).await.is_err() {
                    return;
                }
                continue;
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                metrics.tls_handshakes_failed.inc();
                gate.audit.refused(Refusal::Handshake, &peer.ip().to_string(), "every handshake slot taken");
                if let Some(held_back) = failures.check(peer.ip(), Instant::now()) {
                    tracing::warn!(source = %peer, held_back, "connection closed: {TLS_HANDSHAKES_MAX} TLS handshakes already in progress");
                }
                continue;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.borrow().clone());
            let (tx, metrics, failures, shutdown) = (tx.clone(), metrics.clone(), failures.clone(), shutdown.clone());
            let audit = gate.audit.clone();
            handshake_tracker.spawn(async move {
                let _permit = permit;
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    outcome = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => outcome,
                };
                let failure = match outcome {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(Connection::Tls(Box::new(stream)))).await;
                        return;
                    }
                    Ok(Err(err)) => err.to_string(),
                    Err(_) => format!("no handshake within {TLS_HANDSHAKE_TIMEOUT:?}"),
                };
                metrics.tls_handshakes_failed.inc();
                audit.refused(Refusal::Handshake, &peer.ip().to_string(), &failure);
                if let Some(held_back) = failures.check(peer.ip(), Instant::now()) {
                    tracing::warn!(source = %peer, held_back, reason = %failure, "TLS handshake failed; connection closed");
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// What tells one version of the three files from another.
fn stamp(files: &TlsFiles) -> [Option<(u64, SystemTime)>; 3] {
    use crate::key_file_watch::stamp;
    [stamp(&files.ca), stamp(&files.cert), stamp(&files.key)]
}

/// The certificates in force, published to the acceptor and the dialers.
pub struct InForce {
    pub server: watch::Sender<Arc<ServerConfig>>,
    pub client: watch::Sender<Option<ClientTlsConfig>>,
}

impl InForce {
    pub fn new(loaded: Loaded) -> InForce {
        InForce {
            server: watch::Sender::new(loaded.server),
            client: watch::Sender::new(Some(loaded.client)),
        }
    }
}

/// Reload `files` when they change (see the module comment).
pub async fn watch_files(
    files: TlsFiles,
    in_force: Arc<InForce>,
    metrics: Arc<Metrics>,
    audit: Arc<crate::audit::Auditor>,
    shutdown: CancellationToken,
) {
    let mut seen = stamp(&files);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TLS_FILES_POLL) => {}
        }
        let now = stamp(&files);
        if now == seen {
            continue;
        }
        seen = now;
        match load(&files) {
            Ok(loaded) => {
                in_force.server.send_replace(loaded.server);
                in_force.client.send_replace(Some(loaded.client));
                metrics.tls_reloads.inc();
                audit.event(AuditEvent::CertificatesReloaded {
                    file: files.cert.display().to_string(),
                    taken: true,
                    detail: String::new(),
                });
                tracing::info!(cert = %files.cert.display(), "TLS certificates reloaded; new connections use them");
            }
            Err(err) => {
                metrics.tls_reloads_refused.inc();
                audit.event(AuditEvent::CertificatesReloaded {
                    file: files.cert.display().to_string(),
                    taken: false,
                    detail: err.clone(),
                });
                tracing::error!(%err, "TLS files changed but not taken; keeping the certificates in force");
            }
        }
    }
}
