//! The storage thread: writes the core's batches, merging whatever queued up meanwhile into
//! one write and one fsync, and reports them durable in order.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::Event;
use crate::node::Input;
use crate::storage::{LogStore, WriteBatch};
use crate::telemetry;

/// Where the core sends `(seq, batch)`.
pub(super) type BatchSender = Sender<(u64, WriteBatch)>;

/// Starts the thread; returns where to send `(seq, batch)` and its handle. The thread
/// exits once every sender is dropped and the queue is written.
pub(super) fn spawn(
    store: Arc<dyn LogStore>,
    core: Sender<Event>,
    logger: slog::Logger,
) -> std::io::Result<(BatchSender, JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::unbounded::<(u64, WriteBatch)>();
    let handle = std::thread::Builder::new()
        .name("copycat-storage".to_string())
        .spawn(move || run(store.as_ref(), rx, core, logger))?;
    Ok((tx, handle))
}

fn run(
    store: &dyn LogStore,
    rx: Receiver<(u64, WriteBatch)>,
    core: Sender<Event>,
    logger: slog::Logger,
) {
    while let Ok((mut seq, mut batch)) = rx.recv() {
        for (next_seq, next) in rx.try_iter() {
            seq = next_seq;
            batch.extend(next);
        }
        let synced = batch.needs_sync();
        let started = Instant::now();
        let result = if batch.is_empty() {
            Ok(())
        } else {
            store.write(&batch)
        };
        if result.is_ok() {
            let entries = batch.groups.iter().map(|g| g.entries.len()).sum();
            telemetry::storage_write(started.elapsed(), entries, synced);
        }
        let input = match result {
            Ok(()) => Input::Persisted { seq, synced },
            Err(e) => {
                slog::error!(logger, "storage write failed"; "batch" => seq, "error" => %e);
                Input::StorageFailed(seq, e.into())
            }
        };
        // After shutdown nobody listens; the queued writes are still made.
        let _ = core.send(input.into());
    }
}
