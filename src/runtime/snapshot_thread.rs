//! The snapshot thread: calls applications' snapshot providers and writes their state to
//! snapshot files, off the core thread so no other group waits for a large snapshot.

use std::sync::Arc;

use crossbeam_channel::Sender;

use super::Event;
use crate::node::Input;
use crate::node::SnapshotRequest;
use crate::snapshot_provider::SnapshotProvider;
use crate::storage::SledStore;

/// A snapshot to take, with the provider of the subscription the core named.
pub(super) type SnapshotJob = (SnapshotRequest, Arc<dyn SnapshotProvider>);

/// Starts the thread; it exits when the returned sender is dropped.
pub(super) fn spawn(
    store: Arc<SledStore>,
    core: Sender<Event>,
    logger: slog::Logger,
) -> std::io::Result<Sender<SnapshotJob>> {
    let (tx, rx) = crossbeam_channel::unbounded::<SnapshotJob>();
    std::thread::Builder::new()
        .name("copycat-snapshot".to_string())
        .spawn(move || {
            for (request, provider) in rx {
                let input = take(&store, &request, provider.as_ref(), &logger);
                if core.send(input.into()).is_err() {
                    return;
                }
            }
        })?;
    Ok(tx)
}

/// Calls the provider, checks the index it reports and stores the bytes durably.
pub(crate) fn take(
    store: &SledStore,
    request: &SnapshotRequest,
    provider: &dyn SnapshotProvider,
    logger: &slog::Logger,
) -> Input {
    let group = request.group;
    let failed = |reason: String| Input::SnapshotFailed {
        group,
        reason: Some(reason),
    };
    let Some((index, data)) = provider.snapshot() else {
        return Input::SnapshotFailed {
            group,
            reason: None,
        };
    };
    let Some(index) = request.covered_index(index) else {
        return failed(format!(
            "the snapshot provider reported index {index}, at or below the current snapshot {}",
            request.min_index.saturating_sub(1)
        ));
    };
    match store.snapshot_files().write(group, index, &data) {
        Ok(()) => {
            slog::debug!(logger, "snapshot stored"; "group" => %group, "index" => index,
                "bytes" => data.len());
            Input::SnapshotTaken { group, index }
        }
        Err(e) => failed(format!("cannot store the snapshot: {e}")),
    }
}
