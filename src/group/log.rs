//! One group's view of its raft log: raft-rs's `Storage` over an in-memory tail plus disk.
//!
//! raft-rs requires that what a `Ready` appended is readable through `Storage` as soon as
//! `advance_append_async` returns, but the disk write happens later on the storage thread.
//! So the entries of the not-yet-trimmed tail live in `tail` (like TiKV's entry cache), and
//! older ones are read from the [`LogStore`]. Entries leave the tail once they are both
//! durable and applied.

use std::collections::VecDeque;
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};

use super::copies::ProposalCopies;
use crate::id::DataStructureId;
use crate::storage::{LogStore, StoredGroup};

/// Index and term of the synthetic snapshot every group starts from. Every replica of a
/// group bootstraps from the same snapshot at this index (the TiKV convention), so a replica
/// added later matches the leader's log at this point without a snapshot transfer.
pub(crate) const BOOTSTRAP_INDEX: u64 = 5;

/// The raft log and state of one group, as raft-rs reads it.
pub(crate) struct GroupLog {
    group: DataStructureId,
    disk: Arc<dyn LogStore>,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    /// A snapshot prepared on request (the system group's directory), served to raft.
    prepared_snapshot: Option<Snapshot>,
    /// Set when raft asked for a snapshot that is not prepared yet.
    snapshot_wanted: std::cell::Cell<bool>,
    /// Entries `[last_index + 1 - tail.len(), last_index]`.
    tail: VecDeque<Entry>,
    last_index: u64,
    /// Highest index known to be on disk.
    persisted_index: u64,
    /// Proposal ids of the application entries just before the snapshot (see
    /// [`crate::storage::ProposalIds`]).
    compacted_ids: crate::storage::ProposalIds,
    /// Where each proposal appears: the snapshot's ids and the entries after it.
    copies: ProposalCopies,
}

impl GroupLog {
    /// A log with nothing stored: an uninitialized replica waiting for a snapshot.
    pub(crate) fn empty(group: DataStructureId, disk: Arc<dyn LogStore>) -> Self {
        GroupLog {
            group,
            disk,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot: SnapshotMetadata::default(),
            prepared_snapshot: None,
            snapshot_wanted: std::cell::Cell::new(false),
            tail: VecDeque::new(),
            last_index: 0,
            persisted_index: 0,
            compacted_ids: Vec::new(),
            copies: ProposalCopies::default(),
        }
    }

    /// The log as found on disk at startup. Its entries are not read here: the duplicate
    /// check reads them in when it first needs them (see `copies.rs`), so reopening a node
    /// costs no reading of its logs. Fails if the snapshot's proposal ids cannot be read.
    pub(crate) fn from_stored(
        stored: &StoredGroup,
        disk: Arc<dyn LogStore>,
    ) -> crate::Result<Self> {
        let mut log = GroupLog::empty(stored.group, disk);
        log.hard_state = stored.hard_state.clone();
        log.conf_state = stored.conf_state.clone();
        log.snapshot = stored.snapshot.clone();
        log.last_index = stored.last_index;
        log.persisted_index = stored.last_index;
        log.compacted_ids = log.stored_compacted_ids()?;
        let (first, last) = (log.first_index(), log.last_index);
        log.copies = ProposalCopies::unread(&log.compacted_ids, first, last);
        Ok(log)
    }

    /// The synthetic first snapshot of a new group with `voters`.
    pub(crate) fn bootstrap_snapshot(voters: &[u64]) -> Snapshot {
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = BOOTSTRAP_INDEX;
        meta.term = BOOTSTRAP_INDEX;
        meta.mut_conf_state().voters = voters.to_vec();
        snap
    }

    /// Index of the first entry available (right after the snapshot).
    pub(crate) fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    /// The current configuration (as of the last applied conf change).
    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The hard state as raft last reported it.
    pub(crate) fn initial_hard_state(&self) -> HardState {
        self.hard_state.clone()
    }

    /// Whether the replica has any state (an uninitialized one waits for a snapshot).
    pub(crate) fn is_initialized(&self) -> bool {
        self.snapshot.index > 0 || self.last_index > 0
    }

    fn tail_first(&self) -> u64 {
        self.last_index + 1 - self.tail.len() as u64
    }

    /// Appends entries from a `Ready`, overwriting any conflicting suffix. Returns the index
    /// from which the stored log must be truncated, if an existing suffix was overwritten.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> Option<u64> {
        let first = entries.first()?.index;
        let truncate_from = (first <= self.last_index).then_some(first);
        if first < self.tail_first() {
            // Overwriting entries that only live on disk: the tail restarts here.
            self.tail.clear();
        } else {
            let keep = (first - self.tail_first()) as usize;
            self.tail.truncate(keep);
        }
        if let Some(from) = truncate_from {
            self.copies.truncate_from(from);
        }
        self.copies.add_entries(entries);
        self.tail.extend(entries.iter().cloned());
        self.last_index = first + entries.len() as u64 - 1;
        self.persisted_index = self.persisted_index.min(first - 1);
        truncate_from
    }

    /// Records a new hard state from a `Ready`.
    pub(crate) fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Records a configuration change that was applied.
    pub(crate) fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Replaces the whole log by `snap` (bootstrap, or a snapshot received from the leader).
    pub(crate) fn apply_snapshot(&mut self, snap: &Snapshot) {
        let meta = snap.get_metadata();
        self.snapshot = meta.clone();
        // A snapshot just received may have no ids yet (they travel with the stream and are
        // stored with the file); retries are then checked against the log only.
        self.compacted_ids = self.stored_compacted_ids().unwrap_or_default();
        self.copies = ProposalCopies::rebuild(&self.compacted_ids, &[]);
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.tail.clear();
        self.last_index = meta.index;
        self.persisted_index = meta.index;
    }

    /// The log up to `meta.index` is covered by a stored snapshot: forget those entries.
    /// Unlike [`GroupLog::apply_snapshot`], the entries after it and the current
    /// configuration stay.
    pub(crate) fn compact(&mut self, meta: SnapshotMetadata, ids: crate::storage::ProposalIds) {
        while self.tail.front().is_some_and(|e| e.index <= meta.index) {
            self.tail.pop_front();
        }
        self.copies.compact(meta.index, &ids);
        self.snapshot = meta;
        self.compacted_ids = ids;
    }

    /// Where each proposal appears in the recent log, with the stored entries that could
    /// hold a copy strictly between `after` and `before` read in first. Fails if they
    /// cannot be read: the index must be whole to tell a second copy.
    pub(crate) fn copies_between(
        &mut self,
        after: u64,
        before: u64,
    ) -> crate::Result<&ProposalCopies> {
        if let Some((low, high)) = self.copies.unread_between(after, before) {
            let unreadable = |e: String| {
                crate::Error::Corrupted(format!(
                    "group {}: its log {low}..={high} cannot be read: {e}",
                    self.group
                ))
            };
            let entries = self
                .read_entries(low, high + 1, None)
                .map_err(|e| unreadable(e.to_string()))?;
            self.copies
                .add_read(low, high, &entries)
                .map_err(unreadable)?;
        }
        Ok(&self.copies)
    }

    /// Hands the index `entries`, just read from this log in log order (a subscription's
    /// replay), so that questions about them need not read them a second time. Only the
    /// part that starts at the first unread index is taken; the rest is left as it was.
    pub(crate) fn note_read(&mut self, entries: &[Entry]) {
        let Some((low, high)) = self.copies.unread_range() else {
            return;
        };
        let Some(skip) = entries.first().and_then(|e| low.checked_sub(e.index)) else {
            return;
        };
        let from_low = entries.get(skip as usize..).unwrap_or_default();
        let fitting = from_low.iter().take_while(|e| e.index <= high).count();
        let Some(last) = from_low[..fitting].last().map(|e| e.index) else {
            return;
        };
        let taken = self.copies.add_read(low, last, &from_low[..fitting]);
        // Entries read from this log fit; if they did not, the index keeps its unread
        // range and reads it itself when asked.
        debug_assert!(taken.is_ok(), "entries read from the log: {taken:?}");
    }

    /// Proposal ids of the application entries just before the snapshot.
    pub(crate) fn compacted_ids(&self) -> &crate::storage::ProposalIds {
        &self.compacted_ids
    }

    /// The proposal ids stored with the current snapshot (none for the synthetic first
    /// one, nor for a snapshot stored without them).
    fn stored_compacted_ids(&self) -> crate::Result<crate::storage::ProposalIds> {
        if self.snapshot.index <= BOOTSTRAP_INDEX {
            return Ok(Vec::new());
        }
        Ok(self.disk.snapshot_ids(self.group, self.snapshot.index)?)
    }

    /// Metadata of the latest snapshot.
    pub(crate) fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot
    }

    /// Index of the latest snapshot (the synthetic first one is [`BOOTSTRAP_INDEX`]).
    pub(crate) fn snapshot_index(&self) -> u64 {
        self.snapshot.index
    }

    /// Everything up to `index` is durable now.
    pub(crate) fn on_persisted(&mut self, index: u64) {
        self.persisted_index = self.persisted_index.max(index.min(self.last_index));
    }

    /// Drops tail entries that are durable and applied up to `applied`, keeping `keep` recent
    /// ones so lagging followers and subscribers are usually served from memory.
    pub(crate) fn trim_tail(&mut self, applied: u64, keep: usize) {
        let limit = applied.min(self.persisted_index);
        while self.tail.len() > keep && self.tail_first() <= limit {
            self.tail.pop_front();
        }
    }

    /// True if raft asked for a snapshot since the last call.
    pub(crate) fn take_snapshot_wanted(&mut self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Serves `snap` to raft when it next asks for a snapshot.
    pub(crate) fn set_prepared_snapshot(&mut self, snap: Snapshot) {
        self.prepared_snapshot = Some(snap);
    }

    /// Entries `[low, high)`, from memory where possible, else from disk.
    pub(crate) fn read_entries(
        &self,
        low: u64,
        high: u64,
        max_bytes: Option<u64>,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last_index + 1 || low > high {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let tail_first = self.tail_first();
        let mut out = Vec::new();
        if low < tail_first {
            let disk_high = high.min(tail_first);
            out = self
                .disk
                .entries(self.group, low, disk_high, max_bytes)
                .map_err(other_error)?;
            let complete = out.len() as u64 == disk_high - low;
            if !complete || disk_high == high {
                raft::util::limit_size(&mut out, max_bytes);
                return if out.is_empty() {
                    Err(raft::Error::Store(RaftStorageError::Unavailable))
                } else {
                    Ok(out)
                };
            }
        }
        let from = low.max(tail_first);
        let skip = (from - tail_first) as usize;
        let take = (high - from) as usize;
        out.extend(self.tail.iter().skip(skip).take(take).cloned());
        raft::util::limit_size(&mut out, max_bytes);
        Ok(out)
    }
}

fn includes(cs: &ConfState, node: u64) -> bool {
    cs.voters.contains(&node) || cs.learners.contains(&node)
}

fn other_error(e: crate::storage::StorageError) -> raft::Error {
    raft::Error::Store(RaftStorageError::Other(Box::new(e)))
}

impl raft::Storage for GroupLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.read_entries(low, high, max_size.into())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if idx < self.first_index() {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let tail_first = self.tail_first();
        if idx >= tail_first {
            return Ok(self.tail[(idx - tail_first) as usize].term);
        }
        let entries = self.read_entries(idx, idx + 1, None)?;
        Ok(entries[0].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(GroupLog::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    /// The system group serves a snapshot prepared from the directory (never its stored
    /// one: that has no file to stream); a data group serves its latest stored snapshot.
    /// Either must include the receiver in its configuration (raft-rs's receiver drops it
    /// otherwise); if not, the caller is told to prepare or take a newer one and raft asks
    /// again later.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let wanted_index = request_index.max(self.snapshot.index);
        if self.group.is_system() {
            if let Some(snap) = &self.prepared_snapshot {
                let meta = snap.get_metadata();
                if meta.index >= wanted_index && includes(meta.get_conf_state(), to) {
                    return Ok(snap.clone());
                }
            }
        } else if self.snapshot.index > BOOTSTRAP_INDEX
            && self.snapshot.index >= request_index
            && includes(self.snapshot.get_conf_state(), to)
        {
            // The state stays in its file and is streamed in chunks by the runtime.
            let mut snap = Snapshot::default();
            snap.set_metadata(self.snapshot.clone());
            snap.data = crate::storage::file_reference(self.snapshot.index).into();
            return Ok(snap);
        }
        self.snapshot_wanted.set(true);
        Err(raft::Error::Store(
            RaftStorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with_stored_snapshot(group: DataStructureId, dir: &std::path::Path) -> GroupLog {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let disk: Arc<dyn LogStore> =
            Arc::new(crate::storage::SledStore::open(dir, logger).expect("open sled"));
        let mut log = GroupLog::empty(group, disk);
        let mut snap = GroupLog::bootstrap_snapshot(&[1, 2, 3]);
        snap.mut_metadata().index = 28;
        snap.mut_metadata().term = 8;
        log.apply_snapshot(&snap);
        log
    }

    fn serves(log: &GroupLog) -> raft::Result<Snapshot> {
        raft::Storage::snapshot(log, 0, 2)
    }

    #[test]
    fn a_restarted_system_replica_prepares_its_snapshot_instead_of_streaming_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = log_with_stored_snapshot(DataStructureId::SYSTEM, dir.path());
        assert!(matches!(
            serves(&log),
            Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        assert!(log.take_snapshot_wanted());
        let mut prepared = GroupLog::bootstrap_snapshot(&[1, 2, 3]);
        prepared.mut_metadata().index = 30;
        prepared.data = b"directory".to_vec().into();
        log.set_prepared_snapshot(prepared.clone());
        assert_eq!(serves(&log).expect("prepared snapshot"), prepared);
    }

    #[test]
    fn a_data_replica_serves_its_stored_snapshot_as_a_file_reference() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = log_with_stored_snapshot(DataStructureId::from_u128(7), dir.path());
        let snap = serves(&log).expect("stored snapshot");
        assert_eq!(snap.get_metadata().index, 28);
        assert_eq!(
            crate::storage::parse_file_reference(snap.get_data()),
            Some(28)
        );
    }
}
