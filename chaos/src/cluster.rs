//! The cluster under test: real `txlog node` processes, each on its own IP
//! (127.0.0.N, or its namespace's address), started and killed through the
//! testkit's `LocalCluster`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use txlog_client::Client;
use txlog_client::ClientOptions;
use txlog_testkit::free_port_on;
use txlog_testkit::Launch;
use txlog_testkit::LocalCluster;
use txlog_testkit::NodeSpec;
use txlog_testkit::Stopped;
use txlog_testkit::REGIONS;

/// libfaketime, from Debian's `faketime` package.
pub const FAKETIME_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Nodes are spread over the first three regions (n4 shares paris, n5
/// frankfurt), so a region can hold more than one node, as in production.
const REGIONS_USED: usize = 3;

/// Node `i`'s region.
pub fn region_of(i: usize) -> &'static str {
    REGIONS[i % REGIONS_USED]
}

/// Where each node lives.
#[derive(Debug, Clone)]
pub struct Placement {
    pub ips: Vec<Ipv4Addr>,
    /// The port peers and clients use.
    pub ports: Vec<u16>,
    /// Where nodes really listen when a fault proxy owns `ports`.
    pub backend_ports: Option<Vec<u16>>,
    /// Command prefix per node (`ip netns exec NS`), empty on loopback.
    pub wrappers: Vec<Vec<String>>,
}

impl Placement {
    /// Node i on 127.0.0.(10 + i), on a port free on that address (and a
    /// second one behind the fault proxy when `proxied`).
    pub fn loopback(nodes: usize, proxied: bool) -> anyhow::Result<Placement> {
        let free_port = |ip: Ipv4Addr| free_port_on(ip.into());
        let ips: Vec<Ipv4Addr> = (0..nodes).map(|i| Ipv4Addr::new(127, 0, 0, 10 + i as u8)).collect();
        let ports = ips
            .iter()
            .map(|&ip| free_port(ip))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let backend_ports = if proxied {
            Some(
                ips.iter()
                    .map(|&ip| free_port(ip))
                    .collect::<anyhow::Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        Ok(Placement {
            ips,
            ports,
            backend_ports,
            wrappers: vec![Vec::new(); nodes],
        })
    }

    pub fn public_addresses(&self) -> Vec<std::net::SocketAddr> {
        self.ips
            .iter()
            .zip(&self.ports)
            .map(|(&ip, &port)| (ip, port).into())
            .collect()
    }

    pub fn backend_addresses(&self) -> Option<Vec<std::net::SocketAddr>> {
        let ports = self.backend_ports.as_ref()?;
        Some(
            self.ips
                .iter()
                .zip(ports)
                .map(|(&ip, &port)| (ip, port).into())
                .collect(),
        )
    }
}

pub struct Cluster {
    pub local: LocalCluster,
    pub placement: Placement,
    /// The FAKETIME spec each node currently runs under.
    pub clock: Vec<Option<String>>,
    pub client: Client,
}

impl Cluster {
    /// Node `i` runs with id `ids[i]` and keeps its data in `dir/n{i + 1}`
    /// (by index, like its address, so a directory names the same place
    /// whatever ids a seed drew); `timing` is the nodes' `--timing` profile
    /// (lan or wan).
    pub fn new(exe: PathBuf, placement: Placement, ids: &[u64], dir: &Path, timing: &str) -> anyhow::Result<Cluster> {
        let nodes = placement.ips.len();
        assert_eq!(ids.len(), nodes, "one node id per placed node");
        let specs: Vec<NodeSpec> = (0..nodes)
            .map(|i| NodeSpec {
                id: ids[i],
                region: region_of(i).to_string(),
                address: format!("{}:{}", placement.ips[i], placement.ports[i]),
                listen: placement
                    .backend_ports
                    .as_ref()
                    .map(|ports| format!("{}:{}", placement.ips[i], ports[i])),
                metrics: None,
                data_dir: dir.join(format!("n{}", i + 1)),
                join: None,
                // Snapshots and purges happen during the run, so restarted
                // nodes also catch up through (delta) snapshots.
                extra_args: [
                    "--snapshot-logs-since-last",
                    "2000",
                    "--log-entries-kept-after-snapshot",
                    "500",
                    "--timing",
                    timing,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            })
            .collect();
        let local = LocalCluster::with_exe(specs, exe);
        let client = local.client(ClientOptions {
            rpc_timeout: Duration::from_secs(1),
            attempts_max: 3,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(300),
        })?;
        Ok(Cluster {
            local,
            placement,
            clock: vec![None; nodes],
            client,
        })
    }

    pub fn len(&self) -> usize {
        self.placement.ips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.placement.ips.is_empty()
    }

    pub fn id(&self, i: usize) -> u64 {
        self.local.nodes[i].spec.id
    }

    pub fn address(&self, i: usize) -> String {
        self.local.nodes[i].spec.address.clone()
    }

    pub fn region(&self, i: usize) -> String {
        self.local.nodes[i].spec.region.clone()
    }

    /// Start node `i`, under libfaketime when `clock` is set.
    pub fn start(&mut self, i: usize, clock: Option<String>) -> anyhow::Result<()> {
        let mut launch = Launch {
            wrapper: self.placement.wrappers[i].clone(),
            ..Launch::default()
        };
        if let Some(spec) = &clock {
            launch.env = vec![
                ("LD_PRELOAD".into(), FAKETIME_LIBRARY.into()),
                ("FAKETIME".into(), spec.clone()),
                ("FAKETIME_NO_CACHE".into(), "1".into()),
            ];
        }
        self.local.start_with(i, &launch)?;
        self.clock[i] = clock;
        Ok(())
    }

    /// SIGTERM node `i` and wait up to `grace` for it to exit. Past that it
    /// is killed with SIGKILL and an error says so: a node that does not
    /// shut down on SIGTERM would hang every deploy. An exit other than
    /// success is an error too. A node already down is left alone.
    pub async fn stop_clean(&mut self, i: usize, grace: Duration) -> anyhow::Result<()> {
        match self.local.stop(i, grace).await {
            Stopped::NotRunning => Ok(()),
            Stopped::Exited(status) if status.success() => Ok(()),
            Stopped::Exited(status) => {
                anyhow::bail!("n{} (id {}) exited with {status} after SIGTERM", i + 1, self.id(i))
            }
            Stopped::Killed => anyhow::bail!(
                "n{} (id {}) did not exit within {grace:?} of SIGTERM; killed it with SIGKILL",
                i + 1,
                self.id(i)
            ),
        }
    }

    pub fn running(&self, i: usize) -> bool {
        self.local.pid(i).is_some()
    }

    /// The leader's index, asking the nodes (None when there is none or no answer).
    pub async fn leader(&self) -> Option<usize> {
        let status = tokio::time::timeout(Duration::from_secs(2), self.client.cluster_status())
            .await
            .ok()?
            .ok()?;
        let id = status.leader_id?;
        (0..self.len()).find(|&i| self.id(i) == id)
    }
}
