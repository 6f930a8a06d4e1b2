//! Node ids of a run: the seed reproduces them; they are distinct, non-zero,
//! sparse and not in ascending order; `--node-ids` is checked.

use std::collections::BTreeSet;

use txlog_chaos::node_ids::draw;
use txlog_chaos::node_ids::parse;

#[test]
fn same_seed_same_ids_distinct_and_non_zero() {
    // Draw twice for many seeds and every cluster size; compare and check each list.
    for seed in 0..500 {
        for nodes in 1..=5 {
            let ids = draw(seed, nodes);
            assert_eq!(ids, draw(seed, nodes), "seed {seed}, {nodes} nodes");
            assert_eq!(ids.len(), nodes);
            assert!(!ids.contains(&0), "seed {seed}: {ids:?}");
            let distinct: BTreeSet<u64> = ids.iter().copied().collect();
            assert_eq!(distinct.len(), nodes, "seed {seed}: {ids:?}");
            if nodes >= 2 {
                assert!(!ids.is_sorted(), "seed {seed}: {ids:?} ascending");
            }
        }
    }
}

#[test]
fn different_seeds_different_ids() {
    // 500 seeds give 500 different id lists, spread over small, 32-bit-boundary and 2^40 ranges.
    let lists: Vec<Vec<u64>> = (0..500).map(|seed| draw(seed, 3)).collect();
    let distinct: BTreeSet<&Vec<u64>> = lists.iter().collect();
    assert_eq!(distinct.len(), lists.len(), "two seeds drew the same ids");
    let all_small = lists.iter().filter(|ids| ids.iter().all(|&id| id <= 10_000)).count();
    let above_u32 = lists
        .iter()
        .filter(|ids| ids.iter().any(|&id| id > u32::MAX as u64))
        .count();
    let mixed = lists
        .iter()
        .filter(|ids| ids.iter().any(|&id| id <= 10_000) && ids.iter().any(|&id| id > 1 << 32))
        .count();
    assert!(all_small >= 50, "{all_small} of 500 runs with small ids only");
    assert!(above_u32 >= 150, "{above_u32} of 500 runs with an id above u32::MAX");
    assert!(mixed >= 10, "{mixed} of 500 runs mixing small and large ids");
    assert!(lists.iter().flatten().all(|&id| id <= 1 << 40));
    // The old layout (1, 2, 3) is what these ids exist to avoid.
    assert!(!lists.contains(&vec![1, 2, 3]));
}

#[test]
fn node_ids_flag_is_checked() {
    // Good lists parse (spaces allowed); a wrong count, 0, a repeat or a non-number is refused with a reason.
    assert_eq!(parse("1,2,3", 3).unwrap(), vec![1, 2, 3]);
    assert_eq!(parse(" 1099511627776, 7 ,42", 3).unwrap(), vec![1 << 40, 7, 42]);
    assert_eq!(parse("18446744073709551615", 1).unwrap(), vec![u64::MAX]);
    let refused: [(&str, usize, &str); 8] = [
        ("1,2", 3, "lists 2 ids but --nodes is 3"),
        ("1,2,3,4", 3, "lists 4 ids but --nodes is 3"),
        ("0,1,2", 3, "0 is reserved"),
        ("5,6,5", 3, "5 appears twice"),
        ("1,x,3", 3, "\"x\" is not a node id"),
        ("1,-2,3", 3, "\"-2\" is not a node id"),
        ("1,,3", 3, "\"\" is not a node id"),
        ("18446744073709551616", 1, "is not a node id"),
    ];
    for (text, nodes, expected) in refused {
        let error = parse(text, nodes).expect_err(text).to_string();
        assert!(error.contains(expected), "{text:?}: {error}");
    }
}
