//! A round: release what became durable, collect every active group's `Ready`, and hand
//! the runtime the messages per peer and the storage batch.

use std::net::SocketAddr;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use super::{NodeCore, Output};
use crate::id::{node_of, DataStructureId, NodeId};
use crate::proto;
use crate::storage::parse_file_reference;

/// What a pass over the active groups' readies found.
pub(super) struct CollectedReadies {
    /// Some group had a ready.
    any: bool,
    /// Some ready can be released at once (it waits for no write).
    releasable: bool,
}

impl NodeCore {
    /// Runs a round: releases what became durable, collects every active group's `Ready`,
    /// and returns the messages and the storage batch to perform.
    pub(crate) fn poll_output(&mut self) -> Output {
        let mut tagged = false;
        for _ in 0..4 {
            self.release_durable();
            let queued = self.pending.queued_groups();
            for group in queued {
                self.flush_queued(group);
            }
            let collected = self.collect_readies();
            if !collected.any {
                break;
            }
            // Nothing to write and everything earlier durable: the readies just collected
            // are durable as they are.
            if self.round.skip_if_idle() {
                continue;
            }
            tagged = true;
            if !collected.releasable {
                break;
            }
        }
        self.complete_reads();
        Output {
            sends: self.take_sends(),
            write: self.round.take_batch(tagged),
            snapshots: std::mem::take(&mut self.snapshot_requests),
            snapshot_io: self.streams.take_io(),
            completions: std::mem::take(&mut self.completions),
        }
    }

    /// Collects the `Ready` of every active group.
    pub(super) fn collect_readies(&mut self) -> CollectedReadies {
        let batch_seq = self.round.next_seq();
        let mut any = false;
        let mut releasable = false;
        let active: Vec<_> = self.active.drain().collect();
        let mut changed_leader = Vec::new();
        for id in active {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            if group.may_hibernate() {
                self.asleep.insert(id);
            } else if self.asleep.remove(&id) {
                group.wake();
            }
            let Some(collected) = group.collect_ready(batch_seq) else {
                continue;
            };
            any = true;
            releasable |= collected.releasable;
            if group.take_leader_change() {
                changed_leader.push(id);
            }
            self.held.insert(id);
            if let Some(write) = collected.write {
                self.round.write_for(id).merge(write);
            }
            self.queue_messages(id, collected.messages);
            self.on_read_states(collected.reads);
        }
        for id in changed_leader {
            self.on_leader_change(id);
        }
        CollectedReadies { any, releasable }
    }

    /// Releases held readies whose batch is durable: sends their persisted messages and
    /// applies their committed entries.
    pub(super) fn release_durable(&mut self) {
        if self.storage_failed() {
            return;
        }
        let held: Vec<_> = self.held.iter().copied().collect();
        for id in held {
            let Some(group) = self.groups.get_mut(&id) else {
                self.held.remove(&id);
                continue;
            };
            let released = group.on_durable(self.round.durable_seq());
            if !group.has_held() {
                self.held.remove(&id);
            }
            if let Some(released) = released {
                self.active.insert(id);
                self.queue_messages(id, released.messages);
                self.apply_released(id, released.snapshot, released.committed);
            }
        }
    }

    pub(super) fn queue_messages(&mut self, group: DataStructureId, messages: Vec<Message>) {
        for msg in messages {
            let to = node_of(msg.to);
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                if let Some(index) = parse_file_reference(msg.get_snapshot().get_data()) {
                    self.stream_snapshot(group, index, msg);
                    continue;
                }
                // An inline snapshot (the directory's) leaves with the batch: raft goes back
                // to probing the receiver, which answers once it installed it, or gets the
                // snapshot again if it was lost.
                if let Some(raft) = self.groups.get_mut(&group) {
                    raft.report_snapshot(msg.to, true);
                }
            }
            match msg.write_to_bytes() {
                Ok(bytes) => self.round.to(to).messages.push(proto::GroupMessage {
                    group: group.to_bytes().to_vec(),
                    message: bytes.into(),
                }),
                Err(e) => {
                    slog::error!(self.cfg.logger, "cannot encode raft message"; "error" => %e);
                }
            }
        }
    }

    pub(super) fn take_sends(&mut self) -> Vec<(NodeId, SocketAddr, proto::Batch)> {
        let mut out = Vec::new();
        for (node, batch) in self.round.drain_sends() {
            match self.members.raft_addr(node) {
                Some(addr) => out.push((node, addr, batch)),
                None => {
                    slog::debug!(self.cfg.logger, "no address for node, dropping its messages"; "peer" => node);
                }
            }
        }
        out
    }
}
