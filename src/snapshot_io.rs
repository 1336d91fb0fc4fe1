//! The core's snapshot file work, performed: taking a snapshot through an application's
//! provider, and the reads and writes of snapshot streams. The runtime runs these on its
//! snapshot threads, the simulator at points of simulated time; both hand the resulting
//! inputs back to the core.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;

use crate::id::NodeId;
use crate::node::streams::{SnapshotIo, StreamId};
use crate::node::{Input, SnapshotRequest};
use crate::proto::Batch;
use crate::snapshot_provider::SnapshotProvider;
use crate::storage::{read_at, SledStore, SnapshotFiles};

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
            Input::SnapshotTaken {
                group,
                index,
                bytes: data.len() as u64,
            }
        }
        Err(e) => failed(format!("cannot store the snapshot: {e}")),
    }
}

/// What performing a [`SnapshotIo`] leads to.
pub(crate) enum Performed {
    /// Nothing to report.
    Done,
    /// A chunk read from its file, to send to a peer.
    Send(NodeId, SocketAddr, Batch),
    /// An input for the core.
    Input(Input),
}

/// Performs the streams' file work, holding each outgoing stream's file open from `Open`
/// to `Close`: a newer snapshot may prune the file meanwhile, and the stream goes on.
pub(crate) struct StreamFiles {
    files: SnapshotFiles,
    open: HashMap<StreamId, File>,
}

impl StreamFiles {
    /// The stream files of the node whose snapshot files are `files`.
    pub(crate) fn new(files: SnapshotFiles) -> Self {
        StreamFiles {
            files,
            open: HashMap::new(),
        }
    }

    /// Performs one piece of stream file work.
    pub(crate) fn perform(&mut self, io: SnapshotIo) -> Performed {
        match io {
            SnapshotIo::Open {
                to,
                group,
                index,
                stream,
            } => {
                let total = self.files.open(group, index).map(|(file, size)| {
                    self.open.insert(stream, file);
                    size
                });
                Performed::Input(Input::StreamOpened {
                    to,
                    group,
                    index,
                    stream,
                    total: total.map_err(|e| e.to_string()),
                })
            }
            SnapshotIo::Read {
                to,
                addr,
                group,
                len,
                mut chunk,
            } => {
                let read = match self.open.get(&chunk.stream) {
                    Some(file) => read_at(file, chunk.offset, len).map_err(|e| e.to_string()),
                    None => Err("the stream's file is not open".to_string()),
                };
                match read {
                    Ok(data) => {
                        chunk.data = data;
                        let batch = Batch {
                            chunks: vec![chunk],
                            ..Default::default()
                        };
                        Performed::Send(to, addr, batch)
                    }
                    Err(reason) => Performed::Input(Input::StreamFailed {
                        to,
                        group,
                        index: chunk.index,
                        stream: chunk.stream,
                        reason,
                    }),
                }
            }
            SnapshotIo::Close { stream } => {
                self.open.remove(&stream);
                Performed::Done
            }
            SnapshotIo::Write {
                from,
                group,
                chunk,
                receipt,
            } => Performed::Input(Input::ChunkStored {
                from,
                group,
                receipt,
                bytes: chunk.data.len() as u64,
                received: self
                    .files
                    .store_chunk(group, &chunk)
                    .map_err(|e| e.to_string()),
            }),
        }
    }
}
