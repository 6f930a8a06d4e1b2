//! A veth pair into a network namespace of its own, for the DPDK backend's
//! end-to-end test and bench (feature `dpdk`; needs root and iproute2).
//!
//! The outer end stays in the caller's namespace, up, for DPDK's
//! `net_af_packet` (and, if asked, with an address for the kernel backend
//! to compare against); the inner end lives in the new namespace with
//! [`INNER_ADDRESS`]. The addresses exist only on this pair. Dropping it
//! deletes the pair and the namespace.

use std::io;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use crate::frame::Mac;

pub const OUTER_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
pub const INNER_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

pub struct VethNamespace {
    pub namespace: String,
    pub outer: String,
    pub inner: String,
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl VethNamespace {
    /// Make the namespace and the pair; `outer_address` also gives the
    /// outer end [`OUTER_ADDRESS`]/24 (for a kernel sender).
    pub fn create(tag: &str, outer_address: bool) -> io::Result<VethNamespace> {
        let id = std::process::id() % 100_000;
        let veth = VethNamespace {
            namespace: format!("txlog-{tag}-{id}"),
            outer: format!("tx{tag}o{id}"),
            inner: format!("tx{tag}i{id}"),
        };
        if veth.outer.len() > 15 {
            return Err(io::Error::other(format!("interface name {} is too long", veth.outer)));
        }
        ip(&["netns", "add", &veth.namespace])?;
        // From here on, drop cleans up whatever was made.
        ip(&["link", "add", &veth.outer, "type", "veth", "peer", "name", &veth.inner])?;
        ip(&["link", "set", &veth.inner, "netns", &veth.namespace])?;
        if outer_address {
            ip(&["addr", "add", &format!("{OUTER_ADDRESS}/24"), "dev", &veth.outer])?;
        }
        ip(&["link", "set", &veth.outer, "up"])?;
        let inner_address = format!("{INNER_ADDRESS}/24");
        for args in [
            vec!["addr", "add", inner_address.as_str(), "dev", veth.inner.as_str()],
            vec!["link", "set", veth.inner.as_str(), "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["netns", "exec", veth.namespace.as_str(), "ip"];
            all.extend(args);
            ip(&all)?;
        }
        Ok(veth)
    }

    /// The inner end's Ethernet address: the next hop of unicast frames.
    /// (`ip netns exec` mounts the namespace's own /sys to read it.)
    pub fn inner_mac(&self) -> io::Result<Mac> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.namespace, "cat"])
            .arg(format!("/sys/class/net/{}/address", self.inner))
            .output()?;
        crate::frame::parse_mac(&String::from_utf8_lossy(&out.stdout)).map_err(|e| io::Error::other(e.to_string()))
    }

    /// A UDP socket made inside the namespace, bound to `bind`, joined to
    /// `group` on the inner end if given, with a large receive buffer and
    /// a 50 ms read timeout. (A socket stays in the namespace it was made
    /// in, whatever thread uses it later.)
    pub fn socket(&self, bind: SocketAddr, group: Option<Ipv4Addr>) -> io::Result<UdpSocket> {
        self.in_namespace(move || {
            let socket = UdpSocket::bind(bind)?;
            if let Some(group) = group {
                socket.join_multicast_v4(&group, &INNER_ADDRESS)?;
            }
            crate::kernel::set_buffer(&socket, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(socket)
        })?
    }

    /// Run `f` on a short-lived thread moved into the namespace (sockets
    /// it makes stay there).
    pub fn in_namespace<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let path = format!("/var/run/netns/{}", self.namespace);
        std::thread::spawn(move || -> io::Result<T> {
            let ns = std::fs::File::open(&path)?;
            // SAFETY: moves only this thread into the namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    }
}

impl Drop for VethNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.outer]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.namespace]).output();
    }
}
