//! The proposals a replica saw enter its log lately, so a leader can drop a forwarded
//! proposal that arrives twice (a duplicated or re-sent message) instead of appending it
//! again. Keyed by the entry's proposal context: every application proposal carries a unique
//! one, and a deliberate retry carries a different one (it is recognised on apply). Entries
//! without a context (leader no-ops, conf changes) are never dropped.

use std::collections::{HashSet, VecDeque};

use raft::eraftpb::{Entry, Message};
use rustc_hash::FxBuildHasher;

use super::ProposalContext;

/// How many contexts are remembered; duplicates arrive within moments of the original.
const CAPACITY: usize = 4096;

/// A bounded set of recently appended or accepted proposal contexts (fixed-size keys and a
/// fast non-keyed hash: every appended entry passes through here).
#[derive(Default)]
pub(crate) struct RecentProposals {
    order: VecDeque<ProposalContext>,
    seen: HashSet<ProposalContext, FxBuildHasher>,
}

impl RecentProposals {
    /// The proposal contexts of `entries` (those without one are not proposals).
    pub(crate) fn contexts(entries: &[Entry]) -> Vec<ProposalContext> {
        entries
            .iter()
            .filter_map(ProposalContext::of_entry)
            .collect()
    }

    /// Remembers the contexts of `entries`.
    pub(crate) fn remember(&mut self, entries: &[Entry]) {
        self.remember_contexts(entries.iter().filter_map(ProposalContext::of_entry));
    }

    /// Remembers `contexts`, forgetting the oldest beyond the capacity.
    pub(crate) fn remember_contexts(
        &mut self,
        contexts: impl IntoIterator<Item = ProposalContext>,
    ) {
        for ctx in contexts {
            if self.seen.insert(ctx) {
                self.order.push_back(ctx);
            }
        }
        while self.order.len() > CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    /// Removes from a `MsgPropose` the entries already seen; true if any is left.
    pub(crate) fn drop_seen(&self, msg: &mut Message) -> bool {
        msg.entries
            .retain(|e| ProposalContext::of_entry(e).is_none_or(|ctx| !self.seen.contains(&ctx)));
        !msg.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry with the context of proposal `seq` (0: no context).
    fn entry(seq: u64) -> Entry {
        let context = match seq {
            0 => Vec::new(),
            seq => ProposalContext {
                node: 1,
                seq,
                retry_after: None,
            }
            .encode(),
        };
        Entry {
            context: context.into(),
            ..Default::default()
        }
    }

    fn propose(entries: Vec<Entry>) -> Message {
        Message {
            entries: entries.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_proposal_seen_before_is_dropped_and_the_window_is_bounded() {
        let mut recent = RecentProposals::default();
        recent.remember(&[entry(1), entry(0)]);
        let mut msg = propose(vec![entry(1), entry(2), entry(0)]);
        assert!(recent.drop_seen(&mut msg));
        let left: Vec<Entry> = msg.entries.to_vec();
        assert_eq!(left, vec![entry(2), entry(0)]);

        let many: Vec<Entry> = (100..100 + CAPACITY as u64).map(entry).collect();
        recent.remember(&many);
        let mut again = propose(vec![entry(1)]);
        assert!(
            recent.drop_seen(&mut again),
            "the oldest context was forgotten"
        );
    }
}
