//! Tombstones of deleted replicas: a message for a deleted replica (or an older
//! incarnation) must never bring it back with an empty log, which would forget its votes
//! and acknowledgements.

use raft::eraftpb::ConfChangeType;

use super::NodeCore;
use crate::id::{incarnation_of, node_of, DataStructureId, NodeId, ReplicaId};
use crate::proto;

/// Metadata key holding the last replica id of `group` this node deleted: a message for it
/// or an older incarnation must never bring it back with an empty log (its votes and
/// acknowledgements would be forgotten).
fn deleted_key(group: DataStructureId) -> String {
    format!("deleted/{group}")
}

impl NodeCore {
    /// Whether `replica` is, or is older than, a replica of `group` this node deleted.
    pub(super) fn is_deleted(&self, group: DataStructureId, replica: ReplicaId) -> bool {
        self.deleted_replica(group).is_some_and(|d| {
            node_of(d) == node_of(replica) && incarnation_of(replica) <= incarnation_of(d)
        })
    }

    /// The last replica of `group` deleted here, if any.
    pub(super) fn deleted_replica(&self, group: DataStructureId) -> Option<ReplicaId> {
        self.deleted.get(&group).copied().or_else(|| {
            let bytes = self.disk.get_meta(&deleted_key(group)).ok()??;
            Some(u64::from_be_bytes(bytes.as_slice().try_into().ok()?))
        })
    }

    /// Remembers, durably, that `replica` of `group` (and so every older incarnation) was
    /// deleted here.
    pub(super) fn remember_deleted(&mut self, group: DataStructureId, replica: ReplicaId) {
        // Deleting an older incarnation after a newer one must not lower the tombstone: the
        // newer one would come back with an empty log.
        if self
            .deleted_replica(group)
            .is_some_and(|d| incarnation_of(d) >= incarnation_of(replica))
        {
            return;
        }
        self.deleted.insert(group, replica);
        self.round
            .put_meta(deleted_key(group), Some(replica.to_be_bytes().to_vec()));
    }

    /// Tells peer `to`, which sent traffic to `replica` of `group`, that this node deleted
    /// it: a leader that still lists it would otherwise wait forever for it to catch up.
    pub(super) fn report_gone(&mut self, to: NodeId, group: DataStructureId, replica: ReplicaId) {
        let Some(deleted) = self.deleted_replica(group) else {
            return;
        };
        self.round.to(to).gone.push(proto::ReplicaGone {
            group: group.to_bytes().to_vec(),
            replica_id: replica,
            deleted,
        });
    }

    /// Peer `from` deleted its replica `gone.replica_id`: remember its newest deleted
    /// incarnation (new replicas there must be above it) and, as the leader, remove the
    /// replica from the configuration so the group can replace it.
    pub(super) fn handle_replica_gone(&mut self, from: NodeId, gone: proto::ReplicaGone) {
        let Some(group) = DataStructureId::from_bytes(&gone.group) else {
            return;
        };
        let (replica, deleted) = (gone.replica_id, gone.deleted);
        if node_of(replica) != from
            || node_of(deleted) != from
            || incarnation_of(replica) > incarnation_of(deleted)
        {
            slog::warn!(self.cfg.logger, "dropping inconsistent replica-gone notice";
                "from" => from, "replica" => replica, "deleted" => deleted);
            return;
        }
        let seen = self.removed_seen.entry(group).or_default();
        if !seen.contains(&deleted) {
            seen.push(deleted);
        }
        let Some(raft) = self.groups.get(&group) else {
            return;
        };
        let cs = raft.log().conf_state();
        let listed = cs.voters.contains(&replica) || cs.learners.contains(&replica);
        if raft.is_leader() && listed && !raft.has_pending_conf() && cs.voters_outgoing.is_empty() {
            slog::info!(self.cfg.logger, "removing a replica its node deleted";
                "group" => %group, "replica" => replica);
            self.change_conf(group, &[(ConfChangeType::RemoveNode, replica)]);
        }
    }
}
