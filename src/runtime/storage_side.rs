//! The store and the threads that use it besides the core (storage, snapshot taking,
//! snapshot streams' file work): opened and started together, and closed together when the
//! store must be opened again after its disk ran out of space.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::snapshot_thread::{self, SnapshotJob};
use super::storage_thread::{self, BatchSender};
use super::transport::Transport;
use super::Event;
use crate::node::streams::SnapshotIo;
use crate::storage::{self, LogStore, SledStore, WriteBatch};

/// Metadata key of the write that tells whether space has returned (written, then deleted).
const SPACE_PROBE_KEY: &str = "space_probe";
/// Size of that write: room for this much means a round of writes likely fits again.
const SPACE_PROBE_BYTES: usize = 1 << 20;

/// Opens the node's store: at start, and again after its disk ran out of space.
pub(super) struct StoreOpener {
    pub data_dir: PathBuf,
    pub logger: slog::Logger,
}

impl StoreOpener {
    /// Opens the store.
    pub(super) fn open(&self) -> storage::Result<Arc<SledStore>> {
        Ok(Arc::new(SledStore::open(
            &self.data_dir,
            self.logger.clone(),
        )?))
    }

    /// Opens the store again once there is room to write to it: a probe of
    /// [`SPACE_PROBE_BYTES`] is written, made durable and deleted first.
    pub(super) fn reopen_with_room(&self) -> storage::Result<Arc<SledStore>> {
        let store = self.open()?;
        let mut probe = WriteBatch::default();
        let room = vec![0; SPACE_PROBE_BYTES];
        probe.meta.push((SPACE_PROBE_KEY.to_string(), Some(room)));
        store.write(&probe)?;
        probe.meta = vec![(SPACE_PROBE_KEY.to_string(), None)];
        store.write(&probe)?;
        Ok(store)
    }
}

/// The threads that write the store and its snapshot files for the core.
pub(super) struct StorageSide {
    /// The storage thread's queue: `(seq, batch)` per round.
    pub storage: BatchSender,
    /// Snapshots to take.
    pub snapshots: Sender<SnapshotJob>,
    /// The snapshot streams' file work.
    pub stream_io: Sender<SnapshotIo>,
    threads: Vec<JoinHandle<()>>,
}

impl StorageSide {
    /// Starts the threads over `store`; they report to the core through `core`.
    pub(super) fn start(
        store: Arc<SledStore>,
        core: &Sender<Event>,
        transport: &Arc<Transport>,
        logger: &slog::Logger,
    ) -> std::io::Result<StorageSide> {
        let (snapshots, taker) =
            snapshot_thread::spawn_taker(store.clone(), core.clone(), logger.clone())?;
        let (stream_io, stream_thread) =
            snapshot_thread::spawn_stream_io(store.clone(), transport.clone(), core.clone())?;
        let store: Arc<dyn LogStore> = store;
        let (storage, writer) = storage_thread::spawn(store, core.clone(), logger.clone())?;
        Ok(StorageSide {
            storage,
            snapshots,
            stream_io,
            threads: vec![taker, stream_thread, writer],
        })
    }

    /// Closes the threads' queues: they finish what was queued, report it, and end,
    /// dropping their hold on the store.
    pub(super) fn close(self) -> Closing {
        Closing(self.threads)
    }
}

/// The threads of a closed [`StorageSide`], finishing their queues. They may wait for room
/// in the core's event queue, so whoever waits for them must keep reading it.
pub(super) struct Closing(Vec<JoinHandle<()>>);

impl Closing {
    /// Whether every thread has ended.
    pub(super) fn is_done(&self) -> bool {
        self.0.iter().all(JoinHandle::is_finished)
    }

    /// Waits for every thread to end.
    pub(super) fn join(self) {
        for thread in self.0 {
            let _ = thread.join();
        }
    }
}
