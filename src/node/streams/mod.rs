//! Snapshot streams, both directions, as a state machine without I/O.
//!
//! A raft `MsgSnapshot` of a data group carries only a reference to its snapshot file. The
//! sender streams the file in [`CHUNK_BYTES`] pieces as [`SnapshotChunk`]s in ordinary
//! batches, at most [`WINDOW_BYTES`] ahead of the receiver's acknowledgements, so neither
//! side holds the snapshot in memory and other groups' raft traffic interleaves with the
//! chunks. The receiver appends chunks to a partial file, makes it durable, moves it into
//! place, and only then steps the `MsgSnapshot` the last chunk carried.
//!
//! This type decides what to read, write and acknowledge and when to give up; the file
//! work is [`SnapshotIo`] the runtime (or the simulator) performs, answering with inputs.
//! Time comes in as milliseconds, so the simulator runs streams through its faulty network.
//!
//! Each stream has a number: a restarted stream of the same snapshot to the same node gets
//! a new one and supersedes the older (whose acknowledgements are then ignored), and the
//! receiver tells a restart from a late duplicate of a first chunk.

use std::net::SocketAddr;

use super::Map;
use crate::id::{DataStructureId, NodeId, ReplicaId};
use crate::proto::{SnapshotAck, SnapshotChunk};

/// Bytes per chunk.
pub(crate) const CHUNK_BYTES: u64 = 1 << 20;
/// Bytes a sender may have in flight beyond the receiver's acknowledgement.
pub(crate) const WINDOW_BYTES: u64 = 8 << 20;
/// Bytes of received chunks handed to the runtime and not yet written, over all incoming
/// streams; chunks beyond it are dropped (their senders resend after [`ACK_TIMEOUT_MS`]).
pub(crate) const MAX_UNSTORED_BYTES: u64 = 4 * WINDOW_BYTES;
/// A sender that hears nothing for this long resends from the last acknowledged byte.
pub(crate) const ACK_TIMEOUT_MS: u64 = 2_000;
/// A stream whose receiver acknowledges no new byte for this long is abandoned (raft
/// retries later).
pub(crate) const MAX_STALL_MS: u64 = 10_000;

/// A stream's number, chosen by its sender.
pub(crate) type StreamId = u64;

/// Number this node gives each incoming stream it takes chunks for: unlike the sender's
/// stream number, never given twice, so a write answer counts only for its own stream.
pub(crate) type Receipt = u64;

/// File work for snapshot streams, performed outside the core.
#[derive(Debug)]
pub(crate) enum SnapshotIo {
    /// Open the snapshot file of `group` at `index` for the stream (it stays open until
    /// `Close`, whatever happens to the file meanwhile); answer with its size in
    /// `Input::StreamOpened`.
    Open {
        to: NodeId,
        group: DataStructureId,
        index: u64,
        stream: StreamId,
    },
    /// Fill `chunk.data` with `len` bytes of the file from `chunk.offset` and send the chunk
    /// to `to` at `addr`; answer only a failure, with `Input::StreamFailed`.
    Read {
        to: NodeId,
        addr: SocketAddr,
        group: DataStructureId,
        len: u64,
        chunk: SnapshotChunk,
    },
    /// The stream ended: its file is no longer needed.
    Close { stream: StreamId },
    /// Write the chunk at its offset into the partial file of its snapshot (a chunk at
    /// offset 0 starts the file afresh); when it completes the file, install it (as an
    /// offer if `chunk.offer`, else with `chunk.ids`). Answer with `Input::ChunkStored`.
    Write {
        from: NodeId,
        group: DataStructureId,
        chunk: SnapshotChunk,
        /// The incoming stream the chunk was taken for, to give back in the answer.
        receipt: Receipt,
    },
}

/// A stream that ended, for raft's `report_snapshot` (offers are not raft's).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ended {
    pub group: DataStructureId,
    pub replica: ReplicaId,
    pub offer: bool,
    /// `None`: the receiver has the whole file.
    pub failure: Option<String>,
}

/// What a written chunk leads to on the receiving side.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    /// The chunk belongs to a stream that ended or was superseded.
    Stale,
    /// Acknowledge to the sender.
    Ack(SnapshotAck),
    /// The file is complete and installed: acknowledge, then step `message` (or, for an
    /// offer, consider the snapshot metadata it holds).
    Complete {
        ack: SnapshotAck,
        message: Vec<u8>,
        offer: bool,
        /// The snapshot's size.
        bytes: u64,
    },
    /// Writing failed; the stream is dropped (its sender stalls and gives up).
    Failed(String),
}

/// What a stream to send carries besides its file.
pub(crate) struct StreamRequest {
    pub to: NodeId,
    pub addr: SocketAddr,
    pub replica: ReplicaId,
    pub group: DataStructureId,
    pub index: u64,
    /// The raft `MsgSnapshot`, or for an offer the snapshot's encoded metadata.
    pub message: Vec<u8>,
    /// An offer to a replica that is not behind (see `NodeCore::handle_snapshot_offered`).
    pub offer: bool,
    /// The encoded proposal ids kept with the snapshot (empty for an offer: its adopter
    /// computes them from its own log).
    pub ids: Vec<u8>,
}

/// One outgoing stream.
struct Outgoing {
    stream: StreamId,
    request: StreamRequest,
    /// The file's size, once opened.
    total: Option<u64>,
    /// Bytes handed out for reading and sending.
    sent: u64,
    acked: u64,
    /// The final chunk (which carries the message) went out: only acknowledgements are
    /// awaited.
    last_sent: bool,
    /// When an acknowledgement last arrived or the window was last resent.
    heard_ms: u64,
    /// When the acknowledged position last moved (or the stream started).
    progressed_ms: u64,
}

/// One incoming stream.
struct Incoming {
    receipt: Receipt,
    stream: StreamId,
    index: u64,
    total: u64,
    /// Bytes handed to the runtime for writing.
    forwarded: u64,
    /// Bytes written.
    stored: u64,
    /// The final chunk's message, kept while that chunk is being written.
    message: Option<Vec<u8>>,
    offer: bool,
}

/// Identifies an outgoing stream: receiver, group, snapshot index.
type OutKey = (NodeId, DataStructureId, u64);

/// The node's snapshot streams.
pub(crate) struct Streams {
    next_stream: StreamId,
    outgoing: Map<OutKey, Outgoing>,
    /// At most one per sender and group: a new stream replaces the older one.
    incoming: Map<(NodeId, DataStructureId), Incoming>,
    /// Bytes forwarded for writing and not yet reported written.
    unstored: u64,
    /// The receipt of the next incoming stream.
    next_receipt: Receipt,
    io: Vec<SnapshotIo>,
}

fn ack(group: DataStructureId, index: u64, stream: StreamId, received: u64) -> SnapshotAck {
    SnapshotAck {
        group: group.to_bytes().to_vec(),
        index,
        received,
        stream,
    }
}

impl Streams {
    /// Streams numbered from `first` (distinct per process start, so a receiver that still
    /// holds a stream from before a sender's restart does not mistake the new one for it).
    pub(crate) fn new(first: StreamId) -> Self {
        Streams {
            next_stream: first,
            outgoing: Map::default(),
            incoming: Map::default(),
            unstored: 0,
            next_receipt: 0,
            io: Vec::new(),
        }
    }

    /// Bytes handed out for writing and not yet reported written.
    pub(crate) fn unstored(&self) -> u64 {
        self.unstored
    }

    /// The most any outgoing stream has handed out beyond its acknowledged position.
    pub(crate) fn sent_ahead(&self) -> u64 {
        self.outgoing
            .values()
            .map(|o| o.sent.saturating_sub(o.acked))
            .max()
            .unwrap_or(0)
    }

    /// File work to perform, in order.
    pub(crate) fn take_io(&mut self) -> Vec<SnapshotIo> {
        std::mem::take(&mut self.io)
    }

    /// Starts streaming; a stream of the same snapshot to the same node is superseded.
    pub(crate) fn start(&mut self, now_ms: u64, request: StreamRequest) {
        let stream = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(1);
        let (to, group, index) = (request.to, request.group, request.index);
        self.io.push(SnapshotIo::Open {
            to,
            group,
            index,
            stream,
        });
        let outgoing = Outgoing {
            stream,
            request,
            total: None,
            sent: 0,
            acked: 0,
            last_sent: false,
            heard_ms: now_ms,
            progressed_ms: now_ms,
        };
        if let Some(older) = self.outgoing.insert((to, group, index), outgoing) {
            self.io.push(SnapshotIo::Close {
                stream: older.stream,
            });
        }
    }

    /// The file of a stream was opened (its size) or could not be.
    pub(crate) fn opened(
        &mut self,
        now_ms: u64,
        key: OutKey,
        stream: StreamId,
        total: Result<u64, String>,
    ) -> Option<Ended> {
        let out = self.current(key, stream)?;
        match total {
            Ok(total) => {
                out.total = Some(total);
                out.heard_ms = now_ms;
                self.fill_window(key);
                None
            }
            Err(reason) => self.end(key, Some(reason)),
        }
    }

    /// Reading or sending a chunk failed.
    pub(crate) fn read_failed(
        &mut self,
        key: OutKey,
        stream: StreamId,
        reason: String,
    ) -> Option<Ended> {
        self.current(key, stream)?;
        self.end(key, Some(reason))
    }

    /// An acknowledgement from `from`.
    pub(crate) fn acked(&mut self, now_ms: u64, from: NodeId, ack: &SnapshotAck) -> Option<Ended> {
        let group = DataStructureId::from_bytes(&ack.group)?;
        let key = (from, group, ack.index);
        let out = self.current(key, ack.stream)?;
        let total = out.total?;
        if ack.received > out.acked {
            out.progressed_ms = now_ms;
            out.acked = ack.received;
        }
        out.heard_ms = now_ms;
        // Every stream ends with an acknowledgement of at least 1 (an empty file's too).
        if out.acked >= total.max(1) {
            crate::telemetry::snapshot_sent();
            return self.end(key, None);
        }
        if out.acked > out.sent {
            // The receiver is ahead of a resend: continue from what it has.
            out.sent = out.acked;
            out.last_sent = false;
        }
        self.fill_window(key);
        None
    }

    /// Time passed: streams that heard nothing resend from the acknowledged byte, streams
    /// that made no progress for [`MAX_STALL_MS`] end as failed.
    pub(crate) fn tick(&mut self, now_ms: u64) -> Vec<Ended> {
        if self.outgoing.is_empty() {
            return Vec::new();
        }
        let mut stalled = Vec::new();
        let mut resend = Vec::new();
        for (key, out) in &mut self.outgoing {
            if now_ms >= out.progressed_ms + MAX_STALL_MS {
                stalled.push(*key);
            } else if out.total.is_some() && now_ms >= out.heard_ms + ACK_TIMEOUT_MS {
                // Chunks or acknowledgements were lost.
                out.heard_ms = now_ms;
                out.sent = out.acked;
                out.last_sent = false;
                resend.push(*key);
            }
        }
        // In key order, so the simulator's runs replay from their seeds.
        resend.sort_unstable();
        stalled.sort_unstable();
        for key in resend {
            self.fill_window(key);
        }
        let reason = || Some("the receiver stopped acknowledging".to_string());
        stalled
            .into_iter()
            .filter_map(|key| self.end(key, reason()))
            .collect()
    }

    /// The outgoing stream `key` if `stream` is its current number.
    fn current(&mut self, key: OutKey, stream: StreamId) -> Option<&mut Outgoing> {
        self.outgoing.get_mut(&key).filter(|o| o.stream == stream)
    }

    fn end(&mut self, key: OutKey, failure: Option<String>) -> Option<Ended> {
        let out = self.outgoing.remove(&key)?;
        self.io.push(SnapshotIo::Close { stream: out.stream });
        Some(Ended {
            group: out.request.group,
            replica: out.request.replica,
            offer: out.request.offer,
            failure,
        })
    }

    /// Hands out reads while the window has room.
    fn fill_window(&mut self, key: OutKey) {
        let Some(out) = self.outgoing.get_mut(&key) else {
            return;
        };
        let Some(total) = out.total else {
            return;
        };
        while !out.last_sent && out.sent - out.acked < WINDOW_BYTES {
            let len = CHUNK_BYTES.min(total - out.sent);
            out.last_sent = out.sent + len >= total;
            let last = out.last_sent;
            let request = &out.request;
            let chunk = SnapshotChunk {
                group: request.group.to_bytes().to_vec(),
                index: request.index,
                offset: out.sent,
                total,
                data: Vec::new(),
                message: if last {
                    request.message.clone()
                } else {
                    Vec::new()
                },
                offer: last && request.offer,
                ids: if last {
                    request.ids.clone()
                } else {
                    Vec::new()
                },
                stream: out.stream,
            };
            self.io.push(SnapshotIo::Read {
                to: request.to,
                addr: request.addr,
                group: request.group,
                len,
                chunk,
            });
            out.sent += len;
        }
    }

    /// A chunk from `from`: handed out for writing if it is the next one of its stream and
    /// there is room; otherwise the sender hears where its stream stands (if it is known).
    pub(crate) fn chunk(&mut self, from: NodeId, mut chunk: SnapshotChunk) -> Option<SnapshotAck> {
        let group = DataStructureId::from_bytes(&chunk.group)?;
        let key = (from, group);
        let known = self
            .incoming
            .get(&key)
            .is_some_and(|i| i.stream == chunk.stream && i.index == chunk.index);
        if !known {
            if chunk.offset != 0 {
                // The rest of a stream whose start was missed or dropped: it stalls, and
                // its sender gives up.
                return None;
            }
            self.next_receipt += 1;
            self.incoming.insert(
                key,
                Incoming {
                    receipt: self.next_receipt,
                    stream: chunk.stream,
                    index: chunk.index,
                    total: chunk.total,
                    forwarded: 0,
                    stored: 0,
                    message: None,
                    offer: false,
                },
            );
        }
        let incoming = self.incoming.get_mut(&key)?;
        let len = chunk.data.len() as u64;
        let room = self.unstored + len <= MAX_UNSTORED_BYTES || self.unstored == 0;
        if chunk.offset != incoming.forwarded
            || incoming.forwarded >= incoming.total.max(1)
            || chunk.total != incoming.total
            || !room
        {
            // A duplicate, a chunk out of order, one that changes the stream's size (never
            // from a correct sender: the file layer would install the file at another
            // size than this stream completes at), or too much being written: the sender
            // learns what this node has, and resends what is missing.
            return Some(ack(group, incoming.index, incoming.stream, incoming.stored));
        }
        if chunk.offset + len >= incoming.total {
            incoming.message = Some(std::mem::take(&mut chunk.message));
            incoming.offer = chunk.offer;
        }
        // An empty file still takes one write, which creates and installs it.
        incoming.forwarded = (incoming.forwarded + len).max(1);
        self.unstored += len;
        let receipt = incoming.receipt;
        self.io.push(SnapshotIo::Write {
            from,
            group,
            chunk,
            receipt,
        });
        None
    }

    /// The runtime wrote `bytes` of the incoming stream `receipt` from `from`: `received`
    /// bytes of it are durable now, or writing failed.
    pub(crate) fn stored(
        &mut self,
        from: NodeId,
        group: DataStructureId,
        receipt: Receipt,
        bytes: u64,
        received: Result<u64, String>,
    ) -> Stored {
        debug_assert!(
            self.unstored >= bytes,
            "each forwarded chunk is reported once"
        );
        self.unstored = self.unstored.saturating_sub(bytes);
        let key = (from, group);
        // The receipt, not the sender's stream number, tells this stream's writes from those
        // of an earlier stream with the same number (a forged or confused sender).
        let Some(incoming) = self.incoming.get_mut(&key).filter(|i| i.receipt == receipt) else {
            return Stored::Stale;
        };
        let received = match received {
            Ok(received) => received,
            Err(reason) => {
                self.incoming.remove(&key);
                return Stored::Failed(reason);
            }
        };
        debug_assert!(
            received <= incoming.forwarded.max(incoming.total),
            "only forwarded bytes are written"
        );
        incoming.stored = received;
        let (index, stream) = (incoming.index, incoming.stream);
        if received < incoming.total {
            return Stored::Ack(ack(group, index, stream, received));
        }
        let Some(done) = self.incoming.remove(&key) else {
            return Stored::Stale;
        };
        crate::telemetry::snapshot_received();
        Stored::Complete {
            ack: ack(group, index, stream, received.max(1)),
            message: done.message.unwrap_or_default(),
            offer: done.offer,
            bytes: received,
        }
    }
}

#[cfg(test)]
mod tests;
