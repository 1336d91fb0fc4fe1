//! The local callers' proposals the core keeps: queued until their group has a replica
//! here that knows a leader, then in flight until applied. One owner, so the rules on them
//! (deadlines, which wait for a group, which are stale) live in one place.

use std::collections::{BTreeSet, VecDeque};

use super::subscription::SubId;
use super::{Map, Waiter};
use crate::id::DataStructureId;

/// A proposal and who waits for it.
pub(crate) struct Proposal {
    pub group: DataStructureId,
    pub data: Vec<u8>,
    pub sub: Option<SubId>,
    pub waiter: Option<Waiter>,
    /// When it was proposed (ms), for the commit latency.
    pub proposed_ms: u64,
    pub deadline_ms: u64,
}

/// A proposal handed to raft, waiting to be applied.
pub(crate) struct InFlight {
    /// The proposal, its data kept to propose again if the leader changes before it is
    /// applied.
    pub proposal: Proposal,
    /// The proposer's applied index when it first proposed: the entry can only land
    /// after it, so a retry's duplicate check starts there.
    pub proposed_after: u64,
    /// When it was last handed to raft (first proposal or retry).
    pub sent_ms: u64,
}

/// Queued proposals per group, and proposals in flight by their sequence number.
#[derive(Default)]
pub(crate) struct Pending {
    queued: Map<DataStructureId, VecDeque<Proposal>>,
    in_flight: Map<u64, InFlight>,
}

impl Pending {
    /// Queues `proposal` behind its group's earlier ones.
    pub(crate) fn enqueue(&mut self, proposal: Proposal) {
        self.queued
            .entry(proposal.group)
            .or_default()
            .push_back(proposal);
    }

    /// Whether `group` has proposals waiting to be handed to raft.
    pub(crate) fn has_queued(&self, group: DataStructureId) -> bool {
        self.queued.contains_key(&group)
    }

    /// The groups with queued proposals.
    pub(crate) fn queued_groups(&self) -> Vec<DataStructureId> {
        self.queued.keys().copied().collect()
    }

    /// Takes `group`'s queue, oldest first.
    pub(crate) fn take_queue(&mut self, group: DataStructureId) -> Option<VecDeque<Proposal>> {
        self.queued.remove(&group)
    }

    /// Puts back the proposals of `group` that raft did not take (oldest first).
    pub(crate) fn requeue(&mut self, group: DataStructureId, proposals: VecDeque<Proposal>) {
        debug_assert!(
            !self.queued.contains_key(&group),
            "a group's queue is taken whole before it is put back"
        );
        if !proposals.is_empty() {
            self.queued.insert(group, proposals);
        }
    }

    /// Records proposal `seq` as handed to raft.
    pub(crate) fn launch(&mut self, seq: u64, flight: InFlight) {
        let earlier = self.in_flight.insert(seq, flight);
        debug_assert!(earlier.is_none(), "sequence number {seq} used twice");
    }

    /// The proposal `seq` of `group` landed in the log: it is no longer in flight.
    pub(crate) fn land(&mut self, seq: u64, group: DataStructureId) -> Option<InFlight> {
        if self.in_flight.get(&seq)?.proposal.group != group {
            return None;
        }
        self.in_flight.remove(&seq)
    }

    /// Whether `group` has proposals in flight.
    pub(crate) fn any_in_flight(&self, group: DataStructureId) -> bool {
        self.in_flight.values().any(|f| f.proposal.group == group)
    }

    /// The proposals whose deadline passed at `now_ms`: in flight, then queued.
    pub(crate) fn take_expired(&mut self, now_ms: u64) -> (Vec<InFlight>, Vec<Proposal>) {
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.proposal.deadline_ms <= now_ms)
            .map(|(seq, _)| *seq)
            .collect();
        let flights = expired
            .into_iter()
            .filter_map(|seq| self.in_flight.remove(&seq))
            .collect();
        let mut queued = Vec::new();
        for queue in self.queued.values_mut() {
            while queue.front().is_some_and(|p| p.deadline_ms <= now_ms) {
                queued.extend(queue.pop_front());
            }
        }
        self.queued.retain(|_, q| !q.is_empty());
        (flights, queued)
    }

    /// The groups with a proposal last handed to raft `after_ms` or more before `now_ms`.
    pub(crate) fn stalled_groups(&self, now_ms: u64, after_ms: u64) -> BTreeSet<DataStructureId> {
        self.in_flight
            .values()
            .filter(|f| f.sent_ms.saturating_add(after_ms) <= now_ms)
            .map(|f| f.proposal.group)
            .collect()
    }

    /// Takes `group`'s proposals in flight that were first proposed before `horizon`.
    pub(crate) fn take_older_than(
        &mut self,
        group: DataStructureId,
        horizon: u64,
    ) -> Vec<InFlight> {
        let stale: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.proposal.group == group && f.proposed_after < horizon)
            .map(|(seq, _)| *seq)
            .collect();
        stale
            .into_iter()
            .filter_map(|seq| self.in_flight.remove(&seq))
            .collect()
    }

    /// `group`'s proposals in flight, with their sequence numbers, to propose again.
    pub(crate) fn in_flight_of(
        &mut self,
        group: DataStructureId,
    ) -> impl Iterator<Item = (u64, &mut InFlight)> {
        self.in_flight
            .iter_mut()
            .filter(move |(_, f)| f.proposal.group == group)
            .map(|(seq, f)| (*seq, f))
    }

    /// Takes every proposal in flight (their waiters are to hear of a failure).
    pub(crate) fn take_in_flight(&mut self) -> Vec<InFlight> {
        std::mem::take(&mut self.in_flight).into_values().collect()
    }

    /// Takes every queued proposal.
    pub(crate) fn take_queued(&mut self) -> Vec<Proposal> {
        std::mem::take(&mut self.queued)
            .into_values()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(group: DataStructureId, deadline_ms: u64, waiter: Option<Waiter>) -> Proposal {
        Proposal {
            group,
            data: Vec::new(),
            sub: None,
            waiter,
            proposed_ms: 0,
            deadline_ms,
        }
    }

    fn flight(group: DataStructureId, deadline_ms: u64, proposed_after: u64) -> InFlight {
        InFlight {
            proposal: proposal(group, deadline_ms, None),
            proposed_after,
            sent_ms: 0,
        }
    }

    #[test]
    fn proposals_land_once_in_their_own_group_and_expire_on_time() {
        let (a, b) = (DataStructureId::from_u128(1), DataStructureId::from_u128(2));
        let mut pending = Pending::default();
        pending.launch(1, flight(a, 100, 5));
        pending.launch(2, flight(b, 300, 50));
        assert!(
            pending.land(1, b).is_none(),
            "a sequence number of another group"
        );
        assert!(pending.land(1, a).is_some());
        assert!(pending.land(1, a).is_none(), "landed once");
        pending.enqueue(proposal(a, 200, Some(9)));
        let (flights, queued) = pending.take_expired(250);
        assert!(flights.is_empty());
        assert_eq!(
            queued.iter().map(|p| p.waiter).collect::<Vec<_>>(),
            [Some(9)]
        );
        assert!(!pending.has_queued(a));
        assert_eq!(pending.take_older_than(b, 50).len(), 0);
        assert_eq!(pending.take_older_than(b, 51).len(), 1);
        assert!(!pending.any_in_flight(b));
    }
}
