//! The snapshot stream entry point: arbitrary chunks, acknowledgements, file answers and
//! time for the `Streams` state machine, both directions.

use std::collections::VecDeque;

use super::Cursor;
use crate::id::{DataStructureId, NodeId};
use crate::node::streams::{
    Receipt, SnapshotIo, Stored, StreamId, StreamRequest, Streams, CHUNK_BYTES, WINDOW_BYTES,
};
use crate::proto::{SnapshotAck, SnapshotChunk};

/// A write handed to the runtime, not yet answered.
struct Write {
    from: NodeId,
    group: DataStructureId,
    chunk: SnapshotChunk,
    receipt: Receipt,
}

/// The snapshot streams of one node (`node::streams`), driven as the core and the runtime
/// drive them, with the peers' chunks and acknowledgements taken from the input. Writes are
/// answered in order, as the runtime performs them: with the bytes the file then holds
/// (what `SnapshotFiles::store_chunk` returns) or a failure. Checked: the bytes handed out
/// for writing and not answered are what the streams count as unstored; reads stay within
/// their file and window; a completed stream reports its whole size.
pub fn fuzz_stream_chunks(bytes: &[u8]) {
    let mut input = Cursor::new(bytes);
    let mut streams = Streams::new(100);
    let mut now_ms = 0u64;
    let mut writes: VecDeque<Write> = VecDeque::new();
    // Streams the runtime was asked to open: (key, stream).
    let mut opens: Vec<((NodeId, DataStructureId, u64), StreamId)> = Vec::new();
    // Sizes given to opened streams.
    let mut totals: Vec<(StreamId, u64)> = Vec::new();
    for _ in 0..512 {
        if input.is_empty() {
            break;
        }
        match input.below(8) {
            0 | 1 => {
                let from = NodeId::from(input.below(3));
                let chunk = chunk(&mut input);
                streams.chunk(from, chunk);
            }
            2 => {
                let Some(write) = writes.pop_front() else {
                    continue;
                };
                let len = write.chunk.data.len() as u64;
                let received = if input.below(8) == 0 {
                    Err("disk full".to_string())
                } else {
                    Ok(write.chunk.offset + len)
                };
                let stored = streams.stored(
                    write.from,
                    write.group,
                    write.receipt,
                    len,
                    received.clone(),
                );
                if let (Stored::Complete { bytes, .. }, Ok(received)) = (&stored, received) {
                    assert_eq!(*bytes, received);
                    assert!(received >= write.chunk.total, "complete streams are whole");
                }
            }
            3 => {
                let ack = SnapshotAck {
                    group: group(&mut input).to_bytes().to_vec(),
                    index: u64::from(input.below(3)),
                    received: position(&mut input),
                    stream: 100 + u64::from(input.below(8)),
                };
                streams.acked(now_ms, NodeId::from(input.below(3)), &ack);
            }
            4 => {
                let request = StreamRequest {
                    to: NodeId::from(input.below(3)),
                    addr: "127.0.0.1:9".parse().expect("address"),
                    replica: 2,
                    group: group(&mut input),
                    index: u64::from(input.below(3)),
                    message: input.short_slice().to_vec(),
                    offer: input.below(2) == 0,
                    ids: Vec::new(),
                };
                streams.start(now_ms, request);
            }
            5 => {
                if opens.is_empty() {
                    continue;
                }
                let (key, stream) = opens.remove(usize::from(input.byte()) % opens.len());
                let total = if input.below(8) == 0 {
                    Err("gone".to_string())
                } else {
                    Ok(position(&mut input))
                };
                if let Ok(total) = total {
                    totals.push((stream, total));
                }
                streams.opened(now_ms, key, stream, total);
            }
            6 => {
                now_ms += u64::from(input.byte()) * 50;
                streams.tick(now_ms);
            }
            _ => {
                if let Some(&(key, stream)) = opens.first() {
                    streams.read_failed(key, stream, "read failed".into());
                }
            }
        }
        for io in streams.take_io() {
            match io {
                SnapshotIo::Open {
                    to,
                    group,
                    index,
                    stream,
                } => opens.push(((to, group, index), stream)),
                SnapshotIo::Read { len, chunk, .. } => {
                    assert!(len <= CHUNK_BYTES, "chunks are at most CHUNK_BYTES");
                    let total = totals.iter().rev().find(|(s, _)| *s == chunk.stream);
                    assert_eq!(
                        total.map(|(_, t)| *t),
                        Some(chunk.total),
                        "read of an opened file"
                    );
                    assert!(
                        chunk.offset + len <= chunk.total,
                        "reads stay within the file"
                    );
                }
                SnapshotIo::Close { .. } => {}
                SnapshotIo::Write {
                    from,
                    group,
                    chunk,
                    receipt,
                } => writes.push_back(Write {
                    from,
                    group,
                    chunk,
                    receipt,
                }),
            }
        }
        let pending: u64 = writes.iter().map(|w| w.chunk.data.len() as u64).sum();
        assert_eq!(streams.unstored(), pending, "unstored accounting");
        assert!(streams.sent_ahead() <= WINDOW_BYTES + CHUNK_BYTES, "window");
    }
}

fn group(input: &mut Cursor) -> DataStructureId {
    DataStructureId::from_u128(1 + u128::from(input.below(2)))
}

/// A byte position: small (chunks of a few bytes), or now and then near a chunk boundary.
fn position(input: &mut Cursor) -> u64 {
    match input.below(8) {
        0 => CHUNK_BYTES * u64::from(input.below(12)) + u64::from(input.below(3)),
        1 => input.u64(),
        _ => u64::from(input.below(64)),
    }
}

fn chunk(input: &mut Cursor) -> SnapshotChunk {
    let group = group(input);
    let index = u64::from(input.below(3));
    let offset = match input.below(4) {
        0 => 0,
        _ => u64::from(input.below(64)),
    };
    let total = position(input);
    let data = input.short_slice().to_vec();
    SnapshotChunk {
        group: group.to_bytes().to_vec(),
        index,
        offset,
        total,
        data,
        message: input.short_slice().to_vec(),
        offer: input.below(2) == 0,
        ids: Vec::new(),
        stream: 100 + u64::from(input.below(4)),
    }
}
