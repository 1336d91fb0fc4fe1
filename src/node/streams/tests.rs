//! The stream state machine's unit tests: windows, resends, supersession, receiving.
use super::*;

const NOW: u64 = 1_000;

fn request(group: DataStructureId, offer: bool) -> StreamRequest {
    StreamRequest {
        to: 2,
        addr: "127.0.0.1:9".parse().expect("address"),
        replica: 2,
        group,
        index: 40,
        message: b"msg".to_vec(),
        offer,
        ids: Vec::new(),
    }
}

/// The reads handed out: (offset, len, whether the chunk carries the message).
fn reads(streams: &mut Streams) -> Vec<(u64, u64, bool)> {
    streams
        .take_io()
        .into_iter()
        .filter_map(|io| match io {
            SnapshotIo::Read { len, chunk, .. } => {
                Some((chunk.offset, len, !chunk.message.is_empty()))
            }
            _ => None,
        })
        .collect()
}

/// The stream just started: its key and number (the one `Open` handed out).
fn opened(streams: &mut Streams) -> (OutKey, StreamId) {
    let opens: Vec<_> = streams
        .take_io()
        .into_iter()
        .filter_map(|io| match io {
            SnapshotIo::Open {
                to,
                group,
                index,
                stream,
            } => Some(((to, group, index), stream)),
            _ => None,
        })
        .collect();
    assert_eq!(opens.len(), 1, "one stream opened");
    opens[0]
}

#[test]
fn a_sender_keeps_a_window_and_finishes_on_the_last_acknowledgement() {
    let group = DataStructureId::new();
    let mut streams = Streams::new(7);
    streams.start(NOW, request(group, false));
    let (key, stream) = opened(&mut streams);
    let total = 10 * CHUNK_BYTES + 5;
    assert_eq!(streams.opened(NOW, key, stream, Ok(total)), None);
    let first = reads(&mut streams);
    assert_eq!(first.len() as u64, WINDOW_BYTES / CHUNK_BYTES);
    assert_eq!(first[0], (0, CHUNK_BYTES, false));
    let ack_of = |received| ack(group, 40, stream, received);
    assert_eq!(streams.acked(NOW, 2, &ack_of(3 * CHUNK_BYTES)), None);
    let more = reads(&mut streams);
    assert_eq!(
        more,
        vec![
            (8 * CHUNK_BYTES, CHUNK_BYTES, false),
            (9 * CHUNK_BYTES, CHUNK_BYTES, false),
            (10 * CHUNK_BYTES, 5, true)
        ]
    );
    // An acknowledgement of another stream number changes nothing.
    let stale = ack(group, 40, stream + 1, total);
    assert_eq!(streams.acked(NOW, 2, &stale), None);
    let ended = streams.acked(NOW, 2, &ack_of(total));
    assert_eq!(
        ended,
        Some(Ended {
            group,
            replica: 2,
            offer: false,
            failure: None
        })
    );
    assert!(streams.outgoing.is_empty());
    let io = streams.take_io();
    assert!(
        matches!(io.as_slice(), [SnapshotIo::Close { stream: s }] if *s == stream),
        "an ended stream's file is closed: {io:?}"
    );
}

#[test]
fn silence_resends_from_the_acknowledged_byte_and_a_stall_fails_the_stream() {
    let group = DataStructureId::new();
    let mut streams = Streams::new(1);
    streams.start(NOW, request(group, false));
    let (key, stream) = opened(&mut streams);
    streams.opened(NOW, key, stream, Ok(3 * CHUNK_BYTES));
    assert_eq!(reads(&mut streams).len(), 3);
    streams.acked(NOW, 2, &ack(group, 40, stream, CHUNK_BYTES));
    assert!(streams.tick(NOW + ACK_TIMEOUT_MS - 1).is_empty());
    assert!(reads(&mut streams).is_empty());
    assert!(streams.tick(NOW + ACK_TIMEOUT_MS).is_empty());
    assert_eq!(
        reads(&mut streams),
        vec![
            (CHUNK_BYTES, CHUNK_BYTES, false),
            (2 * CHUNK_BYTES, CHUNK_BYTES, true)
        ]
    );
    let ended = streams.tick(NOW + MAX_STALL_MS);
    assert_eq!(ended.len(), 1);
    assert!(ended[0].failure.is_some());
    assert!(streams.outgoing.is_empty());
}

#[test]
fn a_newer_stream_of_the_same_snapshot_supersedes_the_older() {
    let group = DataStructureId::new();
    let mut streams = Streams::new(1);
    streams.start(NOW, request(group, false));
    let (key, old) = opened(&mut streams);
    streams.start(NOW, request(group, false));
    let io = streams.take_io();
    assert!(
        matches!(io.as_slice(), [SnapshotIo::Open { stream: new, .. }, SnapshotIo::Close { stream }]
            if *stream == old && *new != old),
        "the newer stream opens, the older one's file closes: {io:?}"
    );
    let new = old.wrapping_add(1);
    // The older stream's file and acknowledgements no longer matter.
    assert_eq!(streams.opened(NOW, key, old, Err("gone".into())), None);
    assert_eq!(streams.opened(NOW, key, new, Ok(10)), None);
    assert_eq!(streams.acked(NOW, 2, &ack(group, 40, old, 10)), None);
    let ended = streams.acked(NOW, 2, &ack(group, 40, new, 10));
    assert!(ended.is_some_and(|e| e.failure.is_none()));
    assert!(streams.outgoing.is_empty());
}

fn chunk(group: DataStructureId, stream: u64, offset: u64, len: u64, total: u64) -> SnapshotChunk {
    let last = offset + len >= total;
    SnapshotChunk {
        group: group.to_bytes().to_vec(),
        index: 40,
        offset,
        total,
        data: vec![1; len as usize],
        message: if last { b"msg".to_vec() } else { Vec::new() },
        offer: false,
        ids: Vec::new(),
        stream,
    }
}

fn writes(streams: &mut Streams) -> Vec<u64> {
    streams
        .take_io()
        .into_iter()
        .filter_map(|io| match io {
            SnapshotIo::Write { chunk, .. } => Some(chunk.offset),
            _ => None,
        })
        .collect()
}

#[test]
fn a_receiver_writes_chunks_in_order_once_and_completes_with_the_message() {
    let group = DataStructureId::new();
    let mut streams = Streams::new(1);
    assert_eq!(streams.chunk(3, chunk(group, 9, 0, 4, 10)), None);
    // A late duplicate of the first chunk, and a chunk from beyond a gap, are not
    // written: the sender hears what is here.
    let dup = streams.chunk(3, chunk(group, 9, 0, 4, 10));
    assert_eq!(dup, Some(ack(group, 40, 9, 0)));
    assert!(streams.chunk(3, chunk(group, 9, 8, 2, 10)).is_some());
    assert_eq!(streams.chunk(3, chunk(group, 9, 4, 6, 10)), None);
    assert_eq!(writes(&mut streams), vec![0, 4]);
    // Chunks of a stream whose start was never seen are ignored.
    assert_eq!(streams.chunk(3, chunk(group, 8, 4, 6, 10)), None);
    assert_eq!(
        streams.stored(3, group, 1, 4, Ok(4)),
        Stored::Ack(ack(group, 40, 9, 4))
    );
    assert_eq!(
        streams.stored(3, group, 1, 6, Ok(10)),
        Stored::Complete {
            ack: ack(group, 40, 9, 10),
            message: b"msg".to_vec(),
            offer: false,
            bytes: 10,
        }
    );
    assert_eq!(streams.unstored, 0);
}

#[test]
fn a_restarted_stream_replaces_the_one_in_progress_and_an_empty_file_completes() {
    let group = DataStructureId::new();
    let mut streams = Streams::new(1);
    assert_eq!(streams.chunk(3, chunk(group, 9, 0, 4, 10)), None);
    assert_eq!(streams.chunk(3, chunk(group, 10, 0, 0, 0)), None);
    assert_eq!(writes(&mut streams), vec![0, 0]);
    assert_eq!(streams.stored(3, group, 1, 4, Ok(4)), Stored::Stale);
    let done = streams.stored(3, group, 2, 0, Ok(0));
    assert!(matches!(done, Stored::Complete { ack, .. } if ack.received == 1));
}

#[test]
fn received_chunks_waiting_to_be_written_are_bounded() {
    let mut streams = Streams::new(1);
    let mut forwarded = 0;
    // Many groups' streams from one sender, one large first chunk each.
    for _ in 0..MAX_UNSTORED_BYTES / CHUNK_BYTES + 3 {
        let group = DataStructureId::new();
        let first = chunk(group, 1, 0, CHUNK_BYTES, 2 * CHUNK_BYTES);
        if streams.chunk(3, first).is_none() {
            forwarded += 1;
        }
    }
    assert_eq!(forwarded, MAX_UNSTORED_BYTES / CHUNK_BYTES);
    assert!(streams.unstored <= MAX_UNSTORED_BYTES);
}

/// Found by the `stream_chunks` fuzz target: a chunk announcing another size than its
/// stream's first chunk was written, so the stream completed (and stepped its message) at
/// the first chunk's size while the file layer, going by the chunk's size, had not
/// installed the file.
#[test]
fn a_chunk_that_changes_its_streams_size_is_not_written() {
    let group = DataStructureId::new();
    let mut streams = Streams::new(1);
    assert_eq!(streams.chunk(3, chunk(group, 9, 0, 4, 10)), None);
    let resized = streams.chunk(3, chunk(group, 9, 4, 6, 20));
    assert_eq!(resized, Some(ack(group, 40, 9, 0)));
    assert_eq!(writes(&mut streams), vec![0]);
    assert_eq!(streams.unstored(), 4);
}

/// Found by the `stream_chunks` fuzz target (twice): a first chunk under a stream number
/// used before (for another snapshot, or after a stream in between) replaced the stream,
/// and the writes of the replaced one then counted for it, completing it at a size its own
/// chunks never reached. Writes now name their incoming stream by a receipt.
#[test]
fn writes_of_a_replaced_stream_with_the_same_number_are_stale() {
    let group = DataStructureId::new();
    let mut streams = Streams::new(1);
    assert_eq!(streams.chunk(3, chunk(group, 9, 0, 4, 10)), None);
    let mut other = chunk(group, 9, 0, 0, 1);
    other.index = 41;
    assert_eq!(streams.chunk(3, other), None);
    assert_eq!(streams.stored(3, group, 1, 4, Ok(4)), Stored::Stale);
    // Stream 9, then 10, then 9 again for the same snapshot.
    assert_eq!(streams.chunk(3, chunk(group, 10, 0, 2, 4)), None);
    assert_eq!(streams.chunk(3, chunk(group, 9, 0, 4, 4)), None);
    assert_eq!(streams.stored(3, group, 2, 0, Ok(0)), Stored::Stale);
    assert_eq!(streams.stored(3, group, 3, 2, Ok(2)), Stored::Stale);
    assert!(matches!(
        streams.stored(3, group, 4, 4, Ok(4)),
        Stored::Complete { bytes: 4, .. }
    ));
    assert_eq!(streams.unstored(), 0);
}
