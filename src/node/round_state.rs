//! What a round accumulates for its output — storage writes per group, metadata, batches
//! per peer — and the sequence numbers of storage batches: issued, and durable.
//!
//! Invariant: a batch is reported durable only after it was issued (`durable ≤ issued`),
//! and readies are tagged with the sequence of the batch that will carry their writes.

use super::Map;
use crate::id::{DataStructureId, NodeId};
use crate::proto;
use crate::storage::{GroupWrite, WriteBatch};

/// The round in progress and the storage batches' sequence numbers.
#[derive(Default)]
pub(super) struct Round {
    writes: Map<DataStructureId, GroupWrite>,
    meta: Vec<(String, Option<Vec<u8>>)>,
    sends: Map<NodeId, proto::Batch>,
    issued_seq: u64,
    durable_seq: u64,
    /// Storage writes made durable (one fdatasync round each) since the node started.
    synced_writes: u64,
}

impl Round {
    /// This round's write of `group`, created on first use.
    pub(super) fn write_for(&mut self, group: DataStructureId) -> &mut GroupWrite {
        self.writes
            .entry(group)
            .or_insert_with(|| GroupWrite::new(group))
    }

    /// Replaces this round's write of `group` (a replica being deleted or restarted).
    pub(super) fn replace_write(&mut self, group: DataStructureId, write: GroupWrite) {
        self.writes.insert(group, write);
    }

    /// Sets (or with `None` deletes) a metadata key in this round's batch.
    pub(super) fn put_meta(&mut self, key: String, value: Option<Vec<u8>>) {
        self.meta.push((key, value));
    }

    /// The batch going to `node` this round.
    pub(super) fn to(&mut self, node: NodeId) -> &mut proto::Batch {
        self.sends.entry(node).or_default()
    }

    /// The batches to peers, emptied.
    pub(super) fn drain_sends(&mut self) -> impl Iterator<Item = (NodeId, proto::Batch)> + '_ {
        self.sends.drain()
    }

    /// The sequence number the next storage batch will carry.
    pub(super) fn next_seq(&self) -> u64 {
        self.issued_seq + 1
    }

    pub(super) fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    pub(super) fn synced_writes(&self) -> u64 {
        self.synced_writes
    }

    /// Nothing to write and every issued batch durable: readies tagged with the next
    /// sequence are durable as they are, so that sequence is skipped (issued and durable
    /// at once). Returns whether it was.
    pub(super) fn skip_if_idle(&mut self) -> bool {
        let idle = self.writes.is_empty() && self.meta.is_empty();
        if !idle || self.issued_seq != self.durable_seq {
            return false;
        }
        self.issued_seq += 1;
        self.durable_seq += 1;
        true
    }

    /// The round's storage batch with its sequence number, if there is anything to write
    /// or readies were tagged with it (`tagged`).
    pub(super) fn take_batch(&mut self, tagged: bool) -> Option<(u64, WriteBatch)> {
        if !tagged && self.writes.is_empty() && self.meta.is_empty() {
            return None;
        }
        self.issued_seq += 1;
        let batch = WriteBatch {
            groups: self.writes.drain().map(|(_, w)| w).collect(),
            meta: std::mem::take(&mut self.meta),
        };
        Some((self.issued_seq, batch))
    }

    /// Batch `seq` (and every earlier one) is written; `synced`: it was fsync'ed.
    pub(super) fn persisted(&mut self, seq: u64, synced: bool) {
        debug_assert!(
            seq <= self.issued_seq,
            "batch {seq} reported durable, but only {} were issued",
            self.issued_seq
        );
        self.durable_seq = self.durable_seq.max(seq);
        self.synced_writes += u64::from(synced);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_round_skips_its_sequence_and_a_busy_one_issues_a_batch() {
        let mut round = Round::default();
        assert!(round.skip_if_idle());
        assert_eq!((round.next_seq(), round.durable_seq()), (2, 1));
        round.put_meta("k".to_string(), None);
        assert!(!round.skip_if_idle());
        let (seq, batch) = round.take_batch(false).expect("a batch");
        assert_eq!((seq, batch.meta.len()), (2, 1));
        // Issued but not durable: the next idle round cannot skip.
        assert!(!round.skip_if_idle());
        assert!(round.take_batch(false).is_none());
        round.persisted(2, true);
        assert_eq!((round.durable_seq(), round.synced_writes()), (2, 1));
        assert!(round.skip_if_idle());
    }
}
