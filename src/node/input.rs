//! What the core reacts to: one [`Input`] type, owned by the core and dispatched by
//! [`NodeCore::handle`]. The runtime and the simulator build inputs and feed them in; the
//! core's answers leave through [`super::Output`]. No input carries a channel or closure:
//! a caller waiting for a proposal or a read barrier is named by a [`Waiter`] id, and its
//! outcome comes back as a completion.

use std::time::Duration;

use super::member::MembershipEvent;
use super::streams::{Receipt, StreamId};
use super::subscription::{SubId, SubscriberSink};
use super::NodeCore;
use crate::error::Error;
use crate::id::{DataStructureId, NodeId};
use crate::proto;

/// Names one caller waiting for the outcome of a proposal or a read barrier. The core only
/// hands it back, with the result, in [`super::Output::completions`]; whoever fed the input
/// in (the runtime, the simulator) knows who waits.
pub(crate) type Waiter = u64;

/// Everything the core reacts to, besides ticks.
pub(crate) enum Input {
    Batch(NodeId, proto::Batch),
    Membership(MembershipEvent),
    Unreachable(NodeId),
    /// Batch `seq` (and every earlier one) is written; `synced`: it was fsync'ed.
    Persisted {
        seq: u64,
        synced: bool,
    },
    StorageFailed(u64, Error),
    Subscribe {
        sub: SubId,
        group: DataStructureId,
        sink: Box<dyn SubscriberSink>,
    },
    Unsubscribe(SubId),
    Propose {
        group: DataStructureId,
        data: Vec<u8>,
        sub: Option<SubId>,
        waiter: Option<Waiter>,
        timeout: Option<Duration>,
    },
    ReadBarrier {
        group: DataStructureId,
        sub: SubId,
        waiter: Waiter,
        timeout: Duration,
    },
    SnapshotTaken {
        group: DataStructureId,
        index: u64,
        /// The snapshot's size.
        bytes: u64,
    },
    /// The file of an outgoing snapshot stream was opened: its size, or why not.
    StreamOpened {
        to: NodeId,
        group: DataStructureId,
        index: u64,
        stream: StreamId,
        total: Result<u64, String>,
    },
    /// Reading or sending a chunk of an outgoing stream failed.
    StreamFailed {
        to: NodeId,
        group: DataStructureId,
        index: u64,
        stream: StreamId,
        reason: String,
    },
    /// A received chunk of `bytes` bytes was written: the bytes of the stream now durable
    /// (the file is installed once they reach its size), or why writing failed.
    ChunkStored {
        from: NodeId,
        group: DataStructureId,
        /// The incoming stream the chunk was written for (`SnapshotIo::Write`).
        receipt: Receipt,
        bytes: u64,
        received: Result<u64, String>,
    },
    /// No snapshot: declined by the provider (`None`), or failed (why).
    SnapshotFailed {
        group: DataStructureId,
        reason: Option<String>,
    },
    /// Hand leaderships over (first step of a graceful shutdown); `poll_handover` says
    /// when it is done.
    Handover,
    Shutdown,
}

impl NodeCore {
    /// Applies one input at `now_ms`; true when it asks the core to stop.
    pub(crate) fn handle(&mut self, now_ms: u64, input: Input) -> bool {
        match input {
            Input::Batch(from, batch) => self.handle_batch(now_ms, from, batch),
            Input::Membership(event) => self.handle_membership(now_ms, event),
            Input::Unreachable(node) => self.handle_unreachable(node),
            Input::Persisted { seq, synced } => self.handle_persisted(seq, synced),
            Input::StorageFailed(seq, error) => self.handle_storage_failed(seq, error),
            Input::Subscribe { sub, group, sink } => self.subscribe(now_ms, sub, group, sink),
            Input::Unsubscribe(sub) => self.unsubscribe(sub),
            Input::Propose {
                group,
                data,
                sub,
                waiter,
                timeout,
            } => {
                let timeout_ms = timeout.map(|t| t.as_millis() as u64);
                self.propose(now_ms, group, data, sub, waiter, timeout_ms)
            }
            Input::ReadBarrier {
                group,
                sub,
                waiter,
                timeout,
            } => self.read_barrier(now_ms, group, Some(sub), waiter, timeout.as_millis() as u64),
            Input::SnapshotTaken {
                group,
                index,
                bytes,
            } => self.handle_snapshot_taken(group, index, bytes),
            Input::StreamOpened {
                to,
                group,
                index,
                stream,
                total,
            } => self.handle_stream_opened(now_ms, (to, group, index), stream, total),
            Input::StreamFailed {
                to,
                group,
                index,
                stream,
                reason,
            } => self.handle_stream_failed((to, group, index), stream, reason),
            Input::ChunkStored {
                from,
                group,
                receipt,
                bytes,
                received,
            } => self.handle_chunk_stored(now_ms, from, group, receipt, bytes, received),
            Input::SnapshotFailed { group, reason } => self.handle_snapshot_failed(group, reason),
            Input::Handover => self.begin_handover(now_ms),
            Input::Shutdown => {
                self.shutdown();
                return true;
            }
        }
        false
    }
}
