//! Multi-node behaviour of in-process clusters on loopback.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use copycat::{Config, CopyCat, Error};
use copycat_testkit::in_process::{self, collect, no_snapshot, wait_until, Cluster};

const T: Duration = Duration::from_secs(30);

#[test]
fn concurrent_first_subscribes_make_one_group_with_one_order() {
    let cluster = Cluster::start(3);
    let id = copycat::new_data_structure_id();
    let subs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = cluster
            .running()
            .map(|n| s.spawn(move || n.subscribe(id, no_snapshot).expect("subscribe")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for i in 0..30u32 {
        let ds = &subs[i as usize % 3];
        ds.propose_blocking(format!("v{i}").into_bytes(), T)
            .expect("acknowledged");
    }
    let streams: Vec<_> = subs.iter().map(|ds| collect(ds, 30, T)).collect();
    assert_eq!(streams[0], streams[1]);
    assert_eq!(streams[0], streams[2]);
    let values: HashSet<_> = streams[0].iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(values.len(), 30, "every proposal exactly once");
    let statuses: Vec<_> = cluster
        .running()
        .map(|n| {
            n.group_status_blocking(id)
                .unwrap()
                .expect("replica on every node")
        })
        .collect();
    for s in &statuses {
        let mut voters = s.voters.clone();
        voters.sort();
        let mut first = statuses[0].voters.clone();
        first.sort();
        assert_eq!(voters, first, "one group, one configuration");
        assert_eq!(s.voters.len(), 3);
    }
    assert_eq!(cluster.node(0).known_data_structures_blocking().unwrap(), 1);
}

#[test]
fn a_hundred_groups_at_once() {
    let cluster = Cluster::start(3);
    let ids: Vec<_> = (0..100).map(|_| copycat::new_data_structure_id()).collect();
    let subs: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| cluster.node(i % 3).subscribe(*id, no_snapshot).unwrap())
        .collect();
    std::thread::scope(|s| {
        for chunk in subs.chunks(25) {
            s.spawn(move || {
                for ds in chunk {
                    for j in 0..3u8 {
                        ds.propose_blocking(vec![j], T).expect("acknowledged");
                    }
                }
            });
        }
    });
    for ds in &subs {
        let got: Vec<_> = collect(ds, 3, T).into_iter().map(|(_, v)| v).collect();
        assert_eq!(got, vec![vec![0], vec![1], vec![2]]);
    }
    wait_until("directory lists all groups everywhere", T, || {
        cluster
            .running()
            .all(|n| n.known_data_structures_blocking().unwrap_or(0) == 100)
    });
}

#[test]
fn concurrent_proposers_on_several_threads() {
    let cluster = Cluster::start(3);
    let id = copycat::new_data_structure_id();
    let subs: Vec<_> = cluster
        .running()
        .map(|n| n.subscribe(id, no_snapshot).unwrap())
        .collect();
    let per_thread = 50;
    let acked: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let ds = &subs[t % 3];
                s.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            ds.propose_blocking(format!("{t}-{i}").into_bytes(), T)
                                .expect("acknowledged")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let unique: HashSet<_> = acked.iter().collect();
    assert_eq!(unique.len(), 6 * per_thread, "distinct commit indexes");
    let streams: Vec<_> = subs
        .iter()
        .map(|ds| collect(ds, 6 * per_thread, T))
        .collect();
    assert_eq!(streams[0], streams[1]);
    assert_eq!(streams[1], streams[2]);
    for (index, _) in &streams[0] {
        assert!(unique.contains(index));
    }
}

#[test]
fn losing_the_leader_keeps_committing() {
    let mut cluster = Cluster::start(3);
    let id = copycat::new_data_structure_id();
    let subs: Vec<_> = cluster
        .running()
        .map(|n| Some(n.subscribe(id, no_snapshot).unwrap()))
        .collect();
    let mut subs = subs;
    let ds0 = subs[0].as_ref().unwrap();
    ds0.propose_blocking(b"before".to_vec(), T).unwrap();
    let leader = cluster
        .node(0)
        .group_status_blocking(id)
        .unwrap()
        .unwrap()
        .leader
        .unwrap();
    let leader_idx = (0..3)
        .find(|i| cluster.node(*i).node_id() == leader)
        .unwrap();
    subs[leader_idx] = None;
    cluster.stop(leader_idx);
    let survivor = (0..3).find(|i| *i != leader_idx).unwrap();
    let ds = subs[survivor].as_ref().unwrap();
    let mut acked = 0;
    wait_until("a write commits after the leader stopped", T, || {
        if ds
            .propose_blocking(b"after".to_vec(), Duration::from_secs(3))
            .is_ok()
        {
            acked += 1;
        }
        acked > 0
    });
    for i in 0..10u8 {
        ds.propose_blocking(vec![i], T).unwrap();
    }
    let got = collect(ds, 12, T);
    assert_eq!(got[0].1, b"before");
}

#[test]
fn restarted_node_replays_and_catches_up() {
    let mut cluster = Cluster::start(3);
    let id = copycat::new_data_structure_id();
    let ds0 = cluster.node(0).subscribe(id, no_snapshot).unwrap();
    for i in 0..10u8 {
        ds0.propose_blocking(vec![i], T).unwrap();
    }
    let ds2 = cluster.node(2).subscribe(id, no_snapshot).unwrap();
    collect(&ds2, 10, T);
    drop(ds2);
    cluster.stop(2);
    for i in 10..20u8 {
        ds0.propose_blocking(vec![i], T).unwrap();
    }
    cluster.restart(2);
    let ds2 = cluster.node(2).subscribe(id, no_snapshot).unwrap();
    let got: Vec<u8> = collect(&ds2, 20, T)
        .into_iter()
        .map(|(_, v)| v[0])
        .collect();
    assert_eq!(got, (0..20).collect::<Vec<u8>>(), "full history, in order");
    let all0: Vec<_> = collect(&ds0, 20, T);
    assert_eq!(all0.len(), 20);
    ds2.propose_blocking(b"from the restarted node".to_vec(), T)
        .expect("restarted node takes writes");
}

#[test]
fn fourth_node_subscribes_as_learner_and_gets_history() {
    let mut cluster = Cluster::start(3);
    let id = copycat::new_data_structure_id();
    let ds0 = cluster.node(0).subscribe(id, no_snapshot).unwrap();
    for i in 0..25u8 {
        ds0.propose_blocking(vec![i], T).unwrap();
    }
    let fourth = cluster.add_node();
    cluster.wait_members(4);
    let ds3 = cluster.node(fourth).subscribe(id, no_snapshot).unwrap();
    let got: Vec<u8> = collect(&ds3, 25, T)
        .into_iter()
        .map(|(_, v)| v[0])
        .collect();
    assert_eq!(got, (0..25).collect::<Vec<u8>>());
    let status = cluster
        .node(fourth)
        .group_status_blocking(id)
        .unwrap()
        .unwrap();
    let me = cluster.node(fourth).node_id();
    assert!(status.learners.contains(&me), "{status:?}");
    assert!(!status.voters.contains(&me));
    ds3.propose_blocking(b"via learner".to_vec(), T)
        .expect("a learner's proposal reaches the leader");
    let last = collect(&ds0, 26, T);
    assert_eq!(last[25].1, b"via learner");
}

#[test]
fn garbage_on_the_ports_leaves_the_node_working() {
    let cluster = Cluster::start(3);
    let id = copycat::new_data_structure_id();
    let ds = cluster.node(0).subscribe(id, no_snapshot).unwrap();
    ds.propose_blocking(b"one".to_vec(), T).unwrap();
    for node in cluster.running() {
        let mut tcp = std::net::TcpStream::connect(node.raft_addr()).unwrap();
        let _ = tcp.write_all(&[0xff; 4096]);
        let mut tcp = std::net::TcpStream::connect(node.raft_addr()).unwrap();
        let _ = tcp.write_all(&u32::MAX.to_be_bytes());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for len in [0usize, 1, 100, 1400] {
            let _ = udp.send_to(&vec![0xab; len], node.gossip_addr());
        }
    }
    for i in 0..5u8 {
        ds.propose_blocking(vec![i], T).unwrap();
    }
    let got = collect(&ds, 6, T);
    assert_eq!(got.len(), 6);
    cluster.wait_members(3);
}

#[test]
fn oversized_proposals_and_bad_ids_are_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let config = Config {
        max_proposal_bytes: 1024,
        ..in_process::config(root.path(), Vec::new())
    };
    let node = CopyCat::start(config).unwrap();
    assert!(matches!(
        node.subscribe_str("not an id", no_snapshot),
        Err(Error::InvalidId(_))
    ));
    let ds = node
        .subscribe(node.new_data_structure_id(), no_snapshot)
        .unwrap();
    let err = ds.propose_blocking(vec![0; 4096], T).unwrap_err();
    assert!(matches!(
        err,
        Error::ProposalTooLarge {
            size: 4096,
            limit: 1024
        }
    ));
    assert!(matches!(
        ds.errors().recv_timeout(T),
        Ok(Error::ProposalTooLarge { .. })
    ));
    ds.proposals().send(vec![0; 2048]).unwrap();
    assert!(matches!(
        ds.errors().recv_timeout(T),
        Ok(Error::ProposalTooLarge { .. })
    ));
    let index = ds.propose_blocking(b"fits".to_vec(), T).unwrap();
    assert!(index > 0);
    node.shutdown();
    assert!(matches!(
        ds.propose_blocking(b"late".to_vec(), T),
        Err(Error::Shutdown)
    ));
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let node = CopyCat::start(in_process::config(root.path(), Vec::new())).unwrap();
    let second = CopyCat::start(in_process::config(root.path(), Vec::new()));
    assert!(matches!(second, Err(Error::DataDirLocked(_))), "{second:?}");
    let id = node.node_id();
    node.shutdown();
    drop(node);
    let again = CopyCat::start(in_process::config(root.path(), Vec::new())).unwrap();
    assert_eq!(again.node_id(), id, "the node id persists");
}

#[test]
fn fire_and_forget_proposals_commit() {
    let cluster = Cluster::start(3);
    let id = copycat::new_data_structure_id();
    let ds = cluster.node(1).subscribe(id, no_snapshot).unwrap();
    for i in 0..50u8 {
        ds.proposals().send(vec![i]).unwrap();
    }
    let got: Vec<u8> = collect(&ds, 50, T).into_iter().map(|(_, v)| v[0]).collect();
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_inside_a_tokio_runtime() {
    let root = tempfile::tempdir().unwrap();
    let node = CopyCat::start(in_process::config(root.path(), Vec::new())).unwrap();
    let ds = node
        .subscribe(node.new_data_structure_id(), no_snapshot)
        .unwrap();
    let index = ds.propose(b"async".to_vec(), T).await.unwrap();
    assert!(index > 0);
    drop(ds);
    drop(node);
}

#[tokio::test(flavor = "current_thread")]
async fn starts_and_stops_inside_a_single_threaded_runtime() {
    let root = tempfile::tempdir().unwrap();
    let node = CopyCat::start(in_process::config(root.path(), Vec::new())).unwrap();
    let ds = node
        .subscribe(node.new_data_structure_id(), no_snapshot)
        .unwrap();
    assert!(ds.propose(b"async".to_vec(), T).await.unwrap() > 0);
    drop(ds);
    node.shutdown();
}

#[test]
fn a_read_barrier_on_another_node_sees_acknowledged_writes() {
    let mut cluster = Cluster::start(3);
    let learner = cluster.add_node();
    cluster.wait_members(4);
    let id = copycat::new_data_structure_id();
    let writer = cluster.node(0).subscribe(id, no_snapshot).unwrap();
    writer.propose_blocking(b"first".to_vec(), T).unwrap();
    let readers: Vec<_> = [1, learner]
        .iter()
        .map(|i| cluster.node(*i).subscribe(id, no_snapshot).unwrap())
        .collect();
    for round in 0..20u32 {
        let value = format!("w{round}").into_bytes();
        let acked = writer.propose_blocking(value.clone(), T).unwrap();
        for reader in &readers {
            let barrier = reader.read_barrier_blocking(T).expect("barrier");
            assert!(
                barrier >= acked,
                "barrier {barrier} below acked write {acked}"
            );
            // Every entry up to the barrier is already in the channel: no waiting needed.
            let mut seen = false;
            while let Ok(copycat::Commit::Entry { index, data }) = reader.commits().try_recv() {
                seen |= data == value && index == acked;
                if index >= barrier {
                    break;
                }
            }
            assert!(seen, "write {round} visible after the barrier");
        }
    }
}

fn leader_counts(cluster: &Cluster, ids: &[copycat::DataStructureId]) -> Vec<usize> {
    cluster
        .running()
        .map(|n| {
            ids.iter()
                .filter(|id| {
                    n.group_status_blocking(**id)
                        .ok()
                        .flatten()
                        .and_then(|s| s.leader)
                        == Some(n.node_id())
                })
                .count()
        })
        .collect()
}

#[test]
fn graceful_shutdown_hands_leadership_over_and_leaders_rebalance() {
    let mut cluster = Cluster::start(3);
    // 24 groups: each node is the preferred leader of some (all but certainly).
    let ids: Vec<_> = (0..24).map(|_| copycat::new_data_structure_id()).collect();
    let subs: Vec<_> = ids
        .iter()
        .map(|id| cluster.node(0).subscribe(*id, no_snapshot).unwrap())
        .collect();
    for ds in &subs {
        ds.propose_blocking(b"x".to_vec(), T).unwrap();
    }
    wait_until("every node leads some groups", T, || {
        leader_counts(&cluster, &ids).iter().all(|c| *c >= 1)
    });
    let leaving = cluster.node(2).node_id();
    cluster.stop(2);
    // Right after a graceful stop the survivors already follow new leaders: no group waits
    // for an election timeout.
    for id in &ids {
        let status = cluster.node(0).group_status_blocking(*id).unwrap().unwrap();
        assert_ne!(
            status.leader,
            Some(leaving),
            "group {id} still led by the stopped node"
        );
    }
    for ds in &subs {
        ds.propose_blocking(b"y".to_vec(), T).unwrap();
    }
    cluster.restart(2);
    wait_until("the restarted node leads its share again", T, || {
        leader_counts(&cluster, &ids).iter().all(|c| *c >= 1)
    });
    let counts = leader_counts(&cluster, &ids);
    assert!(
        counts.iter().all(|c| *c <= 16),
        "unbalanced leaders {counts:?}"
    );
}

#[test]
fn a_read_barrier_answers_with_an_index_the_subscriber_receives() {
    let cluster = Cluster::start(3);
    let id = copycat::new_data_structure_id();
    let ds = cluster.node(1).subscribe(id, no_snapshot).unwrap();
    // A fresh group's log holds only leader no-ops, which no subscriber ever receives.
    assert_eq!(
        ds.read_barrier_blocking(T)
            .expect("barrier on a fresh group"),
        0
    );
    let written = ds.propose_blocking(b"x".to_vec(), T).unwrap();
    assert_eq!(ds.read_barrier_blocking(T).expect("barrier"), written);
    let received = collect(&ds, 1, T);
    assert_eq!(received[0].0, written);
}

/// Every replica of `ids` on every running node hibernates.
fn all_hibernating(cluster: &Cluster, ids: &[copycat::DataStructureId]) -> bool {
    cluster.running().all(|n| {
        ids.iter().all(|id| {
            n.group_status_blocking(*id)
                .ok()
                .flatten()
                .is_some_and(|s| s.hibernating)
        })
    })
}

#[test]
fn idle_groups_hibernate_and_wake_for_writes_and_a_dead_leader() {
    let mut cluster = Cluster::start(3);
    let ids: Vec<_> = (0..20).map(|_| copycat::new_data_structure_id()).collect();
    let subs: Vec<_> = ids
        .iter()
        .map(|id| cluster.node(0).subscribe(*id, no_snapshot).unwrap())
        .collect();
    for ds in &subs {
        ds.propose_blocking(b"first".to_vec(), T).unwrap();
    }
    wait_until("every replica hibernates", T, || {
        all_hibernating(&cluster, &ids)
    });

    // A write wakes its group and reaches a subscriber on a follower too.
    let watcher = cluster.node(1).subscribe(ids[0], no_snapshot).unwrap();
    subs[0].propose_blocking(b"second".to_vec(), T).unwrap();
    let seen: Vec<_> = collect(&watcher, 2, T)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(seen, vec![b"first".to_vec(), b"second".to_vec()]);
    drop(watcher);
    wait_until("the group hibernates again", T, || {
        all_hibernating(&cluster, &ids)
    });

    // Hibernating groups whose leader dies elect another once gossip reports it down,
    // with no write to wake them.
    let led_elsewhere = ids
        .iter()
        .position(|id| {
            let leader = cluster
                .node(0)
                .group_status_blocking(*id)
                .unwrap()
                .unwrap()
                .leader;
            leader.is_some_and(|l| l != cluster.node(0).node_id())
        })
        .expect("leadership is balanced, so node 0 does not lead all 20 groups");
    let leader = cluster
        .node(0)
        .group_status_blocking(ids[led_elsewhere])
        .unwrap();
    let leader = leader.unwrap().leader.unwrap();
    let leader_idx = (0..3)
        .find(|i| cluster.node(*i).node_id() == leader)
        .unwrap();
    let dead = cluster.node(leader_idx).node_id();
    cluster.stop(leader_idx);
    wait_until("every group led by a live node", T, || {
        cluster.running().all(|n| {
            ids.iter().all(|id| {
                let status = n.group_status_blocking(*id).ok().flatten();
                status.is_some_and(|s| s.leader.is_some_and(|l| l != dead))
            })
        })
    });
    let ds = &subs[led_elsewhere];
    wait_until(
        "a write commits after the hibernating leader died",
        T,
        || {
            ds.propose_blocking(b"after".to_vec(), Duration::from_secs(3))
                .is_ok()
        },
    );
}
