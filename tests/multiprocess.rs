//! The hashmap example as three real processes: SIGKILL the group's leader while a writer
//! keeps writing, restart it on the same data dir and ports, and check that no
//! acknowledged write is lost and that every node ends up serving every one of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use copycat_testkit::chaos::{self, check_all_readable, ChaosConfig, Writer, PUT_TIMEOUT};
use copycat_testkit::cluster::{self, wait_until, ProcessCluster};
use copycat_testkit::http;

/// Deadline for each phase (formation, failover, catch-up, final reads); generous for a
/// loaded two-core machine, while a healthy run needs a few seconds per phase at most.
const PHASE: Duration = Duration::from_secs(30);

/// Writes that must be acknowledged in each phase (before the kill, while the node is
/// down, after its restart) to show the cluster kept working.
const PER_PHASE: usize = 30;

/// Concurrent writer threads.
const WRITERS: usize = 3;

fn hashmap_bin() -> PathBuf {
    expect(cluster::built_hashmap())
}

fn expect<T>(result: Result<T, String>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn killed_and_restarted_leader_loses_no_acknowledged_write() {
    let test_start = Instant::now();
    let mut nodes = expect(ProcessCluster::new(hashmap_bin()));
    let built = test_start.elapsed();
    expect(nodes.form(3));
    let formed = expect(wait_until("the cluster forms", PHASE, || {
        nodes.converged(3)
    }));

    let writer = Writer::start((0..3).map(|i| nodes.http(i)).collect(), WRITERS);
    expect(wait_until("writes are acknowledged", PHASE, || {
        writer.count() >= PER_PHASE
    }));

    let victim = nodes.leader_seen_by(0).expect("node 0 knows the leader");
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let before_kill = writer.count();
    nodes.kill(victim);
    let killed_at = Instant::now();
    expect(wait_until(
        "writes continue without the leader",
        PHASE,
        || writer.count() >= before_kill + PER_PHASE,
    ));
    let first_after_kill = writer
        .acked()
        .iter()
        .filter(|a| a.sent > killed_at)
        .map(|a| a.at)
        .min()
        .map(|at| at - killed_at)
        .expect("writes after the kill");

    let peers: Vec<SocketAddr> = survivors.iter().map(|i| nodes.info(*i).gossip).collect();
    expect(nodes.restart(victim, &peers));
    let restarted_at = Instant::now();
    expect(wait_until(
        "the restarted node acknowledges writes again",
        PHASE,
        || {
            writer
                .acked()
                .iter()
                .filter(|a| a.via == victim && a.sent > restarted_at)
                .count()
                >= PER_PHASE / 2
        },
    ));
    expect(wait_until("the cluster converges again", PHASE, || {
        nodes.converged(3)
    }));
    let (acked, failed) = writer.finish();

    // Every acknowledged write, on every node, with its value.
    for i in 0..3 {
        expect(check_all_readable(&nodes, i, &acked));
    }
    eprintln!(
        "multiprocess: build check {built:.1?}, formed in {formed:.1?}, {} writes acknowledged \
         ({failed} failed or unknown), total {:.1?}",
        acked.len(),
        test_start.elapsed()
    );
    eprintln!(
        "multiprocess: first write sent after killing leader node {victim} was acknowledged \
         {first_after_kill:.2?} after the kill"
    );
}

/// An idle map hibernates on every node; when its leader is killed -9, the survivors
/// elect another leader with no write to wake them (gossip reporting the death does).
#[test]
fn a_hibernating_group_elects_a_new_leader_when_its_leader_is_killed() {
    let mut nodes = expect(ProcessCluster::new(hashmap_bin()));
    expect(nodes.form(3));
    expect(wait_until("the cluster forms", PHASE, || {
        nodes.converged(3)
    }));
    let hibernating = |nodes: &ProcessCluster, i: usize| {
        nodes
            .status(i)
            .is_ok_and(|s| s["group"]["hibernating"].as_bool() == Some(true))
    };
    expect(wait_until("the idle map hibernates", PHASE, || {
        (0..3).all(|i| hibernating(&nodes, i))
    }));
    let victim = nodes.leader_seen_by(0).expect("node 0 knows the leader");
    nodes.kill(victim);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    expect(wait_until(
        "the survivors elect a new leader",
        PHASE,
        || {
            survivors.iter().all(|i| {
                nodes
                    .leader_seen_by(*i)
                    .is_some_and(|l| l != victim && survivors.contains(&l))
            })
        },
    ));
}

/// `GET ?consistent=true` on another node right after an acknowledged PUT returns it: the
/// read barrier makes the read linearizable, with no polling.
#[test]
fn consistent_reads_on_other_nodes_see_acknowledged_writes() {
    let mut nodes = expect(ProcessCluster::new(hashmap_bin()));
    expect(nodes.form(3));
    expect(wait_until("the cluster forms", PHASE, || {
        nodes.converged(3)
    }));
    for n in 0..15usize {
        let (key, value) = (format!("c{n}"), format!("value-{n}"));
        let path = format!("/kv/{key}");
        let put = expect(
            http::put(nodes.http(n % 3), &path, value.as_bytes(), PUT_TIMEOUT)
                .map_err(|e| e.to_string()),
        );
        assert_eq!(put.status, 200, "{}", put.text());
        let reader = nodes.http((n + 1) % 3);
        let got = expect(
            http::get(reader, &format!("{path}?consistent=true"), PUT_TIMEOUT)
                .map_err(|e| e.to_string()),
        );
        assert_eq!(
            (got.status, got.text()),
            (200, value),
            "consistent read of {key}"
        );
    }
}

/// The registry example end to end: a service published by one process in `west` is
/// resolved by name from a process in `east` (falling back across datacenters) and called.
#[test]
fn the_registry_example_resolves_and_calls_across_datacenters() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    cluster::cargo_build_example(Path::new(env!("CARGO")), manifest, "registry")
        .unwrap_or_else(|e| panic!("{e}"));
    let bin = cluster::example_path("registry").unwrap_or_else(|e| panic!("{e}"));
    let mut child = std::process::Command::new(&bin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let finished = wait_until("the registry example finishes", PHASE * 2, || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if let Err(e) = finished {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{e}");
    }
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("in datacenter west (this node is in east)"),
        "{stdout}"
    );
    assert!(stdout.contains("RESPONSE 200 hello from node"), "{stdout}");
}

/// A short chaos run (the `chaos` example runs it longer): three nodes killed with
/// SIGKILL and restarted for 20 s under continuous writes, with a small snapshot interval
/// so restarted nodes catch up from snapshots; no acknowledged write may be lost.
#[test]
fn chaos_kills_and_restarts_lose_no_acknowledged_write() {
    let config = ChaosConfig {
        nodes: 3,
        duration: Duration::from_secs(20),
        seed: 3,
        snapshot_interval: 100,
        writers: 3,
    };
    let nodes = expect(ProcessCluster::new(hashmap_bin()))
        .with_args(&["--snapshot-interval", &config.snapshot_interval.to_string()]);
    let report = expect(chaos::run(nodes, &config, |what| {
        eprintln!("chaos: {what}")
    }));
    eprintln!("chaos: {report:?}");
    assert!(
        report.kills >= 3,
        "the schedule killed too little: {report:?}"
    );
}
