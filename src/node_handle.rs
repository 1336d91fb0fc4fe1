//! What every handle of a running node shares (the `CopyCat` handles and every
//! `DataStructure`): the runtime and the channels into its core thread. The public API
//! reaches the runtime only through this type.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, TrySendError};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::id::{DataStructureId, NodeId};
use crate::node::subscription::{SubId, SubscriberSink};
use crate::node::{Input, NodeCore, Waiter};
use crate::runtime::{Event, NodeRuntime, PumpControl, SecurityState};
use crate::snapshot_provider::SnapshotProvider;

pub(crate) use crate::runtime::{Ack, Doorbell};

/// How long a status query waits for the core thread.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// What every handle shares: the runtime and the channels into it.
pub(crate) struct NodeHandle {
    runtime: Mutex<NodeRuntime>,
    input: crossbeam_channel::Sender<Event>,
    pump: crossbeam_channel::Sender<PumpControl>,
    pub(crate) node_id: NodeId,
    pub(crate) data_dir: std::path::PathBuf,
    pub(crate) raft_addr: SocketAddr,
    pub(crate) gossip_addr: SocketAddr,
    /// The node's live keyring and refusal counters.
    pub(crate) security: SecurityState,
    next_sub: AtomicU64,
}

impl NodeHandle {
    /// Starts the node's runtime.
    pub(crate) fn start(config: Config) -> Result<NodeHandle> {
        let runtime = NodeRuntime::start(config)?;
        Ok(NodeHandle {
            input: runtime.input.clone(),
            pump: runtime.pump.clone(),
            node_id: runtime.node_id,
            data_dir: runtime.data_dir.clone(),
            raft_addr: runtime.raft_addr,
            gossip_addr: runtime.gossip_addr,
            security: runtime.security.clone(),
            runtime: Mutex::new(runtime),
            next_sub: AtomicU64::new(1),
        })
    }

    /// Sends an event to the core thread, waiting for room in its queue; fails once the
    /// node is shut down. For the rare control events (subscribe, unsubscribe, queries).
    fn send(&self, event: Event) -> Result<()> {
        self.input.send(event).map_err(|_| Error::Shutdown)
    }

    /// Registers a subscription to `group`: the core delivers into `sink`, the runtime
    /// keeps `provider` for its snapshots and moves what arrives on `proposals` into the
    /// core once the returned doorbell rings. Returns the subscription's id and doorbell.
    pub(crate) fn subscribe(
        &self,
        group: DataStructureId,
        sink: Box<dyn SubscriberSink>,
        provider: Arc<dyn SnapshotProvider>,
        proposals: Receiver<Vec<u8>>,
    ) -> Result<(SubId, Doorbell)> {
        let sub = self.next_sub.fetch_add(1, Ordering::Relaxed);
        self.send(Event::Subscribe {
            sub,
            group,
            sink,
            provider,
        })?;
        let scheduled = Arc::new(AtomicBool::new(false));
        self.pump
            .send(PumpControl::Add(sub, group, proposals, scheduled.clone()))
            .map_err(|_| Error::Shutdown)?;
        Ok((sub, Doorbell::new(self.pump.clone(), sub, scheduled)))
    }

    /// Ends a subscription (its application dropped its handle).
    pub(crate) fn unsubscribe(&self, sub: SubId) {
        let _ = self.pump.send(PumpControl::Remove(sub));
        let _ = self.send(Event::Unsubscribe(sub));
    }

    /// Sends an application's call (a proposal, a read barrier) without waiting: a full
    /// queue fails it with [`Error::Overloaded`]. `ack` hears the outcome.
    pub(crate) fn call(
        &self,
        ack: Ack,
        input: impl FnOnce(Waiter) -> Input + Send + 'static,
    ) -> Result<()> {
        let event = Event::Call(ack, Box::new(input));
        self.input.try_send(event).map_err(|e| match e {
            TrySendError::Full(_) => Error::Overloaded,
            TrySendError::Disconnected(_) => Error::Shutdown,
        })
    }

    /// Runs `f` on the core thread and returns its answer.
    pub(crate) fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&NodeCore) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Event::Query(Box::new(move |core| {
            let _ = tx.send(core.map(f));
        })))?;
        rx.recv_timeout(QUERY_TIMEOUT)
            .map_err(|_| Error::Shutdown)?
    }

    /// The async form of [`NodeHandle::query`].
    pub(crate) async fn query_async<T: Send + 'static>(
        &self,
        f: impl FnOnce(&NodeCore) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let event = Event::Query(Box::new(move |core| {
            let _ = tx.send(core.map(f));
        }));
        // The core thread takes events quickly; a full queue is the only wait here.
        self.input.try_send(event).map_err(|e| match e {
            TrySendError::Full(_) => Error::Overloaded,
            TrySendError::Disconnected(_) => Error::Shutdown,
        })?;
        match tokio::time::timeout(QUERY_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            _ => Err(Error::Shutdown),
        }
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
