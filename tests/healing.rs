//! Self-healing: replicas on a node that stays dead are replaced elsewhere.

use std::time::{Duration, Instant};

use copycat_testkit::in_process::{collect, no_snapshot, wait_until, Cluster};

const T: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(2);

#[test]
fn groups_return_to_full_replication_without_a_dead_node() {
    let mut cluster = Cluster::start_with_grace(4, GRACE);
    let ids: Vec<_> = (0..8).map(|_| copycat::new_data_structure_id()).collect();
    let subs: Vec<_> = ids
        .iter()
        .map(|id| cluster.node(0).subscribe(*id, no_snapshot).unwrap())
        .collect();
    for (i, ds) in subs.iter().enumerate() {
        for j in 0..5u8 {
            ds.propose_blocking(vec![i as u8, j], T).unwrap();
        }
    }
    // The victim: the node (other than 0, which runs the test's subscriptions) that is a
    // voter in the most groups.
    let victim = (1..4)
        .max_by_key(|i| {
            let node = cluster.node(*i).node_id();
            ids.iter()
                .filter(|id| {
                    let status = cluster
                        .node(0)
                        .group_status_blocking(**id)
                        .unwrap()
                        .unwrap();
                    status.voters.contains(&node)
                })
                .count()
        })
        .unwrap();
    let dead = cluster.node(victim).node_id();
    cluster.stop(victim);
    let stopped = Instant::now();
    wait_until(
        "every group has 3 voters, none on the dead node",
        GRACE + T,
        || {
            cluster.running().all(|n| {
                ids.iter().all(|id| {
                    n.group_status_blocking(*id)
                        .ok()
                        .flatten()
                        .is_some_and(|s| {
                            s.voters.len() == 3
                                && !s.voters.contains(&dead)
                                && !s.learners.contains(&dead)
                        })
                })
            })
        },
    );
    let healed = stopped.elapsed();
    assert!(
        healed <= GRACE + Duration::from_secs(10),
        "healing took {healed:?}, over the grace period plus 10 s"
    );
    // Nothing was lost, and the healed groups take writes.
    let survivor = (1..4).find(|i| *i != victim).unwrap();
    for (i, id) in ids.iter().enumerate() {
        let ds = cluster.node(survivor).subscribe(*id, no_snapshot).unwrap();
        let got: Vec<_> = collect(&ds, 5, T).into_iter().map(|(_, v)| v).collect();
        let expected: Vec<_> = (0..5u8).map(|j| vec![i as u8, j]).collect();
        assert_eq!(got, expected);
        ds.propose_blocking(b"after healing".to_vec(), T).unwrap();
    }
}

#[test]
fn a_node_that_comes_back_after_replacement_deletes_its_old_replicas() {
    let mut cluster = Cluster::start_with_grace(4, GRACE);
    let id = copycat::new_data_structure_id();
    let ds = cluster.node(0).subscribe(id, no_snapshot).unwrap();
    ds.propose_blocking(b"one".to_vec(), T).unwrap();
    let status = cluster.node(0).group_status_blocking(id).unwrap().unwrap();
    let victim = (1..4)
        .find(|i| status.voters.contains(&cluster.node(*i).node_id()))
        .expect("a voter other than node 0");
    let dead = cluster.node(victim).node_id();
    cluster.stop(victim);
    wait_until("the dead voter is replaced", GRACE + T, || {
        cluster
            .node(0)
            .group_status_blocking(id)
            .ok()
            .flatten()
            .is_some_and(|s| s.voters.len() == 3 && !s.voters.contains(&dead))
    });
    ds.propose_blocking(b"two".to_vec(), T).unwrap();
    cluster.restart(victim);
    wait_until("the returning node drops its removed replica", T, || {
        cluster
            .node(victim)
            .hosted_data_structures_blocking()
            .map(|groups| !groups.contains(&id))
            .unwrap_or(false)
    });
    // A subscriber there gets a fresh learner replica and the whole history.
    let again = cluster.node(victim).subscribe(id, no_snapshot).unwrap();
    let got: Vec<_> = collect(&again, 2, T).into_iter().map(|(_, v)| v).collect();
    assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
}
