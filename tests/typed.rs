//! The typed state-machine API on in-process clusters: each caller gets its own command's
//! response, totals are conserved, linearizable reads see acknowledged writes, across a
//! leader kill and snapshot boundaries.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use copycat::{Bincode, Codec, Error, Replicated, ReplicatedMap, StateMachine};
use copycat_testkit::in_process::{wait_until, Cluster};
use serde::{Deserialize, Serialize};

const ACCOUNTS: u32 = 8;
const OPENING_BALANCE: i64 = 100;

/// Accounts whose balances never go negative, and the transfers applied (by id).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct Bank {
    balances: BTreeMap<u32, i64>,
    applied: BTreeSet<u64>,
}

impl Default for Bank {
    fn default() -> Self {
        let balances = (0..ACCOUNTS).map(|a| (a, OPENING_BALANCE)).collect();
        Bank {
            balances,
            applied: BTreeSet::new(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Transfer {
    id: u64,
    from: u32,
    to: u32,
    amount: i64,
}

/// The transfer's id, and the payer's balance after it (or why it was refused).
type Outcome = (u64, Result<i64, String>);

impl StateMachine for Bank {
    type Command = Transfer;
    type Response = Outcome;

    fn apply(&mut self, t: Transfer) -> Outcome {
        self.applied.insert(t.id);
        let from = self.balances[&t.from];
        if from < t.amount {
            return (t.id, Err(format!("insufficient funds: {from}")));
        }
        *self.balances.entry(t.from).or_default() -= t.amount;
        *self.balances.entry(t.to).or_default() += t.amount;
        (t.id, Ok(from - t.amount))
    }

    fn snapshot(&self) -> Vec<u8> {
        Bincode::encode(self).expect("encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        *self = Bincode::decode(snapshot)?;
        Ok(())
    }
}

fn small_snapshots(mut config: copycat::Config) -> copycat::Config {
    config.snapshot_interval = 40;
    config
}

/// A transfer derived from `n` (a cheap deterministic mix).
fn transfer(id: u64) -> Transfer {
    let mix = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Transfer {
        id,
        from: (mix % u64::from(ACCOUNTS)) as u32,
        to: ((mix >> 8) % u64::from(ACCOUNTS)) as u32,
        amount: ((mix >> 16) % 60) as i64 + 1,
    }
}

#[test]
fn concurrent_transfers_get_their_own_responses_and_conserve_money_across_a_leader_kill() {
    let mut cluster = Cluster::start_tweaked(3, small_snapshots);
    cluster.wait_members(3);
    let id = copycat::new_data_structure_id();
    let banks: Vec<Replicated<Bank>> = (0..3)
        .map(|i| {
            Replicated::open(cluster.node(i), id, Bank::default())
                .expect("open")
                .with_timeout(Duration::from_secs(15))
        })
        .collect();
    let refused = std::sync::atomic::AtomicU64::new(0);
    let run = |node: usize, ids: std::ops::Range<u64>| {
        let mut acknowledged = Vec::new();
        for id in ids {
            let bank = &banks[node];
            match bank.propose_blocking(transfer(id)) {
                Ok((echo, result)) => {
                    assert_eq!(echo, id, "node {node}: another command's response");
                    match result {
                        Ok(balance) => assert!(balance >= 0),
                        Err(_) => {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    acknowledged.push(id);
                    if id % 10 == 0 {
                        let reader = &banks[(node + 1) % 3];
                        let seen = reader.read_linearizable_blocking(|b| b.applied.contains(&id));
                        if let Ok(seen) = seen {
                            assert!(seen, "a linearizable read on another node misses {id}");
                        }
                    }
                }
                // The leader's node went away mid-call, or the outcome is unknown.
                Err(
                    Error::Shutdown
                    | Error::Timeout
                    | Error::ApplyTimeout { .. }
                    | Error::ResponseUnknown { .. },
                ) => {}
                Err(e) => panic!("node {node}: transfer {id}: {e}"),
            }
        }
        acknowledged
    };
    let leader = || {
        let status = cluster.node(0).group_status_blocking(id).ok().flatten()?;
        let leader = status.leader?;
        (0..3).find(|i| cluster.node(*i).node_id() == leader)
    };
    wait_until(
        "the bank's group has a leader",
        Duration::from_secs(30),
        || leader().is_some(),
    );
    // Three callers per node, so each node's handle has several proposals waiting at once.
    let callers = |nodes: &[usize], base: u64| -> Vec<u64> {
        std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .flat_map(|&n| (0..3u64).map(move |c| (n, c)))
                .map(|(n, c)| {
                    let from = base + n as u64 * 1000 + c * 100;
                    s.spawn(move || run(n, from..from + 20))
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        })
    };
    let first = callers(&[0, 1, 2], 0);
    let killed = leader().expect("a leader");
    let survivors: Vec<usize> = (0..3).filter(|i| *i != killed).collect();
    cluster.stop(killed);
    let second = callers(&survivors, 10_000);
    assert!(
        first.len() >= 150 && second.len() >= 100,
        "most transfers acknowledged: {} before the kill, {} after",
        first.len(),
        second.len()
    );
    let states: Vec<Bank> = survivors
        .iter()
        .map(|&n| {
            banks[n]
                .read_linearizable_blocking(Bank::clone)
                .expect("read")
        })
        .collect();
    assert_eq!(states[0], states[1], "replicas agree");
    let total: i64 = states[0].balances.values().sum();
    assert_eq!(
        total,
        i64::from(ACCOUNTS) * OPENING_BALANCE,
        "money is conserved"
    );
    assert!(states[0].balances.values().all(|b| *b >= 0));
    for id in first.iter().chain(&second) {
        assert!(
            states[0].applied.contains(id),
            "acknowledged {id} is applied"
        );
    }
    let status = cluster
        .node(survivors[0])
        .group_status_blocking(id)
        .unwrap()
        .unwrap();
    assert!(
        status.snapshot_index > 0,
        "the run crossed snapshot boundaries"
    );
}

#[test]
fn a_replicated_map_serves_every_operation_and_survives_a_restart() {
    let mut cluster = Cluster::start_tweaked(3, small_snapshots);
    cluster.wait_members(3);
    let id = copycat::new_data_structure_id();
    let open = |cluster: &Cluster, i: usize| -> ReplicatedMap<String, u64> {
        ReplicatedMap::open(cluster.node(i), id).expect("open")
    };
    let a = open(&cluster, 0);
    for k in 0..100u64 {
        assert_eq!(a.insert_blocking(format!("k{k}"), k).unwrap(), None);
    }
    assert_eq!(a.insert_blocking("k1".into(), 11).unwrap(), Some(1));
    assert_eq!(a.remove_blocking("k2".into()).unwrap(), Some(2));
    assert_eq!(
        a.compare_and_set_blocking("k3".into(), Some(4), Some(5))
            .unwrap(),
        Err(Some(3))
    );
    assert_eq!(
        a.compare_and_set_blocking("k3".into(), Some(3), None)
            .unwrap(),
        Ok(())
    );
    let b = open(&cluster, 1);
    assert_eq!(b.get_linearizable_blocking(&"k1".into()).unwrap(), Some(11));
    assert_eq!(b.get(&"k3".into()).unwrap(), None);
    assert_eq!(b.len().unwrap(), 98);
    drop(b);
    cluster.stop(1);
    cluster.restart(1);
    let b = open(&cluster, 1);
    // Ready once the history this node had committed is replayed: local reads see it.
    b.replicated().wait_replayed_blocking().expect("replayed");
    assert_eq!(b.get(&"k99".into()).unwrap(), Some(99));
    assert_eq!(b.entries().unwrap(), a.entries().unwrap());
    assert_eq!(b.get_linearizable_blocking(&"k1".into()).unwrap(), Some(11));
}

#[test]
fn log_indexes_without_commands_count_as_applied() {
    let cluster = Cluster::start(1);
    let id = copycat::new_data_structure_id();
    let map: ReplicatedMap<u8, u8> = ReplicatedMap::open(cluster.node(0), id)
        .expect("open")
        .with_timeout(Duration::from_secs(5));
    // A fresh group's log holds only its leader's no-op: nothing to apply, yet passed.
    let mut commit = 0;
    wait_until("the group has a leader", Duration::from_secs(30), || {
        commit = cluster
            .node(0)
            .group_status_blocking(id)
            .ok()
            .flatten()
            .map_or(0, |s| s.commit_index);
        commit > 0
    });
    map.replicated()
        .wait_applied_blocking(commit)
        .expect("indexes of no-ops are passed");
    assert_eq!(map.len().unwrap(), 0);
}

#[test]
fn async_calls_from_inside_tokio() {
    let cluster = Cluster::start(1);
    let map: ReplicatedMap<u32, String> =
        ReplicatedMap::open(cluster.node(0), copycat::new_data_structure_id()).expect("open");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..50u32 {
            let map = map.clone();
            tasks.spawn(async move { map.insert(k, format!("v{k}")).await });
        }
        while let Some(result) = tasks.join_next().await {
            assert_eq!(result.expect("task").expect("insert"), None);
        }
        assert_eq!(
            map.get_linearizable(&7).await.unwrap(),
            Some("v7".to_string())
        );
        let swapped = map
            .compare_and_set(7, Some("v7".into()), Some("w".into()))
            .await
            .unwrap();
        assert_eq!(swapped, Ok(()));
        assert_eq!(map.remove(7).await.unwrap(), Some("w".to_string()));
    });
    assert_eq!(map.len().unwrap(), 49);
}

#[test]
fn one_task_applies_the_commit_streams_of_many_groups_and_they_end_at_shutdown() {
    use futures_core::Stream;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    let cluster = Cluster::start(1);
    let node = cluster.node(0);
    let subs: Vec<_> = (0..50)
        .map(|_| {
            node.subscribe(copycat::new_data_structure_id(), copycat::no_snapshots)
                .expect("subscribe")
        })
        .collect();
    let mut streams: Vec<_> = subs.iter().map(|ds| ds.commit_stream()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The next commit of any stream, and whose (`None` once every stream ended).
    async fn next_any(streams: &mut [copycat::CommitStream]) -> Option<(usize, copycat::Commit)> {
        std::future::poll_fn(|cx| {
            let mut ended = 0;
            for (i, stream) in streams.iter_mut().enumerate() {
                match Pin::new(stream).poll_next(cx) {
                    Poll::Ready(Some(commit)) => return Poll::Ready(Some((i, commit))),
                    Poll::Ready(None) => ended += 1,
                    Poll::Pending => {}
                }
            }
            if ended == streams.len() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await
    }
    rt.block_on(async {
        for round in 0..2u8 {
            for (i, ds) in subs.iter().enumerate() {
                ds.propose(vec![i as u8, round], Duration::from_secs(30))
                    .await
                    .expect("acknowledged");
            }
        }
        let mut seen: Vec<Vec<u8>> = vec![Vec::new(); subs.len()];
        let mut entries = 0;
        while entries < 2 * subs.len() {
            let next = tokio::time::timeout(Duration::from_secs(30), next_any(&mut streams));
            let (i, commit) = next.await.expect("commits arrive").expect("streams open");
            if let copycat::Commit::Entry { data, .. } = commit {
                assert_eq!(data[0] as usize, i, "a commit of another group");
                seen[i].push(data[1]);
                entries += 1;
            }
        }
        assert!(
            seen.iter().all(|s| s == &[0, 1]),
            "each group's commits in order"
        );
    });
    rt.block_on(async {
        // A task parked on the streams when the node shuts down: only the channels'
        // closing can wake it.
        let (parked_tx, parked) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut waiting = Box::pin(next_any(&mut streams));
            let first = std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "nothing to apply yet");
            let _ = parked_tx.send(());
            waiting.await
        });
        parked.await.expect("the task parked");
        node.shutdown();
        let ended = tokio::time::timeout(Duration::from_secs(30), task);
        let ended = ended.await.expect("woken when the channels close");
        assert!(ended.expect("task").is_none(), "every stream ended");
    });
}
