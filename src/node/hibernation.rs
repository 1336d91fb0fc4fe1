//! The node's side of hibernation (see `group::hibernation`): which groups sleep, and what
//! wakes them.

use super::apply::member_nodes;
use super::NodeCore;
use crate::id::{node_of, DataStructureId, NodeId};

impl NodeCore {
    /// Wakes every hibernating group: a membership change may need elections (a leader
    /// died) or replica changes.
    pub(super) fn wake_all(&mut self) {
        for (id, group) in self.groups.iter_mut() {
            if self.awake.insert(*id) {
                group.wake();
            }
        }
    }

    /// Asks every node that may hold a replica of `group` (its configuration may be stale:
    /// the directory's list too, and every member for the directory itself) to wake it:
    /// this replica hears from no leader.
    pub(super) fn ask_peers_to_wake(&mut self, group: DataStructureId) {
        let Some(raft) = self.groups.get(&group) else {
            return;
        };
        let mut nodes: Vec<NodeId> = member_nodes(raft.log().conf_state());
        if group.is_system() {
            nodes.extend(self.members.ids());
        } else if let Some(record) = self.directory.get(group) {
            nodes.extend(record.replicas().map(node_of));
        }
        nodes.retain(|n| *n != self.me);
        nodes.sort_unstable();
        nodes.dedup();
        for node in nodes {
            self.round.to(node).wake.push(group.to_bytes().to_vec());
        }
    }

    /// A peer's replica of `group` hears from no leader: stay awake for a while (a leader
    /// heartbeats again, a follower may elect one).
    pub(super) fn handle_wake(&mut self, group: DataStructureId) {
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        self.awake.insert(group);
        raft.wake();
        self.active.insert(group);
    }
}
