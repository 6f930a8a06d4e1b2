//! Which addresses may reach this node, per service class (access
//! control, item 4 of the work that builds it).
//!
//! Three CIDR lists from the config: `allow_clients` (`LogService`, health,
//! reflection), `allow_admin` (`AdminService`) and `allow_peers`
//! (`RaftService`). They are checked twice:
//! - **At accept.** A connection from an address in none of the lists is
//!   closed at once, before a byte of TLS or HTTP/2 is read.
//! - **Per call.** An address in some list but not in the class of the
//!   method it calls gets `PERMISSION_DENIED`, naming the list to change.
//!   One port serves every class, so this is the only place the class of a
//!   connection is known — and so also where a `RaftService` call on a TLS
//!   connection is refused unless the caller holds a node certificate
//!   (`tls.rs`).
//!
//! Each refusal is counted (`txlog_connections_refused`,
//! `txlog_calls_refused`), and logged at most once per source address per
//! [`REFUSAL_LOG_INTERVAL`], with the number held back, so a flood cannot
//! fill the log.
//!
//! An empty or absent list allows every address (today's behaviour, and
//! what `txlog dev` keeps on loopback).
//!
//! Refusals are also recorded in the audit trail (`audit.rs`), aggregated
//! per source.
//!
//! **At runtime.** `AdminService.SetAllowlist` (`txlog admin allow`)
//! replaces one list for every node through the log (an `_access` record),
//! or resets it to each node's config; the lists in force are the config's
//! with those replacements ([`effective`]). The leader refuses a change
//! that would shut out a member's address (peers) or the caller's own
//! (admin).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::log_throttle::RateLimiter;

/// At most one refusal line per source address per this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// Source addresses whose refusals are counted for the log at once.
const REFUSAL_SOURCES_MAX: usize = 4096;
/// Entries in one list.
pub const CIDRS_PER_LIST_MAX: usize = 1024;

/// One CIDR block: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.1.0.0/16`, `::1/128`, or a bare address (its own /32 or /128).
    /// Host bits set below the prefix are refused: `10.1.2.3/16` is
    /// probably a typo for something else.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= bits)
                .ok_or_else(|| format!("{text:?}: prefix length must be 0..={bits}"))?,
            None => bits,
        };
        let cidr = Cidr { network, prefix };
        if cidr.masked(network) != bits_of(network) {
            return Err(format!("{text:?} has host bits set below /{prefix}"));
        }
        Ok(cidr)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == bits_of(self.network)
    }

    fn masked(&self, ip: IpAddr) -> u128 {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let mask = if self.prefix == 0 {
            0
        } else {
            (u128::MAX << (width - u32::from(self.prefix))) & (u128::MAX >> (128 - width))
        };
        bits_of(ip) & mask
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn bits_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The services of one port, by who may call them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceClass {
    Clients,
    Admin,
    Peers,
}

impl ServiceClass {
    pub const ALL: [ServiceClass; 3] = [ServiceClass::Clients, ServiceClass::Admin, ServiceClass::Peers];

    /// The class whose list `setting` names (`allow_clients`, …).
    pub fn from_setting(setting: &str) -> Option<ServiceClass> {
        ServiceClass::ALL.into_iter().find(|c| c.setting() == setting)
    }

    /// The class of a gRPC path (`/package.Service/Method`). Health checks
    /// and reflection are the clients' class.
    pub fn of_path(path: &str) -> ServiceClass {
        if path.starts_with("/txlog.v1.AdminService/") {
            ServiceClass::Admin
        } else if path.starts_with("/txlog.v1.RaftService/") {
            ServiceClass::Peers
        } else {
            ServiceClass::Clients
        }
    }

    /// The config key of this class's list.
    pub fn setting(self) -> &'static str {
        match self {
            ServiceClass::Clients => "allow_clients",
            ServiceClass::Admin => "allow_admin",
            ServiceClass::Peers => "allow_peers",
        }
    }
}

/// The three lists; an empty list allows every address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    pub clients: Vec<Cidr>,
    pub admin: Vec<Cidr>,
    pub peers: Vec<Cidr>,
}

impl Allowlist {
    /// Parse one list given as config strings; `setting` names it in errors.
    pub fn parse_list(setting: &str, entries: &[String]) -> Result<Vec<Cidr>, String> {
        if entries.len() > CIDRS_PER_LIST_MAX {
            return Err(format!("{setting}: at most {CIDRS_PER_LIST_MAX} entries"));
        }
        entries
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| Cidr::parse(e).map_err(|err| format!("{setting}: {err}")))
            .collect()
    }

    pub fn list(&self, class: ServiceClass) -> &[Cidr] {
        match class {
            ServiceClass::Clients => &self.clients,
            ServiceClass::Admin => &self.admin,
            ServiceClass::Peers => &self.peers,
        }
    }

    /// Whether `ip` may call services of `class`. Peers may also call
    /// `AdminService`: a joining node asks a member to add it, and a
    /// follower forwards removals and leadership transfers to the leader.
    pub fn allows(&self, class: ServiceClass, ip: IpAddr) -> bool {
        let listed = |class| {
            let list = self.list(class);
            list.is_empty() || list.iter().any(|c: &Cidr| c.contains(ip))
        };
        listed(class) || (class == ServiceClass::Admin && !self.peers.is_empty() && listed(ServiceClass::Peers))
    }

    /// Whether `ip` may call anything at all: what a connection is judged
    /// by at accept.
    pub fn allows_any(&self, ip: IpAddr) -> bool {
        [ServiceClass::Clients, ServiceClass::Admin, ServiceClass::Peers]
            .into_iter()
            .any(|class| self.allows(class, ip))
    }

    /// Whether every list is empty (nothing is checked).
    pub fn is_open(&self) -> bool {
        self.clients.is_empty() && self.admin.is_empty() && self.peers.is_empty()
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        let list = |cidrs: &[Cidr]| {
            if cidrs.is_empty() {
                "any".to_string()
            } else {
                cidrs.iter().map(Cidr::to_string).collect::<Vec<_>>().join(",")
            }
        };
        format!(
            "clients {}; admin {}; peers {}",
            list(&self.clients),
            list(&self.admin),
            list(&self.peers)
        )
    }
}

/// The lists in force: `config`'s, each replaced by the one the access
/// policy holds for it, if any (set through the log, `SetAllowlist`).
/// Entries were checked when they entered the log; one that does not
/// parse (a newer build's syntax) is left out.
pub fn effective(config: &Allowlist, policy: &crate::access_policy::AccessPolicy) -> Allowlist {
    let list = |class: ServiceClass| match policy.allowlists.get(class.setting()) {
        Some(cidrs) => cidrs.iter().filter_map(|c| Cidr::parse(c).ok()).collect(),
        None => config.list(class).to_vec(),
    };
    Allowlist {
        clients: list(ServiceClass::Clients),
        admin: list(ServiceClass::Admin),
        peers: list(ServiceClass::Peers),
    }
}

/// The allowlist as the server applies it: the lists in force, the
/// counters and the throttled log line.
pub struct Gate {
    /// The configured lists.
    config: Allowlist,
    /// The access policy in force, and the lists in force under the policy
    /// last seen (rebuilt when a new one is published).
    policy: Arc<crate::access_guard::LivePolicy>,
    in_force: std::sync::RwLock<(u64, Arc<Allowlist>)>,
    metrics: Arc<crate::metrics::Metrics>,
    log_limit: RateLimiter<IpAddr>,
    pub audit: Arc<crate::audit::Auditor>,
}

impl Gate {
    pub fn new(
        allowlist: Allowlist,
        policy: Arc<crate::access_guard::LivePolicy>,
        metrics: Arc<crate::metrics::Metrics>,
        audit: Arc<crate::audit::Auditor>,
    ) -> Gate {
        let current = policy.current();
        let in_force = (current.applied_seq, Arc::new(effective(&allowlist, &current)));
        Gate {
            config: allowlist,
            policy,
            in_force: std::sync::RwLock::new(in_force),
            metrics,
            log_limit: RateLimiter::new(REFUSAL_LOG_INTERVAL, REFUSAL_SOURCES_MAX),
            audit,
        }
    }

    /// The lists in force now.
    pub fn allowlist(&self) -> Arc<Allowlist> {
        let policy = self.policy.current();
        {
            let in_force = self.in_force.read().expect("allowlist lock poisoned");
            if in_force.0 == policy.applied_seq {
                return in_force.1.clone();
            }
        }
        let rebuilt = Arc::new(effective(&self.config, &policy));
        *self.in_force.write().expect("allowlist lock poisoned") = (policy.applied_seq, rebuilt.clone());
        rebuilt
    }

    pub fn is_open(&self) -> bool {
        self.allowlist().is_open()
    }

    /// Judge a new connection from `ip`: `false` means close it now.
    pub fn accept(&self, ip: IpAddr) -> bool {
        if self.allowlist().allows_any(ip) {
            return true;
        }
        self.metrics.connections_refused.inc();
        self.audit.refused(
            crate::audit::Refusal::Connection,
            &ip.to_string(),
            "address in no allowlist",
        );
        if let Some(held_back) = self.log_limit.check(ip, Instant::now()) {
            tracing::warn!(source = %ip, held_back, "connection refused: address in no allowlist");
        }
        false
    }

    /// Judge a call of `path` from `ip`.
    pub fn call(&self, path: &str, ip: Option<IpAddr>) -> Result<(), tonic::Status> {
        let class = ServiceClass::of_path(path);
        let allowlist = self.allowlist();
        // No address: nothing to judge by, so refused unless nothing is
        // checked. The server listens only on TCP and gives every call its
        // address (`tls::ConnectionInfo`, plain or TLS).
        let Some(ip) = ip else {
            if allowlist.is_open() {
                return Ok(());
            }
            self.metrics.calls_refused.inc();
            return Err(tonic::Status::permission_denied(format!(
                "a call of {path} without a source address is refused while allowlists are set"
            )));
        };
        if allowlist.allows(class, ip) {
            return Ok(());
        }
        self.metrics.calls_refused.inc();
        self.audit.refused(
            crate::audit::Refusal::Call,
            &ip.to_string(),
            &format!("{path}: not in {}", class.setting()),
        );
        if let Some(held_back) = self.log_limit.check(ip, Instant::now()) {
            tracing::warn!(source = %ip, path, list = class.setting(), held_back, "call refused: address not in the list");
        }
        Err(tonic::Status::permission_denied(format!(
            "address {ip} may not call {path}: it is not in this node's {}",
            class.setting()
        )))
    }
}

/// The per-call check as a tower layer over every service of the port.
#[derive(Clone)]
pub struct GateLayer(pub Arc<Gate>);

impl<S> tower::Layer<S> for GateLayer {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> GateService<S> {
        GateService {
            gate: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct GateService<S> {
    gate: Arc<Gate>,
    inner: S,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for GateService<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>, Response = tonic::codegen::http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let info = request.extensions().get::<crate::tls::ConnectionInfo>();
        let ip = info.and_then(|info| info.remote_ip());
        let path = request.uri().path();
        let judged = self.gate.call(path, ip).and_then(|()| match info {
            Some(info) if ServiceClass::of_path(path) == ServiceClass::Peers => {
                info.require_node(path).inspect_err(|status| {
                    let source = ip.map_or_else(|| "-".to_string(), |ip| ip.to_string());
                    self.gate
                        .audit
                        .refused(crate::audit::Refusal::Call, &source, status.message());
                })
            }
            _ => Ok(()),
        });
        match judged {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Parsing refuses what is not a block (bad address, prefix, host bits
    /// set) and matching follows the prefix, for IPv4, IPv6 and IPv4
    /// mapped into IPv6.
    #[test]
    fn cidr_blocks_parse_and_match() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.255.7")) && !c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "IPv4 mapped into IPv6");
        assert!(!c.contains(ip("::1")));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
        for bad in ["10.1.2.3/16", "10.0.0.0/33", "::/129", "paris", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Lists per class: empty allows all, a listed class allows only its
    /// blocks, and a connection is accepted if any class would take it.
    #[test]
    fn classes_and_lists() {
        let list = Allowlist {
            clients: vec![Cidr::parse("127.0.0.0/8").unwrap()],
            admin: vec![],
            peers: vec![Cidr::parse("127.0.0.1/32").unwrap()],
        };
        assert_eq!(ServiceClass::of_path("/txlog.v1.RaftService/Vote"), ServiceClass::Peers);
        assert_eq!(
            ServiceClass::of_path("/txlog.v1.AdminService/Status"),
            ServiceClass::Admin
        );
        assert_eq!(
            ServiceClass::of_path("/txlog.v1.LogService/Append"),
            ServiceClass::Clients
        );
        assert_eq!(
            ServiceClass::of_path("/grpc.health.v1.Health/Check"),
            ServiceClass::Clients
        );
        assert!(list.allows(ServiceClass::Peers, ip("127.0.0.1")));
        assert!(!list.allows(ServiceClass::Peers, ip("127.0.0.2")));
        assert!(list.allows(ServiceClass::Clients, ip("127.0.0.2")));
        assert!(
            list.allows(ServiceClass::Admin, ip("192.0.2.1")),
            "an empty list allows all"
        );
        let admins = Allowlist {
            admin: vec![Cidr::parse("10.9.0.0/16").unwrap()],
            ..list.clone()
        };
        assert!(
            admins.allows(ServiceClass::Admin, ip("127.0.0.1")),
            "peers may call admin (join, forwarding)"
        );
        assert!(!admins.allows(ServiceClass::Admin, ip("127.0.0.2")));
        assert!(Cidr::parse("::1/128").unwrap().contains(ip("::1")));
        assert!(list.allows_any(ip("192.0.2.1")));
        let closed = Allowlist {
            admin: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            ..list.clone()
        };
        assert!(!closed.allows_any(ip("192.0.2.1")));
        assert!(Allowlist::default().is_open() && !closed.is_open());
        let err = Allowlist::parse_list("allow_peers", &["10.0.0.1/8".into()]).unwrap_err();
        assert!(err.starts_with("allow_peers: "), "{err}");
        let many: Vec<String> = (0..1025).map(|i| format!("10.0.{}.{}", i / 256, i % 256)).collect();
        assert!(Allowlist::parse_list("allow_clients", &many).is_err());
    }
}
