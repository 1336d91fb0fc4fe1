//! What the core knows about other nodes: their addresses and datacenter, from gossip.

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
