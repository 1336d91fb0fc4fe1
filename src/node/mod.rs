//! The node core: every group hosted here, the membership view, the directory and the
//! subscriptions. Deterministic, with no sockets, threads, clocks or randomness of its own.
//!
//! Inputs are `handle_*` calls (and `subscribe`/`propose`), each taking the current time
//! in milliseconds. After each batch of inputs the runtime calls `NodeCore::poll_output`
//! and performs what it returns: messages per peer node and one storage batch. The core
//! reads the log through [`LogStore`] but never writes it: writes leave only as the batch.

mod apply;
mod bootstrap;
pub(crate) mod directory;
mod dormant;
mod hibernation;
mod input;
mod leadership;
mod maintenance;
pub mod member;
pub(crate) mod messages;
mod pending;
pub(crate) mod placement;
pub(crate) mod proposal;
mod read;
mod replicas;
mod round;
mod round_state;
mod snapshot;
mod status;
pub(crate) mod streams;
pub(crate) mod subscription;
mod tombstone;
mod transfer;
pub(crate) mod validate;

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxBuildHasher;

use crate::error::Error;
use crate::group::{GroupLog, RaftGroup, RaftSettings, BOOTSTRAP_INDEX};
use crate::id::{node_of, DataStructureId, NodeId, ReplicaId};
use crate::proto;
use crate::storage::{LogStore, WriteBatch};

use directory::Directory;
pub(crate) use dormant::Dormant;
pub(crate) use input::{Input, Waiter};
use member::Members;
pub(crate) use member::{MembershipEvent, NodeInfo};
use pending::Pending;
pub use status::{GroupStatus, MemberState, MemberStatus, NodeStats};
pub use subscription::Commit;
use subscription::{SubId, SubscriberSink, Subscriptions};

/// Hash maps with a fixed hasher: their iteration order, and with it the order of the
/// core's output, depends only on the inputs, so a simulated run replays from its seed.
pub(crate) type Map<K, V> = HashMap<K, V, BuildHasherDefault<DefaultHasher>>;
/// The set counterpart of [`Map`].
pub(crate) type Set<T> = HashSet<T, BuildHasherDefault<DefaultHasher>>;

/// Metadata key under which the gossip addresses of known peers are stored, so a restarted
/// node can rejoin even if its configured peers are gone.
pub(crate) const KNOWN_PEERS_KEY: &str = "known_peers";

/// Settings of the core, derived from [`crate::Config`].
#[derive(Clone)]
pub(crate) struct CoreConfig {
    pub me: NodeInfo,
    pub replication_factor: usize,
    pub raft: RaftSettings,
    pub max_proposal_bytes: usize,
    pub proposal_timeout_ms: u64,
    pub rng_seed: u64,
    pub logger: slog::Logger,
    /// This node starts a new cluster: it bootstraps the system group if it has none.
    pub founder: bool,
    /// Alive nodes (this one included) a founder waits for before it bootstraps.
    pub bootstrap_expect: usize,
    /// How long a node stays down before its replicas are replaced elsewhere.
    pub dead_node_grace_ms: u64,
    /// Applied entries between snapshots of a replica with a subscriber.
    pub snapshot_interval: u64,
    /// Applied bytes between snapshots of a replica with a subscriber.
    pub snapshot_max_log_bytes: u64,
    /// Percentage of its last snapshot's size a replica applies before the next snapshot.
    pub snapshot_log_percent: u64,
}

/// Asks the runtime to take a snapshot of `group` through the snapshot provider of the
/// local subscription `sub` (the runtime holds the providers; the core only names them).
pub(crate) struct SnapshotRequest {
    pub group: DataStructureId,
    pub sub: SubId,
    /// The snapshot's index must be past the current snapshot (`min_index`).
    pub min_index: u64,
    /// What the subscription had been handed when the snapshot was asked for; the
    /// application may have applied more by the time its provider runs.
    pub max_index: u64,
    /// The last application entry at or before `max_index`: a provider whose state includes
    /// it includes everything up to `max_index` (the rest are no-ops and conf changes).
    pub last_entry_index: u64,
}

impl SnapshotRequest {
    /// The log index a snapshot whose state includes commits up to `provider_index` covers,
    /// if acceptable: state through the last application entry also covers the no-ops and
    /// conf changes up to `max_index`; state that moved past `max_index` covers exactly its
    /// own index (the core refuses one beyond what it applied).
    pub(crate) fn covered_index(&self, provider_index: u64) -> Option<u64> {
        let index = if provider_index > self.max_index {
            provider_index
        } else if provider_index >= self.last_entry_index {
            self.max_index
        } else {
            provider_index
        };
        (index >= self.min_index).then_some(index)
    }
}

/// What the runtime must do after a round.
#[derive(Default)]
pub(crate) struct Output {
    /// One batch per peer node: all groups' messages to it this round.
    pub sends: Vec<(NodeId, SocketAddr, proto::Batch)>,
    /// The round's storage writes with their sequence number; report completion with
    /// [`NodeCore::handle_persisted`], in order.
    pub write: Option<(u64, WriteBatch)>,
    /// Snapshots to take; report with [`NodeCore::handle_snapshot_taken`].
    pub snapshots: Vec<SnapshotRequest>,
    /// File work of the snapshot streams (see [`streams::SnapshotIo`]), in order.
    pub snapshot_io: Vec<streams::SnapshotIo>,
    /// Outcomes of acknowledged proposals and read barriers: the commit (or read) index,
    /// or why it failed, for each waiter named in the input.
    pub completions: Vec<(Waiter, crate::Result<u64>)>,
}

/// Metadata key holding this node's replica id in `group` (absent: incarnation 0, the
/// node id itself).
fn replica_key(group: DataStructureId) -> String {
    format!("replica/{group}")
}

/// The deterministic heart of a copycat node.
pub(crate) struct NodeCore {
    cfg: CoreConfig,
    me: NodeId,
    disk: Arc<dyn LogStore>,
    rng: SmallRng,
    now_ms: u64,
    ticks: u64,
    groups: Map<DataStructureId, RaftGroup>,
    members: Members,
    directory: Directory,
    /// Index of the last system-group entry applied to `directory`.
    directory_applied: u64,
    /// The local applications' subscriptions.
    subscriptions: Subscriptions,
    /// Groups a local subscriber waits for: to be created, or to get a replica here.
    wanted: Set<DataStructureId>,
    /// Local callers' proposals, queued or in flight.
    pending: Pending,
    reads: Map<u64, read::PendingRead>,
    next_seq: u64,
    /// When this core saw its first tick.
    started_ms: Option<u64>,
    /// Groups that may have a `Ready`.
    active: Set<DataStructureId>,
    /// The hosted groups that are not hibernating (see `group::hibernation`): the only ones
    /// a tick visits, so an idle node's tick costs what its awake groups cost. Every other
    /// hosted group hibernates. Hash sets of rustc-hash: as deterministic as the `Map`s (a
    /// fixed key), and cheaper to hash.
    awake: HashSet<DataStructureId, FxBuildHasher>,
    /// Groups with readies waiting for a batch to be durable.
    held: Set<DataStructureId>,
    /// Led groups whose replica management can move on now (a configuration change was
    /// applied, or a learner acknowledged appends): managed at the next tick rather than
    /// at the next maintenance pass, so healing takes no pass per step.
    reconfigure_soon: Set<DataStructureId>,
    /// What placement depended on at the last maintenance pass (see
    /// `maintenance::PlacementInputs`): while it holds, hibernating led groups are skipped.
    placement: Option<maintenance::PlacementInputs>,
    /// This round's writes and sends, and the storage batches' sequence numbers.
    round: round_state::Round,
    /// The first storage read or write that failed (nothing is acknowledged since).
    storage_failure: Option<Error>,
    stopped: bool,
    /// Replicas removed from each group, as seen in applied conf changes (reported to the
    /// directory so that nodes that were away delete their stale replicas).
    removed_seen: Map<DataStructureId, Vec<ReplicaId>>,
    /// The last replica of each group deleted here (also kept on disk, see `deleted_key`).
    deleted: Map<DataStructureId, ReplicaId>,
    /// Snapshots to request in this round's output.
    snapshot_requests: Vec<SnapshotRequest>,
    /// Snapshot streams to and from other nodes.
    streams: streams::Streams,
    /// Groups whose local replica was just removed from the configuration.
    pending_removal: Vec<DataStructureId>,
    /// Set while a graceful shutdown hands leaderships over.
    handover: Option<leadership::Handover>,
    /// Completions for this round's output.
    completions: Vec<(Waiter, crate::Result<u64>)>,
    /// The pacing of each data group's snapshots (see `snapshot.rs`).
    pacing: Map<DataStructureId, snapshot::Pacing>,
    /// Peer traffic refused (unknown senders, messages failing `validate::check`).
    refusals: validate::Refusals,
}

impl NodeCore {
    /// Opens the core over `disk`, reopening every group stored there.
    pub(crate) fn open(cfg: CoreConfig, disk: Arc<dyn LogStore>) -> crate::Result<Self> {
        let stored = disk.load_groups()?;
        let mut rng = SmallRng::seed_from_u64(cfg.rng_seed);
        // Proposal ids must not repeat across restarts of this node: the log still holds
        // the previous run's, and duplicates are recognised by id.
        let next_seq = rng.gen_range(1..u64::MAX / 2);
        // Derived from the seed without drawing from the generator: distinct per start.
        let first_stream = cfg.rng_seed.rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15;
        let mut core = NodeCore {
            me: cfg.me.node_id,
            rng,
            cfg,
            disk,
            now_ms: 0,
            ticks: 0,
            groups: Map::default(),
            members: Members::default(),
            directory: Directory::default(),
            directory_applied: 0,
            subscriptions: Subscriptions::default(),
            wanted: Set::default(),
            pending: Pending::default(),
            reads: Map::default(),
            next_seq,
            started_ms: None,
            active: Set::default(),
            awake: HashSet::default(),
            held: Set::default(),
            reconfigure_soon: Set::default(),
            placement: None,
            round: round_state::Round::default(),
            storage_failure: None,
            stopped: false,
            handover: None,
            completions: Vec::new(),
            pacing: Map::default(),
            refusals: validate::Refusals::default(),
            removed_seen: Map::default(),
            deleted: Map::default(),
            pending_removal: Vec::new(),
            snapshot_requests: Vec::new(),
            streams: streams::Streams::new(first_stream),
        };
        for group in &stored {
            let log = GroupLog::from_stored(group, core.disk.clone())?;
            // Commit indexes and applied indexes are written without fsync, commit first;
            // a store that lost the one but kept the other must not make raft panic.
            let committed = group.hard_state.commit.max(group.snapshot.index);
            let applied = group.applied.max(group.snapshot.index).min(committed);
            let replica = core.stored_replica_id(group.group)?;
            let mut raft = RaftGroup::new(
                group.group,
                replica,
                log,
                applied,
                &core.cfg.raft,
                &mut core.rng,
            )
            .map_err(|e| Error::Corrupted(format!("cannot reopen group {}: {e}", group.group)))?;
            // Its only voter has nobody to wait for and nobody to disturb: it leads at once
            // rather than after an election timeout (1 to 2 s by default).
            if raft.is_sole_voter() {
                if let Err(e) = raft.campaign(&mut core.rng) {
                    slog::warn!(core.cfg.logger, "campaign failed"; "group" => %group.group, "error" => %e);
                }
            }
            core.groups.insert(group.group, raft);
            core.awake.insert(group.group);
            core.active.insert(group.group);
        }
        core.rebuild_directory()?;
        core.bootstrap_when_expected_nodes_are_up();
        Ok(core)
    }

    /// This node's replica id in a stored group.
    fn stored_replica_id(&self, group: DataStructureId) -> crate::Result<ReplicaId> {
        let Some(bytes) = self.disk.get_meta(&replica_key(group))? else {
            return Ok(self.me);
        };
        let arr: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
            Error::Corrupted(format!(
                "the stored replica id of group {group} is not 8 bytes"
            ))
        })?;
        Ok(u64::from_be_bytes(arr))
    }

    /// Replays the system group's snapshot and applied entries into the directory.
    fn rebuild_directory(&mut self) -> crate::Result<()> {
        let Some(system) = self.groups.get(&DataStructureId::SYSTEM) else {
            return Ok(());
        };
        let applied = system.applied();
        if let Some(snap) = self.disk.snapshot(DataStructureId::SYSTEM)? {
            if snap.get_metadata().index > BOOTSTRAP_INDEX {
                self.directory = Directory::decode(&snap.data)
                    .map_err(|e| Error::Corrupted(format!("the system snapshot: {e}")))?;
            }
            self.directory_applied = snap.get_metadata().index;
        }
        let from = self.directory_applied + 1;
        if from <= applied {
            let entries = system
                .log()
                .read_entries(from, applied + 1, None)
                .map_err(|e| {
                    Error::Corrupted(format!("the system group's log {from}..={applied}: {e}"))
                })?;
            for entry in entries {
                self.apply_directory_entry(&entry);
            }
        }
        Ok(())
    }

    /// Creates this node's replica `replica` of `group`, bootstrapped with the group's
    /// initial `voters`. Every replica of a group, initial or added later, starts from this
    /// same synthetic snapshot.
    fn create_replica(&mut self, group: DataStructureId, voters: &[NodeId], replica: ReplicaId) {
        if self.groups.contains_key(&group)
            || node_of(replica) != self.me
            || self.is_deleted(group, replica)
        {
            return;
        }
        let snap = GroupLog::bootstrap_snapshot(voters);
        let mut log = GroupLog::empty(group, self.disk.clone());
        log.apply_snapshot(&snap);
        if group.is_system() {
            // The bootstrap snapshot holds the empty directory, applied as of its index:
            // that is what the other voters receive as their first snapshot.
            self.directory = Directory::default();
            self.directory_applied = BOOTSTRAP_INDEX;
        }
        let raft = RaftGroup::new(
            group,
            replica,
            log,
            BOOTSTRAP_INDEX,
            &self.cfg.raft,
            &mut self.rng,
        );
        let mut raft = match raft {
            Ok(raft) => raft,
            Err(e) => {
                slog::error!(self.cfg.logger, "cannot create replica"; "group" => %group, "error" => %e);
                return;
            }
        };
        let write = self.round.write_for(group);
        write.conf_state = Some(snap.get_metadata().get_conf_state().clone());
        write.applied = Some(BOOTSTRAP_INDEX);
        write.hard_state = Some(raft.log().initial_hard_state());
        write.snapshot = Some(snap);
        if replica != self.me {
            let key = replica_key(group);
            self.round
                .put_meta(key, Some(replica.to_be_bytes().to_vec()));
        }
        if voters.first() == Some(&replica) {
            if let Err(e) = raft.campaign(&mut self.rng) {
                slog::warn!(self.cfg.logger, "campaign failed"; "group" => %group, "error" => %e);
            }
        }
        slog::info!(self.cfg.logger, "replica created"; "group" => %group, "replica" => replica,
            "voters" => ?voters);
        self.groups.insert(group, raft);
        self.awake.insert(group);
        self.active.insert(group);
    }

    /// A replica waiting for the system group's snapshot from its leader.
    fn create_uninitialized_system_replica(&mut self, replica: ReplicaId) {
        let group = DataStructureId::SYSTEM;
        let log = GroupLog::empty(group, self.disk.clone());
        match RaftGroup::new(group, replica, log, 0, &self.cfg.raft, &mut self.rng) {
            Ok(raft) => {
                if replica != self.me {
                    let key = replica_key(group);
                    self.round
                        .put_meta(key, Some(replica.to_be_bytes().to_vec()));
                }
                self.groups.insert(group, raft);
                self.awake.insert(group);
            }
            Err(e) => {
                slog::error!(self.cfg.logger, "cannot create system replica"; "error" => %e);
            }
        }
    }

    /// Advances time by one tick: raft timers, proposal deadlines, periodic maintenance.
    pub(crate) fn handle_tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.started_ms.get_or_insert(now_ms);
        self.ticks += 1;
        let mut leaderless = Vec::new();
        for id in &self.awake {
            let Some(group) = self.groups.get_mut(id) else {
                continue;
            };
            group.tick(&mut self.rng);
            self.active.insert(*id);
            if group.should_look_for_leader() {
                leaderless.push(*id);
            }
        }
        for group in leaderless {
            self.ask_peers_to_wake(group);
        }
        self.expire_proposals();
        self.retry_unanswered_reads();
        self.retry_lagging();
        self.tick_streams();
        self.maintain();
    }

    /// A change in gossip's membership view.
    pub(crate) fn handle_membership(&mut self, now_ms: u64, event: MembershipEvent) {
        self.now_ms = now_ms;
        let peer = match &event {
            MembershipEvent::Up(info) => info.node_id,
            MembershipEvent::Down(node) => *node,
        };
        match self.members.apply(self.me, now_ms, event) {
            member::Change::Up => {
                let addr = self.members.raft_addr(peer);
                slog::info!(self.cfg.logger, "member up"; "peer" => peer, "addr" => ?addr);
                self.record_known_peers();
                self.wake_all();
                self.bootstrap_when_expected_nodes_are_up();
            }
            member::Change::Down => {
                slog::info!(self.cfg.logger, "member down"; "peer" => peer);
                self.wake_all();
            }
            member::Change::None => {}
        }
    }

    fn record_known_peers(&mut self) {
        let peers = self.members.gossip_addrs();
        let value = Some(peers.join(",").into_bytes());
        self.round.put_meta(KNOWN_PEERS_KEY.to_string(), value);
    }

    /// The transport could not reach `node`: tell every group so raft probes it gently, and
    /// let followers of a leader there elect another soon (and wake to do it).
    pub(crate) fn handle_unreachable(&mut self, node: NodeId) {
        for (id, group) in self.groups.iter_mut() {
            group.report_unreachable_node(node);
            if group.on_leader_node_unreachable(node) && self.awake.insert(*id) {
                group.wake();
            }
            self.active.insert(*id);
        }
    }

    /// The batch `seq` (and every earlier one) is written, and durable as far as it needs
    /// to be (`synced`: it was fsync'ed).
    pub(crate) fn handle_persisted(&mut self, seq: u64, synced: bool) {
        self.round.persisted(seq, synced);
    }

    /// The batch `seq` could not be written. Nothing after it is acknowledged: held readies
    /// stay held, and every subscriber and waiter hears about it.
    pub(crate) fn handle_storage_failed(&mut self, seq: u64, error: Error) {
        slog::error!(self.cfg.logger, "storage write failed"; "batch" => seq);
        self.stop_on_storage_failure("writing", error);
    }

    /// Whether a storage read or write failed (the node acknowledges nothing since).
    pub(crate) fn storage_failed(&self) -> bool {
        self.storage_failure.is_some()
    }

    /// The storage failure that stopped the core, if any.
    pub(crate) fn storage_failure(&self) -> Option<&Error> {
        self.storage_failure.as_ref()
    }

    /// Storage failed (`doing` what): nothing more is acknowledged, and every subscriber
    /// and waiter hears about it.
    fn stop_on_storage_failure(&mut self, doing: &str, error: Error) {
        slog::error!(self.cfg.logger, "storage failed; this node stops acknowledging writes";
            "while" => doing, "error" => %error);
        self.subscriptions.report_to_all(&error);
        for flight in self.pending.take_in_flight() {
            crate::telemetry::proposal_failed(&error);
            self.complete(flight.proposal.waiter, Err(error.clone()));
        }
        self.storage_failure.get_or_insert(error);
    }

    /// A local application subscribes to `group`.
    pub(crate) fn subscribe(
        &mut self,
        now_ms: u64,
        sub: SubId,
        group: DataStructureId,
        sink: Box<dyn SubscriberSink>,
    ) {
        self.now_ms = now_ms;
        self.subscriptions.add(sub, group, sink);
        self.wanted.insert(group);
        self.pursue(group);
    }

    /// The application dropped its handle; the replica stays (detached).
    pub(crate) fn unsubscribe(&mut self, sub: SubId) {
        self.subscriptions.remove(sub);
    }

    /// Stops accepting work and fails every waiter with [`Error::Shutdown`].
    pub(crate) fn shutdown(&mut self) {
        self.stopped = true;
        for f in self.pending.take_in_flight() {
            self.complete(f.proposal.waiter, Err(Error::Shutdown));
        }
        for p in self.pending.take_queued() {
            self.complete(p.waiter, Err(Error::Shutdown));
        }
        self.fail_reads(Error::Shutdown);
    }

    /// Sends subscribers of `group` what was applied since their cursor.
    fn deliver(&mut self, group: DataStructureId) {
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        let applied = raft.applied();
        let delivered = self.subscriptions.deliver(group, raft.log_mut(), applied);
        if let Err(why) = delivered {
            if !self.storage_failed() {
                self.stop_on_storage_failure("reading", Error::Corrupted(why));
            }
        }
    }

    fn retry_lagging(&mut self) {
        for group in self.subscriptions.lagging_groups() {
            self.deliver(group);
        }
    }
}
