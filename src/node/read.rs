//! Linearizable reads: a read barrier per subscription, built on raft's ReadIndex.
//!
//! The replica asks the leader (forwarded if it is a follower or learner) for the commit
//! index as of now, confirmed by a quorum of heartbeats. The barrier completes once the
//! subscription has been handed every entry up to that index, so an application that
//! applies its commits up to the returned index and then reads its state reads everything
//! committed before the barrier was called, on any replica.

use super::subscription::SubId;
use super::{NodeCore, Waiter};
use crate::error::Error;
use crate::group::ProposalContext;
use crate::id::DataStructureId;

/// A read barrier waiting for its index, then for delivery up to it.
pub(crate) struct PendingRead {
    pub group: DataStructureId,
    pub sub: Option<SubId>,
    pub waiter: Option<Waiter>,
    pub deadline_ms: u64,
    /// The read index, once the leader answered.
    pub index: Option<u64>,
    /// Not an application's read: once applied up to its index, retry the group's
    /// proposals in flight.
    pub retry_gate: bool,
    /// When the read index was last asked for.
    pub requested_ms: u64,
    /// Waiting to be asked for until this replica sees an entry of the leader's term
    /// committed (a leader drops ReadIndex requests until then, without an answer).
    pub deferred: bool,
}

/// How long a read waits for the leader's answer before asking again (the request or its
/// answer may be lost, or the leader changed).
const READ_RETRY_MS: u64 = 300;

impl NodeCore {
    /// Starts a read barrier on `group` for subscription `sub`.
    pub(crate) fn read_barrier(
        &mut self,
        now_ms: u64,
        group: DataStructureId,
        sub: Option<SubId>,
        waiter: Waiter,
        timeout_ms: u64,
    ) {
        self.now_ms = now_ms;
        if self.stopped {
            return self.complete(Some(waiter), Err(Error::Shutdown));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.reads.insert(
            seq,
            PendingRead {
                group,
                sub,
                waiter: Some(waiter),
                deadline_ms: now_ms + timeout_ms,
                index: None,
                requested_ms: now_ms,
                retry_gate: false,
                deferred: false,
            },
        );
        self.request_read_index(seq);
    }

    fn on_gate_expired(&mut self, group: DataStructureId) {
        if self.pending.any_in_flight(group) {
            self.gate_retries(group);
        }
    }

    /// Retries the proposals in flight on `group` once this replica has applied what the
    /// leader has committed (a read index): retrying from a lagging replica would let the
    /// original and its retry land too far apart for the duplicate check.
    pub(super) fn gate_retries(&mut self, group: DataStructureId) {
        if self
            .reads
            .values()
            .any(|r| r.retry_gate && r.group == group)
        {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let now = self.now_ms;
        self.reads.insert(
            seq,
            PendingRead {
                group,
                sub: None,
                waiter: None,
                deadline_ms: now + self.cfg.proposal_timeout_ms,
                index: None,
                requested_ms: now,
                retry_gate: true,
                deferred: false,
            },
        );
        self.request_read_index(seq);
    }

    /// Sends (or re-sends, after a leader change) the ReadIndex request of read `seq`; it
    /// waits for a replica that knows a leader.
    fn request_read_index(&mut self, seq: u64) {
        let Some(read) = self.reads.get_mut(&seq) else {
            return;
        };
        let Some(raft) = self.groups.get_mut(&read.group) else {
            return;
        };
        if raft.leader() == 0 || !raft.log().is_initialized() {
            return;
        }
        read.requested_ms = self.now_ms;
        read.deferred = !raft.has_committed_in_term();
        if read.deferred {
            return;
        }
        let ctx = ProposalContext {
            node: self.me,
            seq,
            retry_after: None,
        };
        raft.read_index(ctx.encode());
        self.active.insert(read.group);
    }

    /// Re-requests every read of `group` still waiting for its index (a leader change may
    /// have lost the request), and requests those that waited for a leader.
    pub(super) fn request_waiting_reads(&mut self, group: DataStructureId) {
        let waiting: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.group == group && r.index.is_none())
            .map(|(seq, _)| *seq)
            .collect();
        for seq in waiting {
            self.request_read_index(seq);
        }
    }

    /// Asks for the read indexes of `group` deferred until an entry of the leader's term
    /// committed (a new leader's first entry: right after a failover).
    pub(super) fn request_deferred_reads(&mut self, group: DataStructureId) {
        if self.reads.is_empty() {
            return;
        }
        if !self
            .groups
            .get(&group)
            .is_some_and(|g| g.has_committed_in_term())
        {
            return;
        }
        let deferred: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.group == group && r.deferred)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in deferred {
            self.request_read_index(seq);
        }
    }

    /// Asks again for read indexes that got no answer in time (see [`READ_RETRY_MS`]).
    pub(super) fn retry_unanswered_reads(&mut self) {
        let now = self.now_ms;
        let unanswered: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.index.is_none() && now >= r.requested_ms + READ_RETRY_MS)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in unanswered {
            self.request_read_index(seq);
        }
    }

    /// Fails every read barrier waiting here with `error`.
    pub(super) fn fail_reads(&mut self, error: Error) {
        for (_, read) in std::mem::take(&mut self.reads) {
            self.complete(read.waiter, Err(error.clone()));
        }
    }

    /// The leader answered read requests of this node with the index to wait for.
    pub(super) fn on_read_states(&mut self, reads: Vec<(Vec<u8>, u64)>) {
        for (ctx, index) in reads {
            let Some(ctx) = ProposalContext::decode(&ctx).filter(|c| c.node == self.me) else {
                continue;
            };
            if let Some(read) = self.reads.get_mut(&ctx.seq) {
                read.index.get_or_insert(index);
            }
        }
    }

    /// Completes reads whose index has been delivered to their subscription (or applied,
    /// for a read without one), and fails those past their deadline.
    pub(super) fn complete_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let now = self.now_ms;
        let mut done = Vec::new();
        for (seq, read) in &self.reads {
            let reached = read
                .index
                .filter(|index| self.delivered_up_to(read, *index));
            if let Some(index) = reached {
                done.push((*seq, Ok(self.barrier_answer(read, index))));
            } else if read.deadline_ms <= now {
                done.push((*seq, Err(Error::ReadTimeout)));
            }
        }
        for (seq, result) in done {
            if let Some(read) = self.reads.remove(&seq) {
                match result {
                    Ok(_) if read.retry_gate => self.retry_in_flight(read.group),
                    // The leader could not confirm a read index in time: try again while
                    // proposals still wait (each has its own deadline).
                    Err(_) if read.retry_gate => self.on_gate_expired(read.group),
                    Ok(index) => self.complete(read.waiter, Ok(index)),
                    Err(error) => self.fail(read.sub, read.waiter, error),
                }
            }
        }
    }

    /// What a completed barrier returns: for a subscription, the index of the last commit
    /// it was handed (the read index itself may be a leader no-op it never sees).
    fn barrier_answer(&self, read: &PendingRead, index: u64) -> u64 {
        match read.sub.and_then(|s| self.subscriptions.get(s)) {
            Some(sub) => sub.last_delivered,
            None => index,
        }
    }

    fn delivered_up_to(&self, read: &PendingRead, index: u64) -> bool {
        let applied = self.groups.get(&read.group).map_or(0, |g| g.applied());
        let delivered = match read.sub.and_then(|s| self.subscriptions.get(s)) {
            Some(sub) => sub.next_index > index,
            None => true,
        };
        applied >= index && delivered
    }
}
