//! Messages from peers: every group's raft messages, join requests and snapshot requests
//! of one batch, and the replicas they create or replace.

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use super::directory::Directory;
use super::validate::{self, LocalView};
use super::NodeCore;
use crate::group::RaftGroup;
use crate::id::{incarnation_of, node_of, DataStructureId, NodeId, ReplicaId};
use crate::proto;
use crate::storage::GroupWrite;

impl NodeCore {
    /// A batch of messages from peer `from`.
    pub(crate) fn handle_batch(&mut self, now_ms: u64, from: NodeId, batch: proto::Batch) {
        self.now_ms = now_ms;
        if !self.members.knows(from) {
            // Gossip introduces every node before it has anything to say: a batch from a
            // node nobody reported is forged or lost its way.
            self.refuse(from, "batch from a node gossip never reported", &"");
            return;
        }
        for gm in batch.messages {
            self.handle_group_message(from, gm);
        }
        for join in batch.joins {
            self.handle_join_request(join);
        }
        for group in batch.wake {
            if let Some(group) = DataStructureId::from_bytes(&group) {
                self.handle_wake(group);
            }
        }
        for gone in batch.gone {
            self.handle_replica_gone(from, gone);
        }
        for needed in batch.snapshots_needed {
            if let Some(group) = DataStructureId::from_bytes(&needed.group) {
                self.handle_snapshot_needed(from, group);
            }
        }
        self.handle_stream_traffic(from, batch.chunks, batch.acks);
    }

    pub(super) fn handle_group_message(&mut self, from: NodeId, gm: proto::GroupMessage) {
        let Some(group) = DataStructureId::from_bytes(&gm.group) else {
            slog::warn!(self.cfg.logger, "dropping message with a malformed group id"; "from" => from);
            return;
        };
        let mut msg = Message::default();
        if let Err(e) = msg.merge_from_bytes(&gm.message) {
            slog::warn!(self.cfg.logger, "dropping undecodable raft message"; "from" => from, "error" => %e);
            return;
        }
        if !addressed(&msg, self.me, from) {
            slog::warn!(self.cfg.logger, "dropping misaddressed raft message";
                "from" => from, "msg_from" => msg.from, "to" => msg.to, "type" => ?msg.msg_type);
            return;
        }
        if let Err(invalid) = validate::check_shape(&msg) {
            self.refuse(
                from,
                "invalid raft message",
                &format_args!("{group} {invalid}"),
            );
            return;
        }
        if group.is_system() && !carries_a_directory(&msg) {
            // raft would install it and this node's directory would silently fall behind.
            slog::warn!(self.cfg.logger, "dropping a system snapshot that is not a directory";
                "from" => from, "index" => msg.get_snapshot().get_metadata().index);
            return;
        }
        if !self.groups.contains_key(&group) {
            self.create_replica_for_message(group, msg.to);
            if !self.groups.contains_key(&group) && self.is_deleted(group, msg.to) {
                self.report_gone(from, group, msg.to);
                return;
            }
        }
        let patience = self.leaderless_patience();
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        if raft.replica_id() != msg.to {
            let local = raft.replica_id();
            // A local replica that never became a member has nothing to lose; one that has
            // heard from no leader for long was removed without knowing (the group talks
            // to another incarnation of this node).
            let abandoned = raft.leaderless_ticks() >= patience;
            if incarnation_of(msg.to) <= incarnation_of(local)
                && raft.is_member(local)
                && !abandoned
            {
                slog::debug!(self.cfg.logger, "dropping message for an old incarnation";
                    "group" => %group, "to" => msg.to, "local" => local);
                // A sender that forgot the incarnations used since (a system leader that
                // restarted) would otherwise keep adding a replica that cannot exist.
                if self.is_deleted(group, msg.to) {
                    self.report_gone(from, group, msg.to);
                }
                return;
            }
            // The group added another incarnation of this node's replica: the local one was
            // removed while this node was away, or never joined. Replace it.
            self.replace_stale_replica(group, msg.to);
            let Some(raft) = self.groups.get_mut(&group) else {
                return;
            };
            if raft.replica_id() != msg.to {
                return;
            }
        }
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        if let Err(invalid) = validate::check_against(&msg, local_view(raft), |r| raft.is_member(r))
        {
            self.refuse(
                from,
                "invalid raft message",
                &format_args!("{group} {invalid}"),
            );
            return;
        }
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        if msg.get_msg_type() == MessageType::MsgAppendResponse
            && raft.is_leader()
            && raft.log().conf_state().learners.contains(&msg.from)
        {
            // A learner caught up may be promoted now.
            self.reconfigure_soon.insert(group);
        }
        if let Err(e) = raft.step(msg, &mut self.rng) {
            slog::debug!(self.cfg.logger, "step failed"; "group" => %group, "error" => %e);
        }
        self.active.insert(group);
    }

    /// Drops traffic from `from`, with a log line at most once a second.
    fn refuse(&mut self, from: NodeId, what: &str, detail: &dyn std::fmt::Display) {
        if let Some(unlogged) = self.refusals.note(self.now_ms) {
            slog::warn!(self.cfg.logger, "refusing peer traffic: {}", what;
                "from" => from, "detail" => %detail, "unlogged_since_last_line" => unlogged,
                "refused_total" => self.refusals.total);
        }
    }

    /// Deletes the local replica of `group` and hosts `newer` instead.
    fn replace_stale_replica(&mut self, group: DataStructureId, newer: ReplicaId) {
        slog::info!(self.cfg.logger, "local replica superseded by a newer incarnation";
            "group" => %group, "replica" => newer);
        if group.is_system() {
            if let Some(old) = self.groups.remove(&group) {
                self.remember_deleted(group, old.replica_id());
            }
            self.asleep.remove(&group);
            let mut write = GroupWrite::new(group);
            write.remove = true;
            self.round.replace_write(group, write);
            self.held.remove(&group);
        } else {
            self.remove_replica(group);
        }
        self.create_replica_for_message(group, newer);
    }

    /// A peer sends raft traffic to replica `replica` of a group this node does not host:
    /// the system group (this node was just added to it), or a data group the directory
    /// knows (this node was added as a learner), unless that replica was removed.
    fn create_replica_for_message(&mut self, group: DataStructureId, replica: ReplicaId) {
        if self.is_deleted(group, replica) {
            slog::debug!(self.cfg.logger, "message for a deleted replica"; "group" => %group,
                "replica" => replica);
            return;
        }
        if group.is_system() {
            self.create_uninitialized_system_replica(replica);
        } else if let Some(record) = self.directory.get(group) {
            if record.removed.contains(&replica) {
                return;
            }
            let voters = record.initial_voters.clone();
            self.create_replica(group, &voters, replica);
        } else {
            slog::debug!(self.cfg.logger, "message for an unknown group"; "group" => %group);
        }
    }
}

/// Whether `msg`, received from node `from`, goes from a replica of `from` to a replica of
/// node `me`, and is not one of raft's local message types (which never travel).
pub(crate) fn addressed(msg: &Message, me: NodeId, from: NodeId) -> bool {
    node_of(msg.to) == me
        && node_of(msg.from) == from
        && !raft::raw_node::is_local_msg(msg.msg_type)
}

/// What `validate::check` needs to know of the local replica.
pub(crate) fn local_view(raft: &RaftGroup) -> LocalView {
    LocalView {
        term: raft.term(),
        last_index: raft.last_index(),
        leader: raft.leader(),
        initialized: !raft.log().conf_state().voters.is_empty(),
    }
}

/// False for a system-group `MsgSnapshot` whose data does not decode as a directory.
pub(crate) fn carries_a_directory(msg: &Message) -> bool {
    msg.get_msg_type() != MessageType::MsgSnapshot
        || Directory::decode(msg.get_snapshot().get_data()).is_ok()
}
