//! Leadership placement: every group prefers as leader its first alive voter in rendezvous
//! order, which spreads leaderships evenly over the nodes that host them; a node shutting
//! down hands its leaderships over first, so writes see no election gap.

use super::placement;
use super::NodeCore;
use crate::id::{node_of, DataStructureId, ReplicaId};

/// How long a graceful shutdown waits for its leaderships to move before stopping anyway.
const HANDOVER_TIMEOUT_MS: u64 = 3_000;

/// A graceful shutdown in progress: leaderships are being handed over.
/// Once started it lasts until the node stops: the node keeps handing over leaderships it
/// gains meanwhile, and never takes one back by balancing.
pub(crate) struct Handover {
    deadline_ms: u64,
    /// Reported once by `poll_handover`: nothing is left to hand over, or the deadline.
    reported: bool,
}

impl NodeCore {
    /// The voter that should lead `group`: the first alive one in rendezvous order.
    fn preferred_leader(&self, group: DataStructureId) -> Option<ReplicaId> {
        let raft = self.groups.get(&group)?;
        let voters = &raft.log().conf_state().voters;
        let alive = voters
            .iter()
            .map(|v| node_of(*v))
            .filter(|n| self.is_alive(*n))
            .map(|n| (n, ""));
        let node = placement::rank(group, alive).first().map(|(n, _)| *n)?;
        voters.iter().copied().find(|v| node_of(*v) == node)
    }

    /// A leader that is not its group's preferred leader hands over to it once the
    /// preferred one has the whole log (so the transfer is quick and safe).
    pub(super) fn balance_leadership(&mut self, group: DataStructureId) {
        if self.handover.is_some() {
            return;
        }
        let Some(preferred) = self.preferred_leader(group) else {
            return;
        };
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        if preferred == raft.replica_id() || !raft.is_leader() || raft.has_pending_conf() {
            return;
        }
        if raft.matched(preferred) == Some(raft.last_index()) {
            slog::debug!(self.cfg.logger, "handing leadership to the preferred voter";
                "group" => %group, "to" => preferred);
            raft.transfer_leader(preferred);
            self.active.insert(group);
        }
    }

    /// Starts a graceful shutdown: hand every leadership to the most up-to-date other
    /// voter. [`NodeCore::poll_handover`] says when no group here has a leader to hand
    /// over, or the deadline passed.
    pub(crate) fn begin_handover(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.handover = Some(Handover {
            deadline_ms: now_ms + HANDOVER_TIMEOUT_MS,
            reported: false,
        });
        self.hand_over_leaderships();
    }

    /// Moves on with a handover: re-targets leaderships gained meanwhile. True once, when
    /// the handover is done (nothing left to hand over, or its deadline passed).
    pub(crate) fn poll_handover(&mut self) -> bool {
        let Some(deadline_ms) = self.handover.as_ref().map(|h| h.deadline_ms) else {
            return false;
        };
        let pending = self.hand_over_leaderships();
        let done = pending == 0 || deadline_ms <= self.now_ms;
        match self.handover.as_mut() {
            Some(handover) if done && !handover.reported => {
                handover.reported = true;
                true
            }
            _ => false,
        }
    }

    /// Asks every group this node leads to transfer to its best other voter; returns how
    /// many groups still have a leadership to hand over.
    fn hand_over_leaderships(&mut self) -> usize {
        let mut pending = 0;
        // Every group, hibernating or not: all leaderships leave.
        let led = self.led_groups(true);
        for group in led {
            let target = self.best_successor(group);
            let Some(raft) = self.groups.get_mut(&group) else {
                continue;
            };
            if let Some(target) = target {
                raft.transfer_leader(target);
                self.active.insert(group);
                pending += 1;
            }
        }
        pending
    }

    /// The alive voter on another node that has replicated the most.
    fn best_successor(&self, group: DataStructureId) -> Option<ReplicaId> {
        let raft = self.groups.get(&group)?;
        raft.log()
            .conf_state()
            .voters
            .iter()
            .filter(|v| node_of(**v) != self.me && self.is_alive(node_of(**v)))
            .max_by_key(|v| raft.matched(**v).unwrap_or(0))
            .copied()
    }
}
