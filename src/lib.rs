//! copycat turns any in-process data structure into a replicated, highly available one.
//!
//! Each data structure is its own Raft group ([`raft`](https://docs.rs/raft) 0.7); one
//! process hosts thousands of groups. Nodes find each other with SWIM gossip (foca), with no
//! central coordinator, and keep every group's log in one sled database. An application
//! subscribes to a data structure by id and gets, as in the original Go CopyCat, a propose
//! channel, a commit channel, an error channel and snapshot hooks. It applies the commits to
//! its own structure (a map, a queue, anything): every replica sees the same entries in the
//! same order.
//!
//! ```
//! use std::collections::HashMap;
//! use std::time::Duration;
//! use copycat::{Commit, Config, CopyCat};
//!
//! # fn main() -> copycat::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! // One node that starts a new cluster (no peers); port 0 picks free ports.
//! let node = CopyCat::start(Config {
//!     data_dir: dir.path().to_path_buf(),
//!     port: 0,
//!     gossip_port: 0,
//!     ..Config::default()
//! })?;
//!
//! // Subscribe to a data structure; the first subscription anywhere creates it.
//! let id = node.new_data_structure_id();
//! let map = node.subscribe(id, copycat::no_snapshots)?;
//!
//! // Propose a change and wait until it is committed.
//! let index = map.propose_and_wait(b"greeting=hello".to_vec(), Duration::from_secs(10))?;
//!
//! // Apply committed entries to the local structure, in log order.
//! let mut state = HashMap::new();
//! while let Ok(Commit::Entry { index: i, data }) = map.commits().recv_timeout(Duration::from_secs(10)) {
//!     let text = String::from_utf8_lossy(&data).into_owned();
//!     if let Some((k, v)) = text.split_once('=') {
//!         state.insert(k.to_string(), v.to_string());
//!     }
//!     if i == index {
//!         break;
//!     }
//! }
//! assert_eq!(state["greeting"], "hello");
//! node.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! More nodes join by naming any existing node's gossip address in [`Config::peers`]; see
//! the `hashmap` and `demo` examples for a multi-process cluster.
//!
//! # Layers
//! - `proto/copycat.proto`: the wire messages (raft messages travel as opaque bytes).
//! - [`storage`]: one sled database per node, each group's log stored in runs (a round's
//!   entries of a group in one value); every group's writes of a round in one batch, one
//!   flush and one fdatasync.
//! - a Raft group wrapper over `raft::RawNode` following raft-rs's async-ready rules.
//! - [`node`]: the deterministic core (no I/O, time and randomness as inputs).
//! - the runtime: threads, sockets and timers (TCP transport, UDP gossip, storage thread).
//! - the API: [`CopyCat`], [`DataStructure`], [`Config`], [`Error`].
#![deny(missing_docs)]

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod config;
mod copycat;
mod data_structure;
pub mod error;
pub(crate) mod group;
pub mod id;
pub mod node;
mod node_handle;
pub(crate) mod proto;
pub mod registry;
pub(crate) mod runtime;
#[cfg(test)]
mod sim;
mod snapshot_io;
mod snapshot_provider;
pub mod storage;
mod subscriber_sink;
mod typed;

pub use config::Config;
pub use copycat::CopyCat;
pub use data_structure::{DataStructure, ProposalSender, PROPOSALS_CAPACITY};
pub use error::{Error, Result};
pub use id::{new_data_structure_id, node_of, DataStructureId, NodeId, ReplicaId};
pub use node::{Commit, GroupStatus, MemberStatus, NodeStats};
pub use snapshot_provider::{no_snapshots, SnapshotProvider};
pub use typed::{
    Bincode, Codec, MapCommand, MapMachine, MapResponse, Replicated, ReplicatedMap, StateMachine,
};

/// `nodes` in the rendezvous (highest random weight) order of `key`, the order copycat
/// places the replicas of a data structure in: deterministic, the same on every node and
/// in every version, and moving few keys when nodes come and go. Applications use it to
/// let many nodes agree on one of them without talking (the registry picks which node
/// removes a dead node's publications this way).
pub fn rendezvous_order(
    key: DataStructureId,
    nodes: impl IntoIterator<Item = NodeId>,
) -> Vec<NodeId> {
    node::placement::rank(key, nodes.into_iter().map(|n| (n, "")))
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}
