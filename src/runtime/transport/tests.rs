//! Tests of `transport`.

use std::io::{Read, Write};
use std::sync::mpsc as std_mpsc;

use super::*;
use crate::proto::{
    GroupMessage, JoinRequest, ReplicaGone, SnapshotAck, SnapshotChunk, SnapshotNeeded,
};

/// Deadline for every awaited condition.
const WAIT: Duration = Duration::from_secs(10);

use crate::runtime::test_runtime as runtime;

/// Log drain keeping "LEVEL message key=value..." lines for assertions.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

/// Collects the key-values of one record.
struct KvLine(String);

impl slog::Serializer for KvLine {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        self.0.push_str(&format!(" {key}={val}"));
        Ok(())
    }
}

impl slog::Drain for Capture {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        use slog::KV;
        let mut line = KvLine(format!(
            "{} {}",
            record.level().as_short_str(),
            record.msg()
        ));
        let _ = record.kv().serialize(record, &mut line);
        let _ = values.serialize(record, &mut line);
        self.0.lock().unwrap().push(line.0);
        Ok(())
    }
}

impl Capture {
    /// Whether some line contains every one of `parts`.
    fn has(&self, parts: &[&str]) -> bool {
        self.count(parts) > 0
    }

    /// How many lines contain every one of `parts`.
    fn count(&self, parts: &[&str]) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }
}

/// One transport under test, with what its callbacks saw.
struct Node {
    transport: Transport,
    addr: SocketAddr,
    batches: std_mpsc::Receiver<(NodeId, Batch)>,
    unreachable: std_mpsc::Receiver<NodeId>,
    logs: Capture,
}

fn start_on(
    rt: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    cluster: &str,
    id: NodeId,
    max_frame_bytes: usize,
) -> Node {
    // Every refusal logged: the tests wait for the lines.
    let limits = TransportLimits {
        log_interval: Duration::ZERO,
        ..TransportLimits::default()
    };
    start_limited(rt, listener, cluster, id, max_frame_bytes, limits)
}

fn start_limited(
    rt: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    cluster: &str,
    id: NodeId,
    max_frame_bytes: usize,
    limits: TransportLimits,
) -> Node {
    let (batch_tx, batches) = std_mpsc::channel();
    let (unreachable_tx, unreachable) = std_mpsc::channel();
    let logs = Capture::default();
    let config = TransportConfig {
        cluster: cluster.to_string(),
        node_id: id,
        max_frame_bytes,
        tls: None,
        logger: Logger::root(logs.clone(), o!()),
        limits,
    };
    let on_batch: OnBatch = Arc::new(move |from, batch| {
        let _ = batch_tx.send((from, batch));
    });
    let on_unreachable: OnUnreachable = Arc::new(move |peer| {
        let _ = unreachable_tx.send(peer);
    });
    let addr = listener.local_addr().unwrap();
    let transport =
        Transport::start(rt.handle(), listener, config, on_batch, on_unreachable).unwrap();
    Node {
        transport,
        addr,
        batches,
        unreachable,
        logs,
    }
}

fn start(rt: &tokio::runtime::Runtime, cluster: &str, id: NodeId) -> Node {
    start_on(rt, bind_any(), cluster, id, 1 << 20)
}

fn bind_any() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

/// A batch of one message carrying `n`, and one join.
fn batch(n: u32) -> Batch {
    Batch {
        messages: vec![GroupMessage {
            group: vec![7; 16],
            message: n.to_be_bytes().to_vec().into(),
        }],
        joins: vec![JoinRequest {
            group: vec![8; 16],
            node_id: u64::from(n),
            replica_id: u64::from(n),
        }],
        ..Default::default()
    }
}

/// The numbers carried by a batch's messages.
fn numbers(batch: &Batch) -> Vec<u32> {
    batch
        .messages
        .iter()
        .map(|m| u32::from_be_bytes(m.message[..].try_into().unwrap()))
        .collect()
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Waits (bounded) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (bounded) until the raw connection is closed by the other side.
fn assert_closed_by_peer(stream: &mut std::net::TcpStream) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("connection was not closed: {e}")
            }
            Err(_) => return, // Reset: closed too.
        }
    }
}

fn hello_bytes(cluster: &str, version: u32, node_id: NodeId) -> Vec<u8> {
    let frame = Frame {
        body: Some(Body::Hello(Hello {
            version,
            cluster: cluster.to_string(),
            node_id,
        })),
    };
    encode_frame(&frame, 1 << 20).unwrap()
}

/// Checks that `from` can still deliver to `to` (sending batch `n`).
fn assert_delivers(from: &Node, from_id: NodeId, to: &Node, to_id: NodeId, n: u32) {
    from.transport.send(to_id, to.addr, batch(n));
    let (peer, got) = to.batches.recv_timeout(WAIT).expect("batch delivered");
    assert_eq!(peer, from_id);
    assert_eq!(got, batch(n));
}

#[test]
fn exchanges_batches_both_ways() {
    let rt = runtime();
    let a = start(&rt, "c", 1);
    let b = start(&rt, "c", 2);
    a.transport.send(2, b.addr, batch(10));
    b.transport.send(1, a.addr, batch(20));
    let (from, got) = b.batches.recv_timeout(WAIT).unwrap();
    assert_eq!((from, got), (1, batch(10)));
    let (from, got) = a.batches.recv_timeout(WAIT).unwrap();
    assert_eq!((from, got), (2, batch(20)));
    // And again over the established connections.
    assert_delivers(&a, 1, &b, 2, 11);
    assert_delivers(&b, 2, &a, 1, 21);
    assert!(a.unreachable.try_recv().is_err());
    assert!(b.unreachable.try_recv().is_err());
    a.transport.shutdown();
    b.transport.shutdown();
}

#[test]
fn many_batches_arrive_in_order_and_coalesced() {
    let rt = runtime();
    let a = start(&rt, "c", 1);
    let b = start(&rt, "c", 2);
    const N: u32 = 5000;
    // From a plain thread, as the raft loop does.
    for n in 0..N {
        a.transport.send(2, b.addr, batch(n));
    }
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let mut joins = Vec::new();
    let mut frames = 0;
    while seen.len() < N as usize {
        let (from, got) = b
            .batches
            .recv_timeout(remaining(deadline))
            .expect("all batches delivered");
        assert_eq!(from, 1);
        assert!(!got.messages.is_empty());
        frames += 1;
        seen.extend(numbers(&got));
        joins.extend(got.joins.iter().map(|j| j.node_id));
    }
    assert_eq!(seen, (0..N).collect::<Vec<_>>());
    assert_eq!(joins, (0..u64::from(N)).collect::<Vec<_>>());
    // The first batch may travel alone while the connection is set up; the rest
    // is coalesced.
    assert!(frames < N as usize, "{frames} frames for {N} batches");
    a.transport.shutdown();
    b.transport.shutdown();
}

#[test]
fn reconnects_to_a_peer_that_starts_later() {
    let rt = runtime();
    let a = start(&rt, "c", 1);
    // Reserve a port, then free it: nothing listens there for now.
    let b_addr = bind_any().local_addr().unwrap();
    a.transport.send(2, b_addr, batch(0));
    assert_eq!(a.unreachable.recv_timeout(WAIT), Ok(2));
    assert!(a.logs.has(&["WARN", "cannot connect to peer"]));
    // Sends while down are dropped, never queued without bound.
    for n in 1..100 {
        a.transport.send(2, b_addr, batch(n));
    }
    let b = start_on(
        &rt,
        std::net::TcpListener::bind(b_addr).unwrap(),
        "c",
        2,
        1 << 20,
    );
    // Keep sending (as raft retransmits) until one gets through after reconnecting.
    let deadline = Instant::now() + WAIT;
    let (from, got) = loop {
        a.transport.send(2, b_addr, batch(1000));
        match b.batches.recv_timeout(Duration::from_millis(20)) {
            Ok(x) => break x,
            Err(_) => assert!(Instant::now() < deadline, "never reconnected"),
        }
    };
    assert_eq!(from, 1);
    assert!(
        numbers(&got).iter().all(|&n| n == 1000),
        "stale batch delivered"
    );
    // Failed attempts were reported, but not in a hot loop (backoff).
    let reports = a.unreachable.try_iter().count() + 1;
    assert!(reports < 100, "{reports} unreachable reports");
    a.transport.shutdown();
    b.transport.shutdown();
}

#[test]
fn bad_clients_are_dropped_without_disturbing_peers() {
    let rt = runtime();
    let a = start(&rt, "c", 1);
    let b = start(&rt, "c", 2);
    assert_delivers(&b, 2, &a, 1, 1);

    // Garbage instead of a hello.
    let mut garbage = std::net::TcpStream::connect(a.addr).unwrap();
    garbage
        .write_all(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    assert_closed_by_peer(&mut garbage);
    wait_until("undecodable frame log", || {
        a.logs
            .has(&["WARN", "closing inbound connection", "undecodable"])
    });

    // An oversized length prefix.
    let mut oversized = std::net::TcpStream::connect(a.addr).unwrap();
    oversized.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    assert_closed_by_peer(&mut oversized);
    wait_until("oversized frame log", || {
        a.logs
            .has(&["WARN", "closing inbound connection", "over the limit"])
    });

    // A proper hello, then HTTP (its first 4 bytes read as a huge length).
    let mut http = std::net::TcpStream::connect(a.addr).unwrap();
    http.write_all(&hello_bytes("c", PROTOCOL_VERSION, 9))
        .unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_closed_by_peer(&mut http);
    wait_until("oversized frame log from peer 9", || {
        a.logs
            .has(&["closing inbound connection", "over the limit", "peer=9"])
    });

    // A batch frame without a hello.
    let mut no_hello = std::net::TcpStream::connect(a.addr).unwrap();
    let frame = Frame {
        body: Some(Body::Batch(batch(5))),
    };
    no_hello
        .write_all(&encode_frame(&frame, 1 << 20).unwrap())
        .unwrap();
    assert_closed_by_peer(&mut no_hello);
    wait_until("missing hello log", || {
        a.logs.has(&["closing inbound connection", "not a hello"])
    });

    // A hello, then a frame cut short by end of stream.
    let mut truncated = std::net::TcpStream::connect(a.addr).unwrap();
    truncated
        .write_all(&hello_bytes("c", PROTOCOL_VERSION, 8))
        .unwrap();
    truncated.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
    truncated.shutdown(std::net::Shutdown::Write).unwrap();
    assert_closed_by_peer(&mut truncated);
    wait_until("truncated frame log", || {
        a.logs
            .has(&["closing inbound connection", "mid-frame", "peer=8"])
    });

    // A client spewing garbage continuously, while the peer keeps talking.
    let mut spewer = std::net::TcpStream::connect(a.addr).unwrap();
    let spew = std::thread::spawn(move || {
        let junk: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
        while spewer.write_all(&junk).is_ok() {}
    });
    for n in 2..50 {
        assert_delivers(&b, 2, &a, 1, n);
    }
    spew.join().unwrap();

    // None of this reached the application, and the proper peer never broke.
    assert!(a.batches.try_recv().is_err());
    assert!(b.unreachable.try_recv().is_err());
    a.transport.shutdown();
    b.transport.shutdown();
}

#[test]
fn refuses_other_clusters_and_versions() {
    let rt = runtime();
    let a = start(&rt, "alpha", 1);
    let c = start(&rt, "beta", 3);
    c.transport.send(1, a.addr, batch(1));
    wait_until("cluster mismatch log", || {
        a.logs.has(&[
            "WARN",
            "closing inbound connection",
            "cluster mismatch",
            "beta",
        ])
    });
    // The refused dialer notices the closed connection and reports the peer.
    assert_eq!(c.unreachable.recv_timeout(WAIT), Ok(1));

    let mut old = std::net::TcpStream::connect(a.addr).unwrap();
    old.write_all(&hello_bytes("alpha", PROTOCOL_VERSION + 1, 4))
        .unwrap();
    assert_closed_by_peer(&mut old);
    wait_until("version mismatch log", || {
        a.logs
            .has(&["WARN", "closing inbound connection", "version mismatch"])
    });

    assert!(a.batches.try_recv().is_err());
    a.transport.shutdown();
    c.transport.shutdown();
}

#[test]
fn address_change_replaces_the_connection() {
    let rt = runtime();
    let a = start(&rt, "c", 1);
    let old = start(&rt, "c", 2);
    let new = start(&rt, "c", 2);
    assert_delivers(&a, 1, &old, 2, 1);
    assert_delivers(&a, 1, &new, 2, 2);
    for n in 3..20 {
        assert_delivers(&a, 1, &new, 2, n);
    }
    assert!(old.batches.try_recv().is_err());
    // The old connection was closed by its task (a clean end of stream).
    wait_until("old connection closed", || {
        old.logs.has(&["peer closed its connection", "peer=1"])
    });
    for node in [a, old, new] {
        node.transport.shutdown();
    }
}

#[test]
fn drops_batches_too_large_for_a_frame() {
    let rt = runtime();
    let a = start_on(&rt, bind_any(), "c", 1, 64 * 1024);
    let b = start_on(&rt, bind_any(), "c", 2, 64 * 1024);
    let mut huge = batch(1);
    huge.messages[0].message = vec![0; 100 * 1024].into();
    a.transport.send(2, b.addr, huge);
    assert_delivers(&a, 1, &b, 2, 2);
    assert!(a.logs.has(&["WARN", "larger than the frame limit"]));
    a.transport.shutdown();
    b.transport.shutdown();
}

#[test]
fn shutdown_stops_everything() {
    let rt = runtime();
    let a = start(&rt, "c", 1);
    let b = start(&rt, "c", 2);
    assert_delivers(&a, 1, &b, 2, 1);
    assert_delivers(&b, 2, &a, 1, 2);
    // An idle accepted connection.
    let mut idle = std::net::TcpStream::connect(a.addr).unwrap();
    idle.write_all(&hello_bytes("c", PROTOCOL_VERSION, 5))
        .unwrap();
    wait_until("idle connection accepted", || {
        a.logs.has(&["accepted connection from peer", "peer=5"])
    });

    let started = Instant::now();
    a.transport.shutdown();
    b.transport.shutdown();
    assert!(
        started.elapsed() < SHUTDOWN_TIMEOUT,
        "tasks had to be aborted"
    );
    assert!(!a.logs.has(&["did not stop in time"]));
    assert!(!b.logs.has(&["did not stop in time"]));
    // Idempotent, and sending afterwards does nothing.
    a.transport.shutdown();
    a.transport.send(2, b.addr, batch(3));

    // The accepted connection was closed, the listener is gone: connects fail and
    // the port can be bound again.
    assert_closed_by_peer(&mut idle);
    assert!(std::net::TcpStream::connect(a.addr).is_err());
    let rebound = std::net::TcpListener::bind(a.addr).unwrap();
    drop(rebound);
    assert!(a.batches.try_recv().is_err());
    assert!(b.batches.try_recv().is_err());
    assert!(a.unreachable.try_recv().is_err());
    drop(a);
    drop(b);
    rt.shutdown_timeout(WAIT);
}

#[test]
fn shutdown_async_inside_the_runtime() {
    let rt = runtime();
    let a = start(&rt, "c", 1);
    let b = start(&rt, "c", 2);
    assert_delivers(&a, 1, &b, 2, 1);
    rt.block_on(async {
        a.transport.shutdown_async().await;
        b.transport.shutdown_async().await;
        // A second, concurrent-safe call returns at once.
        a.transport.shutdown_async().await;
    });
    assert!(std::net::TcpStream::connect(a.addr).is_err());
}

#[test]
fn out_queue_merges_splits_and_stays_bounded() {
    let log = Logger::root(slog::Discard, o!());
    // Batches 1..=127 all have the same size.
    let one = batch(1).encoded_len();
    // Room for exactly three batches per frame.
    let mut q = OutQueue::new(3 * one + FRAME_OVERHEAD);
    for n in 1..=3 {
        q.push(batch(n), &log);
    }
    assert_eq!(q.frames.len(), 1);
    q.push(batch(4), &log);
    // Over one frame's worth: the oldest frame was dropped.
    assert_eq!(q.frames.len(), 1);
    assert_eq!(numbers(&q.pop().unwrap()), vec![4]);
    assert!(q.is_empty());
    for n in 1..=3 {
        q.push(batch(n), &log);
    }
    let merged = q.pop().unwrap();
    assert_eq!(numbers(&merged), vec![1, 2, 3]);
    assert_eq!(merged.encoded_len(), 3 * one);
    assert!(encode_frame(
        &Frame {
            body: Some(Body::Batch(merged))
        },
        3 * one + FRAME_OVERHEAD
    )
    .is_ok());
    q.push(batch(9), &log);
    assert_eq!(q.clear(), 1);
    assert_eq!(q.bytes, 0);
}

#[test]
fn out_queue_merging_keeps_every_field() {
    let log = Logger::root(slog::Discard, o!());
    let mut q = OutQueue::new(1 << 20);
    let group = vec![9u8; 16];
    let others = Batch {
        chunks: vec![SnapshotChunk {
            group: group.clone(),
            ..Default::default()
        }],
        acks: vec![SnapshotAck {
            group: group.clone(),
            ..Default::default()
        }],
        snapshots_needed: vec![SnapshotNeeded {
            group: group.clone(),
        }],
        gone: vec![ReplicaGone {
            group: group.clone(),
            replica_id: 5,
            deleted: 4,
        }],
        wake: vec![group],
        ..Default::default()
    };
    let expected_len = batch(1).encoded_len() + others.encoded_len();
    q.push(batch(1), &log);
    q.push(others.clone(), &log);
    assert_eq!(q.frames.len(), 1);
    let merged = q.pop().unwrap();
    assert_eq!(numbers(&merged), vec![1]);
    assert_eq!(merged.joins, batch(1).joins);
    assert_eq!(merged.chunks, others.chunks);
    assert_eq!(merged.acks, others.acks);
    assert_eq!(merged.snapshots_needed, others.snapshots_needed);
    assert_eq!(merged.gone, others.gone);
    assert_eq!(merged.wake, others.wake);
    assert_eq!(merged.encoded_len(), expected_len);
}

#[test]
fn transport_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Transport>();
}

mod limits;
