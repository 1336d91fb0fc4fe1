//! Read-only views of the core for status pages and tests.

use super::NodeCore;
use crate::id::{node_of, DataStructureId, NodeId};

/// Whether gossip considers a member alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemberState {
    /// Reachable, as far as gossip knows.
    Alive,
    /// Suspected and confirmed down by gossip.
    Down,
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemberState::Alive => "alive",
            MemberState::Down => "down",
        })
    }
}

/// A member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberStatus {
    /// The member's node id.
    pub node_id: NodeId,
    /// Its raft (TCP) address.
    pub addr: String,
    /// Its datacenter label.
    pub datacenter: String,
    /// Whether gossip considers it alive.
    pub state: MemberState,
    /// For a `down` member: how long gossip has considered it down (as of this node's last
    /// tick); `None` while alive.
    pub down_for: Option<std::time::Duration>,
}

/// One group's replica on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStatus {
    /// The data structure.
    pub id: DataStructureId,
    /// The node of the leader this replica knows of, if any.
    pub leader: Option<NodeId>,
    /// Nodes of the voting members.
    pub voters: Vec<NodeId>,
    /// Nodes of the non-voting members.
    pub learners: Vec<NodeId>,
    /// The highest log index applied here.
    pub applied_index: u64,
    /// The highest log index known committed.
    pub commit_index: u64,
    /// Index of the latest snapshot (the log starts after it).
    pub snapshot_index: u64,
    /// Whether the replica hibernates: idle, it neither ticks nor heartbeats until a
    /// proposal, a message or a membership change wakes it.
    pub hibernating: bool,
}

/// Counters of one node, for benchmarks and monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStats {
    /// Replicas (of data structures and of the directory) hosted here.
    pub replicas: usize,
    /// Of those, how many hibernate (see [`GroupStatus::hibernating`]).
    pub hibernating: usize,
    /// Storage writes fsync'ed since the node started: each is one flush and fdatasync
    /// round, however many groups' entries it carried (writes of commit and applied
    /// indexes alone are not fsync'ed, and not counted).
    pub synced_writes: u64,
}

impl NodeCore {
    /// Publishes the replica gauges (see [`crate::telemetry`]).
    pub(super) fn publish_group_gauges(&self) {
        let led = self.groups.values().filter(|g| g.is_leader()).count();
        crate::telemetry::groups(self.groups.len(), led, self.asleep.len());
    }

    /// This node's counters.
    pub(crate) fn stats(&self) -> NodeStats {
        NodeStats {
            replicas: self.groups.len(),
            hibernating: self.asleep.len(),
            synced_writes: self.round.synced_writes(),
        }
    }

    /// Every member, this node included.
    pub(crate) fn member_statuses(&self) -> Vec<MemberStatus> {
        let mut out = vec![MemberStatus {
            node_id: self.me,
            addr: self.cfg.me.raft_addr.to_string(),
            datacenter: self.cfg.me.datacenter.clone(),
            state: MemberState::Alive,
            down_for: None,
        }];
        out.extend(
            self.members
                .statuses()
                .map(|(info, alive, down_since_ms)| MemberStatus {
                    node_id: info.node_id,
                    addr: info.raft_addr.to_string(),
                    datacenter: info.datacenter.clone(),
                    state: if alive {
                        MemberState::Alive
                    } else {
                        MemberState::Down
                    },
                    down_for: down_since_ms.map(|since| {
                        std::time::Duration::from_millis(self.now_ms.saturating_sub(since))
                    }),
                }),
        );
        out
    }

    /// The status of this node's replica of `group`.
    pub(crate) fn group_status(&self, group: DataStructureId) -> Option<GroupStatus> {
        let raft = self.groups.get(&group)?;
        let cs = raft.log().conf_state();
        Some(GroupStatus {
            id: group,
            leader: Some(node_of(raft.leader())).filter(|l| *l != 0),
            voters: cs.voters.iter().map(|r| node_of(*r)).collect(),
            learners: cs.learners.iter().map(|r| node_of(*r)).collect(),
            applied_index: raft.applied(),
            commit_index: raft.committed(),
            snapshot_index: raft.log().snapshot_index(),
            hibernating: self.asleep.contains(&group),
        })
    }

    /// Ids of every group with a replica here (the system group excluded).
    pub(crate) fn hosted_groups(&self) -> Vec<DataStructureId> {
        self.groups
            .keys()
            .filter(|g| !g.is_system())
            .copied()
            .collect()
    }

    /// Whether this node replicates the directory (it is a member of the system group).
    pub(crate) fn has_joined(&self) -> bool {
        self.groups
            .get(&DataStructureId::SYSTEM)
            .is_some_and(|g| g.is_member(g.replica_id()) && g.leader() != 0)
    }

    /// How many groups the directory knows.
    pub(crate) fn directory_len(&self) -> usize {
        self.directory.len()
    }
}

#[cfg(test)]
impl NodeCore {
    /// Where subscription `sub` stands (simulation diagnostics).
    pub(crate) fn debug_subscription(&self, sub: super::subscription::SubId) -> String {
        match self.subscriptions.get(sub) {
            Some(s) => format!(
                "subscription next {} last delivered {}",
                s.next_index, s.last_delivered
            ),
            None => "no such subscription".to_string(),
        }
    }

    /// The directory record of `group` and the removals seen here (simulation diagnostics).
    pub(crate) fn debug_record(&self, group: DataStructureId) -> String {
        format!(
            "record {:?} removed_seen {:?} system applied {:?}",
            self.directory
                .get(group)
                .map(|r| (&r.voters, &r.learners, &r.removed, r.conf_index)),
            self.removed_seen.get(&group),
            self.groups
                .get(&DataStructureId::SYSTEM)
                .map(|g| (g.applied(), g.leader()))
        )
    }
}
