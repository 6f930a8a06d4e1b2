//! Who may call what: every `LogService` and `AdminService` call is
//! admitted here before it does anything (access control, items 2, 3, 6).
//!
//! **Enforced** (the default): a call carries a request token (metadata
//! `txlog-token-bin`; each `AppendStream` message carries its own). The
//! token is checked (`token_check.rs`: shape, time, MAC over the method and
//! the message, replay), then the caller's roles must allow the operation
//! on every channel the call touches (`access_policy.rs`). Refusals are
//! `UNAUTHENTICATED` (the token) or `PERMISSION_DENIED` (the roles), with a
//! message that names the failed check and never a secret.
//!
//! **The root key** (`--root-key-file`, the same on every node) is how a
//! cluster is administered before any key is in the log, and how nodes
//! call each other's `AdminService` (join, forwarded membership changes).
//! It may do everything and is not in the log, so it cannot be revoked
//! there: replace the file on every node and restart them to change it.
//! A key in the log may not take its id.
//!
//! **Insecure** (`--insecure`, logged as a warning at every start): no
//! token is asked for and every call is allowed.
//!
//! **The policy a node enforces** ([`LivePolicy`]) is the fold of the
//! `_access` records it has applied: every node enforces the same policy
//! at the same log position, a little behind the leader while it applies.
//! An access change is answered only once the leader enforces it.
//! Subscriptions are checked again at every policy change and closed when
//! their key is revoked or their role loses the right.
//!
//! Not yet: mutual TLS, the `_audit` channel.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::Status;
use txlog_client::token_payload_digest;
use txlog_client::ClientSecret;
use txlog_client::Credentials;
use txlog_client::TOKEN_METADATA_KEY;
use txlog_proto::RequestToken;
use txlog_raft::StateMachineReader;

use crate::access_policy::AccessPolicy;
use crate::access_policy::Operation;
use crate::access_policy::ACCESS_CHANNEL;
use crate::metrics::Metrics;
use crate::token_check::Caller;
use crate::token_check::TokenChecker;
use crate::Error;
use crate::Result;

/// Largest encoded token accepted from metadata: a token with the most
/// and longest names is under 1.5 KB.
const TOKEN_BYTES_MAX: usize = 4096;
/// Access records read per step when folding the policy.
const ACCESS_READ_PAGE_RECORDS: usize = 1024;

/// Whether calls must be authenticated.
#[derive(Debug, Clone)]
pub enum AccessMode {
    /// No token asked, every call allowed (`--insecure`).
    Insecure,
    /// Every call needs a token; `root` (which claims no role: it may do
    /// everything) signs this node's calls to its peers.
    Enforced { root: Credentials },
}

impl AccessMode {
    /// Enforced, with `root` as the root key.
    pub fn enforced(root: ClientSecret) -> AccessMode {
        let root = Credentials::new(root, Vec::new()).expect("a claim of no roles is always valid");
        AccessMode::Enforced { root }
    }

    /// A request of this node to another's `AdminService` (a join, a
    /// forwarded membership change): signed with the root key when access
    /// is enforced.
    pub fn node_request<M: prost::Message>(&self, method: &str, message: M) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        if let AccessMode::Enforced { root } = self {
            if let Err(status) = root.sign(&mut request, method) {
                tracing::warn!(%status, "node request sent without a token");
            }
        }
        request
    }
}

/// The access policy this node enforces, kept current by [`follow`].
#[derive(Default)]
pub struct LivePolicy {
    current: watch::Sender<Arc<AccessPolicy>>,
}

impl LivePolicy {
    pub fn current(&self) -> Arc<AccessPolicy> {
        self.current.borrow().clone()
    }

    /// Changes each time a new policy is in force.
    pub fn watch(&self) -> watch::Receiver<Arc<AccessPolicy>> {
        self.current.subscribe()
    }

    /// Wait until the access record at `seq` is in force, at most `timeout`.
    pub async fn wait_applied(&self, seq: u64, timeout: Duration) -> bool {
        let mut current = self.current.subscribe();
        tokio::time::timeout(timeout, current.wait_for(|policy| policy.applied_seq >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub(crate) fn publish(&self, policy: AccessPolicy) {
        self.current.send_replace(Arc::new(policy));
    }
}

/// Fold the access records after `policy.applied_seq` that `reader` has
/// applied into `policy`; whether any were.
pub fn fold_access_records(reader: &StateMachineReader, policy: &mut AccessPolicy) -> Result<bool> {
    let mut changed = false;
    loop {
        let from = policy.applied_seq + 1;
        let records = reader.read(from, ACCESS_READ_PAGE_RECORDS, usize::MAX, Some(ACCESS_CHANNEL))?;
        if records.is_empty() {
            return Ok(changed);
        }
        for record in &records {
            changed = true;
            if let Err(err) = policy.apply(record.seq, &record.payload) {
                tracing::error!(seq = record.seq, %err, "access record unreadable: the policy grants nothing");
            }
        }
    }
}

/// Keep `live` the fold of the access records this node has applied,
/// until `shutdown`.
pub async fn follow(live: Arc<LivePolicy>, reader: StateMachineReader, shutdown: CancellationToken) {
    let mut policy = AccessPolicy::clone(&live.current());
    let mut applied = reader.watch_last_seq();
    loop {
        // Seen before reading, so an apply after the read still wakes us.
        applied.borrow_and_update();
        match fold_access_records(&reader, &mut policy) {
            Ok(true) => {
                tracing::info!(
                    seq = policy.applied_seq,
                    keys = policy.keys.len(),
                    roles = policy.roles.len(),
                    "access policy in force"
                );
                live.publish(policy.clone());
            }
            Ok(false) => {}
            // A store being replaced under the read (snapshot install):
            // the next apply wakes us to try again.
            Err(err) => tracing::warn!(%err, "access records not read"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
        }
    }
}

/// Admits calls: checks their token, then their caller's roles.
pub struct Guard {
    mode: AccessMode,
    checker: TokenChecker,
    pub policy: Arc<LivePolicy>,
    metrics: Arc<Metrics>,
    /// Where refusals are recorded (the `_audit` channel).
    audit: Arc<crate::audit::Auditor>,
    /// Set while this node's wall clock disagrees with most of its peers'
    /// (`clock_guard.rs`): a token refused for its times is then this
    /// node's fault, answered `UNAVAILABLE` so the client tries another
    /// node (with a fresh token).
    pub clock_suspect: Arc<std::sync::atomic::AtomicBool>,
}

impl Guard {
    pub fn new(mode: AccessMode, metrics: Arc<Metrics>, audit: Arc<crate::audit::Auditor>) -> Guard {
        Guard {
            mode,
            checker: TokenChecker::default(),
            policy: Arc::default(),
            metrics,
            audit,
            clock_suspect: Arc::default(),
        }
    }

    pub fn mode(&self) -> &AccessMode {
        &self.mode
    }

    pub fn is_enforced(&self) -> bool {
        matches!(self.mode, AccessMode::Enforced { .. })
    }

    /// A request of this node to another's `AdminService`; see
    /// [`AccessMode::node_request`].
    pub fn node_request<M: prost::Message>(&self, method: &str, message: M) -> tonic::Request<M> {
        self.mode.node_request(method, message)
    }

    /// The root key's id, when enforced.
    pub fn root_key_id(&self) -> Option<&str> {
        match &self.mode {
            AccessMode::Enforced { root } => Some(root.key_id()),
            AccessMode::Insecure => None,
        }
    }

    /// Admit a unary call (or a stream's opening request) of `method`
    /// carrying `message`, for `operation` on `channel` (`None`: every
    /// channel). The caller, `None` when access is not enforced.
    pub fn admit<M: prost::Message>(
        &self,
        metadata: &MetadataMap,
        message: &M,
        method: &str,
        operation: Operation,
        channel: Option<&str>,
    ) -> std::result::Result<Option<Caller>, Status> {
        let caller = self.authenticate_metadata(metadata, message, method)?;
        self.authorize(caller.as_ref(), operation, channel)?;
        Ok(caller)
    }

    /// The caller named by the token in `metadata`, for `message`.
    pub fn authenticate_metadata<M: prost::Message>(
        &self,
        metadata: &MetadataMap,
        message: &M,
        method: &str,
    ) -> std::result::Result<Option<Caller>, Status> {
        if !self.is_enforced() {
            return Ok(None);
        }
        let token = match metadata.get_bin(TOKEN_METADATA_KEY) {
            None => None,
            Some(value) => {
                let bytes = value
                    .to_bytes()
                    .map_err(|_| self.refuse_token("-", Error::Unauthenticated("token: not valid base64".into())))?;
                if bytes.len() > TOKEN_BYTES_MAX {
                    return Err(self.refuse_token(
                        "-",
                        Error::Unauthenticated(format!("token: {} bytes (at most {TOKEN_BYTES_MAX})", bytes.len())),
                    ));
                }
                Some(
                    RequestToken::decode(bytes)
                        .map_err(|e| self.refuse_token("-", Error::Unauthenticated(format!("token: {e}"))))?,
                )
            }
        };
        self.authenticate(token.as_ref(), &token_payload_digest(message), method)
    }

    /// The caller named by `token` for `message` (which must not hold the
    /// token itself); `None` when access is not enforced.
    pub fn authenticate_message<M: prost::Message>(
        &self,
        token: Option<&RequestToken>,
        message: &M,
        method: &str,
    ) -> std::result::Result<Option<Caller>, Status> {
        if !self.is_enforced() {
            return Ok(None);
        }
        self.authenticate(token, &token_payload_digest(message), method)
    }

    /// The caller named by `token` for a message with SHA-256
    /// `payload_digest`; `None` when access is not enforced.
    pub fn authenticate(
        &self,
        token: Option<&RequestToken>,
        payload_digest: &[u8; 32],
        method: &str,
    ) -> std::result::Result<Option<Caller>, Status> {
        let AccessMode::Enforced { root } = &self.mode else {
            return Ok(None);
        };
        let Some(token) = token else {
            return Err(self.refuse_token("unsigned", Error::Unauthenticated(format!(
                "{method} needs a request token (metadata {TOKEN_METADATA_KEY}): the CLI signs with --credentials FILE, the client library with Credentials; `txlog token issue` makes one by hand"
            ))));
        };
        let policy = self.policy.current();
        let secret_of = |key_id: &str| {
            if key_id == root.key_id() {
                Some(*root.secret().secret())
            } else {
                policy.secret_of(key_id)
            }
        };
        match self
            .checker
            .check(token, method, payload_digest, txlog_client::wall_clock_ms(), secret_of)
        {
            Ok(caller) => Ok(Some(caller)),
            Err(refusal) => {
                let clock_suspect = self.clock_suspect.load(std::sync::atomic::Ordering::Relaxed);
                let err = match refusal.code() {
                    tonic::Code::ResourceExhausted => Error::Exhausted(refusal.to_string()),
                    _ if clock_suspect && refusal.is_about_time() => Error::Unavailable(format!(
                        "{refusal}; this node's clock disagrees with its peers', so it cannot judge token times: try another node"
                    )),
                    _ => Error::Unauthenticated(refusal.to_string()),
                };
                Err(self.refuse_token(&token.key_id, err))
            }
        }
    }

    /// Whether `caller` may do `operation` on `channel` (`None`: every
    /// channel) under the policy in force now.
    pub fn authorize(
        &self,
        caller: Option<&Caller>,
        operation: Operation,
        channel: Option<&str>,
    ) -> std::result::Result<(), Status> {
        let AccessMode::Enforced { root } = &self.mode else {
            return Ok(());
        };
        let Some(caller) = caller else {
            return Err(self.deny("-", Error::Unauthenticated("no caller".into())));
        };
        if caller.key_id == root.key_id() {
            return Ok(());
        }
        let policy = self.policy.current();
        let key = policy.keys.get(&caller.key_id);
        // An empty claim stands for every role the key is granted.
        let claimed: &[String] = match (caller.roles.is_empty(), key) {
            (true, Some(key)) => &key.roles,
            _ => &caller.roles,
        };
        policy
            .authorize(&caller.key_id, claimed, operation, channel)
            .map_err(|message| {
                if policy.secret_of(&caller.key_id).is_none() {
                    self.refuse_token(&caller.key_id, Error::Unauthenticated(message))
                } else {
                    self.deny(&caller.key_id, Error::PermissionDenied(message))
                }
            })
    }

    /// `source`: the token's key id when there is one.
    fn refuse_token(&self, source: &str, err: Error) -> Status {
        self.metrics.tokens_refused.inc();
        tracing::debug!(%err, "call refused");
        self.audit
            .refused(crate::audit::Refusal::Token, source, &err.to_string());
        err.to_status()
    }

    fn deny(&self, source: &str, err: Error) -> Status {
        self.metrics.calls_denied.inc();
        tracing::debug!(%err, "call denied");
        self.audit
            .refused(crate::audit::Refusal::Permission, source, &err.to_string());
        err.to_status()
    }
}
