//! A subscription to one replicated data structure.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, SendError, Sender, TrySendError};

use crate::error::{Error, Result};
use crate::id::DataStructureId;
use crate::node::subscription::SubId;
use crate::node::{Commit, Input, Waiter};
use crate::node_handle::{Ack, Doorbell, NodeHandle};
use crate::signal::Signal;
use crate::subscriber_sink::Progress;

/// Capacity of a subscription's fire-and-forget proposal channel
/// ([`DataStructure::proposals`]). A bounded channel allocates its slots up front: 128
/// cost 4 KiB per subscription.
pub const PROPOSALS_CAPACITY: usize = 128;

/// An application's handle on one replicated data structure: the seed's propose channel,
/// commit channel, error channel and snapshot hooks.
///
/// Cheap to clone: clones share the subscription (and its channels: each commit goes to one
/// reader). Dropping the last clone unsubscribes; the replica on this node stays
/// (detached) and keeps replicating. It keeps its node running while it lives.
#[derive(Clone)]
pub struct DataStructure {
    pub(crate) node: Arc<NodeHandle>,
    pub(crate) id: DataStructureId,
    pub(crate) sub: SubId,
    /// Unsubscribes when the last clone is dropped.
    pub(crate) _subscribed: Arc<Subscribed>,
    pub(crate) proposals: ProposalSender,
    pub(crate) commits: Receiver<Commit>,
    pub(crate) errors: Receiver<Error>,
    /// Bumped for each commit the channel takes; how far delivery has caught up.
    pub(crate) progress: Progress,
}

impl DataStructure {
    /// The data structure's id.
    pub fn id(&self) -> DataStructureId {
        self.id
    }

    /// Fire-and-forget proposals: each message sent here is proposed once; failures
    /// (too large, dropped, timed out) arrive on [`DataStructure::errors`]. The channel
    /// holds [`PROPOSALS_CAPACITY`] proposals: when the node falls behind, `send` waits
    /// and `try_send` fails with `Full` (backpressure, nothing is dropped).
    pub fn proposals(&self) -> &ProposalSender {
        &self.proposals
    }

    /// Committed entries, each exactly once, in log order (identical on every node), and
    /// snapshot markers. Delivery pauses, without loss, while the channel is full.
    pub fn commits(&self) -> &Receiver<Commit> {
        &self.commits
    }

    /// The commit channel as a `futures` [`Stream`](futures_core::Stream), for async
    /// apply loops: one task (or one `select` over many streams) serves as many data
    /// structures as it likes, with no thread each. It takes from the same channel as
    /// [`DataStructure::commits`] (each commit goes to one of them) and ends when the node
    /// shuts down.
    pub fn commit_stream(&self) -> CommitStream {
        CommitStream {
            commits: self.commits.clone(),
            signal: self.progress.signal.clone(),
        }
    }

    /// Every failure that concerns this subscription: proposals dropped, timed out or too
    /// large (including acknowledged ones, which also fail their caller), storage failures,
    /// the group being removed.
    pub fn errors(&self) -> &Receiver<Error> {
        &self.errors
    }

    /// Proposes `data` and waits until it is committed and applied on this node; returns
    /// its log index. An `Ok` is durable on a quorum and is never lost while a quorum of
    /// the group's disks survives. A [`Error::Timeout`] leaves the outcome unknown.
    pub fn propose_blocking(&self, data: Vec<u8>, timeout: Duration) -> Result<u64> {
        self.call(timeout, self.proposal(data, timeout), Error::Timeout)
    }

    /// The async form of [`DataStructure::propose_blocking`]; does not block the executor.
    pub async fn propose(&self, data: Vec<u8>, timeout: Duration) -> Result<u64> {
        self.call_async(self.proposal(data, timeout)).await
    }

    /// A linearizable read barrier (Raft ReadIndex). Once every entry committed anywhere
    /// before the call has been delivered to this subscription's commit channel, returns
    /// the index `R` of the last commit handed to the channel (an entry or snapshot marker
    /// your channel carries; 0 if none yet). Apply your commits up to `R`, then read your
    /// state: that read sees every write acknowledged before the barrier was called. Works
    /// on any replica, learners included; costs one round of heartbeats from the leader, no
    /// log write.
    pub fn read_barrier_blocking(&self, timeout: Duration) -> Result<u64> {
        self.call(timeout, self.barrier(timeout), Error::ReadTimeout)
    }

    /// The async form of [`DataStructure::read_barrier_blocking`].
    pub async fn read_barrier(&self, timeout: Duration) -> Result<u64> {
        self.call_async(self.barrier(timeout)).await
    }

    /// The core input proposing `data`, given its waiter id.
    fn proposal(&self, data: Vec<u8>, timeout: Duration) -> impl FnOnce(Waiter) -> Input {
        let (group, sub) = (self.id, self.sub);
        move |waiter| Input::Propose {
            group,
            data,
            sub: Some(sub),
            waiter: Some(waiter),
            timeout: Some(timeout),
        }
    }

    /// The core input starting a read barrier, given its waiter id.
    fn barrier(&self, timeout: Duration) -> impl FnOnce(Waiter) -> Input {
        let (group, sub) = (self.id, self.sub);
        move |waiter| Input::ReadBarrier {
            group,
            sub,
            waiter,
            timeout,
        }
    }

    /// Sends `input` as a call whose completion `ack` hears.
    fn send_call(
        &self,
        ack: Ack,
        input: impl FnOnce(Waiter) -> Input + Send + 'static,
    ) -> Result<()> {
        self.node.call(ack, input)
    }

    /// Sends the input as a call and blocks until the core completes it (or fails with
    /// `timed_out`).
    fn call(
        &self,
        timeout: Duration,
        input: impl FnOnce(Waiter) -> Input + Send + 'static,
        timed_out: Error,
    ) -> Result<u64> {
        let slot = Arc::new(AckSlot::default());
        let filler = slot.clone();
        self.send_call(Box::new(move |result| filler.fill(result)), input)?;
        // The core always completes the ack (success, failure, deadline or shutdown); the
        // margin covers a core busy with a large round.
        slot.wait(timeout + Duration::from_secs(5))
            .unwrap_or(Err(timed_out))
    }

    /// The async form of [`DataStructure::call`].
    async fn call_async(
        &self,
        input: impl FnOnce(Waiter) -> Input + Send + 'static,
    ) -> Result<u64> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ack: Ack = Box::new(move |result| {
            let _ = tx.send(result);
        });
        self.send_call(ack, input)?;
        rx.await.unwrap_or(Err(Error::Shutdown))
    }

    /// The snapshot consumer: the state a [`Commit::Snapshot`] marker at `index` refers to,
    /// exactly that one (snapshot files are immutable and named by index; the two newest
    /// of each data structure are kept). Fails with [`Error::SnapshotUnavailable`] if that
    /// snapshot was superseded twice before being loaded: then load
    /// [`DataStructure::load_newest_snapshot`] instead and skip the commits at or below its
    /// index (no need to subscribe again).
    pub fn load_snapshot(&self, index: u64) -> Result<Vec<u8>> {
        let files = crate::storage::SnapshotFiles::new(self.node.data_dir());
        match files.read(self.id, index)? {
            Some(data) => Ok(data),
            None => Err(Error::SnapshotUnavailable(format!(
                "no snapshot at index {index} for {}",
                self.id
            ))),
        }
    }

    /// The newest stored snapshot of this data structure: its index and state. For a
    /// consumer whose [`Commit::Snapshot`] marker was superseded before it loaded it: after
    /// restoring this one, it skips the commits at or below the returned index, which the
    /// state already holds.
    pub fn load_newest_snapshot(&self) -> Result<(u64, Vec<u8>)> {
        match self.newest_snapshot()? {
            Some(index) => Ok((index, self.load_snapshot(index)?)),
            None => Err(Error::SnapshotUnavailable(format!(
                "no snapshot of {} is stored",
                self.id
            ))),
        }
    }

    /// The index of the newest stored snapshot of this data structure, if any.
    pub(crate) fn newest_snapshot(&self) -> Result<Option<u64>> {
        let files = crate::storage::SnapshotFiles::new(self.node.data_dir());
        Ok(files.newest(self.id)?)
    }
}

/// [`DataStructure::commits`] as a `futures` stream (see [`DataStructure::commit_stream`]).
pub struct CommitStream {
    commits: Receiver<Commit>,
    signal: Arc<Signal>,
}

impl futures_core::Stream for CommitStream {
    type Item = Commit;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Commit>> {
        use crossbeam_channel::TryRecvError;
        use std::task::Poll;
        loop {
            let seen = self.signal.count();
            match self.commits.try_recv() {
                Ok(commit) => return Poll::Ready(Some(commit)),
                Err(TryRecvError::Disconnected) => return Poll::Ready(None),
                // A commit taken after the check bumped the signal: look again.
                Err(TryRecvError::Empty) if self.signal.register(seen, cx.waker()) => {
                    return Poll::Pending
                }
                Err(TryRecvError::Empty) => {}
            }
        }
    }
}

impl std::fmt::Debug for CommitStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitStream")
            .field("queued", &self.commits.len())
            .finish()
    }
}

/// The sending end of a data structure's fire-and-forget proposals
/// ([`DataStructure::proposals`]). Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct ProposalSender {
    pub(crate) channel: Sender<Vec<u8>>,
    pub(crate) doorbell: Doorbell,
}

impl ProposalSender {
    /// Queues `data` for proposal, waiting while [`PROPOSALS_CAPACITY`] proposals are
    /// queued; fails (handing `data` back) once the subscription is gone.
    pub fn send(&self, data: Vec<u8>) -> std::result::Result<(), SendError<Vec<u8>>> {
        self.channel.send(data)?;
        self.doorbell.ring();
        Ok(())
    }

    /// Queues `data` for proposal without waiting: `Full` when [`PROPOSALS_CAPACITY`]
    /// proposals are queued (nothing is dropped; try again later).
    pub fn try_send(&self, data: Vec<u8>) -> std::result::Result<(), TrySendError<Vec<u8>>> {
        self.channel.try_send(data)?;
        self.doorbell.ring();
        Ok(())
    }

    /// Proposals queued and not yet handed to the node.
    pub fn len(&self) -> usize {
        self.channel.len()
    }

    /// Whether no proposal is queued.
    pub fn is_empty(&self) -> bool {
        self.channel.is_empty()
    }
}

impl std::fmt::Debug for ProposalSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProposalSender")
            .field("queued", &self.len())
            .finish()
    }
}

/// Where the core leaves the outcome of one acknowledged proposal. A waiting thread parks
/// on the condvar instead of spinning: crossbeam's channels spin and `sched_yield` before
/// parking, which with hundreds of waiting proposers costs more CPU than the replication.
#[derive(Default)]
struct AckSlot {
    result: Mutex<Option<Result<u64>>>,
    filled: Condvar,
}

impl AckSlot {
    fn fill(&self, result: Result<u64>) {
        if let Ok(mut slot) = self.result.lock() {
            *slot = Some(result);
            self.filled.notify_one();
        }
    }

    fn wait(&self, timeout: Duration) -> Option<Result<u64>> {
        let slot = self.result.lock().ok()?;
        let (mut slot, _) = self
            .filled
            .wait_timeout_while(slot, timeout, |r| r.is_none())
            .ok()?;
        slot.take()
    }
}

/// Ends a subscription when dropped (with the last clone of its `DataStructure`).
pub(crate) struct Subscribed {
    pub(crate) node: Arc<NodeHandle>,
    pub(crate) sub: SubId,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.node.unsubscribe(self.sub);
    }
}

impl std::fmt::Debug for DataStructure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataStructure")
            .field("id", &self.id)
            .finish()
    }
}
