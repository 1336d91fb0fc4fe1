//! The context raft carries with each application entry, and the duplicate check built on
//! it: which copy of a proposal in the log is the one every replica applies.

use crate::group::{GroupLog, RaftGroup, DEDUPE_WINDOW};
use crate::id::NodeId;

/// The context raft carries with an entry: the proposing node and its sequence number, so
/// the proposer recognizes its entry when it is applied.
///
/// A proposal forwarded to a leader that then fails is lost without a trace, so when a
/// group's leader changes its proposer proposes it again as a *retry*, which also carries
/// `after`: the proposer's applied index at that moment. Any earlier copy of the same
/// proposal must have an index above `after` (otherwise the proposer would have applied
/// it and not retried), so whoever applies the retry finds out whether it is a duplicate
/// by scanning the log between `after` and the retry: a deterministic function of the log,
/// the same on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ProposalContext {
    pub node: NodeId,
    pub seq: u64,
    /// For a retry, the proposer's applied index when it retried.
    pub retry_after: Option<u64>,
}

impl ProposalContext {
    /// Encodes the context: 16 bytes, or 24 for a retry.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(24);
        ctx.extend_from_slice(&self.node.to_be_bytes());
        ctx.extend_from_slice(&self.seq.to_be_bytes());
        if let Some(after) = self.retry_after {
            ctx.extend_from_slice(&after.to_be_bytes());
        }
        ctx
    }

    /// The proposal context of `entry` if it is an application entry; `None` for leader
    /// no-ops, conf changes and anything else without one.
    pub(crate) fn of_entry(entry: &raft::eraftpb::Entry) -> Option<Self> {
        if entry.get_entry_type() != raft::eraftpb::EntryType::EntryNormal {
            return None;
        }
        Self::decode(&entry.context)
    }

    /// Parses an entry's context; `None` for entries that are not proposals.
    pub(crate) fn decode(ctx: &[u8]) -> Option<Self> {
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(ctx.get(i..i + 8)?.try_into().ok()?))
        };
        let retry_after = match ctx.len() {
            16 => None,
            24 => Some(word(16)?),
            _ => return None,
        };
        Some(ProposalContext {
            node: word(0)?,
            seq: word(8)?,
            retry_after,
        })
    }
}

impl GroupLog {
    /// The proposal context of an application entry, unless an earlier copy of the same
    /// proposal (a retry's original, or a proposal message delivered twice) lies within
    /// [`DEDUPE_WINDOW`] indexes before it, or after the retry's starting point. Every replica
    /// decides the same (see `ProposalCopies`). Leader no-ops and conf changes carry no
    /// context. Reads the stored log if the index has not read the part it needs yet (a
    /// reopened replica), and fails if that cannot be read: no answer is better than a
    /// wrong one, which would apply a proposal twice or not at all.
    pub(crate) fn first_copy(
        &mut self,
        entry: &raft::eraftpb::Entry,
    ) -> crate::Result<Option<ProposalContext>> {
        let Some(ctx) = ProposalContext::of_entry(entry) else {
            return Ok(None);
        };
        let floor = entry.index.saturating_sub(DEDUPE_WINDOW);
        let after = ctx.retry_after.map_or(floor, |a| a.max(floor));
        let duplicate = self.copies_between(after, entry.index)?.has_copy_between(
            ctx.node,
            ctx.seq,
            after,
            entry.index,
        );
        Ok((!duplicate).then_some(ctx))
    }
}

impl RaftGroup {
    /// Index of the last application entry applied (not a second copy, a no-op or a
    /// configuration change): a snapshot whose state includes it covers all that was
    /// applied. Looked up in the log the first time if none was applied since opening;
    /// fails if the log cannot be read.
    pub(crate) fn last_entry_applied(&mut self) -> crate::Result<u64> {
        if let Some(index) = self.last_entry_applied {
            return Ok(index);
        }
        let applied = self.applied;
        let index = last_application_entry(self.raw.mut_store(), applied)?;
        self.last_entry_applied = Some(index);
        Ok(index)
    }

    /// The application entry at `index` was applied.
    pub(crate) fn note_entry_applied(&mut self, index: u64) {
        self.last_entry_applied = Some(index);
    }
}

/// The index of the last delivered application entry (not a second copy) at or before
/// `applied` in `log`, or the snapshot's index if there is none after it. A snapshot whose
/// state includes that entry covers everything up to `applied`; overestimating it would
/// refuse every snapshot of an application whose last entry came before a restart's
/// trailing no-ops.
fn last_application_entry(log: &mut GroupLog, applied: u64) -> crate::Result<u64> {
    // Read backwards a chunk at a time: the last applied entry is nearly always an
    // application entry, and logs can be long.
    const CHUNK: u64 = 64;
    let from = log.first_index();
    let mut high = applied + 1;
    while high > from {
        let low = high.saturating_sub(CHUNK).max(from);
        let entries = log.read_entries(low, high, None).map_err(|e| {
            crate::Error::Corrupted(format!("its log {low}..{high} cannot be read: {e}"))
        })?;
        for entry in entries.iter().rev() {
            if log.first_copy(entry)?.is_some() {
                return Ok(entry.index);
            }
        }
        if entries.len() as u64 != high - low {
            break;
        }
        high = low;
    }
    Ok(if applied < from {
        applied
    } else {
        log.snapshot_index()
    })
}

/// Logs and entries for tests of the layers that read application entries.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use raft::eraftpb::Entry;

    use super::ProposalContext;
    use crate::group::GroupLog;
    use crate::id::DataStructureId;
    use crate::storage::SledStore;

    pub(crate) fn entry(index: u64, ctx: Option<ProposalContext>) -> Entry {
        Entry {
            index,
            term: 6,
            context: ctx.map(|c| c.encode()).unwrap_or_default().into(),
            ..Default::default()
        }
    }

    pub(crate) fn ctx(seq: u64, retry_after: Option<u64>) -> Option<ProposalContext> {
        Some(ProposalContext {
            node: 1,
            seq,
            retry_after,
        })
    }

    /// The log of a one-voter group on a fresh sled store, just bootstrapped.
    pub(crate) fn bootstrapped_log() -> (tempfile::TempDir, GroupLog) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SledStore::open(dir.path(), slog::Logger::root(slog::Discard, slog::o!())).unwrap(),
        );
        let mut log = GroupLog::empty(DataStructureId::new(), store);
        log.apply_snapshot(&GroupLog::bootstrap_snapshot(&[1]));
        (dir, log)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{bootstrapped_log, ctx, entry};
    use super::*;

    #[test]
    fn context_round_trips_and_rejects_other_lengths() {
        let first = ProposalContext {
            node: 7,
            seq: 9,
            retry_after: None,
        };
        let retry = ProposalContext {
            retry_after: Some(40),
            ..first
        };
        assert_eq!(ProposalContext::decode(&first.encode()), Some(first));
        assert_eq!(ProposalContext::decode(&retry.encode()), Some(retry));
        assert_eq!(ProposalContext::decode(&[]), None);
        assert_eq!(ProposalContext::decode(&[0; 17]), None);
    }

    #[test]
    fn a_retry_is_skipped_only_when_its_original_is_in_the_log() {
        let (_dir, mut log) = bootstrapped_log();
        let entries = vec![
            entry(6, None),
            entry(7, ctx(5, None)),
            entry(8, ctx(6, None)),
            entry(9, ctx(5, Some(6))),
            entry(10, ctx(7, Some(6))),
            entry(11, ctx(7, Some(9))),
        ];
        log.append(&entries);
        let copies: Vec<_> = entries.iter().map(|e| seq_of(&mut log, e)).collect();
        assert_eq!(
            copies,
            vec![None, Some(5), Some(6), None, Some(7), None],
            "no-ops carry nothing; a retry whose original (or earlier retry) is in the log is a duplicate"
        );
        // Compact through index 8: the originals at 7 and 8 are now only in the snapshot's
        // proposal ids, and still make their retries duplicates.
        let meta = raft::eraftpb::SnapshotMetadata {
            index: 8,
            term: 6,
            ..Default::default()
        };
        log.compact(meta, vec![(7, 1, 5), (8, 1, 6)]);
        assert_eq!(seq_of(&mut log, &entry(9, ctx(5, Some(6)))), None);
        assert_eq!(seq_of(&mut log, &entry(12, ctx(6, Some(6)))), None);
        assert_eq!(seq_of(&mut log, &entry(12, ctx(8, Some(6)))), Some(8));
    }

    /// The proposal seq of `entry` if it is a first copy.
    fn seq_of(log: &mut GroupLog, entry: &raft::eraftpb::Entry) -> Option<u64> {
        let first = log.first_copy(entry).expect("the log is readable");
        first.map(|c| c.seq)
    }
}
