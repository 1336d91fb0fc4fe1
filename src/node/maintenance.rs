//! Periodic work: creating and joining wanted groups, growing groups to their replication
//! factor, keeping the directory's replica sets current, serving the system snapshot.

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Snapshot};

use super::directory::DirectoryOp;
use super::placement;
use super::proposal::ProposalContext;
use super::NodeCore;
use crate::id::{DataStructureId, NodeId};
use crate::proto;

/// Ticks between attempts to create or join a wanted group, and between replica checks.
const MAINTENANCE_PERIOD_TICKS: u64 = 5;

impl NodeCore {
    pub(super) fn maintain(&mut self) {
        self.prepare_system_snapshot();
        if self.ticks % MAINTENANCE_PERIOD_TICKS != 0 {
            return;
        }
        let wanted: Vec<_> = self.wanted.iter().copied().collect();
        for group in wanted {
            self.pursue(group);
        }
        let led: Vec<_> = self
            .groups
            .iter()
            .filter(|(_, g)| g.is_leader())
            .map(|(id, _)| *id)
            .collect();
        for group in led {
            self.grow(group);
            self.reconcile_directory(group);
            self.balance_leadership(group);
        }
    }

    pub(super) fn is_alive(&self, node: NodeId) -> bool {
        node == self.me || self.members.get(&node).is_some_and(|m| m.alive)
    }

    /// Alive nodes with their datacenters, this one included.
    fn alive_nodes(&self) -> Vec<(NodeId, &str)> {
        let mut nodes = vec![(self.me, self.cfg.me.datacenter.as_str())];
        nodes.extend(
            self.members
                .iter()
                .filter(|(_, m)| m.alive)
                .map(|(id, m)| (*id, m.info.datacenter.as_str())),
        );
        nodes
    }

    /// Moves a wanted group forward: propose its creation, or host a replica here and ask
    /// its replicas to add this node as a learner. Done once this node is in its config.
    pub(super) fn pursue(&mut self, group: DataStructureId) {
        let Some(record) = self.directory.get(group) else {
            self.propose_creation(group);
            return;
        };
        let initial = record.initial_voters.clone();
        let mut targets: Vec<NodeId> = record.replicas().collect();
        if !self.groups.contains_key(&group) {
            self.create_replica(group, &initial);
        }
        let Some(raft) = self.groups.get(&group) else {
            return;
        };
        let cs = raft.log().conf_state();
        if cs.voters.contains(&self.me) || cs.learners.contains(&self.me) {
            self.wanted.remove(&group);
            self.flush_queued(group);
            return;
        }
        targets.extend(cs.voters.iter().chain(cs.learners.iter()));
        targets.push(raft.leader());
        targets.sort_unstable();
        targets.dedup();
        for node in targets.into_iter().filter(|n| *n != 0 && *n != self.me) {
            self.sends
                .entry(node)
                .or_default()
                .joins
                .push(proto::JoinRequest {
                    group: group.to_bytes().to_vec(),
                    node_id: self.me,
                });
        }
    }

    fn propose_creation(&mut self, group: DataStructureId) {
        let voters = placement::place(group, self.alive_nodes(), self.cfg.replication_factor);
        let op = DirectoryOp::Create {
            group: group.as_u128(),
            voters,
        };
        self.propose_system(op);
    }

    fn propose_system(&mut self, op: DirectoryOp) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let Some(system) = self.groups.get_mut(&DataStructureId::SYSTEM) else {
            return;
        };
        if system.leader() == 0 {
            return;
        }
        let ctx = ProposalContext {
            node: self.me,
            seq,
            retry_after: None,
        };
        if let Err(e) = system.propose(ctx.encode(), op.encode()) {
            slog::debug!(self.cfg.logger, "directory proposal dropped"; "error" => %e);
        }
        self.active.insert(DataStructureId::SYSTEM);
    }

    /// Another node wants a replica of `group` for its subscriber: the leader adds it as a
    /// learner.
    pub(super) fn handle_join_request(&mut self, join: proto::JoinRequest) {
        let Some(group) = DataStructureId::from_bytes(&join.group) else {
            return;
        };
        let node = join.node_id;
        let Some(raft) = self.groups.get(&group) else {
            return;
        };
        if !raft.is_leader() || raft.has_pending_conf() || !self.members.contains_key(&node) {
            return;
        }
        let cs = raft.log().conf_state();
        if cs.voters.contains(&node) || cs.learners.contains(&node) {
            return;
        }
        self.change_conf(group, node, ConfChangeType::AddLearnerNode);
    }

    fn change_conf(&mut self, group: DataStructureId, node: NodeId, change: ConfChangeType) {
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change);
        single.node_id = node;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        match raft.propose_conf_change(cc) {
            Ok(()) => {
                slog::info!(self.cfg.logger, "proposing conf change"; "group" => %group,
                    "peer" => node, "change" => ?change);
            }
            Err(e) => {
                slog::debug!(self.cfg.logger, "conf change dropped"; "group" => %group, "error" => %e);
            }
        }
        self.active.insert(group);
    }

    /// The leader grows its group towards the replication factor: promote a caught-up alive
    /// learner, or add an alive node as a learner first. The system group also takes every
    /// other alive node as a learner, so every node holds the directory.
    fn grow(&mut self, group: DataStructureId) {
        let Some(raft) = self.groups.get(&group) else {
            return;
        };
        if raft.has_pending_conf() {
            return;
        }
        let cs = raft.log().conf_state().clone();
        let committed = raft.committed();
        if cs.voters.len() < self.cfg.replication_factor {
            let ranked = placement::rank(group, self.alive_nodes());
            let caught_up = ranked.iter().map(|(n, _)| *n).find(|n| {
                cs.learners.contains(n) && raft.matched(*n).is_some_and(|m| m >= committed)
            });
            if let Some(node) = caught_up {
                return self.change_conf(group, node, ConfChangeType::AddNode);
            }
            let catching_up = cs.learners.iter().any(|n| self.is_alive(*n));
            let fresh = ranked
                .iter()
                .map(|(n, _)| *n)
                .find(|n| !cs.voters.contains(n) && !cs.learners.contains(n));
            if !catching_up || group.is_system() {
                if let Some(node) = fresh {
                    return self.change_conf(group, node, ConfChangeType::AddLearnerNode);
                }
            }
        }
        if group.is_system() {
            let missing = self
                .members
                .iter()
                .filter(|(_, m)| m.alive)
                .map(|(id, _)| *id)
                .find(|n| !cs.voters.contains(n) && !cs.learners.contains(n));
            if let Some(node) = missing {
                self.change_conf(group, node, ConfChangeType::AddLearnerNode);
            }
        }
    }

    /// The leader of a data group records its current replica set in the directory, so
    /// nodes looking for the group find replicas that still exist.
    fn reconcile_directory(&mut self, group: DataStructureId) {
        if group.is_system() {
            return;
        }
        let (Some(raft), Some(record)) = (self.groups.get(&group), self.directory.get(group))
        else {
            return;
        };
        let cs = raft.log().conf_state();
        let mut voters = cs.voters.clone();
        let mut learners = cs.learners.clone();
        voters.sort_unstable();
        learners.sort_unstable();
        let mut known_voters = record.voters.clone();
        let mut known_learners = record.learners.clone();
        known_voters.sort_unstable();
        known_learners.sort_unstable();
        if voters == known_voters && learners == known_learners {
            return;
        }
        let op = DirectoryOp::SetReplicas {
            group: group.as_u128(),
            voters,
            learners,
            conf_index: raft.applied(),
        };
        self.propose_system(op);
    }

    /// raft asked for the system group's snapshot (a node joined): build it from the
    /// directory as of the applied index.
    fn prepare_system_snapshot(&mut self) {
        let applied = self.directory_applied;
        let data = self.directory.encode();
        let Some(system) = self.groups.get_mut(&DataStructureId::SYSTEM) else {
            return;
        };
        if system.applied() != applied || !system.log_mut().take_snapshot_wanted() {
            return;
        }
        let Ok(term) = raft::Storage::term(system.log(), applied) else {
            return;
        };
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(system.log().conf_state().clone());
        system.log_mut().set_prepared_snapshot(snap);
    }
}
