//! The hashmap example as three real processes under attack and failure: forged raft
//! traffic on a plaintext cluster, and a node whose disk refuses writes. No node may
//! panic or linger broken, and no acknowledged write may be lost.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use copycat::DataStructureId;
use copycat_testkit::chaos::{check_all_readable, Writer, PUT_TIMEOUT};
use copycat_testkit::cluster::{self, wait_until, ProcessCluster};
use copycat_testkit::forge::ForgedPeer;
use copycat_testkit::http;
use raft::eraftpb::{Entry, Message, MessageType};

/// Deadline of each phase; generous for a loaded two-core machine.
const PHASE: Duration = Duration::from_secs(60);
/// Writes that must be acknowledged while the attack or failure goes on.
const PER_PHASE: usize = 30;
/// The hashmap's data structure (the example's default `--id`).
const MAP_ID: &str = "01CFR5R4JJE9KNRAJFFEAQ2SAJ";
/// The hashmap's cluster name (copycat's default).
const CLUSTER: &str = "copycat";
/// A node id no node has (48 bits, nonzero).
const MADE_UP_NODE: u64 = 0x7777_7777_7777;

fn expect<T>(result: Result<T, String>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// A three-node hashmap cluster, formed, with writers running through every node.
fn running_cluster() -> (ProcessCluster, Writer) {
    let mut nodes = expect(ProcessCluster::new(expect(cluster::built_hashmap())));
    expect(nodes.form(3));
    expect(wait_until("the cluster forms", PHASE, || {
        nodes.converged(3)
    }));
    let writer = Writer::start((0..3).map(|i| nodes.http(i)).collect(), 3);
    expect(wait_until("writes are acknowledged", PHASE, || {
        writer.count() >= PER_PHASE
    }));
    (nodes, writer)
}

fn node_id(nodes: &ProcessCluster, i: usize) -> u64 {
    nodes
        .info(i)
        .node_id
        .parse()
        .expect("READY prints a decimal node id")
}

fn raft_message(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut msg = Message::default();
    msg.set_msg_type(kind);
    (msg.from, msg.to, msg.term) = (from, to, term);
    msg
}

/// What an attacker sends node `to` while claiming to be node `from`: a heartbeat whose
/// term raft-rs cannot increment, appends of entries from a term that never was (one
/// of them following no index at all), a forced election, an injected write and a vote
/// request.
fn forged_messages(from: u64, to: u64) -> Vec<Message> {
    let mut append = raft_message(MessageType::MsgAppend, from, to, 1000);
    (append.index, append.log_term, append.commit) = (1, 1, 1 << 40);
    append.entries = vec![Entry {
        index: 2,
        term: 1000,
        data: b"forged".to_vec().into(),
        ..Default::default()
    }]
    .into();
    let mut gap = append.clone();
    gap.entries[0].index = 7;
    let mut proposal = raft_message(MessageType::MsgPropose, from, to, 0);
    proposal.entries = vec![Entry {
        data: b"injected".to_vec().into(),
        ..Default::default()
    }]
    .into();
    let mut heartbeat = raft_message(MessageType::MsgHeartbeat, from, to, u64::MAX);
    heartbeat.commit = u64::MAX;
    vec![
        heartbeat,
        append,
        gap,
        raft_message(MessageType::MsgTimeoutNow, from, to, 2),
        proposal,
        raft_message(MessageType::MsgRequestVote, from, to, 3),
    ]
}

/// Sends every node forged traffic, both from a made-up node and in the name of each real
/// one, for `duration`.
fn attack(nodes: &ProcessCluster, duration: Duration) {
    let group = MAP_ID.parse::<DataStructureId>().unwrap().to_bytes();
    let ids: Vec<u64> = (0..3).map(|i| node_id(nodes, i)).collect();
    let until = Instant::now() + duration;
    while Instant::now() < until {
        for (i, &target) in ids.iter().enumerate() {
            let addr = nodes.info(i).raft;
            let real = ids[(i + 1) % 3];
            for claimed in [MADE_UP_NODE, real] {
                // A node may close the connection on what it refuses: reconnect each time.
                let Ok(mut peer) = ForgedPeer::connect(addr, CLUSTER, claimed) else {
                    continue;
                };
                let _ = peer.send_raft(group, &forged_messages(claimed, target));
                let _ = peer.send_replica_gone(group, target, target);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn forged_raft_traffic_kills_no_node_and_loses_no_acknowledged_write() {
    let (mut nodes, writer) = running_cluster();
    let before = writer.count();
    attack(&nodes, Duration::from_secs(3));
    for i in 0..3 {
        assert_eq!(nodes.exit_code(i), None, "node {i} exited under attack");
    }
    expect(wait_until("writes go on after the attack", PHASE, || {
        writer.count() >= before + 2 * PER_PHASE
    }));
    expect(wait_until("the cluster converges", PHASE, || {
        nodes.converged(3)
    }));
    let (acked, _) = writer.finish();
    for i in 0..3 {
        assert_eq!(nodes.exit_code(i), None, "node {i} exited after the attack");
        expect(check_all_readable(&nodes, i, &acked));
    }
}

/// 60 KB values: a few hundred fill the limited node's files quickly.
fn big_value(n: usize) -> Vec<u8> {
    let mut value = format!("big-{n}-").into_bytes();
    value.resize(60_000, b'x');
    value
}

/// Whether node `i` answers its status with the full-disk error.
fn says_disk_full(nodes: &ProcessCluster, i: usize) -> bool {
    http::get(nodes.http(i), "/status", PUT_TIMEOUT)
        .is_ok_and(|r| r.status == 503 && r.text().contains("disk full"))
}

#[test]
fn a_node_whose_disk_fills_stays_up_and_resumes_by_itself_when_space_returns() {
    let mut nodes = expect(ProcessCluster::new(expect(cluster::built_hashmap())));
    // Like a full disk: no file of node 2 may grow past 4 MiB.
    let limited = expect(nodes.form_with_last(3, |nodes| nodes.set_file_size_limit(Some(4 << 20))));
    expect(wait_until("the cluster forms", PHASE, || {
        nodes.converged(3)
    }));

    let via: SocketAddr = nodes.http(0);
    let mut acked = Vec::new();
    expect(wait_until("the limited node's disk is full", PHASE, || {
        let n = acked.len();
        if let Ok(r) = http::put(via, &format!("/kv/big{n}"), &big_value(n), PUT_TIMEOUT) {
            if r.status == 200 {
                acked.push(n);
            }
        }
        says_disk_full(&nodes, limited)
    }));
    // The others go on; the full node stays up, silent, refusing calls with the reason.
    for n in acked.len()..acked.len() + PER_PHASE {
        let r = http::put(via, &format!("/kv/big{n}"), &big_value(n), PUT_TIMEOUT).unwrap();
        assert_eq!(
            r.status,
            200,
            "write {n} while node {limited}'s disk is full: {}",
            r.text()
        );
        acked.push(n);
    }
    let refused = http::put(nodes.http(limited), "/kv/refused", b"x", PUT_TIMEOUT).unwrap();
    assert_eq!(
        refused.status,
        503,
        "a write through the full node: {}",
        refused.text()
    );
    assert_eq!(nodes.exit_code(limited), None, "the full node exited");

    // Space returns: the node resumes by itself, catches up, and takes writes again.
    expect(nodes.lift_file_size_limit(limited));
    expect(wait_until("the cluster converges again", PHASE, || {
        nodes.converged(3)
    }));
    let n = acked.len();
    expect(wait_until(
        "a write through the resumed node",
        PHASE,
        || {
            let put = http::put(
                nodes.http(limited),
                &format!("/kv/big{n}"),
                &big_value(n),
                PUT_TIMEOUT,
            );
            put.is_ok_and(|r| r.status == 200)
        },
    ));
    acked.push(n);
    assert_eq!(
        nodes.exit_code(limited),
        None,
        "the node exited after space returned"
    );
    for i in 0..3 {
        for &n in &acked {
            let path = format!("/kv/big{n}?consistent=true");
            let r = http::get(nodes.http(i), &path, PUT_TIMEOUT).unwrap();
            assert_eq!(r.status, 200, "node {i}, key big{n}");
            assert_eq!(r.body, big_value(n), "node {i}, key big{n}");
        }
    }
}

/// How a node's database file is damaged while the node is down.
enum Damage {
    /// Cut to half its length.
    Truncate,
    /// 64 bytes in the middle inverted.
    FlipBytes,
}

fn damage(file: &std::path::Path, how: &Damage) {
    let mut bytes = std::fs::read(file).unwrap();
    let half = bytes.len() / 2;
    match how {
        Damage::Truncate => bytes.truncate(half),
        Damage::FlipBytes => bytes[half..half + 64].iter_mut().for_each(|b| *b = !*b),
    }
    std::fs::write(file, bytes).unwrap();
}

/// Writes, kills node 2, damages its database, restarts it: it must refuse to start (sled
/// recovers such files silently to an older state, which must not vote or serve) or come
/// back whole, and the cluster keeps every acknowledged write.
fn damaged_node_refuses_or_recovers(how: Damage, must_refuse: bool) {
    let (mut nodes, writer) = running_cluster();
    expect(wait_until("a few hundred writes", PHASE, || {
        writer.count() >= 300
    }));
    nodes.kill(2);
    damage(&nodes.data_dir(2).join("db"), &how);
    let peers = [nodes.info(0).gossip, nodes.info(1).gossip];
    match nodes.restart(2, &peers) {
        Err(refused) => {
            eprintln!("the damaged node refused to start");
            assert!(refused.contains("remove the data dir"), "{refused}");
            let (acked, _) = writer.finish();
            for i in 0..2 {
                expect(check_all_readable(&nodes, i, &acked));
            }
        }
        Ok(()) => {
            assert!(!must_refuse, "node 2 started on a damaged database");
            eprintln!("the damaged node started");
            expect(wait_until("the cluster converges", PHASE, || {
                nodes.converged(3)
            }));
            let (acked, _) = writer.finish();
            for i in 0..3 {
                expect(check_all_readable(&nodes, i, &acked));
            }
        }
    }
}

#[test]
fn a_node_whose_database_was_cut_short_refuses_to_start() {
    damaged_node_refuses_or_recovers(Damage::Truncate, true);
}

#[test]
fn a_node_whose_database_has_flipped_bytes_refuses_or_recovers() {
    damaged_node_refuses_or_recovers(Damage::FlipBytes, false);
}

/// Flags giving node `i` of `dir`'s development credentials (see the keys example).
fn credential_flags(dir: &std::path::Path, i: usize) -> Vec<String> {
    let file = |name: String| dir.join(name).display().to_string();
    vec![
        "--cluster-key".into(),
        file("cluster.key".into()),
        "--tls-ca".into(),
        file("ca.pem".into()),
        "--tls-cert".into(),
        file(format!("node{i}.pem")),
        "--tls-key".into(),
        file(format!("node{i}.key")),
    ]
}

/// The node ids node `i` lists as members.
fn member_ids(nodes: &ProcessCluster, i: usize) -> Vec<String> {
    let status = nodes.status(i).unwrap_or_default();
    status["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|m| m["node_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_secure_process_cluster_shuts_out_processes_without_its_credentials() {
    use copycat_testkit::credentials::DevCredentials;
    let keys = tempfile::tempdir().unwrap();
    DevCredentials::generate(3)
        .and_then(|c| c.write_to(keys.path()))
        .unwrap();
    // Same gossip key, but certificates of another CA.
    let foreign = tempfile::tempdir().unwrap();
    let mut other = DevCredentials::generate(1).unwrap();
    other.gossip_key = copycat::GossipKey::from_file(keys.path().join("cluster.key")).unwrap();
    other.write_to(foreign.path()).unwrap();

    let mut nodes = expect(ProcessCluster::new(expect(cluster::built_hashmap())));
    nodes = nodes.with_args(&["--bootstrap-expect", "3"]);
    let first = expect(nodes.start_with_args(&[], &credential_flags(keys.path(), 0)));
    let seed = [nodes.info(first).gossip];
    for i in 1..3 {
        expect(nodes.start_with_args(&seed, &credential_flags(keys.path(), i)));
    }
    expect(wait_until("the cluster forms", PHASE, || {
        nodes.converged(3)
    }));
    let writer = Writer::start((0..3).map(|i| nodes.http(i)).collect(), 3);
    expect(wait_until("writes are acknowledged", PHASE, || {
        writer.count() >= PER_PHASE
    }));

    let plaintext = expect(nodes.start(&seed));
    let other_ca = expect(nodes.start_with_args(&seed, &credential_flags(foreign.path(), 0)));
    let outsiders = [
        nodes.info(plaintext).node_id.clone(),
        nodes.info(other_ca).node_id.clone(),
    ];
    // The node with the gossip key gossips, but its identity is refused: a probe of its
    // raft address meets a certificate of another CA. The plaintext one never gossips.
    // Neither is a member, joins the cluster's directory nor holds a replica of the map,
    // while the writes go on.
    let log_0 = nodes.log_path(0);
    expect(wait_until(
        "the key holder's identity is refused",
        PHASE,
        || {
            std::fs::read_to_string(&log_0).is_ok_and(|log| {
                log.lines().any(|line| {
                    line.contains("gossip identity refused") && line.contains(&outsiders[1])
                })
            })
        },
    ));
    let before = writer.count();
    expect(wait_until(
        "writes go on beside the outsiders",
        PHASE,
        || writer.count() >= before + PER_PHASE,
    ));
    for i in 0..3 {
        for outsider in &outsiders {
            assert!(
                !member_ids(&nodes, i).contains(outsider),
                "node {i} lists outsider {outsider}"
            );
        }
        let status = nodes.status(i).unwrap();
        let voters = status["group"]["voters"].to_string();
        let learners = status["group"]["learners"].to_string();
        for outsider in &outsiders {
            assert!(
                !voters.contains(outsider.as_str()) && !learners.contains(outsider.as_str()),
                "node {i} has outsider {outsider} in the map's group: {status}"
            );
        }
    }
    for outsider in [plaintext, other_ca] {
        let status = nodes.status(outsider).unwrap();
        assert_eq!(
            status["joined"], false,
            "outsider {outsider} joined: {status}"
        );
    }
    let (acked, _) = writer.finish();
    for i in 0..3 {
        expect(check_all_readable(&nodes, i, &acked));
    }
}
