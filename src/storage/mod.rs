//! Storage: one sled database per node holding every group's raft log and state.
//!
//! The node core never writes directly: it collects every group's writes of a round in one
//! [`WriteBatch`], which the runtime's storage thread hands to [`LogStore::write`] (one batch,
//! one flush, one fdatasync). Reads are synchronous (raft's `Storage` trait needs them).
//! A group's log is stored in runs, several consecutive entries per sled value (see
//! `runs.rs`): sled's cost is per key, so a round's entries of a group share one.
//!
//! Storage-error policy: a failed write is reported to every subscriber of the affected
//! groups and the node stops acknowledging writes (it never acknowledges what is not durable).

mod keys;
mod overlay;
mod runs;
mod sled_store;
mod snapshot_files;
mod watermark;

pub use sled_store::SledStore;
pub use snapshot_files::{
    encode_ids, file_reference, parse_file_reference, read_at, ProposalIds, SnapshotFiles,
};

use std::path::PathBuf;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

use crate::id::DataStructureId;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process holds the data dir open; nothing was changed.
    #[error("data dir {path} is in use by another process")]
    Locked {
        /// The data dir.
        path: PathBuf,
    },
    /// An I/O error from the file system (open, fdatasync, snapshot files).
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An error reported by sled.
    #[error("sled error: {0}")]
    Sled(String),
    /// A stored record could not be decoded: the data dir is damaged or from another version.
    #[error("corrupted record {what}: {detail}")]
    Corrupted {
        /// Which record.
        what: String,
        /// The decoding error.
        detail: String,
    },
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => StorageError::Io(io),
            sled::Error::Corruption { at, .. } => StorageError::Corrupted {
                what: "sled database".to_string(),
                detail: format!("corruption at {at:?}"),
            },
            other => StorageError::Sled(other.to_string()),
        }
    }
}

impl StorageError {
    /// Whether storage ran out of a resource rather than broke: no room for this node's
    /// data (no space left, file size or disk quota limit) or no file descriptor to open a
    /// file with. Such a failure ends once the resource returns, unlike a broken disk.
    pub fn is_exhausted(&self) -> bool {
        match self {
            StorageError::Io(e) => is_exhausted(e),
            _ => false,
        }
    }
}

/// Whether `e` says the file system has no room (ENOSPC, EFBIG, EDQUOT) or the process or
/// system has no file descriptor left (EMFILE, ENFILE: std has no stable kind for them).
pub(crate) fn is_exhausted(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(
        e.kind(),
        ErrorKind::StorageFull | ErrorKind::FileTooLarge | ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(ENFILE | EMFILE))
}

/// Result of storage operations.
pub type Result<T> = std::result::Result<T, StorageError>;

/// The persisted state of one group, as loaded when a node starts.
#[derive(Debug, Clone, Default)]
pub struct StoredGroup {
    /// The group.
    pub group: DataStructureId,
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// The configuration as of `applied`.
    pub conf_state: ConfState,
    /// Metadata of the latest snapshot (the log starts right after `snapshot.index`).
    pub snapshot: SnapshotMetadata,
    /// Index of the last stored entry (`snapshot.index` when the log is empty).
    pub last_index: u64,
    /// The highest entry index handed to the state machine.
    pub applied: u64,
}

/// The writes of one group in a round. Applied in field order: `remove`, `snapshot`,
/// `compact`, `truncate_from`, `entries`, `hard_state`, `conf_state`, `applied`.
#[derive(Debug, Clone, Default)]
pub struct GroupWrite {
    /// The group.
    pub group: DataStructureId,
    /// Deletes everything stored for the group (entries, states, snapshot) first.
    pub remove: bool,
    /// Installs a snapshot: stores it and deletes every log entry of the group. Non-empty
    /// data goes to a file (see `SnapshotFiles`), the metadata to sled.
    pub snapshot: Option<Snapshot>,
    /// Compacts the log: the snapshot with this metadata, already written to its file,
    /// covers every entry up to its index; those entries are deleted.
    pub compact: Option<SnapshotMetadata>,
    /// The snapshot file of `compact` is an offer from another replica: move it into place
    /// first.
    pub adopt_offer: bool,
    /// Proposal ids to store with the snapshot of `compact`.
    pub compact_ids: Option<ProposalIds>,
    /// Deletes every entry with index `>=` this (a follower's log was overwritten by a leader).
    pub truncate_from: Option<u64>,
    /// Entries to store, contiguous and ascending.
    pub entries: Vec<Entry>,
    /// New hard state.
    pub hard_state: Option<HardState>,
    /// The hard state's term or vote changed: it must be durable before the write is
    /// reported persisted. A change of the commit index alone need not be (raft learns it
    /// again from the leader; etcd and raft-rs's `Ready::must_sync` agree).
    pub hard_state_must_sync: bool,
    /// New configuration (stored when a conf change is applied).
    pub conf_state: Option<ConfState>,
    /// New applied index.
    pub applied: Option<u64>,
}

impl GroupWrite {
    /// An empty write for `group`.
    pub fn new(group: DataStructureId) -> Self {
        GroupWrite {
            group,
            ..Default::default()
        }
    }

    /// Whether the write must be durable (fsync'ed) before it is reported persisted:
    /// everything but a new applied index and a hard state whose commit index alone moved.
    pub fn needs_sync(&self) -> bool {
        self.remove
            || self.snapshot.is_some()
            || self.compact.is_some()
            || self.truncate_from.is_some()
            || !self.entries.is_empty()
            || self.conf_state.is_some()
            || self.hard_state_must_sync
    }

    /// Folds a later write of the same group into this one, so that applying the result
    /// equals applying both in order (a later truncation or snapshot drops earlier entries).
    pub fn merge(&mut self, later: GroupWrite) {
        if later.remove {
            *self = later;
            return;
        }
        if later.snapshot.is_some() {
            self.truncate_from = None;
            self.entries.clear();
            self.compact = None;
            self.snapshot = later.snapshot;
        }
        if let Some(meta) = later.compact {
            self.entries.retain(|e| e.index > meta.index);
            self.compact = Some(meta);
            self.adopt_offer = later.adopt_offer;
            self.compact_ids = later.compact_ids;
        }
        if let Some(t) = later.truncate_from {
            self.entries.retain(|e| e.index < t);
            self.truncate_from = Some(self.truncate_from.map_or(t, |old| old.min(t)));
        }
        self.entries.extend(later.entries);
        self.hard_state = later.hard_state.or(self.hard_state.take());
        self.hard_state_must_sync |= later.hard_state_must_sync;
        self.conf_state = later.conf_state.or(self.conf_state.take());
        self.applied = later.applied.or(self.applied);
    }
}

/// All writes of one round, made durable together.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    /// Per-group writes, at most one per group.
    pub groups: Vec<GroupWrite>,
    /// Node-level metadata: `(key, Some(value))` sets, `(key, None)` deletes.
    pub meta: Vec<(String, Option<Vec<u8>>)>,
}

impl WriteBatch {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.meta.is_empty()
    }

    /// Whether the batch must be fsync'ed (see [`GroupWrite::needs_sync`]); node metadata
    /// always is. A batch that need not be is written and made durable by the next one
    /// that is (stores keep writes in order, so a crash loses a suffix).
    pub fn needs_sync(&self) -> bool {
        !self.meta.is_empty() || self.groups.iter().any(GroupWrite::needs_sync)
    }

    /// Folds a later batch into this one (the storage thread merges queued batches into
    /// one write); the result keeps at most one write per group.
    pub fn extend(&mut self, later: WriteBatch) {
        for write in later.groups {
            match self.groups.iter_mut().find(|w| w.group == write.group) {
                Some(existing) => existing.merge(write),
                None => self.groups.push(write),
            }
        }
        self.meta.extend(later.meta);
    }
}

/// A node's durable store of raft logs and state, shared by the core (reads) and the storage
/// thread (writes).
pub trait LogStore: Send + Sync + 'static {
    /// Every group stored here, with its persisted state.
    fn load_groups(&self) -> Result<Vec<StoredGroup>>;

    /// Entries `[low, high)` of `group`, stopping early (but after at least one entry) once
    /// their encoded size passes `max_bytes`.
    fn entries(
        &self,
        group: DataStructureId,
        low: u64,
        high: u64,
        max_bytes: Option<u64>,
    ) -> Result<Vec<Entry>>;

    /// The latest stored snapshot of `group` (metadata and data).
    fn snapshot(&self, group: DataStructureId) -> Result<Option<Snapshot>>;

    /// Applies `batch` atomically and makes it durable (flush plus fdatasync) before returning.
    fn write(&self, batch: &WriteBatch) -> Result<()>;

    /// Node-level metadata (node id, known peers).
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// The proposal ids stored with the snapshot of `group` at `index`.
    fn snapshot_ids(&self, group: DataStructureId, index: u64) -> Result<ProposalIds>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range
            .map(|index| Entry {
                index,
                term,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn running_out_of_room_or_descriptors_is_exhaustion_and_other_failures_are_not() {
        let os = |code| StorageError::Io(std::io::Error::from_raw_os_error(code));
        // ENOSPC, EDQUOT, EFBIG, EMFILE, ENFILE (Linux numbers).
        for code in [28, 122, 27, 24, 23] {
            assert!(os(code).is_exhausted(), "os error {code}");
        }
        // EIO, EACCES, EROFS.
        for code in [5, 13, 30] {
            assert!(!os(code).is_exhausted(), "os error {code}");
        }
        assert!(!StorageError::Sled("broken".to_string()).is_exhausted());
    }

    #[test]
    fn merging_a_truncation_drops_overwritten_entries() {
        let g = DataStructureId::new();
        let mut first = GroupWrite::new(g);
        first.entries = entries(10..=12, 1);
        let mut later = GroupWrite::new(g);
        later.truncate_from = Some(11);
        later.entries = entries(11..=11, 2);
        first.merge(later);
        let got: Vec<_> = first.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(10, 1), (11, 2)]);
        assert_eq!(first.truncate_from, Some(11));
    }

    #[test]
    fn only_commit_and_applied_indexes_skip_the_fsync() {
        let g = DataStructureId::new();
        let mut lazy = GroupWrite::new(g);
        lazy.applied = Some(4);
        lazy.hard_state = Some(HardState {
            commit: 4,
            ..Default::default()
        });
        let mut batch = WriteBatch {
            groups: vec![lazy.clone()],
            meta: Vec::new(),
        };
        assert!(!batch.needs_sync());
        let mut vote = GroupWrite::new(g);
        vote.hard_state_must_sync = true;
        lazy.merge(vote);
        assert!(
            lazy.needs_sync(),
            "a merged term or vote change keeps its fsync"
        );
        let mut appended = GroupWrite::new(DataStructureId::new());
        appended.entries = entries(1..=1, 1);
        batch.extend(WriteBatch {
            groups: vec![appended],
            meta: Vec::new(),
        });
        assert!(batch.needs_sync());
        let meta = WriteBatch {
            groups: Vec::new(),
            meta: vec![("k".into(), None)],
        };
        assert!(meta.needs_sync());
    }

    #[test]
    fn merging_keeps_one_write_per_group_and_newest_states() {
        let g = DataStructureId::new();
        let mut a = WriteBatch::default();
        let mut w = GroupWrite::new(g);
        w.applied = Some(3);
        a.groups.push(w);
        let mut b = WriteBatch::default();
        let mut w = GroupWrite::new(g);
        w.applied = Some(7);
        w.snapshot = Some(Snapshot::default());
        b.groups.push(w);
        a.extend(b);
        assert_eq!(a.groups.len(), 1);
        assert_eq!(a.groups[0].applied, Some(7));
        assert!(a.groups[0].snapshot.is_some());
    }
}
