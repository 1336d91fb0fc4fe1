//! Proposals waiting to be proposed (no replica or leader yet) or to commit.

use std::collections::VecDeque;

use super::pending::{InFlight, Proposal};
use super::{NodeCore, Waiter};
use crate::error::{Error, Result};
use crate::group::ProposalContext;
use crate::id::DataStructureId;
use crate::node::subscription::SubId;
use crate::telemetry;

/// How long a proposal handed to raft may stay unapplied before it is proposed again.
///
/// A proposal forwarded to the leader can be lost with no leader change: the transport
/// drops the oldest frames queued for a slow peer, and a leader refuses proposals while it
/// hands over. Raft retransmits its own messages but not forwarded proposals, so without
/// this the proposer would wait for its deadline. The retry goes through the same gate as
/// after a leader change, so a late original and its retry are applied once.
const RESEND_AFTER_MS: u64 = 5_000;

impl NodeCore {
    /// Reports the outcome for `waiter`, if there is one, in this round's output.
    pub(super) fn complete(&mut self, waiter: Option<Waiter>, result: Result<u64>) {
        if let Some(waiter) = waiter {
            self.completions.push((waiter, result));
        }
    }

    /// Proposes `data` to `group`. `waiter` gets the commit index or the failure;
    /// failures also go to the subscription's error channel.
    pub(crate) fn propose(
        &mut self,
        now_ms: u64,
        group: DataStructureId,
        data: Vec<u8>,
        sub: Option<SubId>,
        waiter: Option<Waiter>,
        timeout_ms: Option<u64>,
    ) {
        self.now_ms = now_ms;
        if self.stopped {
            return self.fail(sub, waiter, Error::Shutdown);
        }
        if data.len() > self.cfg.max_proposal_bytes {
            let error = Error::ProposalTooLarge {
                size: data.len(),
                limit: self.cfg.max_proposal_bytes,
            };
            return self.fail(sub, waiter, error);
        }
        let deadline_ms = now_ms + timeout_ms.unwrap_or(self.cfg.proposal_timeout_ms);
        self.pending.enqueue(Proposal {
            group,
            data,
            sub,
            waiter,
            proposed_ms: now_ms,
            deadline_ms,
        });
        self.flush_queued(group);
    }

    pub(super) fn fail(&mut self, sub: Option<SubId>, waiter: Option<Waiter>, error: Error) {
        telemetry::proposal_failed(&error);
        if let Some(s) = sub.and_then(|id| self.subscriptions.get(id)) {
            if !s.report(error.clone()) {
                slog::warn!(self.cfg.logger, "error channel full, dropping"; "error" => %error);
            }
        }
        self.complete(waiter, Err(error));
    }

    /// Hands queued proposals of `group` to raft once it has a replica that knows a leader.
    pub(super) fn flush_queued(&mut self, group: DataStructureId) {
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        // A leader handing over refuses proposals; they wait for the new leader instead.
        if raft.leader() == 0
            || raft.is_transferring()
            || !raft.log().is_initialized()
            || !self.pending.has_queued(group)
        {
            return;
        }
        if raft.take_leader_change() {
            self.on_leader_change(group);
        }
        let Some(queue) = self.pending.take_queue(group) else {
            return;
        };
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        // raft drops a proposal only before appending it (no leader, leadership moving,
        // too much uncommitted data), so it waits in the queue and is tried again next
        // round, until its deadline.
        let mut dropped = VecDeque::new();
        let proposed_after = raft.applied();
        for p in queue {
            let seq = self.next_seq;
            self.next_seq += 1;
            let ctx = ProposalContext {
                node: self.me,
                seq,
                retry_after: None,
            };
            match raft.propose(ctx.encode(), p.data.clone()) {
                Ok(()) => {
                    let flight = InFlight {
                        proposal: p,
                        proposed_after,
                        sent_ms: self.now_ms,
                    };
                    self.pending.launch(seq, flight);
                }
                Err(e) => {
                    slog::debug!(self.cfg.logger, "proposal dropped by raft, will retry";
                        "group" => %group, "error" => %e);
                    dropped.push_back(p);
                }
            }
        }
        self.active.insert(group);
        self.pending.requeue(group, dropped);
    }

    pub(super) fn expire_proposals(&mut self) {
        self.resend_stalled_proposals();
        let (flights, queued) = self.pending.take_expired(self.now_ms);
        for InFlight { proposal: p, .. } in flights {
            if let Some(raft) = self.groups.get(&p.group) {
                slog::warn!(self.cfg.logger, "proposal timed out"; "group" => %p.group,
                    "leader" => raft.leader(), "term" => raft.term(),
                    "commit" => raft.committed(), "applied" => raft.applied());
            }
            self.fail(p.sub, p.waiter, Error::Timeout);
        }
        for p in queued {
            let error = if self.groups.contains_key(&p.group) {
                Error::ProposalDropped("no leader known before the deadline".into())
            } else {
                Error::Timeout
            };
            self.fail(p.sub, p.waiter, error);
        }
    }

    /// Retries the groups whose proposals have waited [`RESEND_AFTER_MS`] since they were
    /// last handed to raft.
    fn resend_stalled_proposals(&mut self) {
        let stalled = self.pending.stalled_groups(self.now_ms, RESEND_AFTER_MS);
        for group in stalled {
            self.gate_retries(group);
        }
    }

    /// A new leader is known: requests sent to the old one may be lost.
    pub(super) fn on_leader_change(&mut self, id: DataStructureId) {
        telemetry::leader_changed();
        if self.pending.any_in_flight(id) {
            self.gate_retries(id);
        }
        self.request_waiting_reads(id);
    }

    /// The group's leader changed: a proposal forwarded to the old one may be lost, so
    /// propose every one still unapplied again as a retry (the copy that comes second in
    /// the log is skipped on apply; the check starts where the original could first land).
    /// Called once this replica has applied everything the new leader had committed (see
    /// `gate_retries`), so an original committed before is acknowledged, not retried.
    pub(super) fn retry_in_flight(&mut self, id: DataStructureId) {
        let Some(raft) = self.groups.get(&id) else {
            return;
        };
        // A retry is recognised as a duplicate only if its original is at most
        // `DEDUPE_WINDOW` entries before it. A proposal older than half that is not
        // retried: its outcome is unknown.
        let horizon = raft
            .applied()
            .saturating_sub(crate::group::DEDUPE_WINDOW / 2);
        for flight in self.pending.take_older_than(id, horizon) {
            self.fail(flight.proposal.sub, flight.proposal.waiter, Error::Timeout);
        }
        let Some(raft) = self.groups.get_mut(&id) else {
            return;
        };
        let mut retried = 0usize;
        for (seq, flight) in self.pending.in_flight_of(id) {
            let ctx = ProposalContext {
                node: self.me,
                seq,
                retry_after: Some(flight.proposed_after),
            };
            if raft
                .propose(ctx.encode(), flight.proposal.data.clone())
                .is_ok()
            {
                flight.sent_ms = self.now_ms;
                retried += 1;
            }
        }
        if retried > 0 {
            slog::info!(self.cfg.logger, "proposals retried";
                "group" => %id, "count" => retried, "leader" => raft.leader());
            self.active.insert(id);
        }
    }
}
