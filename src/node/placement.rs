//! Replica placement by rendezvous (highest random weight) hashing, spread over datacenters.

use std::collections::HashSet;

use crate::id::{DataStructureId, NodeId};

/// Score of `node` for `group`: a 64-bit mix of both (splitmix64 finalizer), stable across
/// processes and versions, unlike `std`'s randomly keyed hasher.
fn score(group: DataStructureId, node: NodeId) -> u64 {
    let g = group.as_u128();
    let mut x =
        (g as u64) ^ ((g >> 64) as u64).rotate_left(32) ^ node.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Candidates `(node, datacenter)` in rendezvous order for `group`.
pub(crate) fn rank<'a>(
    group: DataStructureId,
    candidates: impl IntoIterator<Item = (NodeId, &'a str)>,
) -> Vec<(NodeId, &'a str)> {
    let mut ranked: Vec<_> = candidates.into_iter().collect();
    ranked.sort_by_key(|(node, _)| std::cmp::Reverse(score(group, *node)));
    ranked.dedup_by_key(|(node, _)| *node);
    ranked
}

/// How many voters a group gets when `available` nodes can hold one: the replication
/// factor, or with fewer nodes the largest odd count they allow (at least one). An even
/// count below the replication factor tolerates no more failures than the odd count below
/// it, yet one more node must answer every write and election: a group of two voters stops
/// when either fails, so groups never run with two voters of a replication factor of three.
pub(crate) fn voter_count(available: usize, replication_factor: usize) -> usize {
    if available >= replication_factor {
        replication_factor
    } else if available % 2 == 0 {
        available.saturating_sub(1).max(1)
    } else {
        available
    }
}

/// Picks `count` nodes for `group`: in rendezvous order, first one per datacenter, then the
/// rest, so replicas spread over datacenters when there are several.
pub(crate) fn place<'a>(
    group: DataStructureId,
    candidates: impl IntoIterator<Item = (NodeId, &'a str)>,
    count: usize,
) -> Vec<NodeId> {
    let ranked = rank(group, candidates);
    let mut seen_dc = HashSet::new();
    let mut chosen: Vec<NodeId> = Vec::with_capacity(count);
    for (node, dc) in &ranked {
        if chosen.len() < count && seen_dc.insert(*dc) {
            chosen.push(*node);
        }
    }
    for (node, _) in &ranked {
        if chosen.len() < count && !chosen.contains(node) {
            chosen.push(*node);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_deterministic_distinct_and_spread() {
        let g = DataStructureId::new();
        let nodes = [(1, "a"), (2, "a"), (3, "a"), (4, "b")];
        let one = place(g, nodes.iter().copied(), 3);
        let two = place(g, nodes.iter().rev().copied(), 3);
        assert_eq!(one, two);
        assert_eq!(one.len(), 3);
        assert!(one.contains(&4), "the only node of datacenter b is chosen");
        let unique: HashSet<_> = one.iter().collect();
        assert_eq!(unique.len(), 3);
        assert_eq!(place(g, nodes.iter().copied(), 9).len(), 4);
    }

    #[test]
    fn voter_counts_below_the_replication_factor_are_odd() {
        let counts: Vec<usize> = (0..=6).map(|n| voter_count(n, 3)).collect();
        assert_eq!(counts, [1, 1, 1, 3, 3, 3, 3]);
        let counts: Vec<usize> = (0..=6).map(|n| voter_count(n, 5)).collect();
        assert_eq!(counts, [1, 1, 1, 3, 3, 5, 5]);
        // An even replication factor is the user's choice and is kept.
        assert_eq!(voter_count(4, 4), 4);
        assert_eq!(voter_count(7, 1), 1);
    }
}
