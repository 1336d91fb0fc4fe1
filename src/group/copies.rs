//! Where each proposal appears in the recent log, so a copy that comes second (a retry, or
//! a proposal message delivered twice) is recognised on every replica alike.
//!
//! The index covers the ids kept with the latest snapshot (the application entries of the
//! [`DEDUPE_WINDOW`] indexes before it) and every entry after it. A copy is a duplicate if
//! an earlier copy lies within [`DEDUPE_WINDOW`] indexes before it: every replica covers
//! that range, whatever its own snapshot, so every replica decides the same.

use std::collections::HashMap;

use raft::eraftpb::Entry;
use rustc_hash::FxBuildHasher;

use super::ProposalContext;
use crate::id::NodeId;
use crate::storage::ProposalIds;

/// How far back (in log indexes) duplicates are recognised; the same on every node.
pub(crate) const DEDUPE_WINDOW: u64 = 10_000;

/// Indexes of the copies of each proposal `(node, seq)` in the recent log.
///
/// Every application entry passes through here twice per replica (added on append, looked up
/// on apply), so the map uses a fast non-keyed hash (the keys come from cluster members, not
/// from outside) and keeps the usual single copy inline, without an allocation.
#[derive(Default)]
pub(crate) struct ProposalCopies {
    at: HashMap<(NodeId, u64), Copies, FxBuildHasher>,
}

/// The indexes of one proposal's copies: nearly always one.
struct Copies {
    first: u64,
    more: Vec<u64>,
}

impl Copies {
    fn indexes(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.first).chain(self.more.iter().copied())
    }

    /// Keeps the indexes `keep` accepts; false if none is left.
    fn retain(&mut self, keep: impl Fn(u64) -> bool) -> bool {
        self.more.retain(|i| keep(*i));
        if !keep(self.first) {
            match self.more.pop() {
                Some(i) => self.first = i,
                None => return false,
            }
        }
        true
    }
}

impl ProposalCopies {
    /// An index of `ids` (kept with a snapshot) and of the application entries `entries`.
    pub(crate) fn rebuild(ids: &ProposalIds, entries: &[Entry]) -> Self {
        let mut copies = ProposalCopies::default();
        for (index, node, seq) in ids {
            copies.add(*index, *node, *seq);
        }
        copies.add_entries(entries);
        copies
    }

    fn add(&mut self, index: u64, node: NodeId, seq: u64) {
        match self.at.entry((node, seq)) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Copies {
                    first: index,
                    more: Vec::new(),
                });
            }
            std::collections::hash_map::Entry::Occupied(mut slot) => {
                let copies = slot.get_mut();
                if !copies.indexes().any(|i| i == index) {
                    copies.more.push(index);
                }
            }
        }
    }

    /// Records the application entries among `entries`.
    pub(crate) fn add_entries(&mut self, entries: &[Entry]) {
        for entry in entries {
            if let Some(ctx) = ProposalContext::of_entry(entry) {
                self.add(entry.index, ctx.node, ctx.seq);
            }
        }
    }

    /// Forgets the copies at `from` and after (the log was overwritten there).
    pub(crate) fn truncate_from(&mut self, from: u64) {
        self.retain(|index| index < from);
    }

    /// Forgets the copies at `floor` and before (outside every later entry's window).
    pub(crate) fn forget_through(&mut self, floor: u64) {
        self.retain(|index| index > floor);
    }

    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.at.retain(|_, copies| copies.retain(&keep));
    }

    /// Whether `(node, seq)` has a copy strictly between `after` and `before`.
    pub(crate) fn has_copy_between(&self, node: NodeId, seq: u64, after: u64, before: u64) -> bool {
        self.at
            .get(&(node, seq))
            .is_some_and(|copies| copies.indexes().any(|i| i > after && i < before))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, node: NodeId, seq: u64) -> Entry {
        let ctx = ProposalContext {
            node,
            seq,
            retry_after: None,
        };
        Entry {
            index,
            context: ctx.encode().into(),
            ..Default::default()
        }
    }

    #[test]
    fn copies_are_found_within_bounds_and_forgotten_on_truncation_and_compaction() {
        let mut copies = ProposalCopies::rebuild(&vec![(7, 1, 70)], &[entry(9, 1, 90)]);
        copies.add_entries(&[entry(10, 1, 70), entry(11, 2, 90)]);
        assert!(copies.has_copy_between(1, 70, 0, 10), "the snapshot's id");
        assert!(
            !copies.has_copy_between(1, 70, 7, 10),
            "after excludes its bound"
        );
        assert!(!copies.has_copy_between(2, 90, 0, 11), "another node's seq");
        copies.truncate_from(10);
        assert!(!copies.has_copy_between(1, 70, 7, 20));
        copies.forget_through(7);
        assert!(!copies.has_copy_between(1, 70, 0, 20));
        assert!(copies.has_copy_between(1, 90, 0, 20));
    }

    #[test]
    fn several_copies_of_one_proposal_are_kept_and_forgotten_one_by_one() {
        let mut copies = ProposalCopies::default();
        copies.add_entries(&[entry(10, 3, 1), entry(20, 3, 1), entry(30, 3, 1)]);
        copies.add_entries(&[entry(20, 3, 1)]);
        assert!(copies.has_copy_between(3, 1, 15, 25), "the second copy");
        copies.forget_through(15);
        assert!(
            !copies.has_copy_between(3, 1, 0, 20),
            "the first copy is gone"
        );
        assert!(copies.has_copy_between(3, 1, 0, 21));
        assert!(copies.has_copy_between(3, 1, 25, 31), "the third copy");
        copies.truncate_from(30);
        assert!(!copies.has_copy_between(3, 1, 25, 100));
        assert!(copies.has_copy_between(3, 1, 0, 100));
        copies.truncate_from(20);
        assert!(!copies.has_copy_between(3, 1, 0, 100));
        assert!(copies.at.is_empty(), "nothing left of the proposal");
    }
}
