//! Resync: catching a lagging follower up once the leader has purged the
//! log entries it needs, sending only the records it is missing when it can.
//!
//! # Flow
//!
//! 1. **Probe** (`probe.rs`). openraft decides a follower needs a snapshot
//!    and calls `full_snapshot` on the network. The leader first sends a
//!    [`ProbeRequest`] naming the snapshot it would send. The follower
//!    answers with its last applied sequence `S`, its hash chain at `S`,
//!    whether it accepts a delta, and any delta for that snapshot it has
//!    partly received.
//! 2. **Plan** ([`Plan::decide`]). If the leader's own chain at `S` equals
//!    the follower's, their first `S` records are identical (the chain
//!    hashes every record into the next value), and a delta of records
//!    `S+1..` of the snapshot suffices; resuming a partly received one starts
//!    after its last staged record. A follower already past the snapshot
//!    with the leader's chain at its seq holds all of it (the answer to an
//!    earlier transfer was lost after it installed): nothing is sent and the
//!    send answers as an install would. Anything else — the follower is
//!    empty, ahead with another chain, diverged, or asked for a full
//!    snapshot — plans the full snapshot.
//! 3. **Send** (`send.rs`). A delta is a `DeltaHeader` followed by CRC'd
//!    chunks of whole record frames read from the snapshot file; a full
//!    snapshot is the file itself in CRC'd chunks. Bytes sent are counted by
//!    path in [`ResyncStats`]. A follower that refuses a delta (`DATA_LOSS`:
//!    its records do not match its own chain) gets the full snapshot at once.
//! 4. **Receive** (`receive.rs`). The follower stages a full snapshot as an
//!    incoming file and verifies it end to end; it stages a delta in a delta
//!    file (a broken stream leaves it there, durably, to resume from).
//! 5. **Merge**. The follower writes a new snapshot file from its own
//!    records `1..=S` — recomputing the chain as it goes, so a record that no
//!    longer matches its chain is caught — then the delta, and hands it to
//!    openraft's `install_full_snapshot`, marked with the delta base so the
//!    state machine only adds records after `S`.
//!
//! # Invariants
//!
//! * What openraft installs is always a whole snapshot file that passed its
//!   checks; a delta never touches the record store before it is merged.
//! * A delta is built only on a prefix whose chain matches the leader's at
//!   probe time and again, record by record, at merge time.
//! * A follower that found its records inconsistent asks for full snapshots
//!   until one has been installed ([`ResyncFollower`]).
//! * Resync state is in memory: a restarted follower discards its staged
//!   delta (the snapshot directory drops leftovers on open) and the next
//!   attempt starts from its applied sequence.
//! * Every chunk and message carries a CRC; a received snapshot is bounded
//!   by `SNAPSHOT_BYTES_MAX`; every stream is bounded on the sending side.
//!
//! A node can also ask for a full copy itself (`fetch.rs`): one whose own
//! record store failed its start-up check, before its Raft starts.
//!
//! The file formats (snapshot file, delta file, snapshot directory) live in
//! `txlog-storage`; this module moves them between nodes.

mod fetch;
mod follower;
mod messages;
mod probe;
mod receive;
mod send;

pub use fetch::fetch_full;
pub use fetch::FetchRequest;
pub use fetch::FetchServer;
pub use follower::ResyncFollower;
pub use messages::ProbeRequest;
pub use messages::ProbeResponse;
pub use messages::SNAPSHOT_CHUNK_BYTES;
pub use probe::Plan;
pub(crate) use receive::receive_delta;
pub(crate) use receive::receive_full;
pub use send::ResyncCounts;
pub use send::ResyncStats;
pub(crate) use send::Sender;
