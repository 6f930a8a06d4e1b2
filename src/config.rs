//! Node configuration: a TOML file, overridden field by field by command-line
//! flags or `TXLOG_*` environment variables (flags win over variables).
//!
//! ```toml
//! id = 1
//! region = "paris"
//! listen = "127.0.0.1:7401"
//! data_dir = "/var/lib/txlog"
//! peers = ["1=paris@127.0.0.1:7401", "2=frankfurt@127.0.0.1:7402", "3=lyon@127.0.0.1:7403"]
//! # join = "127.0.0.1:7401"  # instead of peers: join a running cluster through any member
//! # prefer_region = "paris"  # move leadership back to this region when it is healthy
//! metrics_listen = "127.0.0.1:9401"
//! timing = "lan"            # or "wan"; the *_ms fields below override it
//! # heartbeat_interval_ms = 10
//! # election_timeout_ms_min = 50
//! # election_timeout_ms_max = 100
//! payload_bytes_max = 1048576
//! batch_bytes_max = 4194304
//! batch_records_max = 8192
//! snapshot_logs_since_last = 10000
//! log_entries_kept_after_snapshot = 1000
//! segment_bytes_max = 67108864
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use txlog_raft::timing::Timing;
use txlog_raft::NodeInfo;

use crate::Error;
use crate::Result;

/// One cluster member as given in `peers`: `ID=REGION@HOST:PORT` or `ID=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub info: NodeInfo,
}

impl std::str::FromStr for Peer {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (id, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("peer {s:?} must look like ID=REGION@HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("peer id {id:?} is not a number"))?;
        if id == 0 {
            return Err("peer id 0 is reserved".into());
        }
        let (region, address) = match rest.split_once('@') {
            Some((r, a)) => (r.trim().to_string(), a.trim().to_string()),
            None => ("default".to_string(), rest.trim().to_string()),
        };
        validate_address(&address)?;
        Ok(Peer {
            id,
            info: NodeInfo { address, region },
        })
    }
}

pub fn validate_address(address: &str) -> std::result::Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("address {address:?} must be HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("address {address:?} has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("address {address:?} has a bad port"))?;
    Ok(())
}

/// The TOML file's shape; every field optional so flags can fill the rest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<u64>,
    pub region: Option<String>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub peers: Option<Vec<String>>,
    pub join: Option<String>,
    pub prefer_region: Option<String>,
    pub metrics_listen: Option<String>,
    pub timing: Option<String>,
    pub heartbeat_interval_ms: Option<u64>,
    pub election_timeout_ms_min: Option<u64>,
    pub election_timeout_ms_max: Option<u64>,
    pub payload_bytes_max: Option<usize>,
    pub batch_bytes_max: Option<usize>,
    pub batch_records_max: Option<usize>,
    pub snapshot_logs_since_last: Option<u64>,
    pub log_entries_kept_after_snapshot: Option<u64>,
    pub segment_bytes_max: Option<u64>,
}

impl FileConfig {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))
    }
}

/// A node's resolved configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    pub region: String,
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this node.
    pub advertise: String,
    pub data_dir: PathBuf,
    pub peers: BTreeMap<u64, NodeInfo>,
    /// A member to ask for admission (`txlog node --join`).
    pub join: Option<String>,
    /// Leadership is handed back to a healthy voter of this region.
    pub prefer_region: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    pub timing: Timing,
    pub payload_bytes_max: usize,
    pub batch_bytes_max: usize,
    pub batch_records_max: usize,
    pub snapshot_logs_since_last: u64,
    /// Log entries kept behind a snapshot so lagging followers catch up without one.
    pub log_entries_kept_after_snapshot: u64,
    pub segment_bytes_max: u64,
}

impl NodeConfig {
    /// Merge `overrides` (flags/env) over `file`, apply defaults and validate.
    pub fn resolve(file: FileConfig, overrides: FileConfig) -> Result<Self> {
        macro_rules! pick {
            ($field:ident) => {
                overrides.$field.clone().or(file.$field.clone())
            };
        }
        let id =
            pick!(id).ok_or_else(|| Error::Config("node id is required (--id or `id` in the config file)".into()))?;
        if id == 0 {
            return Err(Error::Config("node id 0 is reserved; use 1 or more".into()));
        }
        let region = pick!(region).unwrap_or_else(|| "default".to_string());
        let listen_text = pick!(listen).unwrap_or_else(|| "127.0.0.1:7401".to_string());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|e| Error::Config(format!("listen address {listen_text:?}: {e}")))?;
        let advertise = pick!(advertise).unwrap_or_else(|| listen.to_string());
        validate_address(&advertise).map_err(Error::Config)?;
        let data_dir = pick!(data_dir).unwrap_or_else(|| PathBuf::from(format!("txlog-data/node-{id}")));
        let mut peers = BTreeMap::new();
        for text in pick!(peers).unwrap_or_default() {
            for item in text.split(',').filter(|s| !s.trim().is_empty()) {
                let peer: Peer = item.parse().map_err(Error::Config)?;
                if peers.insert(peer.id, peer.info).is_some() {
                    return Err(Error::Config(format!("peer id {} listed twice", peer.id)));
                }
            }
        }
        if let Some(me) = peers.get(&id) {
            if me.address != advertise {
                return Err(Error::Config(format!(
                    "peers list node {id} at {} but this node advertises {advertise}",
                    me.address
                )));
            }
        }
        let join = pick!(join).filter(|j| !j.trim().is_empty());
        if let Some(join) = &join {
            validate_address(join).map_err(|e| Error::Config(format!("--join: {e}")))?;
            if !peers.is_empty() {
                return Err(Error::Config(
                    "give either peers (to found a cluster) or join (to enter a running one), not both".into(),
                ));
            }
        }
        let prefer_region = pick!(prefer_region).filter(|r| !r.trim().is_empty());
        let metrics_listen = match pick!(metrics_listen) {
            Some(text) if text.is_empty() || text == "off" => None,
            Some(text) => Some(
                text.parse()
                    .map_err(|e| Error::Config(format!("metrics address {text:?}: {e}")))?,
            ),
            None => None,
        };
        let profile = pick!(timing).unwrap_or_else(|| "lan".to_string());
        let mut timing = Timing::profile(&profile)
            .ok_or_else(|| Error::Config(format!("unknown timing profile {profile:?}; use lan or wan")))?;
        if let Some(v) = pick!(heartbeat_interval_ms) {
            timing.heartbeat_interval_ms = v;
        }
        if let Some(v) = pick!(election_timeout_ms_min) {
            timing.election_timeout_ms_min = v;
        }
        if let Some(v) = pick!(election_timeout_ms_max) {
            timing.election_timeout_ms_max = v;
        }
        timing.validate().map_err(|e| Error::Config(e.to_string()))?;
        let payload_bytes_max = pick!(payload_bytes_max).unwrap_or(crate::validate::PAYLOAD_BYTES_MAX_DEFAULT);
        if payload_bytes_max == 0 || payload_bytes_max > 16 * 1024 * 1024 {
            return Err(Error::Config("payload_bytes_max must be in 1..=16777216".into()));
        }
        let batch_bytes_max = pick!(batch_bytes_max).unwrap_or(4 * 1024 * 1024);
        let batch_records_max = pick!(batch_records_max).unwrap_or(8192);
        if batch_records_max == 0 || batch_bytes_max == 0 {
            return Err(Error::Config("batch limits must be positive".into()));
        }
        let snapshot_logs_since_last = pick!(snapshot_logs_since_last).unwrap_or(10_000);
        let log_entries_kept_after_snapshot = pick!(log_entries_kept_after_snapshot).unwrap_or(1000);
        let segment_bytes_max = pick!(segment_bytes_max).unwrap_or(txlog_storage::SEGMENT_BYTES_MAX_DEFAULT);
        if segment_bytes_max < 4096 {
            return Err(Error::Config("segment_bytes_max must be at least 4096".into()));
        }
        Ok(NodeConfig {
            id,
            region,
            listen,
            advertise,
            data_dir,
            peers,
            join,
            prefer_region,
            metrics_listen,
            timing,
            payload_bytes_max,
            batch_bytes_max,
            batch_records_max,
            snapshot_logs_since_last,
            log_entries_kept_after_snapshot,
            segment_bytes_max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags override the file, defaults fill the rest, and bad values are clear errors.
    #[test]
    fn merge_and_validate() {
        let file: FileConfig = toml::from_str(
            r#"
            id = 1
            region = "paris"
            listen = "127.0.0.1:7401"
            peers = ["1=paris@127.0.0.1:7401", "2=frankfurt@127.0.0.1:7402"]
            timing = "wan"
            "#,
        )
        .unwrap();
        let overrides = FileConfig {
            region: Some("lyon".into()),
            heartbeat_interval_ms: Some(50),
            ..Default::default()
        };
        let config = NodeConfig::resolve(file, overrides).unwrap();
        assert_eq!(config.region, "lyon");
        assert_eq!(config.timing.heartbeat_interval_ms, 50);
        assert_eq!(
            config.timing.election_timeout_ms_min,
            Timing::WAN.election_timeout_ms_min
        );
        assert_eq!(config.peers[&2].region, "frankfurt");

        assert!(
            NodeConfig::resolve(FileConfig::default(), FileConfig::default()).is_err(),
            "id is required"
        );
        let bad_peer = FileConfig {
            id: Some(1),
            peers: Some(vec!["x=127.0.0.1:1".into()]),
            ..Default::default()
        };
        assert!(NodeConfig::resolve(bad_peer, FileConfig::default()).is_err());
        let bad_timing = FileConfig {
            id: Some(1),
            timing: Some("moon".into()),
            ..Default::default()
        };
        assert!(NodeConfig::resolve(bad_timing, FileConfig::default()).is_err());
        assert!(
            toml::from_str::<FileConfig>("idd = 1").is_err(),
            "unknown keys are rejected"
        );
    }
}
