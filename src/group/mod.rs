//! One Raft group: a thin, I/O-free wrapper over `raft::RawNode` for one data structure.
//!
//! The wrapper follows raft-rs's async-ready rules: a `Ready`'s messages leave at once (the
//! leader's appends go out before its own fsync), its writes join the round's storage batch,
//! and its persisted messages and committed entries are held until that batch is durable
//! ("persist before sending persisted messages, persist the commit index before applying").

mod conf;
mod context;
mod copies;
mod election;
mod hibernation;
pub(crate) mod log;
mod recent;
#[cfg(test)]
mod reopen_tests;

use std::collections::VecDeque;

use raft::eraftpb::{ConfState, Entry, Message, MessageType, Snapshot, SnapshotMetadata};
use raft::{RawNode, StateRole};
use rand::Rng;

use crate::id::{node_of, DataStructureId, NodeId, ReplicaId};
use crate::storage::GroupWrite;
#[cfg(test)]
pub(crate) use context::test_support;
pub(crate) use context::ProposalContext;
pub(crate) use copies::DEDUPE_WINDOW;
pub(crate) use log::{GroupLog, BOOTSTRAP_INDEX};
use recent::RecentProposals;

/// Raft settings shared by every group of a node.
#[derive(Clone)]
pub(crate) struct RaftSettings {
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub logger: slog::Logger,
}

/// The output of one `Ready` that must wait for its storage batch to be durable.
struct HeldReady {
    number: u64,
    /// The storage batch that makes this ready durable.
    batch_seq: u64,
    persisted_messages: Vec<Message>,
    committed: Vec<Entry>,
    snapshot: Option<Snapshot>,
    /// Index of the last entry this ready appended.
    last_appended: Option<u64>,
}

/// What a group hands back once a batch is durable: messages to send now and entries (or a
/// snapshot) to apply, in log order.
#[derive(Default)]
pub(crate) struct Released {
    pub messages: Vec<Message>,
    pub snapshot: Option<Snapshot>,
    pub committed: Vec<Entry>,
}

/// What one `Ready` produced this round.
pub(crate) struct Collected {
    /// Messages that may leave at once.
    pub messages: Vec<Message>,
    /// Writes for the round's batch (`None` when the ready wrote nothing).
    pub write: Option<GroupWrite>,
    /// Answers to read-index requests: `(request context, commit index to wait for)`.
    pub reads: Vec<(Vec<u8>, u64)>,
    /// The ready needs no new durable write and every earlier one is durable: it can be
    /// released now.
    pub releasable: bool,
}

/// One replica of one group.
pub(crate) struct RaftGroup {
    id: DataStructureId,
    raw: RawNode<GroupLog>,
    logger: slog::Logger,
    held: VecDeque<HeldReady>,
    applied: u64,
    /// (term, role) at the last timeout randomization.
    last_term_role: (u64, StateRole),
    /// The leader as of the last `take_leader_change`.
    last_leader: ReplicaId,
    /// Configurations applied since the latest snapshot, with their log index, so a
    /// snapshot at any index carries the configuration of that index.
    conf_history: Vec<(u64, ConfState)>,
    /// Bytes of entries applied since the latest snapshot.
    bytes_since_snapshot: u64,
    /// Index of the last application entry applied; `None` until one is applied or the
    /// value is first asked for, when it is looked up in the log (reading the logs of every
    /// group of a reopened node for it took seconds, and only snapshots need it).
    last_entry_applied: Option<u64>,
    /// Proposals that entered the log lately (duplicate forwarded proposals are dropped).
    recent: RecentProposals,
    /// Consecutive ticks without a known leader.
    leaderless_ticks: u64,
    /// Consecutive ticks with nothing in flight (see `hibernation`).
    quiet_ticks: u64,
    /// Ticks since a message from the leader this replica knows (or since it led).
    unheard_ticks: u64,
}

impl RaftGroup {
    /// Opens a replica over `log` (fresh, bootstrapped, or loaded from disk).
    pub(crate) fn new(
        id: DataStructureId,
        replica: ReplicaId,
        log: GroupLog,
        applied: u64,
        settings: &RaftSettings,
        rng: &mut impl Rng,
    ) -> raft::Result<Self> {
        let config = raft::Config {
            id: replica,
            election_tick: settings.election_ticks,
            heartbeat_tick: settings.heartbeat_ticks,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            // raft-rs 0.7's append batching glues new entries onto a pending empty append
            // whose index is past them; the follower then acknowledges entries it does not
            // have (found by the simulator: "to_commit out of range" panics). Every group's
            // messages to a node already leave in one frame.
            batch_append: false,
            max_committed_size_per_ready: 16 << 20,
            ..Default::default()
        };
        let logger = settings
            .logger
            .new(slog::o!("group" => id.to_string(), "replica" => replica));
        let conf_history = vec![(applied, log.conf_state().clone())];
        let raw = RawNode::new(&config, log, &logger)?;
        let mut group = RaftGroup {
            id,
            raw,
            logger,
            held: VecDeque::new(),
            applied,
            last_term_role: (u64::MAX, StateRole::Follower),
            last_leader: 0,
            conf_history,
            bytes_since_snapshot: 0,
            last_entry_applied: None,
            recent: RecentProposals::default(),
            leaderless_ticks: 0,
            quiet_ticks: 0,
            unheard_ticks: 0,
        };
        group.randomize_timeout_if_changed(rng);
        Ok(group)
    }

    /// The raft log of this replica.
    pub(crate) fn log(&self) -> &GroupLog {
        self.raw.store()
    }

    /// Mutable access to the raft log (snapshot preparation, tail trimming).
    pub(crate) fn log_mut(&mut self) -> &mut GroupLog {
        self.raw.mut_store()
    }

    /// The highest index handed out for applying.
    pub(crate) fn applied(&self) -> u64 {
        self.applied
    }

    /// The leader replica this replica knows of (0 if none).
    pub(crate) fn leader(&self) -> ReplicaId {
        self.raw.raft.leader_id
    }

    /// True once each time a new leader becomes known.
    pub(crate) fn take_leader_change(&mut self) -> bool {
        let leader = self.leader();
        let changed = leader != 0 && leader != self.last_leader;
        if leader != 0 {
            self.last_leader = leader;
        }
        changed
    }

    /// Whether this replica leads its group.
    pub(crate) fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The current term.
    pub(crate) fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Whether a conf change is proposed and not applied yet.
    pub(crate) fn has_pending_conf(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// The index the leader knows `replica` has replicated (leader only).
    pub(crate) fn matched(&self, replica: ReplicaId) -> Option<u64> {
        self.raw.raft.prs().get(replica).map(|p| p.matched)
    }

    /// The commit index.
    pub(crate) fn committed(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Whether this replica's commit index is at an entry of the current term: the leader
    /// has committed in its term, and answers ReadIndex requests.
    pub(crate) fn has_committed_in_term(&self) -> bool {
        self.raw.raft.commit_to_current_term()
    }

    /// Advances the logical clock by one tick.
    pub(crate) fn tick(&mut self, rng: &mut impl Rng) {
        if !self.installing_snapshot() {
            self.raw.tick();
        }
        self.randomize_timeout_if_changed(rng);
        self.leaderless_ticks = if self.leader() == 0 {
            self.leaderless_ticks + 1
        } else {
            0
        };
        self.count_quiet_tick();
        self.unheard_ticks = if self.is_leader() {
            0
        } else {
            self.unheard_ticks + 1
        };
    }

    /// Ticks since this replica last knew a leader.
    pub(crate) fn leaderless_ticks(&self) -> u64 {
        self.leaderless_ticks
    }

    /// Starts an election now (a freshly created group's first voter does this).
    pub(crate) fn campaign(&mut self, rng: &mut impl Rng) -> raft::Result<()> {
        if self.installing_snapshot() {
            return Ok(());
        }
        self.stir();
        let result = self.raw.campaign();
        self.randomize_timeout_if_changed(rng);
        result
    }

    /// Feeds a message from a peer.
    pub(crate) fn step(&mut self, mut msg: Message, rng: &mut impl Rng) -> raft::Result<()> {
        let forwarded = msg.get_msg_type() == MessageType::MsgPropose && self.is_leader();
        if forwarded && !self.recent.drop_seen(&mut msg) {
            return Ok(());
        }
        if msg.get_msg_type() == MessageType::MsgTimeoutNow && self.installing_snapshot() {
            // The leader's transfer times out and it carries on leading.
            return Ok(());
        }
        let accepted = forwarded.then(|| RecentProposals::contexts(&msg.entries));
        self.stir_for(msg.get_msg_type());
        let from = msg.from;
        let result = self.raw.step(msg);
        if from == self.leader() {
            self.unheard_ticks = 0;
        }
        if let (Some(contexts), Ok(())) = (accepted, &result) {
            self.recent.remember_contexts(contexts);
        }
        self.randomize_timeout_if_changed(rng);
        result
    }

    /// Proposes an entry; followers forward it to the leader.
    pub(crate) fn propose(&mut self, context: Vec<u8>, data: Vec<u8>) -> raft::Result<()> {
        self.stir();
        self.raw.propose(context, data)
    }

    /// Compacts the log up to `index` under a snapshot taken there, keeping the proposal
    /// ids of the application entries in the last `window` indexes before it; `None` if
    /// `index` is not in the log or not applied yet.
    pub(crate) fn compact_to(
        &mut self,
        index: u64,
    ) -> Option<(SnapshotMetadata, crate::storage::ProposalIds)> {
        let log = self.raw.store();
        if index <= log.snapshot_index() || index > self.applied {
            return None;
        }
        // Found in the log while the entries before `index` are still there: once they are
        // gone, the lookup would only find the snapshot's index, later than the entry.
        if let Err(e) = self.last_entry_applied() {
            slog::error!(self.logger, "cannot read the log to compact it";
                "index" => index, "error" => %e);
            return None;
        }
        let log = self.raw.store();
        let term = raft::Storage::term(log, index).ok()?;
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.conf_at(index)?);
        let keep_from = self
            .conf_history
            .iter()
            .rposition(|(at, _)| *at <= index)
            .unwrap_or(0);
        self.conf_history.drain(..keep_from);
        // Without the ids, a retry of a compacted proposal could be applied twice: a log
        // that cannot be read is not compacted.
        let ids = match self.proposal_ids_before(index, DEDUPE_WINDOW) {
            Ok(ids) => ids,
            Err(e) => {
                slog::error!(self.logger, "cannot read the log to compact it";
                    "index" => index, "error" => %e);
                return None;
            }
        };
        self.raw.mut_store().compact(meta.clone(), ids.clone());
        self.bytes_since_snapshot = 0;
        Some((meta, ids))
    }

    /// Ids of the application entries in `(index - window, index]`: from the log, and
    /// from the previous snapshot's ids for the part already compacted.
    fn proposal_ids_before(
        &self,
        index: u64,
        window: u64,
    ) -> raft::Result<crate::storage::ProposalIds> {
        let log = self.raw.store();
        let floor = index.saturating_sub(window);
        let from = log.first_index().max(floor + 1);
        let mut ids: crate::storage::ProposalIds = log
            .compacted_ids()
            .iter()
            .copied()
            .filter(|(at, _, _)| *at > floor && *at < from)
            .collect();
        let entries = if from <= index {
            log.read_entries(from, index + 1, None)?
        } else {
            Vec::new()
        };
        for entry in entries {
            if let Some(ctx) = ProposalContext::of_entry(&entry) {
                ids.push((entry.index, ctx.node, ctx.seq));
            }
        }
        Ok(ids)
    }

    /// A snapshot from the leader replaced the log: configurations before it are gone.
    pub(crate) fn on_snapshot_installed(&mut self, meta: &SnapshotMetadata) {
        self.conf_history = vec![(meta.index, meta.get_conf_state().clone())];
        self.bytes_since_snapshot = 0;
    }

    /// Counts applied entry bytes towards the next snapshot.
    pub(crate) fn note_applied_bytes(&mut self, bytes: u64) {
        self.bytes_since_snapshot += bytes;
    }

    /// Applied entry bytes since the last snapshot.
    pub(crate) fn applied_bytes_since_snapshot(&self) -> u64 {
        self.bytes_since_snapshot
    }

    /// Asks for the commit index a linearizable read must wait for (ReadIndex); the answer
    /// comes back in a later `Collected::reads` with the same `ctx`.
    pub(crate) fn read_index(&mut self, ctx: Vec<u8>) {
        self.stir();
        self.raw.read_index(ctx);
    }

    /// Hands leadership to `replica` (leader only; raft waits until it has caught up).
    pub(crate) fn transfer_leader(&mut self, replica: ReplicaId) {
        self.stir();
        self.raw.transfer_leader(replica);
    }

    /// Whether a leadership transfer is under way (the leader refuses proposals meanwhile).
    pub(crate) fn is_transferring(&self) -> bool {
        self.raw.raft.lead_transferee.is_some()
    }

    /// Index of the last entry in the log.
    pub(crate) fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// This replica's raft id.
    pub(crate) fn replica_id(&self) -> ReplicaId {
        self.raw.raft.id
    }

    /// Whether `replica` is a voter or learner in the current configuration.
    pub(crate) fn is_member(&self, replica: ReplicaId) -> bool {
        let cs = self.raw.store().conf_state();
        cs.voters.contains(&replica)
            || cs.learners.contains(&replica)
            || cs.voters_outgoing.contains(&replica)
    }

    /// Tells raft whether the snapshot sent to `replica` was handed over (`sent`) or not.
    pub(crate) fn report_snapshot(&mut self, replica: ReplicaId, sent: bool) {
        let status = if sent {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(replica, status);
    }

    /// Tells raft that the replicas on `node` could not be reached.
    pub(crate) fn report_unreachable_node(&mut self, node: NodeId) {
        let on_node: Vec<ReplicaId> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| node_of(*id) == node)
            .collect();
        for replica in on_node {
            self.raw.report_unreachable(replica);
            self.report_snapshot(replica, false);
        }
    }

    /// Collects this round's `Ready`, if any. Its writes are made durable by the batch
    /// `batch_seq`; its persisted messages and committed entries wait for that batch (or,
    /// if it makes no promise, for the readies before it).
    pub(crate) fn collect_ready(&mut self, batch_seq: u64) -> Option<Collected> {
        if !self.raw.has_ready() {
            return None;
        }
        let mut rd = self.raw.ready();
        let mut write = GroupWrite::new(self.id);
        let mut wrote = false;
        let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        if let Some(snap) = &snapshot {
            self.raw.mut_store().apply_snapshot(snap);
            write.snapshot = Some(snap.clone());
            write.conf_state = Some(snap.get_metadata().get_conf_state().clone());
            write.applied = Some(snap.get_metadata().index);
            wrote = true;
        }
        let entries = rd.take_entries();
        self.recent.remember(&entries);
        let last_appended = entries.last().map(|e| e.index);
        if !entries.is_empty() {
            write.truncate_from = self.raw.mut_store().append(&entries);
            write.entries = entries;
            wrote = true;
        }
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs.clone());
            write.hard_state = Some(hs.clone());
            write.hard_state_must_sync = rd.must_sync();
            wrote = true;
        }
        // A ready that makes no promise (no entries, snapshot, term or vote) waits only for
        // the readies before it, not for its own write: a leader applies and acknowledges
        // as soon as it learns an entry committed.
        let batch_seq = if rd.must_sync() {
            batch_seq
        } else {
            // 0: released by the next `on_durable`.
            self.held.back().map_or(0, |h| h.batch_seq)
        };
        let messages = rd.take_messages();
        let reads = rd
            .take_read_states()
            .into_iter()
            .map(|rs| (rs.request_ctx, rs.index))
            .collect();
        debug_assert!(
            self.held
                .back()
                .is_none_or(|h| h.batch_seq <= batch_seq || batch_seq == 0),
            "readies are held in the order of their batches"
        );
        self.held.push_back(HeldReady {
            number: rd.number(),
            batch_seq,
            persisted_messages: rd.take_persisted_messages(),
            committed: rd.take_committed_entries(),
            snapshot,
            last_appended,
        });
        self.raw.advance_append_async(rd);
        Some(Collected {
            messages,
            reads,
            write: wrote.then_some(write),
            releasable: batch_seq == 0,
        })
    }

    /// Whether a received snapshot waits for its batch. raft-rs then counts it as stable
    /// (the log starts after it) but not as applied, and an election would read the
    /// entries it replaced (raft-rs panics: "unexpected error getting unapplied entries").
    /// So the replica neither ticks nor campaigns meanwhile, as TiKV does not while
    /// applying a snapshot.
    fn installing_snapshot(&self) -> bool {
        self.held.iter().any(|h| h.snapshot.is_some())
    }

    /// Whether readies wait for a batch.
    pub(crate) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Releases every held ready whose batch is durable (`batch_seq <= durable_seq`).
    pub(crate) fn on_durable(&mut self, durable_seq: u64) -> Option<Released> {
        let mut released = Released::default();
        let mut last_number = None;
        let mut persisted_to = None;
        while self
            .held
            .front()
            .is_some_and(|h| h.batch_seq <= durable_seq)
        {
            let Some(held) = self.held.pop_front() else {
                break;
            };
            last_number = Some(held.number);
            persisted_to = held.last_appended.or(persisted_to);
            released.messages.extend(held.persisted_messages);
            if let Some(snap) = held.snapshot {
                self.applied = self.applied.max(snap.get_metadata().index);
                released.committed.clear();
                released.snapshot = Some(snap);
            }
            released.committed.extend(held.committed);
        }
        let number = last_number?;
        self.raw.on_persist_ready(number);
        if let Some(index) = persisted_to {
            self.raw.mut_store().on_persisted(index);
        }
        Some(released)
    }

    /// Records that entries up to `index` were handed to the state machines.
    pub(crate) fn advance_applied(&mut self, index: u64) {
        debug_assert!(
            index <= self.raw.raft.raft_log.committed,
            "applied {index} past the commit index {}",
            self.raw.raft.raft_log.committed
        );
        if index > self.applied {
            self.applied = index;
        }
        self.raw.advance_apply_to(self.applied);
    }
}
