//! The node's side of hibernation (see `group::hibernation`): which groups sleep, and what
//! wakes them.

use super::NodeCore;
use crate::id::{node_of, DataStructureId};

impl NodeCore {
    /// Wakes every hibernating group: a membership change may need elections (a leader
    /// died) or replica changes.
    pub(super) fn wake_all(&mut self) {
        for id in std::mem::take(&mut self.asleep) {
            if let Some(group) = self.groups.get_mut(&id) {
                group.wake();
            }
        }
    }

    /// Asks the nodes of `group`'s other replicas to wake it: this replica knows no leader.
    pub(super) fn ask_peers_to_wake(&mut self, group: DataStructureId) {
        let Some(raft) = self.groups.get(&group) else {
            return;
        };
        let cs = raft.log().conf_state();
        let mut nodes: Vec<_> = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .map(|r| node_of(*r))
            .filter(|n| *n != self.me)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        for node in nodes {
            self.sends
                .entry(node)
                .or_default()
                .wake
                .push(group.to_bytes().to_vec());
        }
    }

    /// A peer's replica of `group` knows no leader: stay awake for a while (a leader
    /// heartbeats again, a follower may elect one).
    pub(super) fn handle_wake(&mut self, group: DataStructureId) {
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        self.asleep.remove(&group);
        raft.wake();
        self.active.insert(group);
    }
}
