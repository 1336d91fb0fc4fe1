//! How a cluster forms: a founder with `bootstrap_expect` creates nothing until enough
//! nodes are up, and a group created in a smaller cluster grows straight to three voters,
//! never through two.

use std::collections::BTreeSet;
use std::time::Duration;

use copycat::{Config, CopyCat, DataStructureId};
use copycat_testkit::in_process::{config, no_snapshot, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

/// The voter count of `id`'s group as `node` reports it (0 while it has no replica).
fn voters(node: &CopyCat, id: DataStructureId) -> usize {
    match node.group_status_blocking(id) {
        Ok(Some(status)) => status.voters.len(),
        _ => 0,
    }
}

/// Whether `node` sees `n` alive members, itself included.
fn sees_alive(node: &CopyCat, n: usize) -> bool {
    node.members_blocking().is_ok_and(|m| {
        m.iter()
            .filter(|m| m.state == copycat::MemberState::Alive)
            .count()
            >= n
    })
}

#[test]
fn a_founder_waits_for_bootstrap_expect_nodes_then_groups_start_with_three_voters() {
    let root = tempfile::tempdir().expect("temp dir");
    let start = |i: usize, peers: Vec<String>| {
        CopyCat::start(Config {
            bootstrap_expect: 3,
            ..config(&root.path().join(format!("node{i}")), peers)
        })
        .expect("node starts")
    };
    let founder = start(0, Vec::new());
    let id = DataStructureId::new();
    let map = founder.subscribe(id, no_snapshot).expect("subscribe");
    let peers = vec![founder.gossip_addr().to_string()];
    let second = start(1, peers.clone());
    wait_until("the founder sees the second node", DEADLINE, || {
        sees_alive(&founder, 2)
    });
    // Two of the three expected nodes: nothing may exist yet.
    assert!(
        !founder.has_joined_blocking().expect("query"),
        "founded too early"
    );
    assert_eq!(founder.group_status_blocking(id).expect("query"), None);

    let third = start(2, peers);
    let nodes = [&founder, &second, &third];
    let mut counts = BTreeSet::new();
    wait_until("the group has three voters on every node", DEADLINE, || {
        // One reading per node and round: what is recorded is what is judged.
        let seen: Vec<usize> = nodes.iter().map(|n| voters(n, id)).collect();
        counts.extend(seen.iter().copied().filter(|c| *c > 0));
        seen.iter().all(|c| *c == 3)
    });
    assert_eq!(counts, BTreeSet::from([3]), "voter counts seen");
    let index = map
        .propose_blocking(b"first".to_vec(), DEADLINE)
        .expect("write");
    assert!(index > 0);
    for node in nodes {
        node.shutdown();
    }
}

#[test]
fn a_group_of_one_voter_grows_straight_to_three() {
    let root = tempfile::tempdir().expect("temp dir");
    let start = |i: usize, peers: Vec<String>| {
        CopyCat::start(config(&root.path().join(format!("node{i}")), peers)).expect("node starts")
    };
    let founder = start(0, Vec::new());
    let id = DataStructureId::new();
    let map = founder.subscribe(id, no_snapshot).expect("subscribe");
    map.propose_blocking(b"alone".to_vec(), DEADLINE)
        .expect("a cluster of one writes");
    assert_eq!(voters(&founder, id), 1);

    let peers = vec![founder.gossip_addr().to_string()];
    let second = start(1, peers.clone());
    wait_until("the second node joins the directory", DEADLINE, || {
        second.has_joined_blocking().unwrap_or(false) && sees_alive(&founder, 2)
    });
    let mut counts = BTreeSet::new();
    counts.insert(voters(&founder, id));
    let third = start(2, peers);
    wait_until("the group has three voters", DEADLINE, || {
        let seen = voters(&founder, id);
        counts.insert(seen);
        seen == 3
    });
    assert_eq!(counts, BTreeSet::from([1, 3]), "voter counts seen");
    map.propose_blocking(b"three".to_vec(), DEADLINE)
        .expect("write after growing");
    for node in [founder, second, third] {
        node.shutdown();
    }
}
