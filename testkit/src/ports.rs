//! Free ports for local nodes.
//!
//! A port is only reserved until the node binds it, so two things can take
//! it in between: another node of the same process being handed the same
//! port, and the kernel giving it to an outgoing connection as its local
//! port. Ports are therefore drawn below the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), where the kernel never picks
//! local ports, and never handed out twice by one process. A port is still
//! checked by binding it once before it is returned.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::net::TcpListener;
use std::sync::Mutex;

use anyhow::Context;

/// Lowest port handed out.
const PORT_MIN: u16 = 10_000;
/// Draws before falling back to a kernel-chosen port.
const DRAWS_MAX: usize = 500;

/// Ports this process has handed out.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A free loopback port (see the module docs).
pub fn free_port() -> anyhow::Result<u16> {
    free_port_on(std::net::Ipv4Addr::LOCALHOST.into())
}

/// A free port on `ip`, not handed out before by this process.
pub fn free_port_on(ip: IpAddr) -> anyhow::Result<u16> {
    let top = ephemeral_low().saturating_sub(1).max(PORT_MIN + 1);
    let mut state = seed();
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..DRAWS_MAX {
        state = next(state);
        let port = PORT_MIN + (state % u64::from(top - PORT_MIN)) as u16;
        if !handed.contains(&port) && TcpListener::bind((ip, port)).is_ok() {
            handed.insert(port);
            return Ok(port);
        }
    }
    // Everything below the ephemeral range is taken: let the kernel choose.
    let listener = TcpListener::bind((ip, 0)).with_context(|| format!("find a free port on {ip}"))?;
    let port = listener.local_addr()?.port();
    handed.insert(port);
    Ok(port)
}

/// The first port of the kernel's ephemeral range (32768 when unknown).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A per-call seed: time and pid, so parallel test processes draw differently.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// splitmix64.
fn next(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ports are below the ephemeral range, bindable, and never repeated.
    #[test]
    fn ports_are_distinct_and_outside_the_ephemeral_range() {
        let low = ephemeral_low();
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            let port = free_port().expect("a free port");
            assert!(port >= PORT_MIN && port < low, "port {port} outside {PORT_MIN}..{low}");
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }
}
