//! The application's snapshot hook. Defined below the runtime, which calls it on its
//! snapshot thread, and re-exported at the crate root.

/// Captures an application's state for a snapshot.
///
/// copycat calls it from its snapshot thread (never from the thread applying commits, and
/// without blocking other data structures) when this replica has applied
/// `Config::snapshot_interval` entries or `Config::snapshot_max_log_bytes` bytes since its
/// last snapshot, or when a lagging replica needs one. It returns the state together with
/// the index of the last [`crate::Commit`] applied into it, read atomically (e.g. under the lock
/// that guards the state), or `None` to skip this time. copycat then stores the bytes,
/// compacts the log up to that index and ships the snapshot to replicas that need it.
pub trait SnapshotProvider: Send + Sync + 'static {
    /// The state and the index of the last commit it includes, or `None`.
    fn snapshot(&self) -> Option<(u64, Vec<u8>)>;
}

impl<F: Fn() -> Option<(u64, Vec<u8>)> + Send + Sync + 'static> SnapshotProvider for F {
    fn snapshot(&self) -> Option<(u64, Vec<u8>)> {
        self()
    }
}

/// A provider for applications that never snapshot: the log of their data structures is
/// kept whole.
pub fn no_snapshots() -> Option<(u64, Vec<u8>)> {
    None
}
