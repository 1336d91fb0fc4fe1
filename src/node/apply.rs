//! Applying committed entries: conf changes, directory ops, acknowledgements, delivery.

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeSingle, ConfChangeV2, Entry, EntryType, Snapshot};

use super::directory::{Applied, Directory, DirectoryOp};
use super::NodeCore;
use crate::error::Error;
use crate::group::ProposalContext;
use crate::id::DataStructureId;

impl NodeCore {
    /// Applies what a group released after its batch became durable.
    pub(super) fn apply_released(
        &mut self,
        id: DataStructureId,
        snapshot: Option<Snapshot>,
        committed: Vec<Entry>,
    ) {
        if let Some(snap) = snapshot {
            self.apply_snapshot(id, &snap);
        }
        let Some(last) = committed.last().map(|e| e.index) else {
            return;
        };
        for entry in &committed {
            self.apply_entry(id, entry);
        }
        if id.is_system() {
            // Conf changes of the system group advance it too.
            self.directory_applied = self.directory_applied.max(last);
        }
        if let Some(group) = self.groups.get_mut(&id) {
            group.advance_applied(last);
            group.log_mut().trim_tail(last, 1024);
        }
        self.round.write_for(id).applied = Some(last);
        self.request_deferred_reads(id);
        self.deliver(id);
        if !id.is_system() {
            let bytes = committed.iter().map(|e| e.data.len() as u64).sum();
            self.maybe_request_snapshot(id, bytes);
        }
        for group in std::mem::take(&mut self.pending_removal) {
            self.remove_replica(group);
        }
    }

    /// Deletes this node's replica of `group` (it was removed from the configuration).
    /// Subscribers hear [`Error::GroupRemoved`] and the node asks to join again as a new
    /// incarnation, so their commit streams continue.
    pub(super) fn remove_replica(&mut self, group: DataStructureId) {
        if group.is_system() {
            return;
        }
        let Some(raft) = self.groups.remove(&group) else {
            return;
        };
        self.pacing.remove(&group);
        self.remember_deleted(group, raft.replica_id());
        slog::info!(self.cfg.logger, "replica removed from its group; deleting it"; "group" => %group);
        let mut write = crate::storage::GroupWrite::new(group);
        write.remove = true;
        self.round.replace_write(group, write);
        self.round.put_meta(super::replica_key(group), None);
        self.held.remove(&group);
        self.active.remove(&group);
        self.awake.remove(&group);
        self.subscriptions
            .report_to_group(group, &Error::GroupRemoved);
        if self.subscriptions.has_any(group) {
            self.wanted.insert(group);
        }
    }

    fn apply_snapshot(&mut self, id: DataStructureId, snap: &Snapshot) {
        let index = snap.get_metadata().index;
        if let Some(group) = self.groups.get_mut(&id) {
            group.advance_applied(index);
            group.on_snapshot_installed(snap.get_metadata());
        }
        self.acknowledge_from_snapshot(id);
        if !id.is_system() {
            // Subscribers reload from it: a marker, then the entries after it.
            self.deliver(id);
        }
        if id.is_system() {
            match Directory::decode(&snap.data) {
                Ok(directory) => {
                    self.directory = directory;
                    self.directory_applied = index;
                    let created: Vec<_> = self.directory.iter().map(|(g, _)| g).collect();
                    for group in created {
                        self.on_group_created(group);
                    }
                }
                Err(e) => {
                    slog::error!(self.cfg.logger, "system snapshot undecodable"; "error" => %e);
                }
            }
        }
    }

    fn apply_entry(&mut self, id: DataStructureId, entry: &Entry) {
        match entry.get_entry_type() {
            EntryType::EntryNormal if id.is_system() => self.apply_directory_entry(entry),
            EntryType::EntryNormal => self.apply_data_entry(id, entry),
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                self.apply_conf_change(id, entry)
            }
        }
    }

    /// An application entry: complete its local waiter, if this node proposed it, and if
    /// it is delivered (not a second copy) remember it as the latest one subscribers get
    /// (snapshots cover up to it). Leader no-ops carry no context. If the log cannot be
    /// read to tell a second copy, the node stops acknowledging.
    fn apply_data_entry(&mut self, id: DataStructureId, entry: &Entry) {
        let Some(ctx) = ProposalContext::decode(&entry.context) else {
            return;
        };
        if let Some(group) = self.groups.get_mut(&id) {
            match group.log_mut().first_copy(entry) {
                Ok(Some(_)) => group.note_entry_applied(entry.index),
                Ok(None) => {}
                Err(e) => {
                    if !self.storage_failed() {
                        self.stop_on_storage_failure("reading", e);
                    }
                    return;
                }
            }
        }
        self.acknowledge(id, entry.index, ctx);
    }

    /// Proposals of this node that a snapshot skipped over (it holds their ids) are
    /// committed: complete their waiters instead of retrying them later.
    fn acknowledge_from_snapshot(&mut self, id: DataStructureId) {
        let Some(group) = self.groups.get(&id) else {
            return;
        };
        let landed: Vec<(u64, u64)> = group
            .log()
            .compacted_ids()
            .iter()
            .filter(|(_, node, _)| *node == self.me)
            .map(|(at, _, seq)| (*at, *seq))
            .collect();
        for (index, seq) in landed {
            let ctx = ProposalContext {
                node: self.me,
                seq,
                retry_after: None,
            };
            self.acknowledge(id, index, ctx);
        }
    }

    /// Completes the local waiter of a proposal. The first copy of a proposal in the log
    /// completes it; later (retried) copies find it gone from `in_flight`.
    fn acknowledge(&mut self, id: DataStructureId, index: u64, ctx: ProposalContext) {
        let (node, seq) = (ctx.node, ctx.seq);
        if node != self.me {
            return;
        }
        if let Some(flight) = self.pending.land(seq, id) {
            let latency_ms = self.now_ms.saturating_sub(flight.proposal.proposed_ms);
            crate::telemetry::proposal_committed(latency_ms);
            self.complete(flight.proposal.waiter, Ok(index));
        }
    }

    /// Applies one system-group entry to the directory (idempotent by index).
    pub(super) fn apply_directory_entry(&mut self, entry: &Entry) {
        if entry.index <= self.directory_applied {
            return;
        }
        self.directory_applied = entry.index;
        if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
            return;
        }
        let Some(op) = DirectoryOp::decode(&entry.data) else {
            slog::warn!(self.cfg.logger, "undecodable directory entry"; "index" => entry.index);
            return;
        };
        slog::debug!(self.cfg.logger, "directory op"; "index" => entry.index, "op" => ?op);
        if let Applied::Created(group) = self.directory.apply(op) {
            self.on_group_created(group);
        }
    }

    /// A group entered the directory: host its replica if placed here or wanted here.
    fn on_group_created(&mut self, group: DataStructureId) {
        let Some(record) = self.directory.get(group) else {
            return;
        };
        if record.initial_voters.contains(&self.me) && !record.removed.contains(&self.me) {
            let voters = record.initial_voters.clone();
            self.create_replica(group, &voters, self.me);
        }
        if self.wanted.contains(&group) {
            self.pursue(group);
        }
    }

    fn apply_conf_change(&mut self, id: DataStructureId, entry: &Entry) {
        let cc = match decode_conf_change(entry) {
            Ok(cc) => cc,
            Err(e) => {
                slog::error!(self.cfg.logger, "undecodable conf change"; "group" => %id, "error" => %e);
                return;
            }
        };
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        let before = members(group.log().conf_state());
        match group.apply_conf_change(&cc, entry.index) {
            Ok(cs) => {
                slog::info!(self.cfg.logger, "configuration changed"; "group" => %id,
                    "voters" => ?cs.voters, "learners" => ?cs.learners,
                    "outgoing" => ?cs.voters_outgoing);
                let after = members(&cs);
                let removed: Vec<_> = before.into_iter().filter(|r| !after.contains(r)).collect();
                let me_removed = removed.contains(&group.replica_id());
                self.removed_seen.entry(id).or_default().extend(removed);
                if group.is_leader() {
                    self.reconfigure_soon.insert(id);
                }
                self.round.write_for(id).conf_state = Some(cs);
                self.active.insert(id);
                if me_removed {
                    self.pending_removal.push(id);
                } else if self.wanted.contains(&id) {
                    self.pursue(id);
                }
            }
            Err(e) => {
                slog::warn!(self.cfg.logger, "conf change rejected"; "group" => %id, "error" => %e);
            }
        }
    }
}

/// Every replica in a configuration, joint ones included.
pub(super) fn members(cs: &raft::eraftpb::ConfState) -> Vec<crate::id::ReplicaId> {
    cs.voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners_next)
        .copied()
        .collect()
}

/// The nodes holding a replica in a configuration (joint ones included), each once.
pub(super) fn member_nodes(cs: &raft::eraftpb::ConfState) -> Vec<crate::id::NodeId> {
    let mut nodes: Vec<_> = members(cs).into_iter().map(crate::id::node_of).collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

fn decode_conf_change(entry: &Entry) -> Result<ConfChangeV2, protobuf::ProtobufError> {
    if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
        let mut cc = ConfChangeV2::default();
        cc.merge_from_bytes(&entry.data)?;
        Ok(cc)
    } else {
        let mut cc = ConfChange::default();
        cc.merge_from_bytes(&entry.data)?;
        let mut single = ConfChangeSingle::default();
        single.set_change_type(cc.get_change_type());
        single.node_id = cc.node_id;
        let mut v2 = ConfChangeV2::default();
        v2.mut_changes().push(single);
        Ok(v2)
    }
}
