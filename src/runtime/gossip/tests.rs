//! Tests of `gossip`.

use super::*;
use foca::Identity as _;
use std::time::Instant as StdInstant;

/// Cluster name used by the tests.
const CLUSTER: &str = "test-cluster";

/// Logs to stderr when `COPYCAT_TEST_LOG` is set, else discards.
fn logger() -> Logger {
    if std::env::var_os("COPYCAT_TEST_LOG").is_some() {
        use slog::Drain as _;
        let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
        let drain = slog_term::FullFormat::new(decorator).build().fuse();
        Logger::root(drain, o!())
    } else {
        Logger::root(slog::Discard, o!())
    }
}

use crate::runtime::test_runtime as runtime;

/// A gossip node under test and the events it reported.
struct TestNode {
    /// The instance.
    gossip: Gossip,
    /// Its metadata.
    info: NodeInfo,
    /// Everything its callback received, in order.
    events: Arc<Mutex<Vec<MembershipEvent>>>,
}

impl TestNode {
    /// The events reported so far.
    fn events(&self) -> Vec<MembershipEvent> {
        self.events.lock().unwrap().clone()
    }

    /// The node ids `members()` returns, sorted.
    fn member_ids(&self) -> Vec<NodeId> {
        self.gossip.members().iter().map(|m| m.node_id).collect()
    }
}

/// A UDP socket on a free loopback port.
fn bind() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")
}

/// Starts node `node_id` of `cluster` on `socket`, recording its events.
fn start_on(
    rt: &tokio::runtime::Runtime,
    socket: std::net::UdpSocket,
    cluster: &str,
    node_id: NodeId,
    seeds: Vec<SocketAddr>,
) -> TestNode {
    let info = NodeInfo {
        node_id,
        raft_addr: SocketAddr::from(([127, 0, 0, 1], 10_000 + node_id as u16)),
        gossip_addr: socket.local_addr().unwrap(),
        datacenter: format!("dc-{node_id}"),
    };
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let gossip = Gossip::start(
        rt.handle(),
        socket,
        GossipConfig {
            cluster: cluster.to_owned(),
            me: info.clone(),
            seeds,
            rng_seed: node_id,
            logger: logger(),
            seal: None,
            tls: None,
        },
        Arc::new(move |e| sink.lock().unwrap().push(e)),
    )
    .expect("start gossip");
    TestNode {
        gossip,
        info,
        events,
    }
}

/// Starts node `node_id` of the test cluster on a fresh socket.
fn start(rt: &tokio::runtime::Runtime, node_id: NodeId, seeds: Vec<SocketAddr>) -> TestNode {
    start_on(rt, bind(), CLUSTER, node_id, seeds)
}

/// Polls `cond` until it holds, panicking after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = StdInstant::now() + timeout;
    while !cond() {
        assert!(StdInstant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every node sees exactly all the others, with their metadata.
fn wait_full_view(nodes: &[&TestNode], timeout: Duration) {
    wait_for("a full membership view", timeout, || {
        nodes.iter().all(|n| {
            let mut expected: Vec<NodeInfo> = nodes
                .iter()
                .filter(|o| o.info.node_id != n.info.node_id)
                .map(|o| o.info.clone())
                .collect();
            expected.sort_by_key(|i| i.node_id);
            n.gossip.members() == expected
        })
    });
}

/// Whether `node` reported `Down(id)`.
fn saw_down(node: &TestNode, id: NodeId) -> bool {
    node.events().contains(&MembershipEvent::Down(id))
}

/// Two nodes join through a seed; everyone sees everyone with the right metadata.
#[test]
fn three_nodes_join_through_one_seed() {
    let rt = runtime();
    let a = start(&rt, 1, vec![]);
    let b = start(&rt, 2, vec![a.info.gossip_addr]);
    let c = start(&rt, 3, vec![a.info.gossip_addr]);
    wait_full_view(&[&a, &b, &c], Duration::from_secs(10));
    for (node, others) in [(&a, [&b, &c]), (&b, [&a, &c]), (&c, [&a, &b])] {
        let events = node.events();
        for other in others {
            assert!(
                events.contains(&MembershipEvent::Up(other.info.clone())),
                "node {} missed Up of {}: {events:?}",
                node.info.node_id,
                other.info.node_id
            );
        }
        assert!(
            !events.iter().any(|e| matches!(e, MembershipEvent::Down(_))),
            "unexpected Down: {events:?}"
        );
    }
    for n in [&a, &b, &c] {
        n.gossip.leave();
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// A node whose first announces are lost keeps announcing until it joins.
#[test]
fn joins_a_seed_that_binds_later() {
    let rt = runtime();
    // The seed's socket exists, but nobody gossips on it yet: whatever
    // arrives before the seed starts is read and thrown away, as if the
    // seed had not bound yet.
    let seed_socket = bind();
    let seed_addr = seed_socket.local_addr().unwrap();
    let b = start(&rt, 2, vec![seed_addr]);
    seed_socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let (len, from) = seed_socket.recv_from(&mut buf).expect("a first announce");
    assert_eq!(from, b.info.gossip_addr);
    assert!(len > 0);
    seed_socket.set_nonblocking(true).unwrap();
    while seed_socket.recv_from(&mut buf).is_ok() {}
    seed_socket.set_nonblocking(false).unwrap();
    // The seed has no seeds of its own: only re-announces can join them.
    let a = start_on(&rt, seed_socket, CLUSTER, 1, vec![]);
    wait_full_view(&[&a, &b], Duration::from_secs(10));
    a.gossip.leave();
    b.gossip.leave();
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// A graceful leave is quick and reported `Down` to the others.
#[test]
fn a_node_that_leaves_is_reported_down() {
    let rt = runtime();
    let a = start(&rt, 1, vec![]);
    let b = start(&rt, 2, vec![a.info.gossip_addr]);
    let c = start(&rt, 3, vec![a.info.gossip_addr]);
    wait_full_view(&[&a, &b, &c], Duration::from_secs(10));

    let started = StdInstant::now();
    c.gossip.leave();
    assert!(
        started.elapsed() <= Duration::from_millis(1500),
        "leave too slow"
    );
    assert!(c.gossip.members().is_empty());
    c.gossip.leave(); // idempotent

    // A graceful leave spreads by gossip, well before failure detection
    // (probe + suspicion) could have declared it down.
    expect_only_node_3_down(rt, &a, &b, Duration::from_secs(3));
}

/// A node whose task stops without leaving is detected and reported `Down`.
#[test]
fn a_node_that_stops_abruptly_is_reported_down() {
    let rt = runtime();
    let a = start(&rt, 1, vec![]);
    let b = start(&rt, 2, vec![a.info.gossip_addr]);
    let c = start(&rt, 3, vec![a.info.gossip_addr]);
    wait_full_view(&[&a, &b, &c], Duration::from_secs(10));

    drop(c); // aborts the task without leaving
    expect_only_node_3_down(rt, &a, &b, Duration::from_secs(20));
}

/// Nodes 1 and 2 see node 3 `Down` within `within`, and only it; then both stop.
fn expect_only_node_3_down(
    rt: tokio::runtime::Runtime,
    a: &TestNode,
    b: &TestNode,
    within: Duration,
) {
    wait_for("Down(3) on the others", within, || {
        saw_down(a, 3) && saw_down(b, 3)
    });
    assert_eq!(a.member_ids(), vec![2]);
    assert_eq!(b.member_ids(), vec![1]);
    assert!(!saw_down(a, 2) && !saw_down(b, 1));
    a.gossip.leave();
    b.gossip.leave();
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// A node restarted on another port is `Up` with its new info, and its old
/// identity dying does not report it `Down`.
#[test]
fn a_restarted_node_is_up_with_new_info_and_never_down() {
    let rt = runtime();
    let a = start(&rt, 1, vec![]);
    let b = start(&rt, 2, vec![a.info.gossip_addr]);
    let c = start(&rt, 3, vec![a.info.gossip_addr]);
    wait_full_view(&[&a, &b, &c], Duration::from_secs(10));
    let downs_before = a.gossip.foca_downs();

    // Node 3 restarts on another port (new metadata) before its old life
    // is detected as dead.
    drop(c);
    let c2 = start(&rt, 3, vec![a.info.gossip_addr]);
    assert_ne!(c2.info.gossip_addr, a.info.gossip_addr);
    wait_full_view(&[&a, &b, &c2], Duration::from_secs(10));
    assert!(a.events().contains(&MembershipEvent::Up(c2.info.clone())));

    // foca eventually declares the old identity down; node 3 stays up.
    wait_for(
        "the old identity declared down",
        Duration::from_secs(20),
        || a.gossip.foca_downs() > downs_before,
    );
    assert!(!saw_down(&a, 3), "{:?}", a.events());
    assert_eq!(a.gossip.members().len(), 2);
    assert!(a.gossip.members().contains(&c2.info));
    for n in [&a, &b, &c2] {
        n.gossip.leave();
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// Garbage, wrong-version and other-cluster datagrams are dropped and gossip
/// keeps working.
#[test]
fn garbage_and_foreign_packets_leave_gossip_working() {
    let rt = runtime();
    let a = start(&rt, 1, vec![]);
    let b = start(&rt, 2, vec![a.info.gossip_addr]);
    wait_full_view(&[&a, &b], Duration::from_secs(10));

    // A whole node of another cluster announces to `a`.
    let foreign = start_on(&rt, bind(), "other-cluster", 9, vec![a.info.gossip_addr]);

    let attacker = bind();
    let send = |bytes: &[u8]| {
        attacker.send_to(bytes, a.info.gossip_addr).unwrap();
        attacker.send_to(bytes, b.info.gossip_addr).unwrap();
    };
    send(&[]);
    send(&[0xff; 7]);
    send(&[0x42; 3000]);
    send(b"hello, is it me you're looking for?");
    let wrong_version = GossipPacket {
        version: PROTOCOL_VERSION + 1,
        cluster: CLUSTER.to_owned(),
        payload: vec![1, 2, 3],
    };
    send(&wrong_version.encode_to_vec());
    let bad_payload = GossipPacket {
        version: PROTOCOL_VERSION,
        cluster: CLUSTER.to_owned(),
        payload: vec![0xde, 0xad, 0xbe, 0xef],
    };
    send(&bad_payload.encode_to_vec());
    let too_big = GossipPacket {
        version: PROTOCOL_VERSION,
        cluster: CLUSTER.to_owned(),
        payload: vec![0; 5000],
    };
    send(&too_big.encode_to_vec());

    // Gossip still works: a new node joins through `a`.
    let c = start(&rt, 3, vec![a.info.gossip_addr]);
    wait_full_view(&[&a, &b, &c], Duration::from_secs(10));
    assert!(!saw_down(&a, 2) && !saw_down(&b, 1));
    // By now `foreign` has announced to `a` many times, in vain.
    assert!(foreign.gossip.members().is_empty());
    assert!(foreign.events().is_empty());
    for n in [&a, &b, &c] {
        assert!(!n.member_ids().contains(&9));
    }
    for n in [&a, &b, &c, &foreign] {
        n.gossip.leave();
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// Metadata of a fake node gossiping on loopback `port`.
fn info(node_id: NodeId, port: u16) -> NodeInfo {
    NodeInfo {
        node_id,
        raft_addr: SocketAddr::from(([127, 0, 0, 1], port + 1)),
        gossip_addr: SocketAddr::from(([127, 0, 0, 1], port)),
        datacenter: "dc".to_owned(),
    }
}

/// Renewed and restarted identities win address conflicts; ties cannot happen.
#[test]
fn renewed_identity_wins_the_conflict() {
    let id = GossipIdentity::new(info(1, 7000));
    let renewed = id.renew().unwrap();
    assert_eq!(renewed.addr(), id.addr());
    assert!(renewed.win_addr_conflict(&id));
    assert!(!id.win_addr_conflict(&renewed));
    // A restart (fresh identity) wins over the previous life.
    let restarted = GossipIdentity::new(info(1, 7000));
    assert!(restarted.win_addr_conflict(&renewed.renew().unwrap()));
    // Same bump, different node: exactly one wins.
    let other = GossipIdentity {
        info: info(2, 7000),
        bump: id.bump,
    };
    assert_ne!(other.win_addr_conflict(&id), id.win_addr_conflict(&other));
}

/// The view is per node id: renewals are `Up`, `Down` only when no identity is left.
#[test]
fn view_reports_per_node_id() {
    let old = GossipIdentity {
        info: info(3, 7000),
        bump: 10,
    };
    let renewed = old.renew().unwrap();
    let moved = GossipIdentity {
        info: info(3, 7100),
        bump: 20,
    };
    let me_elsewhere = GossipIdentity {
        info: info(1, 7200),
        bump: 5,
    };

    let (view, events) = diff_view(
        &HashMap::new(),
        [&old, &me_elsewhere].into_iter(),
        1,
        |_| Verification::Verified,
    );
    assert_eq!(events, vec![MembershipEvent::Up(old.info.clone())]);

    // Renewed identity of the same node: Up again (new identity).
    let (view, events) = diff_view(&view, [&renewed].into_iter(), 1, |_| Verification::Verified);
    assert_eq!(events, vec![MembershipEvent::Up(renewed.info.clone())]);

    // Restarted elsewhere while the old life is still alive: Up with the
    // new info; then the old life dies: nothing.
    let (view, events) = diff_view(&view, [&renewed, &moved].into_iter(), 1, |_| {
        Verification::Verified
    });
    assert_eq!(events, vec![MembershipEvent::Up(moved.info.clone())]);
    let (view, events) = diff_view(&view, [&moved].into_iter(), 1, |_| Verification::Verified);
    assert!(events.is_empty());

    // No identity left: Down.
    let (view, events) = diff_view(&view, std::iter::empty(), 1, |_| Verification::Verified);
    assert_eq!(events, vec![MembershipEvent::Down(3)]);
    assert!(view.is_empty());
}

/// The foca config respects foca's constraints and the datagram size budget.
#[test]
fn config_is_valid() {
    let config = foca_config(CLUSTER);
    assert!(config.probe_rtt < config.probe_period);
    assert!(config.probe_rtt * 2 <= config.probe_period);
    assert!(config.suspect_to_down_after >= config.probe_period);
    assert!(config.notify_down_members);
    assert!(config.remove_down_after.is_some());
    let overhead = envelope_overhead(CLUSTER);
    assert!(config.max_packet_size.get() + overhead <= MAX_DATAGRAM);
    let envelope = GossipPacket {
        version: PROTOCOL_VERSION,
        cluster: CLUSTER.to_owned(),
        payload: vec![0; config.max_packet_size.get()],
    };
    assert!(envelope.encoded_len() <= MAX_DATAGRAM);
    assert_eq!(
        foca_config(&"x".repeat(5000)).max_packet_size.get(),
        MIN_FOCA_PACKET
    );
}

mod binding;
