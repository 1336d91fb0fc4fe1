//! The node handle applications hold.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::data_structure::{DataStructure, ProposalSender, Subscribed, PROPOSALS_CAPACITY};
use crate::error::{Error, Result};
use crate::id::{DataStructureId, NodeId};
use crate::node::{GroupStatus, MemberStatus, NodeStats};
use crate::node_handle::NodeHandle;
use crate::security::{GossipKey, Keyring, SecurityStats};
use crate::snapshot_provider::SnapshotProvider;
use crate::subscriber_sink::{notifying_channel_sink, Progress};

/// A running copycat node. Cheap to clone; `Send + Sync`.
///
/// The node shuts down gracefully on [`CopyCat::shutdown`] (or
/// [`CopyCat::shutdown_async`]), or when the last handle (this one, its clones, and every
/// [`DataStructure`] and typed handle subscribed through it) is dropped. In the usual
/// channel-API pattern a thread applying commits holds a [`DataStructure`] until its
/// commit channel closes, which only a shutdown does: call `shutdown` explicitly.
#[derive(Clone)]
pub struct CopyCat {
    inner: Arc<NodeHandle>,
}

impl CopyCat {
    /// Starts a node: opens (or creates) its data dir, binds its ports, joins the cluster
    /// through `config.peers` (or starts a new one when there are none) and reopens every
    /// data structure stored in the data dir.
    ///
    /// Works from plain threads and from inside a tokio runtime alike: the node runs on its
    /// own threads. Fails with [`Error::DataDirLocked`] if another process uses the data dir.
    pub fn start(config: Config) -> Result<CopyCat> {
        Ok(CopyCat {
            inner: Arc::new(NodeHandle::start(config)?),
        })
    }

    /// This node's persistent id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The TCP address this node accepts raft traffic on (the bound port when 0 was asked).
    pub fn raft_addr(&self) -> SocketAddr {
        self.inner.raft_addr
    }

    /// The UDP address this node gossips on; give it to other nodes as a peer.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.inner.gossip_addr
    }

    /// A fresh data structure id.
    pub fn new_data_structure_id(&self) -> DataStructureId {
        DataStructureId::new()
    }

    /// Subscribes to the data structure `id`, creating it if it exists nowhere yet.
    ///
    /// The first subscription anywhere creates the group with `replication_factor` voters on
    /// distinct alive nodes (fewer, an odd number, in a smaller cluster; the group grows
    /// once nodes join). Nothing is created before the cluster is founded: a founder with
    /// [`Config::bootstrap_expect`] waits for that many nodes, and the subscription's
    /// proposals wait meanwhile. A node without a replica gets a learner replica, so its
    /// commit stream is local. A new subscription replays the whole history (the latest
    /// snapshot, then every entry after it) before live commits. `snapshot_provider` is
    /// called by the snapshot machinery to capture the application's state (see
    /// [`SnapshotProvider`]).
    pub fn subscribe(
        &self,
        id: DataStructureId,
        snapshot_provider: impl SnapshotProvider,
    ) -> Result<DataStructure> {
        if id == DataStructureId::SYSTEM {
            return Err(Error::InvalidId("the zero id is reserved".to_string()));
        }
        let progress = Progress::default();
        let (sink, commit_rx, error_rx) = notifying_channel_sink(Some(progress.clone()));
        let (propose_tx, propose_rx) = crossbeam_channel::bounded(PROPOSALS_CAPACITY);
        let provider = Arc::new(snapshot_provider);
        let (sub, doorbell) = self.inner.subscribe(id, sink, provider, propose_rx)?;
        Ok(DataStructure {
            node: self.inner.clone(),
            id,
            sub,
            _subscribed: Arc::new(Subscribed {
                node: self.inner.clone(),
                sub,
            }),
            proposals: ProposalSender {
                channel: propose_tx,
                doorbell,
            },
            commits: commit_rx,
            errors: error_rx,
            progress,
        })
    }

    /// [`CopyCat::subscribe`] with the id as its 26-character string form.
    pub fn subscribe_str(
        &self,
        id: &str,
        snapshot_provider: impl SnapshotProvider,
    ) -> Result<DataStructure> {
        self.subscribe(id.parse()?, snapshot_provider)
    }

    /// The cluster's members as this node sees them, this node first. Asks the node's
    /// core thread (answered within milliseconds unless the node is overloaded; fails with
    /// [`Error::Shutdown`] after 5 s or once the node is down).
    pub async fn members(&self) -> Result<Vec<MemberStatus>> {
        self.inner.query_async(|core| core.member_statuses()).await
    }

    /// The blocking form of [`CopyCat::members`].
    pub fn members_blocking(&self) -> Result<Vec<MemberStatus>> {
        self.inner.query(|core| core.member_statuses())
    }

    /// This node's replica of `id`, if it hosts one.
    pub async fn group_status(&self, id: DataStructureId) -> Result<Option<GroupStatus>> {
        self.inner
            .query_async(move |core| core.group_status(id))
            .await
    }

    /// The blocking form of [`CopyCat::group_status`].
    pub fn group_status_blocking(&self, id: DataStructureId) -> Result<Option<GroupStatus>> {
        self.inner.query(move |core| core.group_status(id))
    }

    /// This node's counters: replicas hosted, how many hibernate, durable storage writes.
    pub async fn stats(&self) -> Result<NodeStats> {
        self.inner.query_async(|core| core.stats()).await
    }

    /// The blocking form of [`CopyCat::stats`].
    pub fn stats_blocking(&self) -> Result<NodeStats> {
        self.inner.query(|core| core.stats())
    }

    /// Every data structure with a replica on this node.
    pub async fn hosted_data_structures(&self) -> Result<Vec<DataStructureId>> {
        self.inner.query_async(|core| core.hosted_groups()).await
    }

    /// The blocking form of [`CopyCat::hosted_data_structures`].
    pub fn hosted_data_structures_blocking(&self) -> Result<Vec<DataStructureId>> {
        self.inner.query(|core| core.hosted_groups())
    }

    /// Whether this node has joined the cluster's directory (a Raft group every node
    /// replicates): until then, subscriptions wait. Useful to wait for a fresh node, or
    /// for a founder's `bootstrap_expect` nodes to come up.
    pub async fn has_joined(&self) -> Result<bool> {
        self.inner.query_async(|core| core.has_joined()).await
    }

    /// The blocking form of [`CopyCat::has_joined`].
    pub fn has_joined_blocking(&self) -> Result<bool> {
        self.inner.query(|core| core.has_joined())
    }

    /// How many data structures the cluster's directory (as replicated here) knows.
    pub async fn known_data_structures(&self) -> Result<usize> {
        self.inner.query_async(|core| core.directory_len()).await
    }

    /// The blocking form of [`CopyCat::known_data_structures`].
    pub fn known_data_structures_blocking(&self) -> Result<usize> {
        self.inner.query(|core| core.directory_len())
    }

    /// Installs `key` in this node's gossip keyring as a secondary key: from now on this
    /// node opens datagrams sealed under it (it still seals under the primary key).
    /// Idempotent.
    ///
    /// The first step of a key rotation (see [`Keyring`]): install on every node before
    /// any node uses the key. Fails with [`Error::GossipKey`] if this node's gossip is not
    /// encrypted. Only this node changes, and only until it stops: the keys a node starts
    /// with are those of its [`Config`](crate::Config).
    pub fn install_gossip_key(&self, key: GossipKey) -> Result<()> {
        let what = format!("install {}", key.fingerprint());
        self.inner.security.update_keyring(&what, |ring| {
            ring.install(key);
            Ok(())
        })
    }

    /// Makes the installed `key` this node's primary gossip key: from now on it seals every
    /// datagram under it; the former primary still opens datagrams until removed.
    ///
    /// The second step of a rotation, once every node has installed the key. Fails with
    /// [`Error::GossipKey`] if the key is not installed or gossip is not encrypted.
    pub fn use_gossip_key(&self, key: &GossipKey) -> Result<()> {
        let what = format!("use {}", key.fingerprint());
        self.inner
            .security
            .update_keyring(&what, |ring| ring.use_key(key))
    }

    /// Removes `key` from this node's gossip keyring: datagrams sealed under it no longer
    /// open here. Removing a key that is not there changes nothing.
    ///
    /// The last step of a rotation, once every node uses the new key. Fails with
    /// [`Error::GossipKey`] if `key` is the primary key or gossip is not encrypted.
    pub fn remove_gossip_key(&self, key: &GossipKey) -> Result<()> {
        let what = format!("remove {}", key.fingerprint());
        self.inner
            .security
            .update_keyring(&what, |ring| ring.remove(key))
    }

    /// This node's gossip keyring as it is now; `None` when gossip is not encrypted.
    pub fn gossip_keys(&self) -> Option<Keyring> {
        self.inner.security.keyring()
    }

    /// Counters of the traffic this node refused (gossip datagrams that opened under no
    /// key, TCP connections that failed TLS or the node-id binding).
    pub fn security_stats(&self) -> SecurityStats {
        self.inner.security.stats()
    }

    /// Shuts the node down gracefully: leaves gossip, fails pending proposals with
    /// [`Error::Shutdown`], writes and syncs the last batch, closes connections. Every
    /// handle of this node stops working. Idempotent.
    ///
    /// Blocks for as long as the shutdown takes (usually well under a second; at most
    /// about 10 s when peers are unreachable): from async code, prefer
    /// [`CopyCat::shutdown_async`].
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// [`CopyCat::shutdown`] for async code: runs on tokio's blocking pool and returns
    /// when the node is down, without blocking the executor.
    pub async fn shutdown_async(&self) {
        let inner = self.inner.clone();
        if tokio::task::spawn_blocking(move || inner.shutdown())
            .await
            .is_err()
        {
            // The blocking pool is gone (the runtime is shutting down): stop right here.
            self.inner.shutdown();
        }
    }
}

impl std::fmt::Debug for CopyCat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyCat")
            .field("node_id", &self.inner.node_id)
            .field("raft_addr", &self.inner.raft_addr)
            .field("gossip_addr", &self.inner.gossip_addr)
            .finish()
    }
}
