//! copycat turns any in-process data structure into a replicated, highly available one.
//!
//! Each data structure is its own Raft group ([`raft`](https://docs.rs/raft) 0.7); one
//! process hosts thousands of groups. Nodes find each other with SWIM gossip (foca), with no
//! central coordinator, and keep every group's log in one sled database.
//!
//! # The pattern
//! A replicated data structure is a deterministic state machine: commands go into the
//! group's log, every replica applies them in log order, and a command's effect is known
//! once it is committed and applied. Implement [`StateMachine`] (or use the ready-made
//! [`ReplicatedMap`]) and open it as a [`Replicated`] handle: `propose` returns your
//! `apply`'s response for exactly that command, `read` reads the local state, and
//! `read_linearizable` reads it as of now, cluster-wide (a Raft read barrier, then the local
//! apply catches up). Snapshots are taken and restored through `snapshot`/`restore`.
//!
//! ```
//! use copycat::{Config, CopyCat, Replicated, StateMachine};
//!
//! /// Stock that never goes negative.
//! #[derive(Default)]
//! struct Stock(u64);
//!
//! impl StateMachine for Stock {
//!     type Command = i64;
//!     type Response = Result<u64, String>;
//!     fn apply(&mut self, delta: i64) -> Self::Response {
//!         let next = self.0 as i64 + delta;
//!         if next < 0 {
//!             return Err(format!("insufficient stock: {} left", self.0));
//!         }
//!         self.0 = next as u64;
//!         Ok(self.0)
//!     }
//!     fn snapshot(&self) -> Vec<u8> {
//!         self.0.to_be_bytes().to_vec()
//!     }
//!     fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
//!         self.0 = u64::from_be_bytes(bytes.try_into().map_err(|_| "8 bytes expected")?);
//!         Ok(())
//!     }
//! }
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
//! // The first subscriber anywhere creates the data structure.
//! let stock: Replicated<Stock> = Replicated::open(&node, node.new_data_structure_id(), Stock::default())?;
//! assert_eq!(stock.propose_blocking(5)?, Ok(5));
//! // The caller gets its own command's outcome, decided by the replicated state:
//! assert_eq!(stock.propose_blocking(-7)?, Err("insufficient stock: 5 left".into()));
//! // Every command acknowledged anywhere before this call is in what it reads.
//! assert_eq!(stock.read_linearizable_blocking(|s| s.0)?, 5);
//! node.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! Async code calls `propose(cmd).await` and `read_linearizable(f).await` instead.
//! Commits are applied when a handle is called (or a snapshot is taken), never by a thread
//! of their own, so one process serves thousands of state machines.
//!
//! # The channel API
//! Underneath, as in the original Go CopyCat, a [`DataStructure`] subscription has a
//! propose channel, a commit channel, an error channel and snapshot hooks: the application
//! runs its own apply loop over [`DataStructure::commits`] (each committed entry exactly
//! once, in log order, identical on every replica), and a [`DataStructure::read_barrier`]
//! returns the index to apply up to before a linearizable read.
//!
//! ```
//! use std::collections::HashMap;
//! use std::time::Duration;
//! use copycat::{Commit, Config, CopyCat};
//!
//! # fn main() -> copycat::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! let node = CopyCat::start(Config {
//!     data_dir: dir.path().to_path_buf(),
//!     port: 0,
//!     gossip_port: 0,
//!     ..Config::default()
//! })?;
//! let map = node.subscribe(node.new_data_structure_id(), copycat::no_snapshots)?;
//! let index = map.propose_blocking(b"greeting=hello".to_vec(), Duration::from_secs(10))?;
//! // The apply loop: committed entries, in log order.
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
//! - storage: one sled database per node, each group's log stored in runs (a round's
//!   entries of a group in one value); every group's writes of a round in one batch, one
//!   flush and one fdatasync.
//! - a Raft group wrapper over `raft::RawNode` following raft-rs's async-ready rules.
//! - the node core: deterministic, no I/O, time and randomness as inputs.
//! - the runtime: threads, sockets and timers (TCP transport, UDP gossip, storage thread).
//! - the API: [`CopyCat`], [`DataStructure`], [`Config`], [`Error`]; on top of it the
//!   typed API ([`Replicated`], [`ReplicatedMap`]) and the [`registry`].
#![deny(missing_docs)]

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod bounded_decode;
pub mod config;
mod copycat;
mod data_structure;
pub mod error;
/// Not part of the API: entry points for the fuzz targets in `fuzz/` and the decoder tests.
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod group;
mod id;
mod log_pacer;
pub(crate) mod node;
mod node_handle;
pub(crate) mod proto;
pub mod registry;
pub(crate) mod runtime;
pub mod security;
mod signal;
#[cfg(test)]
mod sim;
mod snapshot_io;
mod snapshot_provider;
pub(crate) mod storage;
mod subscriber_sink;
pub mod telemetry;
mod tracing_bridge;
mod typed;

/// Not part of the API: bincode decoding bounded by its input's size, for the registry
/// (which uses only the public API) and the fuzzers.
#[doc(hidden)]
pub use bounded_decode::bounded_bincode_decode;
pub use config::{Config, OnFatalError};
pub use copycat::CopyCat;
pub use data_structure::{CommitStream, DataStructure, ProposalSender, PROPOSALS_CAPACITY};
pub use error::{Error, Result};
pub use id::{new_data_structure_id, node_of, DataStructureId, InvalidId, NodeId, ReplicaId};
pub use node::{Commit, GroupStatus, MemberState, MemberStatus, NodeStats};
pub use runtime::{EXIT_CORE_PANIC, EXIT_STORAGE_FAILED};
pub use security::{GossipKey, Keyring, Security, SecurityStats, TlsIdentity};
pub use snapshot_provider::{no_snapshots, SnapshotProvider};
pub use tracing_bridge::tracing_logger;
pub use typed::{
    Bincode, Codec, MapCommand, MapMachine, MapResponse, Replicated, ReplicatedMap, StateMachine,
};

/// Not part of the API: direct storage access for the benchmark and the tests.
#[doc(hidden)]
pub mod internals {
    pub use crate::storage::{GroupWrite, LogStore, SledStore, WriteBatch};
}

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
