//! Periodic work: creating and joining wanted groups, keeping the directory's replica sets
//! current, deleting replicas the directory says were removed, serving the system snapshot.

use raft::eraftpb::Snapshot;

use super::apply::{member_nodes, members};
use super::directory::DirectoryOp;
use super::placement;
use super::NodeCore;
use crate::group::ProposalContext;
use crate::id::{incarnation_of, node_of, replica_id, DataStructureId, NodeId};
use crate::proto;

/// Ticks between attempts to create or join a wanted group, and between replica checks.
const MAINTENANCE_PERIOD_TICKS: u64 = 5;
/// Every this many maintenance passes, every led group is maintained, hibernating or not
/// (in between, only awake ones and all of them when membership or the directory moved).
const FULL_PASS_EVERY: u64 = 20;

/// Election timeouts a replica waits without a leader before it trusts the directory
/// over its own (stale) configuration.
const LEADERLESS_PATIENCE_ELECTIONS: u64 = 10;

impl NodeCore {
    /// Periodic work. What concerns every group visits only the awake ones, except on a
    /// full pass: a hibernating group's snapshots, removal and placement change only with
    /// what they depend on (see [`PlacementInputs`]), so it is looked at when that moved,
    /// and every [`FULL_PASS_EVERY`] passes anyway (a dropped directory update or
    /// leadership transfer is retried then). An idle node's tick thus costs what its awake
    /// groups cost.
    pub(super) fn maintain(&mut self) {
        self.prepare_system_snapshot();
        let pass = self.ticks % MAINTENANCE_PERIOD_TICKS == 0;
        let full = pass && self.begin_pass();
        self.request_wanted_snapshots(full);
        if pass {
            self.ask_again_for_snapshots();
        }
        // Joining nodes wait for the directory: the system group grows every tick.
        let system = DataStructureId::SYSTEM;
        if self.groups.get(&system).is_some_and(|g| g.is_leader()) {
            self.manage_replicas(system);
        }
        if !pass {
            self.reconfigure_groups_that_can_move();
            return;
        }
        self.reconfigure_soon.clear();
        if full {
            self.publish_group_gauges();
        }
        let wanted: Vec<_> = self.wanted.iter().copied().collect();
        for group in wanted {
            self.pursue(group);
        }
        self.collect_removed_replicas(full);
        let led = self.led_groups(full);
        for group in led {
            if !group.is_system() {
                self.manage_replicas(group);
            }
            self.reconcile_directory(group);
            self.balance_leadership(group);
        }
    }

    /// What replica placement depends on besides each group's own configuration: which
    /// nodes are alive, which are dead for good (time-based: the grace), the directory.
    fn placement_inputs(&self) -> PlacementInputs {
        let mut alive: Vec<NodeId> = self.members.alive().map(|(id, _)| id).collect();
        alive.sort_unstable();
        let dead_for_good = self
            .members
            .ids()
            .filter(|node| self.is_dead_for_good(*node))
            .collect();
        let grace_over = self
            .started_ms
            .is_some_and(|t| t + self.cfg.dead_node_grace_ms <= self.now_ms);
        PlacementInputs {
            alive,
            dead_for_good,
            unknown_nodes_dead: grace_over,
            directory_applied: self.directory_applied,
        }
    }

    /// Manages the replicas of the led groups marked to move on between passes.
    fn reconfigure_groups_that_can_move(&mut self) {
        let soon: Vec<_> = self.reconfigure_soon.drain().collect();
        for group in soon {
            let leads = self.groups.get(&group).is_some_and(|g| g.is_leader());
            if leads && !group.is_system() {
                self.manage_replicas(group);
            }
        }
    }

    /// Records what placement depends on now and says whether this maintenance pass looks
    /// at every group: it moved since the last pass, or the periodic full pass is due (see
    /// [`NodeCore::maintain`]).
    fn begin_pass(&mut self) -> bool {
        let inputs = self.placement_inputs();
        let changed = self.placement.as_ref() != Some(&inputs);
        self.placement = Some(inputs);
        changed || self.ticks % (MAINTENANCE_PERIOD_TICKS * FULL_PASS_EVERY) == 0
    }

    /// The groups a pass visits: every hosted one on a full pass, the awake ones otherwise.
    /// Sorted, so that both kinds of pass visit in one order.
    pub(super) fn visited_groups(&self, full: bool) -> Vec<DataStructureId> {
        let mut ids: Vec<_> = if full {
            self.groups.keys().copied().collect()
        } else {
            self.awake
                .iter()
                .filter(|id| self.groups.contains_key(id))
                .copied()
                .collect()
        };
        ids.sort_unstable();
        ids
    }

    /// Groups this node leads, among those a pass visits.
    pub(super) fn led_groups(&self, full: bool) -> Vec<DataStructureId> {
        let mut led = self.visited_groups(full);
        led.retain(|id| self.groups.get(id).is_some_and(|g| g.is_leader()));
        led
    }

    /// Whether `node` is this node or an alive member.
    pub(super) fn is_alive(&self, node: NodeId) -> bool {
        node == self.me || self.members.is_alive(node)
    }

    /// Whether gossip has considered `node` down for longer than the grace period, or has
    /// not known it at all for that long since this node started (a node that restarts
    /// after a peer's death was gossiped never hears of that peer).
    pub(super) fn is_dead_for_good(&self, node: NodeId) -> bool {
        let grace = self.cfg.dead_node_grace_ms;
        if self.members.knows(node) {
            return self.members.down_for(node, grace, self.now_ms);
        }
        node != self.me && self.started_ms.is_some_and(|t| t + grace <= self.now_ms)
    }

    /// How many voters a group should have now: [`placement::voter_count`] of the alive
    /// nodes, this one included.
    pub(super) fn voter_target(&self) -> usize {
        let alive = 1 + self.members.alive().count();
        placement::voter_count(alive, self.cfg.replication_factor)
    }

    /// Alive nodes with their datacenters, this one included.
    pub(super) fn alive_nodes(&self) -> Vec<(NodeId, &str)> {
        let mut nodes = vec![(self.me, self.cfg.me.datacenter.as_str())];
        nodes.extend(self.members.alive());
        nodes
    }

    /// How many nodes the directory's configuration (the system group) holds, alive or not.
    fn cluster_size(&self) -> usize {
        self.groups
            .get(&DataStructureId::SYSTEM)
            .map_or(1, |system| member_nodes(system.log().conf_state()).len())
    }

    /// Moves a wanted group forward: propose its creation, or host a replica here and ask
    /// the group to add it as a learner. Done once the replica is in the configuration.
    pub(super) fn pursue(&mut self, group: DataStructureId) {
        let Some(record) = self.directory.get(group) else {
            self.propose_creation(group);
            return;
        };
        let initial = record.initial_voters.clone();
        let mut targets: Vec<NodeId> = record.replicas().map(node_of).collect();
        if !self.groups.contains_key(&group) {
            let listed = record.replicas().chain(initial.iter().copied()).find(|r| {
                node_of(*r) == self.me
                    && !self.was_removed(group, *r)
                    && !self.is_deleted(group, *r)
            });
            match listed.or_else(|| self.fresh_replica(group, self.me)) {
                Some(replica) => self.create_replica(group, &initial, replica),
                None => {
                    slog::warn!(self.cfg.logger, "every replica id of this node is used in the group";
                        "group" => %group);
                    return;
                }
            }
        }
        let Some(raft) = self.groups.get(&group) else {
            return;
        };
        let replica = raft.replica_id();
        if raft.is_member(replica) {
            self.wanted.remove(&group);
            self.flush_queued(group);
            return;
        }
        targets.extend(member_nodes(raft.log().conf_state()));
        targets.push(node_of(raft.leader()));
        targets.sort_unstable();
        targets.dedup();
        for node in targets.into_iter().filter(|n| *n != 0 && *n != self.me) {
            self.round.to(node).joins.push(proto::JoinRequest {
                group: group.to_bytes().to_vec(),
                node_id: self.me,
                replica_id: replica,
            });
        }
    }

    /// Ticks without a leader after which a replica trusts the rest of the cluster over its
    /// own (stale) configuration.
    pub(super) fn leaderless_patience(&self) -> u64 {
        LEADERLESS_PATIENCE_ELECTIONS * self.cfg.raft.election_ticks as u64
    }

    /// Whether `replica` of `group` is known to have been removed.
    pub(super) fn was_removed(&self, group: DataStructureId, replica: u64) -> bool {
        self.removed_seen
            .get(&group)
            .is_some_and(|r| r.contains(&replica))
            || self
                .directory
                .get(group)
                .is_some_and(|r| r.removed.contains(&replica))
    }

    /// A replica id for `node` in `group` that was never used: one incarnation above any
    /// seen in the directory, the current configuration or removals seen here; `None` once
    /// the node's highest incarnation is used.
    pub(super) fn fresh_replica(&self, group: DataStructureId, node: NodeId) -> Option<u64> {
        let mut seen: Vec<u64> = self.removed_seen.get(&group).cloned().unwrap_or_default();
        if let Some(raft) = self.groups.get(&group) {
            seen.extend(members(raft.log().conf_state()));
            seen.push(raft.replica_id());
        }
        seen.extend(self.deleted_replica(group));
        let incarnation = match self.directory.get(group) {
            Some(record) => record.fresh_incarnation(node, &seen),
            None => seen
                .iter()
                .filter(|r| node_of(**r) == node)
                .map(|r| incarnation_of(*r))
                .max()
                .map_or(Some(1), |max| max.checked_add(1)),
        };
        incarnation.map(|incarnation| replica_id(node, incarnation))
    }

    fn propose_creation(&mut self, group: DataStructureId) {
        if !self.has_joined() {
            // Without the directory this node can neither know that the group does not
            // exist yet nor how large the cluster is (an uninitialized system replica has
            // no configuration): its `Create` could commit first with too few voters.
            return;
        }
        let alive = self.alive_nodes();
        let reachable_enough = self.cfg.replication_factor.min(self.cluster_size());
        if alive.len() < reachable_enough {
            // Fewer voters than the cluster could give would leave the group one failure
            // away from losing its quorum for good: wait until enough nodes are reachable
            // (a partition heals, or the directory replaces a dead node).
            return;
        }
        let voters = placement::place(group, alive, self.voter_target());
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

    /// Deletes local replicas that were removed while this node was away: listed as
    /// removed in the directory, or, for one that has long known no leader, missing from a
    /// configuration the directory recorded after everything it applied (replica ids are
    /// never reused, so it was removed, even if no leader reported it).
    fn collect_removed_replicas(&mut self, full: bool) {
        let patience = self.leaderless_patience();
        let stale: Vec<_> = self
            .visited_groups(full)
            .into_iter()
            .filter_map(|id| Some((id, self.groups.get(&id)?)))
            .filter(|(id, raft)| {
                let Some(record) = self.directory.get(*id) else {
                    return false;
                };
                let me = raft.replica_id();
                let listed = record.voters.contains(&me) || record.learners.contains(&me);
                let forgotten = raft.leaderless_ticks() >= patience
                    && record.conf_index > raft.applied()
                    && !listed;
                !id.is_system() && (record.removed.contains(&me) || forgotten)
            })
            .map(|(id, _)| id)
            .collect();
        for group in stale {
            self.remove_replica(group);
        }
    }

    /// The leader of a data group records its current replica set (and the replicas it
    /// removed) in the directory, so nodes looking for the group find replicas that still
    /// exist and nodes that were away learn their replicas are gone.
    fn reconcile_directory(&mut self, group: DataStructureId) {
        if group.is_system() {
            return;
        }
        let (Some(raft), Some(record)) = (self.groups.get(&group), self.directory.get(group))
        else {
            return;
        };
        let cs = raft.log().conf_state();
        // A joint configuration's outgoing voters still vote (leaving it needs their
        // majority too): listed, so none deletes itself as forgotten meanwhile.
        let mut voters: Vec<_> = cs
            .voters
            .iter()
            .chain(&cs.voters_outgoing)
            .copied()
            .collect();
        let mut learners = cs.learners.clone();
        voters.sort_unstable();
        voters.dedup();
        learners.sort_unstable();
        let mut known_voters = record.voters.clone();
        let mut known_learners = record.learners.clone();
        known_voters.sort_unstable();
        known_learners.sort_unstable();
        let removed = self.removed_seen.get(&group).cloned().unwrap_or_default();
        let removed_known = removed.iter().all(|r| record.removed.contains(r));
        if voters == known_voters && learners == known_learners && removed_known {
            return;
        }
        let op = DirectoryOp::SetReplicas {
            group: group.as_u128(),
            voters,
            learners,
            removed,
            conf_index: raft.applied(),
        };
        self.propose_system(op);
    }

    /// raft asked for the system group's snapshot (a node joined): build it from the
    /// directory as of the applied index.
    fn prepare_system_snapshot(&mut self) {
        let applied = self.directory_applied;
        let Some(system) = self.groups.get_mut(&DataStructureId::SYSTEM) else {
            return;
        };
        if system.applied() != applied || !system.log_mut().take_snapshot_wanted() {
            return;
        }
        let Ok(term) = raft::Storage::term(system.log(), applied) else {
            return;
        };
        // Encoded only when a joining node needs it: the directory can be large.
        let mut snap = Snapshot {
            data: self.directory.encode().into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(system.log().conf_state().clone());
        system.log_mut().set_prepared_snapshot(snap);
    }
}

/// What replica placement depends on besides each group's own configuration (see
/// `NodeCore::placement_inputs`).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PlacementInputs {
    alive: Vec<NodeId>,
    dead_for_good: Vec<NodeId>,
    /// Nodes gossip never reported count as dead (the grace has run out since this start).
    unknown_nodes_dead: bool,
    directory_applied: u64,
}
