//! `--net netns`: every node in a network namespace of its own, all joined
//! by a bridge in a control namespace, where the run itself (clients,
//! nemesis) executes.
//!
//! The process the user started creates the namespaces, re-runs itself
//! inside the control namespace, waits for it, and then deletes every
//! namespace it created — whatever way the inner run ended (verdict,
//! error, panic or Ctrl-C). Deleting a namespace removes its veth ends,
//! the bridge and its iptables rules with it. Addresses (10.77.0.0/24)
//! exist only inside these namespaces.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::bail;
use anyhow::Context;

use crate::cluster::Placement;

/// Port every node listens on inside its namespace.
pub const NODE_PORT: u16 = 7400;
/// Flag the outer process passes to the inner one: the node namespaces.
pub const INSIDE_FLAG: &str = "--inside-netns";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip").args(args).output().context("run ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + i as u8)
}

/// Node i at 10.77.0.(10 + i), started through `ip netns exec`.
pub fn placement(names: &[String]) -> Placement {
    Placement {
        ips: (0..names.len()).map(node_ip).collect(),
        ports: vec![NODE_PORT; names.len()],
        backend_ports: None,
        wrappers: names
            .iter()
            .map(|n| vec!["ip".to_string(), "netns".to_string(), "exec".to_string(), n.clone()])
            .collect(),
    }
}

/// The namespaces of one run; deleted on drop.
pub struct Namespaces {
    pub control: String,
    pub nodes: Vec<String>,
    created: Vec<String>,
}

impl Namespaces {
    pub fn create(nodes: usize) -> anyhow::Result<Namespaces> {
        let pid = std::process::id();
        let mut ns = Namespaces {
            control: format!("txlog-chaos-{pid}-ctl"),
            nodes: (1..=nodes).map(|i| format!("txlog-chaos-{pid}-n{i}")).collect(),
            created: Vec::new(),
        };
        let control = ns.control.clone();
        ip(&["netns", "add", &control])?;
        ns.created.push(control.clone());
        ip(&["-n", &control, "link", "set", "lo", "up"])?;
        ip(&["-n", &control, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &control, "addr", "add", "10.77.0.1/24", "dev", "br0"])?;
        ip(&["-n", &control, "link", "set", "br0", "up"])?;
        for (i, name) in ns.nodes.clone().iter().enumerate() {
            ip(&["netns", "add", name])?;
            ns.created.push(name.clone());
            // Interface names are limited to 15 bytes.
            let inner = format!("tc{}n{}", pid % 100_000, i + 1);
            let outer = format!("{inner}b");
            ip(&[
                "link", "add", &inner, "netns", name, "type", "veth", "peer", "name", &outer, "netns", &control,
            ])?;
            ip(&["-n", name, "addr", "add", &format!("{}/24", node_ip(i)), "dev", &inner])?;
            ip(&["-n", name, "link", "set", &inner, "up"])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
            ip(&["-n", &control, "link", "set", &outer, "master", "br0"])?;
            ip(&["-n", &control, "link", "set", &outer, "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "delete", name]) {
                eprintln!("could not delete network namespace {name}: {e:#}");
            }
        }
    }
}

/// Run this program again inside the control namespace with `args` plus
/// the namespace list; return its exit code. SIGINT is left to the inner
/// run (it heals, stops and reports), and the namespaces go when `ns` drops.
pub fn run_inside(ns: &Namespaces, args: &[String]) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("locate txlog-chaos")?;
    // Ignore SIGINT here so Ctrl-C reaches only the inner run, which stops
    // cleanly; this process then removes the namespaces.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.control])
        .arg(exe)
        .args(args)
        .arg(INSIDE_FLAG)
        .arg(ns.nodes.join(","))
        .status()
        .context("start the run inside the control namespace")?;
    Ok(status.code().unwrap_or(2))
}
