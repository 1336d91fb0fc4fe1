//! Streaming snapshot files to lagging replicas, in chunks over the existing connections.
//!
//! A raft `MsgSnapshot` of a data group carries only a reference to its snapshot file. The
//! sender reads the file in [`CHUNK_BYTES`] pieces and sends them as [`SnapshotChunk`]s in
//! ordinary batches, at most [`WINDOW_BYTES`] ahead of the receiver's acknowledgements, so
//! neither side holds the snapshot in memory and other groups' raft traffic interleaves
//! with the chunks. The receiver appends chunks to a partial file, makes it durable, moves
//! it into place, and only then hands the `MsgSnapshot` to its core, which installs the
//! snapshot by its metadata. The outcome goes back to raft as `report_snapshot`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::transport::Transport;
use super::Event;
use crate::id::{DataStructureId, NodeId};
use crate::node::Input;
use crate::node::SnapshotSend;
use crate::proto::{Batch, GroupMessage, SnapshotAck, SnapshotChunk};
use crate::storage::SledStore;

/// Bytes per chunk.
const CHUNK_BYTES: usize = 1 << 20;
/// Bytes a sender may have in flight beyond the receiver's acknowledgement.
const WINDOW_BYTES: u64 = 8 << 20;
/// A sender that hears nothing for this long resends from the last acknowledged byte.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// A stream whose receiver acknowledges no new byte for this long is abandoned (raft
/// retries later).
const MAX_STALL: Duration = Duration::from_secs(10);

/// Identifies one stream: peer, group, snapshot index.
type StreamKey = (NodeId, DataStructureId, u64);

/// The node's snapshot streams, both directions.
pub(crate) struct SnapshotStreams {
    store: Arc<SledStore>,
    /// Weak: the transport's inbound callback holds these streams.
    transport: OnceLock<Weak<Transport>>,
    core: Sender<Event>,
    /// Acknowledgement channels of the running senders, with the number of the stream
    /// that owns each: a newer stream of the same snapshot to the same node supersedes an
    /// older one (two would reset each other's partial file and share acknowledgements).
    senders: Mutex<HashMap<StreamKey, (u64, Sender<u64>)>>,
    /// Number of the next stream.
    next_stream: AtomicU64,
    /// Raft addresses of peers, for acknowledgements (kept from gossip).
    addresses: Mutex<HashMap<NodeId, SocketAddr>>,
    chunks: Sender<(NodeId, SnapshotChunk)>,
    logger: slog::Logger,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SnapshotStreams {
    /// Starts the receiving thread.
    pub(crate) fn start(
        store: Arc<SledStore>,
        core: Sender<Event>,
        logger: slog::Logger,
    ) -> std::io::Result<Arc<SnapshotStreams>> {
        let (chunks_tx, chunks_rx) = crossbeam_channel::unbounded();
        let streams = Arc::new(SnapshotStreams {
            store,
            transport: OnceLock::new(),
            core,
            senders: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(0),
            addresses: Mutex::new(HashMap::new()),
            chunks: chunks_tx,
            logger,
        });
        let receiver = Arc::downgrade(&streams);
        std::thread::Builder::new()
            .name("copycat-snap-recv".to_string())
            .spawn(move || receive(receiver, chunks_rx))?;
        Ok(streams)
    }

    /// Connects the streams to the transport (created after them).
    pub(crate) fn set_transport(&self, transport: &Arc<Transport>) {
        let _ = self.transport.set(Arc::downgrade(transport));
    }

    /// Remembers where `node` takes raft traffic.
    pub(crate) fn note_address(&self, node: NodeId, addr: SocketAddr) {
        lock(&self.addresses).insert(node, addr);
    }

    fn send_batch(&self, to: NodeId, addr: SocketAddr, batch: Batch) {
        if let Some(transport) = self.transport.get().and_then(Weak::upgrade) {
            transport.send(to, addr, batch);
        }
    }

    /// Starts streaming a snapshot file (on a thread of its own).
    pub(crate) fn send(self: &Arc<Self>, request: SnapshotSend) {
        let streams = self.clone();
        let spawned = std::thread::Builder::new()
            .name("copycat-snap-send".to_string())
            .spawn(move || {
                let (group, replica) = (request.group, request.replica);
                let ok = match streams.stream(&request) {
                    Ok(()) => true,
                    // The newer stream reports the outcome; a failure reported now would
                    // make raft abandon it and send the snapshot a third time.
                    Err(StreamEnd::Superseded) => return,
                    Err(StreamEnd::Failed(e)) => {
                        slog::warn!(streams.logger, "snapshot stream failed"; "group" => %group,
                            "to" => request.to, "error" => e);
                        false
                    }
                };
                let _ = streams
                    .core
                    .send(Input::SnapshotSent { group, replica, ok }.into());
            });
        if spawned.is_err() {
            slog::error!(self.logger, "cannot start a snapshot stream thread");
        }
    }

    /// Sends the file in windowed chunks, then waits until the receiver has it all.
    fn stream(&self, request: &SnapshotSend) -> Result<(), StreamEnd> {
        let files = self.store.snapshot_files();
        let path = files.path(request.group, request.index);
        let mut file = File::open(&path).map_err(|e| failed(format!("{}: {e}", path.display())))?;
        let total = file.metadata().map_err(failed)?.len();
        let key = (request.to, request.group, request.index);
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1024);
        let number = self.next_stream.fetch_add(1, Ordering::Relaxed);
        lock(&self.senders).insert(key, (number, ack_tx));
        let owns = |senders: &HashMap<StreamKey, (u64, Sender<u64>)>| {
            senders.get(&key).is_some_and(|(n, _)| *n == number)
        };
        let result = self.pump(request, &mut file, total, &ack_rx, || {
            owns(&lock(&self.senders))
        });
        let mut senders = lock(&self.senders);
        if owns(&senders) {
            senders.remove(&key);
        }
        result
    }

    fn pump(
        &self,
        request: &SnapshotSend,
        file: &mut File,
        total: u64,
        acks: &Receiver<u64>,
        current: impl Fn() -> bool,
    ) -> Result<(), StreamEnd> {
        let ids = crate::storage::encode_ids(&request.ids);
        let mut buf = vec![0u8; CHUNK_BYTES];
        // `sent`: bytes handed to the transport; `last_sent`: the final chunk (the one
        // carrying the message) went out, so only acknowledgements are awaited.
        let (mut sent, mut acked, mut last_sent) = (0u64, 0u64, false);
        let mut progressed = Instant::now();
        loop {
            if !current() {
                return Err(StreamEnd::Superseded);
            }
            while !last_sent && sent - acked < WINDOW_BYTES {
                let n = file.read(&mut buf).map_err(failed)?;
                last_sent = sent + n as u64 >= total;
                if n == 0 && !last_sent {
                    return Err(failed("snapshot file shorter than its size"));
                }
                let chunk = SnapshotChunk {
                    group: request.group.to_bytes().to_vec(),
                    index: request.index,
                    offset: sent,
                    total,
                    data: buf[..n].to_vec(),
                    message: if last_sent {
                        request.message.clone()
                    } else {
                        Vec::new()
                    },
                    offer: last_sent && request.offer,
                    ids: if last_sent { ids.clone() } else { Vec::new() },
                };
                let batch = Batch {
                    chunks: vec![chunk],
                    ..Default::default()
                };
                self.send_batch(request.to, request.addr, batch);
                sent += n as u64;
            }
            if progressed.elapsed() >= MAX_STALL {
                return Err(failed("the receiver stopped acknowledging"));
            }
            let resume_from = match acks.recv_timeout(ACK_TIMEOUT) {
                Ok(received) => {
                    if received > acked {
                        progressed = Instant::now();
                    }
                    acked = acked.max(received);
                    // Every stream ends with an acknowledgement of at least 1 (a stream of
                    // an empty file included).
                    if acked >= total.max(1) {
                        return Ok(());
                    }
                    // The receiver is ahead of a resend: continue from what it has.
                    (acked > sent).then_some(acked)
                }
                // Chunks or acknowledgements were lost: resend from what it has.
                Err(_) => Some(acked),
            };
            if let Some(offset) = resume_from {
                file.seek(SeekFrom::Start(offset)).map_err(failed)?;
                (sent, last_sent) = (offset, false);
            }
        }
    }

    /// Chunks arrived from `from`: written by the receiving thread.
    pub(crate) fn on_chunks(&self, from: NodeId, chunks: Vec<SnapshotChunk>) {
        for chunk in chunks {
            let _ = self.chunks.send((from, chunk));
        }
    }

    /// Acknowledgements arrived from `from` for streams this node sends.
    pub(crate) fn on_acks(&self, from: NodeId, acks: Vec<SnapshotAck>) {
        let senders = lock(&self.senders);
        for ack in acks {
            let Some(group) = DataStructureId::from_bytes(&ack.group) else {
                continue;
            };
            if let Some((_, tx)) = senders.get(&(from, group, ack.index)) {
                let _ = tx.try_send(ack.received);
            }
        }
    }

    fn ack(&self, to: NodeId, group: DataStructureId, index: u64, received: u64) {
        let Some(addr) = lock(&self.addresses).get(&to).copied() else {
            return;
        };
        let ack = SnapshotAck {
            group: group.to_bytes().to_vec(),
            index,
            received,
        };
        let batch = Batch {
            acks: vec![ack],
            ..Default::default()
        };
        self.send_batch(to, addr, batch);
    }
}

/// Why a stream ended without the receiver holding the whole snapshot.
enum StreamEnd {
    /// A newer stream of the same snapshot to the same node took over.
    Superseded,
    /// It failed (the reason is logged, raft is told).
    Failed(String),
}

fn failed(e: impl std::fmt::Display) -> StreamEnd {
    StreamEnd::Failed(e.to_string())
}

/// A snapshot being received.
struct Incoming {
    file: File,
    received: u64,
}

/// The receiving thread: appends chunks to partial files; a complete file is made durable
/// and moved into place before its `MsgSnapshot` goes to the core.
fn receive(streams: Weak<SnapshotStreams>, chunks: Receiver<(NodeId, SnapshotChunk)>) {
    let mut incoming: HashMap<StreamKey, Incoming> = HashMap::new();
    while let Ok((from, chunk)) = chunks.recv() {
        let Some(streams) = streams.upgrade() else {
            return;
        };
        let Some(group) = DataStructureId::from_bytes(&chunk.group) else {
            continue;
        };
        let key = (from, group, chunk.index);
        match accept_chunk(&streams, &mut incoming, key, chunk) {
            Ok(received) => streams.ack(from, group, key.2, received),
            Err(e) => {
                slog::warn!(streams.logger, "dropping a snapshot being received"; "group" => %group,
                    "from" => from, "error" => e);
                incoming.remove(&key);
            }
        }
    }
}

/// Appends one chunk; returns how many bytes of the stream are now received.
fn accept_chunk(
    streams: &SnapshotStreams,
    incoming: &mut HashMap<StreamKey, Incoming>,
    key: StreamKey,
    chunk: SnapshotChunk,
) -> Result<u64, String> {
    let (from, group, index) = key;
    let files = streams.store.snapshot_files();
    if chunk.offset == 0 {
        // A new stream (or a restart of one): older partial streams of the group go.
        incoming.retain(|(f, g, _), _| !(*f == from && *g == group));
        let file = files
            .create_partial(group, index)
            .map_err(|e| e.to_string())?;
        incoming.insert(key, Incoming { file, received: 0 });
    }
    let Some(stream) = incoming.get_mut(&key) else {
        return Ok(0);
    };
    if chunk.offset != stream.received {
        return Ok(stream.received);
    }
    stream
        .file
        .write_all(&chunk.data)
        .map_err(|e| e.to_string())?;
    stream.received += chunk.data.len() as u64;
    if stream.received < chunk.total {
        return Ok(stream.received);
    }
    let received = stream.received.max(chunk.total);
    incoming.remove(&key);
    let input = install_received(files, from, group, index, chunk)?;
    let _ = streams.core.send(input.into());
    Ok(received.max(1))
}

/// Makes a completely received snapshot file official (an offer is kept aside, a snapshot
/// for raft is installed with its proposal ids) and returns the input for the core: the
/// offer, or the `MsgSnapshot` the final chunk carried.
pub(crate) fn install_received(
    files: &crate::storage::SnapshotFiles,
    from: NodeId,
    group: DataStructureId,
    index: u64,
    last_chunk: SnapshotChunk,
) -> Result<Input, String> {
    let installed = if last_chunk.offer {
        files.keep_offer(group, index)
    } else {
        let ids = crate::storage::decode_ids(&last_chunk.ids);
        files
            .write_ids(group, index, &ids)
            .and_then(|()| files.install_partial(group, index))
    };
    installed.map_err(|e| e.to_string())?;
    Ok(if last_chunk.offer {
        Input::SnapshotOffered {
            group,
            metadata: last_chunk.message,
        }
    } else {
        let message = GroupMessage {
            group: group.to_bytes().to_vec(),
            message: last_chunk.message.into(),
        };
        Input::Batch(
            from,
            Batch {
                messages: vec![message],
                ..Default::default()
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second stream of the same snapshot to the same node takes over the first, which
    /// stops without reporting: only the second's outcome reaches the core.
    #[test]
    fn a_newer_stream_of_the_same_snapshot_supersedes_the_older() {
        let dir = tempfile::tempdir().unwrap();
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let store = Arc::new(SledStore::open(dir.path(), logger.clone()).unwrap());
        let group = DataStructureId::new();
        let data = vec![7u8; 3 * CHUNK_BYTES / 2];
        store.snapshot_files().write(group, 40, &data).unwrap();
        let (core_tx, core_rx) = crossbeam_channel::unbounded();
        let streams = SnapshotStreams::start(store, core_tx, logger).unwrap();
        let request = || SnapshotSend {
            to: 2,
            addr: "127.0.0.1:9".parse().unwrap(),
            replica: 2,
            group,
            index: 40,
            message: Vec::new(),
            offer: false,
            ids: Default::default(),
        };
        streams.send(request());
        let registered = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while lock(&streams.senders).get(&(2, group, 40)).map(|(s, _)| *s) != Some(n) {
                assert!(Instant::now() < deadline, "stream {n} never started");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        registered(0);
        streams.send(request());
        registered(1);
        let ack = SnapshotAck {
            group: group.to_bytes().to_vec(),
            index: 40,
            received: data.len() as u64,
        };
        streams.on_acks(2, vec![ack]);
        let outcome = core_rx.recv_timeout(Duration::from_secs(10));
        assert!(
            matches!(
                outcome,
                Ok(Event::Core(Input::SnapshotSent { ok: true, .. }))
            ),
            "the newer stream completes"
        );
        // The older one would have failed after `MAX_STALL` without acknowledgements.
        let later = core_rx.recv_timeout(MAX_STALL + ACK_TIMEOUT * 2);
        assert!(later.is_err(), "the superseded stream reported nothing");
        assert!(lock(&streams.senders).is_empty());
    }
}
