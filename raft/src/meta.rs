//! What the state machine stores about itself, each with one type for write
//! and read.
//!
//! * [`APPLIED`] — the last applied log id, `Option<LogId>` (`None` before
//!   the first apply). Written in the same sled batch as the index of the records it
//!   covers, so the store is always at a consistent applied prefix.
//! * [`MEMBERSHIP`] — the last applied membership.
//! * [`encode_snapshot_meta`] / [`decode_snapshot_meta`] — the
//!   `SnapshotMeta` block inside snapshot files (the builder, the delta
//!   merge and both readers use this pair). Its version is the snapshot
//!   file's own format version, so the block is plain postcard; files
//!   written before this pair existed read unchanged.
//!
//! Every sled value is `version u8 | postcard(T)`, and every value here is
//! decoded strictly (see [`MetaKey`]): a value written as one type cannot be
//! read as another.

use txlog_storage::MetaKey;

use crate::type_config::LogId;
use crate::type_config::SnapshotMeta;
use crate::type_config::StoredMembership;

/// The last applied log id.
pub(crate) const APPLIED: MetaKey<Option<LogId>> = MetaKey::new("applied", 1);

/// The membership as of the last applied entry.
pub(crate) const MEMBERSHIP: MetaKey<StoredMembership> = MetaKey::new("membership", 1);

/// The metadata block of a snapshot file.
pub(crate) fn encode_snapshot_meta(meta: &SnapshotMeta) -> Vec<u8> {
    postcard::to_allocvec(meta).expect("encoding an in-memory value cannot fail")
}

/// The inverse of [`encode_snapshot_meta`]; trailing bytes are an error.
pub(crate) fn decode_snapshot_meta(bytes: &[u8]) -> std::io::Result<SnapshotMeta> {
    let invalid =
        |detail: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("snapshot meta: {detail}"));
    txlog_storage::decode_whole(bytes).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::collections::BTreeSet;

    use openraft::Membership;

    use super::*;
    use crate::type_config::NodeInfo;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(openraft::vote::leader_id_adv::LeaderId { term, node_id: node }, index)
    }

    fn membership(ids: &[u64], at: LogId) -> StoredMembership {
        let nodes: BTreeMap<u64, NodeInfo> = ids
            .iter()
            .map(|&id| {
                (
                    id,
                    NodeInfo {
                        address: format!("127.0.0.1:{}", 7400 + id % 1000),
                        region: "paris".into(),
                    },
                )
            })
            .collect();
        let voters: BTreeSet<u64> = ids.iter().copied().collect();
        StoredMembership::new(
            Some(at),
            Membership::new(vec![voters], nodes).expect("valid membership"),
        )
    }

    /// The applied log id round-trips for small and very large node ids and indexes (the
    /// bug read a large leader id back as the applied index).
    #[test]
    fn applied_round_trips() {
        for value in [
            None,
            Some(log_id(1, 1, 1)),
            Some(log_id(1, 2000, 121)),
            Some(log_id(7, 300_000, 6_624)),
            Some(log_id(u64::MAX, u64::MAX, u64::MAX)),
        ] {
            let bytes = APPLIED.encode(&value);
            assert_eq!(APPLIED.decode(&bytes).unwrap(), value);
        }
    }

    /// Membership with sparse, large node ids round-trips.
    #[test]
    fn membership_round_trips() {
        for ids in [&[1u64, 2, 3][..], &[1000, 2000, 3000], &[17, 1 << 40, u64::MAX - 1]] {
            let value = membership(ids, log_id(3, ids[0], 42));
            assert_eq!(MEMBERSHIP.decode(&MEMBERSHIP.encode(&value)).unwrap(), value);
        }
        let empty = StoredMembership::default();
        assert_eq!(MEMBERSHIP.decode(&MEMBERSHIP.encode(&empty)).unwrap(), empty);
    }

    /// Snapshot metadata round-trips, with and without a last log id.
    #[test]
    fn snapshot_meta_round_trips() {
        let at = log_id(9, 1000, 10_001);
        for value in [
            SnapshotMeta::default(),
            SnapshotMeta {
                last_log_id: Some(at),
                last_membership: membership(&[1000, 2000, 3000], at),
            },
        ] {
            assert_eq!(decode_snapshot_meta(&encode_snapshot_meta(&value)).unwrap(), value);
        }
        let mut long = encode_snapshot_meta(&SnapshotMeta::default());
        long.push(0);
        assert!(decode_snapshot_meta(&long).is_err());
    }

    /// The three keys refuse each other's values: one type per stored thing.
    #[test]
    fn keys_refuse_foreign_values() {
        let applied = APPLIED.encode(&Some(log_id(1, 2000, 121)));
        assert!(MEMBERSHIP.decode(&applied).is_err());
        let at = log_id(1, 2000, 121);
        let membership = MEMBERSHIP.encode(&membership(&[1000, 2000, 3000], at));
        assert!(APPLIED.decode(&membership).is_err());
    }
}
