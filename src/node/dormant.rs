//! A core whose storage ran out of space or file descriptors, waiting for them to return.
//!
//! sled answers every operation after a failed write with that error, so the store must be
//! closed and opened again before anything is written; and the core's raft state may be
//! ahead of what reached the disk. So the core is put to sleep as a [`Dormant`]: its raft
//! groups are dropped (the disk has what they had made durable), every waiter fails, and
//! only what outlives the storage is kept: the membership view, the local subscriptions
//! with their cursors, the groups local applications want. The node stays silent to raft
//! meanwhile, as a paused process would: its peers elect leaders elsewhere. Once the
//! runtime has reopened the store, [`Dormant::wake`] opens a core over it as at a restart
//! and hands it what was kept; the subscriptions carry on from their cursors, so an
//! application sees each commit once, as if nothing had happened.

use rand::rngs::SmallRng;
use rand::Rng;

use super::member::Members;
use super::subscription::Subscriptions;
use super::{validate, CoreConfig, Input, Map, NodeCore, Set, Waiter};
use crate::error::{Error, Result};
use crate::id::{DataStructureId, ReplicaId};
use crate::storage::LogStore;
use crate::telemetry;

/// What of a core outlives its storage (see the module docs).
pub(crate) struct Dormant {
    cfg: CoreConfig,
    rng: SmallRng,
    members: Members,
    subscriptions: Subscriptions,
    wanted: Set<DataStructureId>,
    removed_seen: Map<DataStructureId, Vec<ReplicaId>>,
    started_ms: Option<u64>,
    next_seq: u64,
    refusals: validate::Refusals,
    completions: Vec<(Waiter, Result<u64>)>,
}

impl NodeCore {
    /// Puts the core to sleep after its storage ran out of space: every proposal and read
    /// barrier fails with `cause` (a proposal already in raft may still commit through the
    /// other replicas), and the subscribers hear why nothing is acknowledged for now.
    pub(crate) fn into_dormant(mut self, cause: Error) -> Dormant {
        debug_assert!(
            self.storage_failed(),
            "only a core whose storage failed goes dormant"
        );
        for flight in self.pending.take_in_flight() {
            telemetry::proposal_failed(&cause);
            self.complete(flight.proposal.waiter, Err(cause.clone()));
        }
        for proposal in self.pending.take_queued() {
            telemetry::proposal_failed(&Error::StorageExhausted);
            self.complete(proposal.waiter, Err(Error::StorageExhausted));
        }
        self.fail_reads(Error::StorageExhausted);
        self.subscriptions.report_to_all(&Error::StorageExhausted);
        Dormant {
            cfg: self.cfg,
            rng: self.rng,
            members: self.members,
            subscriptions: self.subscriptions,
            wanted: self.wanted,
            removed_seen: self.removed_seen,
            started_ms: self.started_ms,
            next_seq: self.next_seq,
            refusals: self.refusals,
            completions: self.completions,
        }
    }
}

impl Dormant {
    /// Applies one input at `now_ms`; true when it asks the node to stop. Membership and
    /// subscriptions are kept up to date, calls fail at once with [`Error::StorageExhausted`],
    /// and the rest (peers' raft traffic, the former store's reports) is dropped: the core
    /// that wakes starts from the disk.
    pub(crate) fn handle(&mut self, now_ms: u64, input: Input) -> bool {
        match input {
            Input::Membership(event) => {
                self.members.apply(self.cfg.me.node_id, now_ms, event);
            }
            Input::Subscribe { sub, group, sink } => {
                self.subscriptions.add(sub, group, sink);
                self.wanted.insert(group);
            }
            Input::Unsubscribe(sub) => self.subscriptions.remove(sub),
            Input::Propose {
                group, sub, waiter, ..
            } => {
                telemetry::proposal_failed(&Error::StorageExhausted);
                match waiter {
                    Some(waiter) => self.completions.push((waiter, Err(Error::StorageExhausted))),
                    None if sub.is_some() => self.subscriptions.report_to_group(
                        group,
                        &Error::ProposalDropped("the node's storage cannot write (disk full, or out of file descriptors)".to_string()),
                    ),
                    None => {}
                }
            }
            Input::ReadBarrier { waiter, .. } => {
                self.completions
                    .push((waiter, Err(Error::StorageExhausted)));
            }
            Input::Shutdown => return true,
            _ => {}
        }
        false
    }

    /// The outcomes of the calls failed since the last poll.
    pub(crate) fn take_completions(&mut self) -> Vec<(Waiter, Result<u64>)> {
        std::mem::take(&mut self.completions)
    }

    /// Opens a core over the reopened `disk`, as at a restart, and hands it what was kept.
    pub(crate) fn wake(mut self, disk: std::sync::Arc<dyn LogStore>) -> Result<NodeCore> {
        let mut cfg = self.cfg.clone();
        // Fresh streams and election timeouts, as a restarted node would have.
        cfg.rng_seed = self.rng.gen();
        let mut core = NodeCore::open(cfg, disk)?;
        debug_assert!(
            self.completions.is_empty(),
            "completions polled before waking"
        );
        core.members = self.members;
        core.subscriptions = self.subscriptions;
        core.removed_seen = self.removed_seen;
        core.started_ms = self.started_ms;
        // Proposal ids must not repeat: the log holds the ones of before.
        core.next_seq = self.next_seq;
        core.refusals = self.refusals;
        core.wake_all();
        core.bootstrap_when_expected_nodes_are_up();
        for group in self.wanted {
            core.wanted.insert(group);
            core.pursue(group);
        }
        Ok(core)
    }
}
