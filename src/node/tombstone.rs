//! Tombstones of deleted replicas: a message for a deleted replica (or an older
//! incarnation) must never bring it back with an empty log, which would forget its votes
//! and acknowledgements.

use super::NodeCore;
use crate::id::{incarnation_of, node_of, DataStructureId, ReplicaId};

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

    /// Remembers, durably, that `replica` of `group` was deleted here.
    pub(super) fn remember_deleted(&mut self, group: DataStructureId, replica: ReplicaId) {
        self.deleted.insert(group, replica);
        self.round_meta
            .push((deleted_key(group), Some(replica.to_be_bytes().to_vec())));
    }
}
