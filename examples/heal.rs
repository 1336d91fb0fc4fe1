//! Time for a cluster to heal after a node dies for good.
//!
//! ```text
//! cargo run --release --example heal -- --groups 1000 --grace-secs 5
//! ```
//!
//! Starts 4 nodes in this process (loopback, temp dirs, fsync on), creates `--groups` data
//! structures with one acknowledged write each, stops the node that is a voter in the most
//! groups, and measures the time until every group again has 3 voters, none on the dead
//! node, as seen by every survivor. The time includes the grace period
//! (`Config::dead_node_grace`), which is reported separately. The last line is
//! `RESULT groups=.. grace_s=.. heal_s=.. after_grace_s=..`.

use std::time::{Duration, Instant};

use copycat::{Config, CopyCat, DataStructureId};

const T: Duration = Duration::from_secs(60);

fn flag(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wait(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("timed out waiting for {what}"))
}

fn healed(node: &CopyCat, ids: &[DataStructureId], dead: u64) -> bool {
    ids.iter().all(|id| {
        node.group_status(*id).ok().flatten().is_some_and(|s| {
            s.voters.len() == 3 && !s.voters.contains(&dead) && !s.learners.contains(&dead)
        })
    })
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let groups = flag("--groups", 1000) as usize;
    let grace = Duration::from_secs(flag("--grace-secs", 5));
    let root = tempfile::tempdir()?;
    let mut nodes: Vec<Option<CopyCat>> = Vec::new();
    for i in 0..4 {
        let peers = nodes
            .first()
            .and_then(|n| n.as_ref())
            .map(|n| vec![n.gossip_addr().to_string()])
            .unwrap_or_default();
        let node = CopyCat::start(Config {
            data_dir: root.path().join(format!("node{i}")),
            port: 0,
            gossip_port: 0,
            peers,
            dead_node_grace: grace,
            ..Config::default()
        })?;
        nodes.push(Some(node));
    }
    let running = |nodes: &[Option<CopyCat>]| nodes.iter().flatten().cloned().collect::<Vec<_>>();
    wait("4 joined nodes", T, || {
        running(&nodes).iter().all(|n| {
            n.has_joined().unwrap_or(false)
                && n.members()
                    .map(|m| m.iter().filter(|m| m.state == "alive").count() == 4)
                    .unwrap_or(false)
        })
    })?;
    let first = running(&nodes)[0].clone();
    let created = Instant::now();
    let subs: Vec<_> = (0..groups)
        .map(|_| first.subscribe(DataStructureId::new(), copycat::no_snapshots))
        .collect::<Result<_, _>>()?;
    std::thread::scope(|s| {
        for chunk in subs.chunks(subs.len().div_ceil(16).max(1)) {
            s.spawn(move || {
                for ds in chunk {
                    let _ = ds.propose_and_wait(b"x".to_vec(), T);
                }
            });
        }
    });
    let ids: Vec<_> = subs.iter().map(|ds| ds.id()).collect();
    wait("3 voters everywhere", T, || {
        ids.iter().all(|id| {
            first
                .group_status(*id)
                .ok()
                .flatten()
                .is_some_and(|s| s.voters.len() == 3)
        })
    })?;
    println!(
        "{groups} groups created and replicated in {:.1} s",
        created.elapsed().as_secs_f64()
    );
    let victim = (1..4)
        .max_by_key(|i| {
            let id = nodes[*i].as_ref().map_or(0, |n| n.node_id());
            ids.iter()
                .filter(|g| {
                    first
                        .group_status(**g)
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.voters.contains(&id))
                })
                .count()
        })
        .unwrap_or(1);
    let dead = nodes[victim].as_ref().map_or(0, |n| n.node_id());
    let voter_in = ids
        .iter()
        .filter(|g| {
            first
                .group_status(**g)
                .ok()
                .flatten()
                .is_some_and(|s| s.voters.contains(&dead))
        })
        .count();
    if let Some(node) = nodes[victim].take() {
        node.shutdown();
    }
    let stopped = Instant::now();
    println!("stopped node {victim} (voter in {voter_in} groups)");
    wait(
        "full replication without the dead node",
        grace + Duration::from_secs(600),
        || running(&nodes).iter().all(|n| healed(n, &ids, dead)),
    )?;
    let heal = stopped.elapsed().as_secs_f64();
    println!(
        "RESULT groups={groups} grace_s={} heal_s={heal:.1} after_grace_s={:.1}",
        grace.as_secs(),
        heal - grace.as_secs_f64()
    );
    drop(subs);
    for node in running(&nodes) {
        node.shutdown();
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("heal: {e}");
        std::process::exit(1);
    }
}
