//! Free ports for local nodes.

use anyhow::Context;

/// A free loopback port (bound, then released). The OS may hand it to
/// someone else before the node binds it; the window is small and the node
/// fails loudly if it happens.
pub fn free_port() -> anyhow::Result<u16> {
    free_port_on(std::net::Ipv4Addr::LOCALHOST.into())
}

/// A free port on `ip` (bound, then released).
pub fn free_port_on(ip: std::net::IpAddr) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("find a free port on {ip}"))?;
    Ok(listener.local_addr()?.port())
}
