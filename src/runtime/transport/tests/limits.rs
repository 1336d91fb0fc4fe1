//! The bounds of accepted connections: how many, per peer, how long a frame may take, how
//! much memory unfinished frames may hold.

use super::*;

fn limited(rt: &tokio::runtime::Runtime, id: NodeId, limits: TransportLimits) -> Node {
    start_limited(rt, bind_any(), "c", id, 1 << 20, limits)
}

fn connect_as(addr: SocketAddr, claimed: NodeId) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(&hello_bytes("c", PROTOCOL_VERSION, claimed))
        .unwrap();
    stream
}

/// Waits (bounded) until `stream` is still open after the transport had time to act on
/// it: a read that times out without data or end of stream.
fn assert_open(stream: &mut std::net::TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 8];
    match stream.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("connection closed or sent data: {other:?}"),
    }
}

#[test]
fn connections_beyond_the_cap_are_closed_at_once() {
    let rt = runtime();
    let limits = TransportLimits {
        connections: 3,
        log_interval: Duration::ZERO,
        ..TransportLimits::default()
    };
    let a = limited(&rt, 1, limits);
    let mut held: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(a.addr).unwrap())
        .collect();
    let mut extra = std::net::TcpStream::connect(a.addr).unwrap();
    assert_closed_by_peer(&mut extra);
    wait_until("the refusal is logged", || {
        a.logs.has(&["WARN", "too many inbound connections"])
    });
    assert_open(&mut held[0]);
    // A slot is given back when its connection ends.
    drop(held.pop());
    wait_until("a new connection is accepted", || {
        let mut again = std::net::TcpStream::connect(a.addr).unwrap();
        again
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        matches!(again.read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
    });
    a.transport.shutdown();
}

#[test]
fn a_peer_may_hold_only_a_few_connections() {
    let rt = runtime();
    let limits = TransportLimits {
        per_peer: 2,
        log_interval: Duration::ZERO,
        ..TransportLimits::default()
    };
    let a = limited(&rt, 1, limits);
    let mut first = connect_as(a.addr, 9);
    let mut second = connect_as(a.addr, 9);
    wait_until("both are accepted", || {
        a.logs.count(&["accepted connection from peer", "peer=9"]) == 2
    });
    let mut third = connect_as(a.addr, 9);
    assert_closed_by_peer(&mut third);
    wait_until("the refusal is logged", || {
        a.logs.has(&[
            "closing inbound connection",
            "holds 2 connections",
            "peer=9",
        ])
    });
    assert_open(&mut first);
    assert_open(&mut second);
    let mut other_peer = connect_as(a.addr, 10);
    assert_open(&mut other_peer);
    a.transport.shutdown();
}

#[test]
fn idle_connections_and_unfinished_frames_are_closed() {
    let rt = runtime();
    let limits = TransportLimits {
        frame_timeout: Duration::from_millis(300),
        log_interval: Duration::ZERO,
        ..TransportLimits::default()
    };
    let a = limited(&rt, 1, limits);
    let mut idle = connect_as(a.addr, 8);
    let mut unfinished = connect_as(a.addr, 9);
    unfinished.write_all(&[0, 0, 1, 0, 1, 2, 3]).unwrap();
    assert_closed_by_peer(&mut idle);
    assert_closed_by_peer(&mut unfinished);
    wait_until("the timeouts are logged", || {
        a.logs.has(&["no whole frame within", "peer=8"])
            && a.logs.has(&["no whole frame within", "peer=9"])
    });
    a.transport.shutdown();
}

#[test]
fn unfinished_frames_cannot_hold_more_memory_than_the_budget() {
    let rt = runtime();
    let limits = TransportLimits {
        frame_budget_bytes: 2 << 20,
        frame_timeout: Duration::from_millis(1500),
        log_interval: Duration::ZERO,
        ..TransportLimits::default()
    };
    // Frames up to 1 MiB: two unfinished ones take the whole budget.
    let a = limited(&rt, 1, limits);
    let b = start(&rt, "c", 2);
    let mut hogs: Vec<_> = (8..10)
        .map(|peer| {
            let mut hog = connect_as(a.addr, peer);
            let mut start = (1u32 << 20).to_be_bytes().to_vec();
            start.extend(vec![0u8; 4096]);
            hog.write_all(&start).unwrap();
            hog
        })
        .collect();
    wait_until("the budget is taken", || {
        a.transport.shared.limits.frame_budget.available_permits() == 0
    });
    // A real peer's batch waits for room, and gets through once the hogs time out. Its
    // connection may time out too while it waits (under load, in the same timer round as
    // the hogs'): raft resends what a closed connection lost, and so does this loop.
    let deadline = Instant::now() + WAIT;
    loop {
        b.transport.send(1, a.addr, batch(1));
        match a.batches.recv_timeout(Duration::from_millis(500)) {
            Ok((peer, got)) => {
                assert_eq!((peer, got), (2, batch(1)));
                break;
            }
            Err(_) => assert!(Instant::now() < deadline, "batch never delivered"),
        }
    }
    for hog in &mut hogs {
        assert_closed_by_peer(hog);
    }
    a.transport.shutdown();
    b.transport.shutdown();
}

#[test]
fn a_peer_is_dialed_only_when_there_is_something_to_send() {
    let rt = runtime();
    let a = start(&rt, "c", 1);
    let peer = bind_any();
    let addr = peer.local_addr().unwrap();
    a.transport.send(2, addr, batch(1));
    let (first, _) = peer.accept().unwrap();
    // The peer goes away: the dialer backs off and, with nothing to send, waits.
    drop(first);
    peer.set_nonblocking(true).unwrap();
    let quiet_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < quiet_until {
        match peer.accept() {
            Ok(_) => panic!("redialed with nothing to send"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    // Something to send: it dials again.
    a.transport.send(2, addr, batch(2));
    wait_until("a new connection", || peer.accept().is_ok());
    a.transport.shutdown();
}

#[test]
fn idle_connections_are_closed_by_their_dialer_and_opened_again_on_demand() {
    let rt = runtime();
    let limits = TransportLimits {
        idle_close: Duration::from_millis(200),
        log_interval: Duration::ZERO,
        ..TransportLimits::default()
    };
    let a = limited(&rt, 1, limits);
    let b = start(&rt, "c", 2);
    assert_delivers(&a, 1, &b, 2, 1);
    wait_until("the idle connection is closed", || {
        b.logs.has(&["peer closed its connection", "peer=1"])
    });
    assert_delivers(&a, 1, &b, 2, 2);
    assert_eq!(
        b.logs.count(&["accepted connection from peer", "peer=1"]),
        2
    );
    assert!(
        a.unreachable.try_recv().is_err(),
        "an idle close is no failure"
    );
    a.transport.shutdown();
    b.transport.shutdown();
}
