//! The directory: which data structures exist and which nodes replicate them.
//!
//! It is the state machine of the system group, a Raft group every node joins (voters on
//! the first few nodes, learners elsewhere). Creation of a data structure is decided once,
//! by the first `Create` for its id that commits; later ones are no-ops, so nodes that
//! subscribe to a new id at the same moment end up in one group. Replica-set changes are
//! recorded as they happen (`SetReplicas`, newest conf index wins). Because every node
//! replicates the system group, a joining node learns the whole directory, with no size cap.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};

use crate::id::{incarnation_of, node_of, DataStructureId, NodeId, ReplicaId};

/// A change to the directory, the payload of a system-group entry.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) enum DirectoryOp {
    /// Create a group with these initial voters (incarnation 0), unless it exists.
    Create { group: u128, voters: Vec<NodeId> },
    /// The group's configuration as of `conf_index` (ignored if not newer), and replicas
    /// removed from it.
    SetReplicas {
        group: u128,
        voters: Vec<ReplicaId>,
        learners: Vec<ReplicaId>,
        removed: Vec<ReplicaId>,
        conf_index: u64,
    },
}

/// What the directory knows of one group.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct GroupRecord {
    /// The voters the group was bootstrapped with (every replica starts from them).
    pub initial_voters: Vec<NodeId>,
    /// Voters as of `conf_index` (of both halves, in a joint configuration).
    pub voters: Vec<ReplicaId>,
    /// Learners as of `conf_index`.
    pub learners: Vec<ReplicaId>,
    /// Replicas removed from the group (the most recent [`MAX_REMOVED`]): a node that finds
    /// its replica here deletes it.
    pub removed: Vec<ReplicaId>,
    /// Index of the conf change the sets come from (0: the initial voters).
    pub conf_index: u64,
}

/// How many removed replica ids a record keeps.
pub(crate) const MAX_REMOVED: usize = 64;

impl GroupRecord {
    /// Every replica in the group.
    pub(crate) fn replicas(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// An incarnation of `node` never used in this group (as far as the record and the
    /// replicas in `also` know); `None` once the highest incarnation is used (ids are never
    /// reused, so the node can host no new replica of the group).
    pub(crate) fn fresh_incarnation(&self, node: NodeId, also: &[ReplicaId]) -> Option<u16> {
        let used = self
            .replicas()
            .chain(self.removed.iter().copied())
            .chain(self.initial_voters.iter().copied())
            .chain(also.iter().copied())
            .filter(|r| node_of(*r) == node)
            .map(incarnation_of)
            .max();
        used.map_or(Some(1), |max| max.checked_add(1))
    }
}

/// The outcome of applying an op.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// A group was created.
    Created(DataStructureId),
    /// A group's replica set changed.
    Updated(DataStructureId),
    /// Nothing changed.
    Unchanged,
}

/// The directory's state.
#[derive(Debug, Default, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Directory {
    groups: BTreeMap<u128, GroupRecord>,
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

impl DirectoryOp {
    /// Encodes the op as an entry payload.
    pub(crate) fn encode(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, bincode_config())
            .expect("bincode encodes integers and vectors into a Vec without failing")
    }

    /// Decodes an entry payload; `None` for bytes that are not an op.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        crate::bounded_decode::bounded_bincode_decode(bytes)
            .ok()
            .map(|(op, _)| op)
    }
}

impl Directory {
    /// The record of `group`, if it exists.
    pub(crate) fn get(&self, group: DataStructureId) -> Option<&GroupRecord> {
        self.groups.get(&group.as_u128())
    }

    /// Number of groups.
    pub(crate) fn len(&self) -> usize {
        self.groups.len()
    }

    /// Every group and its record.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (DataStructureId, &GroupRecord)> {
        self.groups
            .iter()
            .map(|(id, r)| (DataStructureId::from_u128(*id), r))
    }

    /// Applies one committed op. Deterministic: every replica reaches the same state.
    pub(crate) fn apply(&mut self, op: DirectoryOp) -> Applied {
        match op {
            DirectoryOp::Create { group, voters } => {
                if group == 0 || voters.is_empty() || self.groups.contains_key(&group) {
                    return Applied::Unchanged;
                }
                let record = GroupRecord {
                    initial_voters: voters.clone(),
                    voters,
                    learners: Vec::new(),
                    removed: Vec::new(),
                    conf_index: 0,
                };
                self.groups.insert(group, record);
                Applied::Created(DataStructureId::from_u128(group))
            }
            DirectoryOp::SetReplicas {
                group,
                voters,
                learners,
                removed,
                conf_index,
            } => {
                let Some(record) = self.groups.get_mut(&group) else {
                    return Applied::Unchanged;
                };
                // A removal is a fact whatever the age of the configuration it came with:
                // the leader that removed a replica may report after another leader
                // recorded the same configuration index without it.
                let mut changed = false;
                let mut removed = removed;
                if conf_index > record.conf_index {
                    // Replica ids are never reused: one that leaves the configuration was
                    // removed, even if the leader that removed it never reported it.
                    let now_in = |r: &ReplicaId| voters.contains(r) || learners.contains(r);
                    let left = record
                        .voters
                        .iter()
                        .chain(&record.learners)
                        .filter(|r| !now_in(r));
                    removed.extend(left.copied().collect::<Vec<_>>());
                }
                for r in removed {
                    if !record.removed.contains(&r) {
                        record.removed.push(r);
                        changed = true;
                    }
                }
                let excess = record.removed.len().saturating_sub(MAX_REMOVED);
                record.removed.drain(..excess);
                if conf_index > record.conf_index {
                    record.voters = voters;
                    record.learners = learners;
                    record.conf_index = conf_index;
                    changed = true;
                }
                if changed {
                    Applied::Updated(DataStructureId::from_u128(group))
                } else {
                    Applied::Unchanged
                }
            }
        }
    }

    /// The directory as snapshot bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, bincode_config())
            .expect("bincode encodes maps of integers and vectors into a Vec without failing")
    }

    /// A directory from snapshot bytes; empty bytes are the empty directory.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.is_empty() {
            return Ok(Directory::default());
        }
        crate::bounded_decode::bounded_bincode_decode(bytes)
            .map(|(d, _)| d)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_create_wins() {
        let mut d = Directory::default();
        let g = DataStructureId::new();
        let first = DirectoryOp::Create {
            group: g.as_u128(),
            voters: vec![1, 2, 3],
        };
        let second = DirectoryOp::Create {
            group: g.as_u128(),
            voters: vec![4, 5, 6],
        };
        assert_eq!(d.apply(first), Applied::Created(g));
        assert_eq!(d.apply(second), Applied::Unchanged);
        assert_eq!(d.get(g).map(|r| r.voters.clone()), Some(vec![1, 2, 3]));
    }

    #[test]
    fn newer_replica_sets_win_and_snapshots_round_trip() {
        let mut d = Directory::default();
        let g = DataStructureId::new();
        d.apply(DirectoryOp::Create {
            group: g.as_u128(),
            voters: vec![1],
        });
        let set = |conf_index, voters: Vec<u64>| DirectoryOp::SetReplicas {
            group: g.as_u128(),
            voters,
            learners: vec![9],
            removed: vec![crate::id::replica_id(4, 2)],
            conf_index,
        };
        assert_eq!(d.apply(set(10, vec![1, 2])), Applied::Updated(g));
        assert_eq!(d.apply(set(7, vec![5])), Applied::Unchanged);
        let op = set(11, vec![1, 2, 3]);
        assert_eq!(DirectoryOp::decode(&op.encode()), Some(op));
        let back = Directory::decode(&d.encode()).unwrap();
        assert_eq!(back, d);
        let record = d.get(g).unwrap();
        assert_eq!(record.removed, vec![crate::id::replica_id(4, 2)]);
        assert_eq!(record.fresh_incarnation(4, &[]), Some(3));
        assert_eq!(record.fresh_incarnation(1, &[]), Some(1));
        assert_eq!(
            record.fresh_incarnation(8, &[crate::id::replica_id(8, 5)]),
            Some(6)
        );
        assert!(DirectoryOp::decode(b"\xff\xff garbage").is_none());
    }

    /// Found by the `directory_ops` fuzz target: with incarnation `u16::MAX` used, the
    /// "fresh" incarnation saturated to that same, used one (a replica id reused).
    #[test]
    fn no_fresh_incarnation_after_the_highest() {
        let mut d = Directory::default();
        let g = DataStructureId::new();
        let top = crate::id::replica_id(4, u16::MAX);
        d.apply(DirectoryOp::Create {
            group: g.as_u128(),
            voters: vec![1, top],
        });
        let record = d.get(g).unwrap();
        assert_eq!(record.fresh_incarnation(4, &[]), None);
        assert_eq!(record.fresh_incarnation(1, &[top]), Some(1));
    }

    /// Found by the `directory_ops` fuzz target: a snapshot (or op) whose length prefix
    /// claimed 2^30 records made bincode allocate gigabytes before reading one, and abort
    /// the process; a peer's `MsgSnapshot` for the system group is decoded this way.
    #[test]
    fn a_forged_length_is_refused_without_allocating() {
        // One group (length 1), key 0, then initial voters claiming 2^33 elements.
        let forged = [1, 0, 0xfd, 0, 0, 0, 0, 2, 0, 0, 0];
        assert!(Directory::decode(&forged).is_err());
        let op = [0, 1, 0xfd, 0, 0, 0, 0, 2, 0, 0, 0];
        assert_eq!(DirectoryOp::decode(&op), None);
    }

    #[test]
    fn removals_are_recorded_whatever_reports_them() {
        let mut d = Directory::default();
        let g = DataStructureId::new();
        d.apply(DirectoryOp::Create {
            group: g.as_u128(),
            voters: vec![1],
        });
        let set = |conf_index, learners: Vec<u64>, removed: Vec<u64>| DirectoryOp::SetReplicas {
            group: g.as_u128(),
            voters: vec![1, 2],
            learners,
            removed,
            conf_index,
        };
        assert_eq!(d.apply(set(10, vec![9], vec![])), Applied::Updated(g));
        // The leader that removed replica 7 reports it after another recorded index 10.
        assert_eq!(d.apply(set(10, vec![9], vec![7])), Applied::Updated(g));
        assert_eq!(d.get(g).map(|r| r.removed.clone()), Some(vec![7]));
        // A newer configuration without learner 9: it was removed, reported or not.
        assert_eq!(d.apply(set(12, vec![], vec![])), Applied::Updated(g));
        assert_eq!(d.get(g).map(|r| r.removed.clone()), Some(vec![7, 9]));
        assert_eq!(d.apply(set(12, vec![], vec![7])), Applied::Unchanged);
    }
}
