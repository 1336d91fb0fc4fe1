//! Where each proposal appears in the recent log, so a copy that comes second (a retry, or
//! a proposal message delivered twice) is recognised on every replica alike.
//!
//! The index covers the ids kept with the latest snapshot (the application entries of the
//! [`DEDUPE_WINDOW`] indexes before it) and every entry after it. A copy is a duplicate if
//! an earlier copy lies within [`DEDUPE_WINDOW`] indexes before it: every replica covers
//! that range, whatever its own snapshot, so every replica decides the same.
//!
//! A reopened replica does not read its stored log into the index at once: reading every
//! group's whole log was most of a node's reopening time, and most groups need no answer
//! for a while (a reopened node is serving once its groups are led and applied). The
//! stored entries not read yet are a range, [`ProposalCopies::unread_between`] says which
//! part of it a question needs, and the owner of the log reads that part in
//! ([`ProposalCopies::add_read`]) before asking. The index then holds what it would have
//! held had it read everything at the start, for every question asked: the answers, and
//! with them which copy every replica applies, do not depend on when the log was read.

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
    /// Stored entries `(low, high)` (inclusive) not read into `at` yet: those of the log
    /// found on disk at opening, less what was read in, overwritten or compacted since.
    /// Everything above `high` that the log holds is in `at`.
    unread: Option<(u64, u64)>,
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

    /// An index of `ids` (kept with a snapshot) whose stored entries `low..=high` are to be
    /// read in when a question needs them (see the module docs).
    pub(crate) fn unread(ids: &ProposalIds, low: u64, high: u64) -> Self {
        let mut copies = Self::rebuild(ids, &[]);
        copies.unread = (low <= high).then_some((low, high));
        copies
    }

    /// The stored entries `(low, high)` to read in (with [`ProposalCopies::add_read`])
    /// before asking whether a copy lies strictly between `after` and `before`: the unread
    /// ones from the first that could lie there up to the last unread one, so that what
    /// stays unread is always a prefix of the log. `None` if the index can answer as is.
    pub(crate) fn unread_between(&self, after: u64, before: u64) -> Option<(u64, u64)> {
        let (low, high) = self.unread?;
        (high > after && low < before).then(|| (low.max(after.saturating_add(1)), high))
    }

    /// Records `entries`, read from the log to fill `low..=high`: the top of the unread
    /// range (as [`ProposalCopies::unread_between`] asks) or its bottom (entries read in
    /// log order, as a subscription's replay reads them). Fails, changing nothing, unless
    /// they are exactly the entries `low..=high` and that range is the top or the bottom of
    /// the unread one: an index with a hole would let a second copy through, so what is
    /// unread stays one range.
    pub(crate) fn add_read(
        &mut self,
        low: u64,
        high: u64,
        entries: &[Entry],
    ) -> Result<(), String> {
        let Some((unread_low, unread_high)) = self.unread else {
            return Err(format!("nothing is unread, yet {low}..={high} was read in"));
        };
        let top = low >= unread_low && low <= high && high == unread_high;
        let bottom = low == unread_low && high <= unread_high;
        if !top && !bottom {
            return Err(format!(
                "{low}..={high} is neither the top nor the bottom of the unread \
                 {unread_low}..={unread_high}"
            ));
        }
        let contiguous = entries
            .iter()
            .zip(low..)
            .all(|(entry, index)| entry.index == index);
        if !contiguous || entries.len() as u64 != high - low + 1 {
            return Err(format!(
                "reading {low}..={high} gave {} entries ({:?}..={:?})",
                entries.len(),
                entries.first().map(|e| e.index),
                entries.last().map(|e| e.index)
            ));
        }
        self.add_entries(entries);
        self.unread = if top {
            (unread_low < low).then_some((unread_low, low - 1))
        } else {
            (high < unread_high).then_some((high + 1, unread_high))
        };
        Ok(())
    }

    /// The stored entries `(low, high)` not read in yet, if any.
    pub(crate) fn unread_range(&self) -> Option<(u64, u64)> {
        self.unread
    }

    /// The log was compacted through `index` under a snapshot keeping `ids` (the
    /// application entries of the [`DEDUPE_WINDOW`] indexes before it): the unread entries
    /// it covers are gone from the log, and `ids` tells what of them the index needs.
    pub(crate) fn compact(&mut self, index: u64, ids: &ProposalIds) {
        if let Some((low, high)) = self.unread {
            let covered = high.min(index);
            for (at, node, seq) in ids {
                if (low..=covered).contains(at) {
                    self.add(*at, *node, *seq);
                }
            }
            self.unread = (index < high).then(|| (low.max(index + 1), high));
        }
        self.forget_through(index.saturating_sub(DEDUPE_WINDOW));
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
        if let Some((low, high)) = self.unread {
            self.unread = (low < from).then(|| (low, high.min(from - 1)));
        }
    }

    /// Forgets the copies at `floor` and before (outside every later entry's window).
    fn forget_through(&mut self, floor: u64) {
        self.retain(|index| index > floor);
    }

    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.at.retain(|_, copies| copies.retain(&keep));
    }

    /// Whether `(node, seq)` has a copy strictly between `after` and `before`. The entries
    /// [`ProposalCopies::unread_between`] names must have been read in first.
    pub(crate) fn has_copy_between(&self, node: NodeId, seq: u64, after: u64, before: u64) -> bool {
        debug_assert!(
            self.unread_between(after, before).is_none(),
            "asked about ({after}, {before}) with {:?} unread",
            self.unread
        );
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
