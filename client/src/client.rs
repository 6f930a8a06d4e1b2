//! The [`Client`] handle: its node list, its channel cache and where the
//! next leader-bound call goes.

use std::sync::Arc;
use std::sync::Mutex;

use tonic::transport::Channel;
use tonic::transport::ClientTlsConfig;

use crate::address::parse_cluster;
use crate::append_stream::AppendSession;
use crate::ClientError;
use crate::ClientOptions;
use crate::Credentials;
use crate::TlsPem;

/// HTTP/2 ping interval on every node connection, and how long a ping may
/// go unanswered before the connection counts as dead.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A connection to a txlog cluster. Cheap to clone; clones share channels
/// and the leader they have learned.
#[derive(Clone)]
pub struct Client {
    endpoints: Arc<Vec<String>>,
    channels: Arc<Mutex<Vec<(String, Channel)>>>,
    /// One append stream per node address, made on first use.
    appends: Arc<Mutex<Vec<(String, AppendSession)>>>,
    state: Arc<Mutex<State>>,
    pub(crate) options: ClientOptions,
    /// What every request is signed with; none against an `--insecure` cluster.
    pub(crate) credentials: Option<Arc<Credentials>>,
    /// Mutual TLS to every node; none against an `--insecure` cluster.
    tls: Option<ClientTlsConfig>,
}

struct State {
    /// Index into `endpoints` of the node to try first.
    preferred: usize,
    /// A leader named by a `txlog-leader` hint that is not in `endpoints`;
    /// tried before `preferred` until it fails. Its channel is kept here, so
    /// at most one such channel exists at a time.
    hinted: Option<(String, Channel)>,
}

/// Where one attempt goes, and what a failure there changes.
pub(crate) struct Route {
    pub address: String,
    pub channel: Channel,
    pub slot: Slot,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Slot {
    /// `endpoints[index]`, the preferred listed node.
    Listed(usize),
    /// The hinted leader outside the list.
    Hinted,
    /// A node the caller named; a failure there changes nothing.
    Named,
}

impl Client {
    /// `cluster` is a comma-separated list of `HOST:PORT`, `http://` optional.
    pub fn new(cluster: &str, options: ClientOptions) -> Result<Client, ClientError> {
        Ok(Client {
            endpoints: Arc::new(parse_cluster(cluster)?),
            channels: Arc::new(Mutex::new(Vec::new())),
            appends: Arc::new(Mutex::new(Vec::new())),
            state: Arc::new(Mutex::new(State {
                preferred: 0,
                hinted: None,
            })),
            options,
            credentials: None,
            tls: None,
        })
    }

    /// Sign every request with `credentials` (a fresh token per attempt).
    pub fn with_credentials(mut self, credentials: Credentials) -> Client {
        self.credentials = Some(Arc::new(credentials));
        self
    }

    /// Speak mutual TLS to every node: present `pem`'s certificate, trust
    /// its CA, and accept only a node certificate on the other end.
    pub fn with_tls(mut self, pem: &TlsPem) -> Client {
        self.channels.lock().expect("client lock poisoned").clear();
        self.tls = Some(pem.client_config());
        self
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A client of the same nodes with the same options and credentials,
    /// but with connections, append streams and a leader view of its own
    /// (a bench or a test that wants one connection per simulated client).
    pub fn separate(&self) -> Client {
        Client {
            endpoints: self.endpoints.clone(),
            channels: Arc::new(Mutex::new(Vec::new())),
            appends: Arc::new(Mutex::new(Vec::new())),
            state: Arc::new(Mutex::new(State {
                preferred: 0,
                hinted: None,
            })),
            options: self.options,
            credentials: self.credentials.clone(),
            tls: self.tls.clone(),
        }
    }

    /// What requests are signed with, if anything.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_deref()
    }

    /// A client with [`ClientOptions::default`].
    pub fn connect(cluster: &str) -> Result<Client, ClientError> {
        Self::new(cluster, ClientOptions::default())
    }

    /// The listed node addresses, normalised.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The cached channel to `address` (normalised), made on first use.
    pub(crate) fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        let mut channels = self.channels.lock().expect("client lock poisoned");
        if let Some((_, c)) = channels.iter().find(|(a, _)| a == address) {
            return Ok(c.clone());
        }
        let channel = self.new_channel(address)?;
        channels.push((address.to_string(), channel.clone()));
        Ok(channel)
    }

    /// The append stream to `route`'s node, started on first use.
    pub(crate) fn append_session(&self, route: &Route) -> AppendSession {
        let mut appends = self.appends.lock().expect("client lock poisoned");
        if let Some((_, session)) = appends.iter().find(|(a, _)| *a == route.address) {
            return session.clone();
        }
        let session = AppendSession::start(
            route.address.clone(),
            route.channel.clone(),
            self.options.rpc_timeout,
            self.credentials.clone(),
        );
        appends.push((route.address.clone(), session.clone()));
        session
    }

    fn new_channel(&self, address: &str) -> Result<Channel, ClientError> {
        let endpoint = crate::endpoint(address, self.tls.clone()).map_err(ClientError::BadCluster)?;
        Ok(endpoint
            .connect_timeout(self.options.connect_timeout)
            .tcp_nodelay(true)
            // A node that vanished without closing the connection (power
            // loss, a silent partition) is noticed within ~10 s even with no
            // call in flight to time out: the append stream to it then
            // fails and its calls are retried elsewhere.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_INTERVAL)
            .keep_alive_while_idle(true)
            .connect_lazy())
    }

    /// Where a leader-bound call goes next: the hinted leader if there is
    /// one, else the preferred listed node.
    pub(crate) fn leader_route(&self) -> Result<Route, ClientError> {
        let (address, slot, hinted) = {
            let state = self.state.lock().expect("client lock poisoned");
            match &state.hinted {
                Some((address, channel)) => (address.clone(), Slot::Hinted, Some(channel.clone())),
                None => {
                    let index = state.preferred % self.endpoints.len();
                    (self.endpoints[index].clone(), Slot::Listed(index), None)
                }
            }
        };
        let channel = match hinted {
            Some(channel) => channel,
            None => self.channel(&address)?,
        };
        Ok(Route { address, channel, slot })
    }

    /// Make `leader` (a normalised hint) the next target; a listed node
    /// becomes `preferred`, any other address the cached hinted leader.
    /// False if no channel can be made for it.
    pub(crate) fn follow_hint(&self, leader: &str) -> bool {
        let mut state = self.state.lock().expect("client lock poisoned");
        if let Some(index) = self.endpoints.iter().position(|e| e == leader) {
            state.preferred = index;
            state.hinted = None;
        } else if state.hinted.as_ref().is_none_or(|(a, _)| a != leader) {
            match self.new_channel(leader) {
                Ok(channel) => state.hinted = Some((leader.to_string(), channel)),
                Err(_) => return false,
            }
        }
        true
    }

    /// After a transient failure without a usable hint: drop a failed hinted
    /// leader (back to the listed nodes), or move on from a listed one.
    pub(crate) fn move_on(&self, failed: Slot) {
        let mut state = self.state.lock().expect("client lock poisoned");
        match failed {
            Slot::Hinted => state.hinted = None,
            Slot::Listed(index) => state.preferred = (index + 1) % self.endpoints.len(),
            Slot::Named => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses with or without http:// are accepted; garbage is a clear error.
    #[test]
    fn cluster_address_parsing() {
        let c = Client::connect("http://127.0.0.1:7401, 127.0.0.1:7402/").unwrap();
        assert_eq!(
            c.endpoints(),
            &["127.0.0.1:7401".to_string(), "127.0.0.1:7402".to_string()]
        );
        assert!(Client::connect("").is_err());
        assert!(Client::connect("localhost").is_err());
        assert!(Client::connect("host:notaport").is_err());
    }

    /// A hint outside the list becomes the next target until it fails; a
    /// failed listed node hands over to the next one.
    #[tokio::test]
    async fn routing_follows_hints_and_moves_on() {
        let c = Client::connect("127.0.0.1:7401,127.0.0.1:7402").unwrap();
        assert!(matches!(c.leader_route().unwrap().slot, Slot::Listed(0)));
        c.move_on(Slot::Listed(0));
        assert_eq!(c.leader_route().unwrap().address, "127.0.0.1:7402");
        assert!(c.follow_hint("127.0.0.1:7409"));
        let route = c.leader_route().unwrap();
        assert!(matches!(route.slot, Slot::Hinted));
        assert_eq!(route.address, "127.0.0.1:7409");
        c.move_on(Slot::Hinted);
        assert_eq!(c.leader_route().unwrap().address, "127.0.0.1:7402");
        assert!(c.follow_hint("127.0.0.1:7401"));
        assert!(matches!(c.leader_route().unwrap().slot, Slot::Listed(0)));
    }
}
