//! The snapshot threads: one calls applications' snapshot providers and writes their state
//! to snapshot files, one performs the snapshot streams' file reads and writes. Both are
//! off the core thread so no other group waits for a large snapshot, and apart, so a slow
//! provider does not hold up streams.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::transport::Transport;
use super::Event;
use crate::node::streams::SnapshotIo;
use crate::node::SnapshotRequest;
use crate::snapshot_io::{self, Performed, StreamFiles};
use crate::snapshot_provider::SnapshotProvider;
use crate::storage::SledStore;

/// A snapshot to take, with the provider of the subscription the core named.
pub(super) type SnapshotJob = (SnapshotRequest, Arc<dyn SnapshotProvider>);

/// Starts the thread taking snapshots; it exits when the returned sender is dropped.
pub(super) fn spawn_taker(
    store: Arc<SledStore>,
    core: Sender<Event>,
    logger: slog::Logger,
) -> std::io::Result<(Sender<SnapshotJob>, JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::unbounded::<SnapshotJob>();
    let handle = std::thread::Builder::new()
        .name("copycat-snapshot".to_string())
        .spawn(move || {
            for (request, provider) in rx {
                let input = snapshot_io::take(&store, &request, provider.as_ref(), &logger);
                if core.send(input.into()).is_err() {
                    return;
                }
            }
        })?;
    Ok((tx, handle))
}

/// Starts the thread of the streams' file work; it exits when the returned sender is
/// dropped. Chunks read are sent straight to their peers.
pub(super) fn spawn_stream_io(
    store: Arc<SledStore>,
    transport: Arc<Transport>,
    core: Sender<Event>,
) -> std::io::Result<(Sender<SnapshotIo>, JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::unbounded::<SnapshotIo>();
    let handle = std::thread::Builder::new()
        .name("copycat-snap-io".to_string())
        .spawn(move || {
            let mut files = StreamFiles::new(store.snapshot_files().clone());
            for io in rx {
                match files.perform(io) {
                    Performed::Done => {}
                    Performed::Send(to, addr, batch) => transport.send(to, addr, batch),
                    Performed::Input(input) => {
                        if core.send(input.into()).is_err() {
                            return;
                        }
                    }
                }
            }
        })?;
    Ok((tx, handle))
}
