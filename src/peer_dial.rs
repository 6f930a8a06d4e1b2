//! How a node dials its peers' admin services (join, forwarded membership
//! changes and transfers): from its listen IP, so peers and firewall rules
//! see its traffic come from the address it listens on, and — on a secured
//! node — with mutual TLS under the node certificate in force (`tls.rs`),
//! so a reloaded certificate is used from the next dial on. Raft traffic
//! dials through `txlog_raft::Network`, which takes the same two things.

use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::transport::ClientTlsConfig;
use txlog_proto::admin_service_client::AdminServiceClient;

use crate::Error;
use crate::Result;

/// Connect timeout (TCP and TLS) of a call to a peer's admin service.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct PeerDial {
    /// Bind outgoing connections to this address (none: any).
    pub source: Option<IpAddr>,
    /// The TLS client settings in force; `None` on an `--insecure` node.
    pub tls: watch::Receiver<Option<ClientTlsConfig>>,
}

impl PeerDial {
    /// Plain connections from any address (tests, `--insecure`).
    pub fn plain(source: Option<IpAddr>) -> PeerDial {
        PeerDial {
            source,
            tls: watch::Sender::new(None).subscribe(),
        }
    }

    /// A client for `address`'s AdminService.
    pub fn admin_client(&self, address: &str) -> Result<AdminServiceClient<Channel>> {
        let tls = self.tls.borrow().clone();
        let endpoint =
            txlog_client::endpoint(address, tls).map_err(|e| Error::Internal(format!("bad peer address: {e}")))?;
        let endpoint = endpoint
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .local_address(self.source);
        Ok(AdminServiceClient::new(endpoint.connect_lazy()))
    }
}
