//! Node ids for a run: drawn from the seed, or given with `--node-ids`.
//!
//! Operators pick ids freely (an inventory number, a hash of the host name),
//! but every chaos run once used 1..=N, and that hid a bug: a restarted
//! follower decoded its applied log id wrongly and lost acknowledged records
//! whenever ids were not 1, 2, 3. So each seed now draws large, sparse,
//! unordered ids, and the same seed always draws the same ones.
//!
//! Invariants of a drawn or parsed list: one id per node, none is 0 (txlog
//! reserves it), no two are equal.
//!
//! Only the identity of a node uses its id: its `--id`, the `--peers` list,
//! membership changes, the leader reported by the cluster and the final
//! reads in the history. Everything about placement stays by index `i`:
//! labels and node directories `n{i + 1}`, loopback address
//! `127.0.0.(10 + i)`, network namespaces. On a fresh cluster the lowest id
//! founds the membership, so no code here may assume that any particular id
//! (or index) is the founder.

use std::collections::BTreeSet;

use anyhow::bail;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;

/// Mixed into the seed so the ids do not share a random stream with the
/// schedule (which uses the seed as is): adding ids left every existing
/// seed's schedule unchanged.
const SEED_SALT: u64 = 0x6e6f_6465_5f69_6473; // "node_ids"

/// Tries at drawing one id not drawn yet. The ranges hold at least 10 000
/// ids for at most a handful of nodes, so this is never reached.
const DRAW_ATTEMPTS_MAX: usize = 1_000;

/// Inclusive ranges ids are drawn from.
const RANGES: [(u64, u64); 3] = [
    // Small ids, the kind people type by hand.
    (1, 10_000),
    // Both sides of `u32::MAX`, so an id truncated to 32 bits changes value.
    (u32::MAX as u64 - (1 << 16), u32::MAX as u64 + (1 << 16)),
    // Anywhere up to 2^40: sparse, and far from any node index.
    (1, 1 << 40),
];

/// The ids of `nodes` nodes for `seed`: distinct, non-zero, not in
/// ascending order (for two nodes or more), and the same for the same seed.
///
/// A run draws all its ids from one of [`RANGES`], or (one run in four)
/// each id from a range of its own, which mixes ids like 7 and 2^39.
pub fn draw(seed: u64, nodes: usize) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(seed ^ SEED_SALT);
    let run_range = rng.random_range(0..=RANGES.len());
    let mut ids: Vec<u64> = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let range = if run_range == RANGES.len() {
            RANGES[rng.random_range(0..RANGES.len())]
        } else {
            RANGES[run_range]
        };
        let id = (0..DRAW_ATTEMPTS_MAX)
            .map(|_| rng.random_range(range.0..=range.1))
            .find(|id| !ids.contains(id))
            .expect("ranges hold far more ids than a run has nodes");
        ids.push(id);
    }
    // Ascending ids would put the founder (the lowest id) at n1, the layout
    // every run had before; keep it from being the common case.
    if ids.is_sorted() && ids.len() >= 2 {
        ids.swap(0, 1);
    }
    validate(&ids, nodes).expect("drawn ids are valid");
    ids
}

/// Parse `--node-ids` (e.g. `1,2,3`): exactly `nodes` distinct non-zero ids.
pub fn parse(text: &str, nodes: usize) -> anyhow::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for word in text.split(',').map(str::trim) {
        match word.parse::<u64>() {
            Ok(id) => ids.push(id),
            Err(_) => bail!(
                "--node-ids: {word:?} is not a node id (a whole number from 1 to {})",
                u64::MAX
            ),
        }
    }
    validate(&ids, nodes)?;
    Ok(ids)
}

/// Check the invariants of a run's ids.
pub fn validate(ids: &[u64], nodes: usize) -> anyhow::Result<()> {
    if ids.len() != nodes {
        bail!(
            "--node-ids lists {} ids but --nodes is {nodes}; give one id per node",
            ids.len()
        );
    }
    if ids.contains(&0) {
        bail!("--node-ids: id 0 is reserved by txlog; ids start at 1");
    }
    let mut seen = BTreeSet::new();
    if let Some(id) = ids.iter().find(|&&id| !seen.insert(id)) {
        bail!("--node-ids: id {id} appears twice; ids must be distinct");
    }
    Ok(())
}

/// `n1=ID n2=ID …`: which id each node index runs with, for banners.
pub fn describe(ids: &[u64]) -> String {
    ids.iter()
        .enumerate()
        .map(|(i, id)| format!("n{}={id}", i + 1))
        .collect::<Vec<_>>()
        .join(" ")
}
