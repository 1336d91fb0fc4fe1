//! What every handle of a running node shares (the `CopyCat` handles and every
//! `DataStructure`): the runtime and the channels into its core thread.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use crossbeam_channel::TrySendError;

use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::runtime::{Event, NodeRuntime, PumpControl};

/// What every handle shares: the runtime and the channels into it.
pub(crate) struct NodeHandle {
    pub(crate) runtime: Mutex<NodeRuntime>,
    pub(crate) input: crossbeam_channel::Sender<Event>,
    pub(crate) pump: crossbeam_channel::Sender<PumpControl>,
    pub(crate) node_id: NodeId,
    pub(crate) data_dir: std::path::PathBuf,
    pub(crate) raft_addr: SocketAddr,
    pub(crate) gossip_addr: SocketAddr,
    pub(crate) next_sub: AtomicU64,
}

impl NodeHandle {
    /// Sends an event to the core thread, waiting for room in its queue; fails once the
    /// node is shut down. For the rare control events (subscribe, unsubscribe, queries).
    pub(crate) fn send(&self, event: impl Into<Event>) -> Result<()> {
        self.input.send(event.into()).map_err(|_| Error::Shutdown)
    }

    /// Sends an application's call (a proposal, a read barrier) without waiting: a full
    /// queue fails it with [`Error::Overloaded`].
    pub(crate) fn try_send(&self, event: Event) -> Result<()> {
        self.input.try_send(event).map_err(|e| match e {
            TrySendError::Full(_) => Error::Overloaded,
            TrySendError::Disconnected(_) => Error::Shutdown,
        })
    }

    /// The node's data dir.
    pub(crate) fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    pub(crate) fn shutdown(&self) {
        if let Ok(mut runtime) = self.runtime.lock() {
            runtime.shutdown();
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
