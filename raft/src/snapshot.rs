//! What openraft calls a snapshot's data: a snapshot on local disk, named
//! after the log id it covers — a linked snapshot (a directory sharing the
//! record file's segments) when this node built it, a verified snapshot
//! file when it was received or merged; `txlog_storage::snapshot_file`
//! reads either. Shared by the state machine (which
//! builds and installs snapshots) and resync (which sends and receives them),
//! so neither has to import the other.

use std::path::PathBuf;

use txlog_storage::SnapshotDir;

use crate::type_config::SnapshotMeta;
use crate::type_config::TypeConfig;

/// A snapshot's data: a snapshot (file or linked directory) on local disk.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
    /// Set when the file was assembled by a delta resync from this node's
    /// own first `delta_base` records plus the leader's records after them:
    /// installing then only has to add the records after `delta_base`.
    pub delta_base: Option<u64>,
}

pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// The file name of the snapshot with `meta` (see [`SnapshotDir::file_name`]);
/// also how leader and follower name a snapshot to each other in a resync.
pub(crate) fn snapshot_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(id) => SnapshotDir::file_name(id.index, id.leader_id.term),
        None => SnapshotDir::file_name(0, 0),
    }
}
