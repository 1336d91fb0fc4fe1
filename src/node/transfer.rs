//! The core's side of snapshot streams: starting them (raft snapshots for lagging replicas,
//! offers after taking a snapshot), feeding [`Streams`] the chunks, acknowledgements and
//! file outcomes that arrive, and acting on what it decides: acknowledgements to send,
//! `report_snapshot` to raft, and the message a completed file carried.

use protobuf::Message as _;
use raft::eraftpb::{Message, SnapshotMetadata};

use super::streams::{Ended, Receipt, Stored, StreamId, StreamRequest};
use super::NodeCore;
use crate::id::{node_of, DataStructureId, NodeId};
use crate::proto;

impl NodeCore {
    /// Streams the snapshot file a `MsgSnapshot` refers to, then the message after it.
    pub(super) fn stream_snapshot(&mut self, group: DataStructureId, index: u64, msg: Message) {
        let (to, replica) = (node_of(msg.to), msg.to);
        let addr = self.members.raft_addr(to);
        let (Some(addr), Ok(message)) = (addr, msg.write_to_bytes()) else {
            if let Some(raft) = self.groups.get_mut(&group) {
                raft.report_snapshot(replica, false);
            }
            return;
        };
        slog::info!(self.cfg.logger, "streaming snapshot"; "group" => %group, "index" => index,
            "to" => replica);
        // From memory: the ids file of a snapshot just taken may not be written yet.
        let ids = self
            .groups
            .get(&group)
            .filter(|raft| raft.log().snapshot_index() == index)
            .map(|raft| crate::storage::encode_ids(raft.log().compacted_ids()))
            .unwrap_or_default();
        let request = StreamRequest {
            to,
            addr,
            replica,
            group,
            index,
            message,
            offer: false,
            ids,
        };
        self.streams.start(self.now_ms, request);
    }

    /// After taking a snapshot: offer it to the group's other replicas, so replicas with
    /// no subscriber (which never snapshot by themselves) compact their logs too.
    pub(super) fn offer_snapshot(
        &mut self,
        group: DataStructureId,
        meta: &SnapshotMetadata,
        askers: &[NodeId],
    ) {
        let metadata = meta
            .write_to_bytes()
            .expect("snapshot metadata encodes: it holds only integers");
        let Some(raft) = self.groups.get(&group) else {
            return;
        };
        let cs = raft.log().conf_state();
        // A leader skips replicas that do not hold the snapshot's entries: they could not
        // adopt it, and on the receiver an offer would supersede the raft snapshot this
        // node may be streaming to that replica (one incoming stream per sender and group),
        // stalling it until it is given up and sent again.
        let behind = |r: u64| raft.is_leader() && raft.matched(r).is_some_and(|m| m < meta.index);
        let others: Vec<u64> = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .copied()
            .filter(|r| askers.contains(&node_of(*r)) && node_of(*r) != self.me && !behind(*r))
            .collect();
        for replica in others {
            let to = node_of(replica);
            let Some(addr) = self
                .members
                .raft_addr(to)
                .filter(|_| self.members.is_alive(to))
            else {
                continue;
            };
            let request = StreamRequest {
                to,
                addr,
                replica,
                group,
                index: meta.index,
                message: metadata.clone(),
                offer: true,
                ids: Vec::new(),
            };
            self.streams.start(self.now_ms, request);
        }
    }

    /// Chunks and acknowledgements that arrived from `from`.
    pub(super) fn handle_stream_traffic(
        &mut self,
        from: NodeId,
        chunks: Vec<proto::SnapshotChunk>,
        acks: Vec<proto::SnapshotAck>,
    ) {
        for chunk in chunks {
            if let Some(ack) = self.streams.chunk(from, chunk) {
                self.round.to(from).acks.push(ack);
            }
        }
        for ack in acks {
            if let Some(ended) = self.streams.acked(self.now_ms, from, &ack) {
                self.stream_ended(ended);
            }
        }
    }

    /// Resends what went unacknowledged, gives up on stalled streams.
    pub(super) fn tick_streams(&mut self) {
        for ended in self.streams.tick(self.now_ms) {
            self.stream_ended(ended);
        }
    }

    pub(crate) fn handle_stream_opened(
        &mut self,
        now_ms: u64,
        key: (NodeId, DataStructureId, u64),
        stream: StreamId,
        total: Result<u64, String>,
    ) {
        self.now_ms = now_ms;
        if let Some(ended) = self.streams.opened(now_ms, key, stream, total) {
            self.stream_ended(ended);
        }
    }

    pub(crate) fn handle_stream_failed(
        &mut self,
        key: (NodeId, DataStructureId, u64),
        stream: StreamId,
        reason: String,
    ) {
        if let Some(ended) = self.streams.read_failed(key, stream, reason) {
            self.stream_ended(ended);
        }
    }

    /// A received chunk was written: acknowledge it, and once the file is complete step the
    /// message its last chunk carried (or consider the offer).
    pub(crate) fn handle_chunk_stored(
        &mut self,
        now_ms: u64,
        from: NodeId,
        group: DataStructureId,
        receipt: Receipt,
        bytes: u64,
        received: Result<u64, String>,
    ) {
        self.now_ms = now_ms;
        match self.streams.stored(from, group, receipt, bytes, received) {
            Stored::Stale => {}
            Stored::Ack(ack) => self.round.to(from).acks.push(ack),
            Stored::Complete {
                ack,
                message,
                offer,
                bytes,
            } => {
                self.round.to(from).acks.push(ack);
                if offer {
                    self.handle_snapshot_offered(group, &message, bytes);
                } else {
                    let message = proto::GroupMessage {
                        group: group.to_bytes().to_vec(),
                        message: message.into(),
                    };
                    self.handle_group_message(from, message);
                }
            }
            Stored::Failed(reason) => {
                slog::warn!(self.cfg.logger, "dropping a snapshot being received";
                    "group" => %group, "from" => from, "error" => reason);
            }
        }
    }

    /// A stream ended: raft resumes replicating to the receiver (after a success) or
    /// retries later (after a failure). Offers are not raft's: a failed one is only logged.
    fn stream_ended(&mut self, ended: Ended) {
        let Ended {
            group,
            replica,
            offer,
            failure,
        } = ended;
        if offer {
            // Offers are a courtesy: the next snapshot brings another.
            if let Some(reason) = &failure {
                slog::debug!(self.cfg.logger, "snapshot offer failed"; "group" => %group,
                    "to" => replica, "error" => reason);
            }
            return;
        }
        if let Some(reason) = &failure {
            slog::warn!(self.cfg.logger, "snapshot stream failed"; "group" => %group,
                "to" => replica, "error" => reason);
        }
        if let Some(raft) = self.groups.get_mut(&group) {
            raft.report_snapshot(replica, failure.is_none());
            self.active.insert(group);
        }
    }
}
