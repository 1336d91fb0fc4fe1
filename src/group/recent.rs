//! The proposals a replica saw enter its log lately, so a leader can drop a forwarded
//! proposal that arrives twice (a duplicated or re-sent message) instead of appending it
//! again. Keyed by the entry's context bytes: every application proposal carries a unique
//! one, and a deliberate retry carries a different one (it is recognised on apply).

use std::collections::{HashSet, VecDeque};

use raft::eraftpb::{Entry, Message};

/// How many contexts are remembered; duplicates arrive within moments of the original.
const CAPACITY: usize = 4096;

/// A bounded set of recently appended or accepted proposal contexts.
#[derive(Default)]
pub(crate) struct RecentProposals {
    order: VecDeque<Vec<u8>>,
    seen: HashSet<Vec<u8>>,
}

impl RecentProposals {
    /// Remembers the contexts of `entries` (those without one are not proposals).
    pub(crate) fn remember(&mut self, entries: &[Entry]) {
        for entry in entries.iter().filter(|e| !e.context.is_empty()) {
            if self.seen.insert(entry.context.to_vec()) {
                self.order.push_back(entry.context.to_vec());
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
            .retain(|e| e.context.is_empty() || !self.seen.contains(e.context.as_ref()));
        !msg.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(context: &[u8]) -> Entry {
        Entry {
            context: context.to_vec().into(),
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
        recent.remember(&[entry(b"a"), entry(b"")]);
        let mut msg = propose(vec![entry(b"a"), entry(b"b"), entry(b"")]);
        assert!(recent.drop_seen(&mut msg));
        let left: Vec<Vec<u8>> = msg.entries.iter().map(|e| e.context.to_vec()).collect();
        assert_eq!(left, vec![b"b".to_vec(), Vec::new()]);

        let many: Vec<Entry> = (0..CAPACITY as u32)
            .map(|i| entry(&i.to_be_bytes()))
            .collect();
        recent.remember(&many);
        let mut again = propose(vec![entry(b"a")]);
        assert!(
            recent.drop_seen(&mut again),
            "the oldest context was forgotten"
        );
    }
}
