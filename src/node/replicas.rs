//! Replica management by each group's leader: grow to the replication factor, replace
//! voters on nodes dead past the grace period, drop dead learners, and give every node a
//! replica of the system group.
//!
//! The voter target is [`placement::voter_count`] of the alive nodes: the replication
//! factor, or the largest odd count below it. Every missing voter first joins as a learner
//! on another alive node (rendezvous order, preferring a datacenter the live voters do not
//! cover); once as many learners as are missing have caught up, one joint-consensus change
//! (ConfChangeV2) promotes them all and removes the dead voters, so a group goes from one
//! voter straight to three, never through two. One configuration change at a time per
//! group.

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};

use super::placement;
use super::NodeCore;
use crate::id::{node_of, DataStructureId, NodeId, ReplicaId};
use crate::proto;

impl NodeCore {
    /// The leader's replica management step for `group` (see the module docs).
    pub(super) fn manage_replicas(&mut self, group: DataStructureId) {
        let Some(raft) = self.groups.get(&group) else {
            return;
        };
        let cs = raft.log().conf_state().clone();
        if raft.has_pending_conf() || !cs.voters_outgoing.is_empty() {
            return;
        }
        let committed = raft.committed();
        let caught_up = |r: &ReplicaId| raft.matched(*r).is_some_and(|m| m >= committed);
        let dead_voters: Vec<ReplicaId> = cs
            .voters
            .iter()
            .copied()
            .filter(|v| self.is_dead_for_good(node_of(*v)))
            .collect();
        let live_voters = cs.voters.len() - dead_voters.len();
        let target = self.voter_target();
        let needed = target.saturating_sub(live_voters);
        if needed > 0 {
            let ready: Vec<ReplicaId> = self
                .rank_replicas(group, &cs.learners)
                .into_iter()
                .filter(|l| self.is_alive(node_of(*l)) && caught_up(l))
                .take(needed)
                .collect();
            if ready.len() == needed {
                // All at once, in one joint change: growing one voter at a time would
                // pass through an even count (1 -> 2 -> 3), which a single failure blocks.
                let promote = ready.iter().map(|l| (ConfChangeType::AddNode, *l));
                let remove = dead_voters.iter().map(|v| (ConfChangeType::RemoveNode, *v));
                let changes: Vec<_> = promote.chain(remove).collect();
                return self.change_conf(group, &changes);
            }
            let candidates = cs.learners.iter().filter(|l| self.is_alive(node_of(**l)));
            if candidates.count() < needed {
                let node = self.replacement_node(group, &cs);
                if let Some(replica) = node.and_then(|node| self.fresh_replica(group, node)) {
                    return self.change_conf(group, &[(ConfChangeType::AddLearnerNode, replica)]);
                }
            }
        }
        let dead_learner = cs
            .learners
            .iter()
            .copied()
            .find(|l| self.is_dead_for_good(node_of(*l)));
        if let Some(learner) = dead_learner {
            return self.change_conf(group, &[(ConfChangeType::RemoveNode, learner)]);
        }
        if group.is_system() {
            let hosting = hosting_nodes(&cs);
            let missing = self
                .members
                .alive()
                .map(|(id, _)| id)
                .find(|id| !hosting.contains(id));
            if let Some(replica) = missing.and_then(|node| self.fresh_replica(group, node)) {
                self.change_conf(group, &[(ConfChangeType::AddLearnerNode, replica)]);
            }
        }
    }

    /// `replicas` in the group's rendezvous order of their nodes.
    fn rank_replicas(&self, group: DataStructureId, replicas: &[ReplicaId]) -> Vec<ReplicaId> {
        let ranked = placement::rank(group, replicas.iter().map(|r| (node_of(*r), "")));
        ranked
            .into_iter()
            .filter_map(|(node, _)| replicas.iter().copied().find(|r| node_of(*r) == node))
            .collect()
    }

    /// An alive node without a replica of the group, in rendezvous order, preferring one in
    /// a datacenter that no live voter covers.
    fn replacement_node(
        &self,
        group: DataStructureId,
        cs: &raft::eraftpb::ConfState,
    ) -> Option<NodeId> {
        let hosting = hosting_nodes(cs);
        let datacenter = |node: NodeId| -> &str {
            if node == self.me {
                &self.cfg.me.datacenter
            } else {
                self.members.datacenter(node).unwrap_or("")
            }
        };
        let covered: Vec<&str> = cs
            .voters
            .iter()
            .map(|v| node_of(*v))
            .filter(|n| self.is_alive(*n))
            .map(datacenter)
            .collect();
        let candidates: Vec<(NodeId, &str)> = self
            .alive_nodes()
            .into_iter()
            .filter(|(n, _)| !hosting.contains(n) && !self.was_removed(group, *n))
            .collect();
        let ranked = placement::rank(group, candidates);
        ranked
            .iter()
            .find(|(_, dc)| !covered.contains(dc))
            .or(ranked.first())
            .map(|(n, _)| *n)
    }

    /// Proposes one configuration change: a simple one for a single change, a joint one
    /// (left automatically once applied) for several.
    pub(super) fn change_conf(
        &mut self,
        group: DataStructureId,
        changes: &[(ConfChangeType, ReplicaId)],
    ) {
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        let mut cc = ConfChangeV2::default();
        for (change, replica) in changes {
            let mut single = ConfChangeSingle::default();
            single.set_change_type(*change);
            single.node_id = *replica;
            cc.mut_changes().push(single);
        }
        match raft.propose_conf_change(cc) {
            Ok(()) => {
                slog::info!(self.cfg.logger, "proposing conf change"; "group" => %group,
                    "changes" => ?changes);
            }
            Err(e) => {
                slog::debug!(self.cfg.logger, "conf change dropped"; "group" => %group, "error" => %e);
            }
        }
        self.active.insert(group);
    }

    /// Another node wants a replica of `group` for its subscriber: the leader adds it as a
    /// learner, unless that replica id was removed before.
    pub(super) fn handle_join_request(&mut self, join: proto::JoinRequest) {
        let Some(group) = DataStructureId::from_bytes(&join.group) else {
            return;
        };
        let replica = join.replica_id;
        if node_of(replica) != join.node_id || !self.members.knows(join.node_id) {
            return;
        }
        if self.was_removed(group, replica) {
            return;
        }
        let Some(raft) = self.groups.get(&group) else {
            return;
        };
        let hosted_on_node = raft
            .log()
            .conf_state()
            .voters
            .iter()
            .chain(&raft.log().conf_state().learners)
            .any(|r| node_of(*r) == join.node_id);
        if !raft.is_leader() || raft.has_pending_conf() || hosted_on_node {
            return;
        }
        self.change_conf(group, &[(ConfChangeType::AddLearnerNode, replica)]);
    }
}

/// The nodes holding a replica in configuration `cs`.
fn hosting_nodes(cs: &raft::eraftpb::ConfState) -> Vec<NodeId> {
    cs.voters
        .iter()
        .chain(&cs.learners)
        .map(|r| node_of(*r))
        .collect()
}
