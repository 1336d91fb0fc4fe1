//! What the core knows about other nodes: their addresses and datacenter, from gossip.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::id::NodeId;

/// A node's metadata as spread by gossip.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's persistent id.
    pub node_id: NodeId,
    /// Where it accepts raft traffic (TCP).
    pub raft_addr: SocketAddr,
    /// Where it gossips (UDP).
    pub gossip_addr: SocketAddr,
    /// Its datacenter label.
    pub datacenter: String,
}

/// A change in the membership view, reported by gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// The node is alive (joined, or came back, or its metadata changed).
    Up(NodeInfo),
    /// The node was declared down (failed, or left gracefully).
    Down(NodeId),
}

/// Another node as this node sees it.
struct Member {
    info: NodeInfo,
    alive: bool,
    /// When gossip declared it down (it is replaced after the dead-node grace period).
    down_since_ms: Option<u64>,
}

/// How an event changed the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// A node joined, came back, or changed its metadata.
    Up,
    /// A known node was declared down.
    Down,
    /// Nothing new.
    None,
}

/// The membership view: every other node gossip has reported, alive or down, and the rules
/// of who counts as alive and who as dead for good.
#[derive(Default)]
pub(crate) struct Members {
    nodes: BTreeMap<NodeId, Member>,
}

impl Members {
    /// Applies a gossip event at `now_ms`; events about `me` are ignored.
    pub(crate) fn apply(&mut self, me: NodeId, now_ms: u64, event: MembershipEvent) -> Change {
        match event {
            MembershipEvent::Up(info) if info.node_id != me => {
                let known = self.nodes.get(&info.node_id);
                if known.is_some_and(|m| m.info == info && m.alive) {
                    return Change::None;
                }
                let member = Member {
                    info,
                    alive: true,
                    down_since_ms: None,
                };
                self.nodes.insert(member.info.node_id, member);
                Change::Up
            }
            MembershipEvent::Up(_) => Change::None,
            MembershipEvent::Down(node) => match self.nodes.get_mut(&node) {
                Some(member) => {
                    member.alive = false;
                    member.down_since_ms.get_or_insert(now_ms);
                    Change::Down
                }
                None => Change::None,
            },
        }
    }

    /// Whether gossip has ever reported `node`.
    pub(crate) fn knows(&self, node: NodeId) -> bool {
        self.nodes.contains_key(&node)
    }

    /// Whether gossip reports `node` alive now.
    pub(crate) fn is_alive(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|m| m.alive)
    }

    /// Whether gossip has reported `node` down for at least `grace_ms` at `now_ms`.
    pub(crate) fn down_for(&self, node: NodeId, grace_ms: u64, now_ms: u64) -> bool {
        self.nodes.get(&node).is_some_and(|m| {
            !m.alive
                && m.down_since_ms
                    .is_some_and(|since| since + grace_ms <= now_ms)
        })
    }

    /// Every known node, alive or not.
    pub(crate) fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.keys().copied()
    }

    /// The alive nodes with their datacenters.
    pub(crate) fn alive(&self) -> impl Iterator<Item = (NodeId, &str)> + '_ {
        self.nodes
            .iter()
            .filter(|(_, m)| m.alive)
            .map(|(id, m)| (*id, m.info.datacenter.as_str()))
    }

    /// `node`'s datacenter, if known.
    pub(crate) fn datacenter(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(|m| m.info.datacenter.as_str())
    }

    /// Where `node` takes raft traffic, if known (alive or not).
    pub(crate) fn raft_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.nodes.get(&node).map(|m| m.info.raft_addr)
    }

    /// The gossip addresses of every known node (kept so a restart can rejoin).
    pub(crate) fn gossip_addrs(&self) -> Vec<String> {
        self.nodes
            .values()
            .map(|m| m.info.gossip_addr.to_string())
            .collect()
    }

    /// Every known node with its state and, when down, since when (ms).
    pub(crate) fn statuses(&self) -> impl Iterator<Item = (&NodeInfo, bool, Option<u64>)> + '_ {
        self.nodes
            .values()
            .map(|m| (&m.info, m.alive, m.down_since_ms.filter(|_| !m.alive)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(node_id: NodeId) -> NodeInfo {
        NodeInfo {
            node_id,
            raft_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], 2)),
            datacenter: "dc".to_string(),
        }
    }

    #[test]
    fn a_node_is_dead_for_good_only_after_the_grace_period_and_until_it_returns() {
        let mut members = Members::default();
        assert_eq!(
            members.apply(1, 0, MembershipEvent::Up(info(1))),
            Change::None
        );
        assert_eq!(
            members.apply(1, 0, MembershipEvent::Up(info(2))),
            Change::Up
        );
        assert_eq!(
            members.apply(1, 5, MembershipEvent::Up(info(2))),
            Change::None
        );
        assert_eq!(members.apply(1, 10, MembershipEvent::Down(2)), Change::Down);
        assert!(!members.is_alive(2) && members.knows(2));
        assert!(!members.down_for(2, 100, 109));
        assert!(members.down_for(2, 100, 110));
        assert_eq!(
            members.apply(1, 120, MembershipEvent::Up(info(2))),
            Change::Up
        );
        assert!(members.is_alive(2) && !members.down_for(2, 100, 500));
        assert_eq!(
            members.apply(1, 130, MembershipEvent::Down(9)),
            Change::None
        );
    }
}
