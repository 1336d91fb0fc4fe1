//! Availability from the first second: three hashmap processes started as a person would
//! start them in three terminals (a random pause after each), all with
//! `--bootstrap-expect 3`; the map's group leader killed with SIGKILL at a random moment
//! right after all three answer; every write through a survivor acknowledged within 2 s.
//! Without `bootstrap_expect` the founder, alone for that pause, created the map's group
//! with one voter and it grew as the others joined, so a kill in that window blocked
//! writes until the node returned.

use std::time::{Duration, Instant};

use copycat_testkit::cluster::{self, wait_until, ProcessCluster, QUICK};
use copycat_testkit::http;
use rand::{Rng, SeedableRng};

/// Fresh clusters to kill a leader in (`COPYCAT_BOOTSTRAP_TRIALS` overrides).
const TRIALS: usize = 20;

/// Longest pause between starting one node and the next.
const START_GAP_MS: u64 = 1_500;

/// Latest kill, after all three nodes answer `/status`: the window in which a group used
/// to be still growing.
const KILL_WINDOW_MS: u64 = 1_500;

/// What the issue asks of every write through a survivor.
const WRITE_DEADLINE: Duration = Duration::from_secs(2);

/// Writes through the survivors after each kill.
const WRITES_AFTER_KILL: usize = 6;

/// Deadline for the nodes to answer and for the group to show a leader to kill.
const PHASE: Duration = Duration::from_secs(30);

fn expect<T>(result: Result<T, String>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// What one trial saw.
struct Trial {
    /// From all three answering to the kill.
    kill_after: Duration,
    /// The slowest acknowledged write after the kill.
    slowest_write: Duration,
}

#[test]
fn a_leader_killed_right_after_start_blocks_no_write() {
    let trials = std::env::var("COPYCAT_BOOTSTRAP_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(TRIALS);
    let seed: u64 = rand::random();
    eprintln!("bootstrap: {trials} trials, kill moments from seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let bin = expect(cluster::built_hashmap());
    let mut seen = Vec::new();
    for trial in 0..trials {
        let mut pause = |max_ms| Duration::from_millis(rng.gen_range(0..=max_ms));
        let gaps = [pause(START_GAP_MS), pause(START_GAP_MS)];
        let delay = pause(KILL_WINDOW_MS);
        let result = ProcessCluster::new(bin.clone()).and_then(|nodes| {
            let mut nodes = nodes.with_args(&["--bootstrap-expect", "3"]);
            let outcome = kill_and_write(&mut nodes, trial, gaps, delay);
            if outcome.is_err() {
                nodes.dump_logs(60);
            }
            outcome
        });
        seen.push(result.unwrap_or_else(|e| panic!("trial {trial} (seed {seed}): {e}")));
    }
    let slowest = seen.iter().map(|t| t.slowest_write).max();
    let mut kills: Vec<u128> = seen.iter().map(|t| t.kill_after.as_millis()).collect();
    kills.sort_unstable();
    eprintln!(
        "bootstrap: {trials} trials passed; kills at {kills:?} ms after all answered; \
         slowest write after a kill {slowest:.2?}"
    );
}

/// One trial: start the nodes with `gaps` between them (the first founds the cluster, the
/// others join through it), wait `delay` after every node answers, kill the group's leader
/// (the first one any node reports from then on), then write through the survivors. The
/// pauses are the trial's random inputs, not waits for a condition.
fn kill_and_write(
    nodes: &mut ProcessCluster,
    trial: usize,
    gaps: [Duration; 2],
    delay: Duration,
) -> Result<Trial, String> {
    let founder = nodes.start(&[])?;
    let seed = nodes.info(founder).gossip;
    for gap in gaps {
        std::thread::sleep(gap);
        nodes.start(&[seed])?;
    }
    wait_until("all three nodes answer /status", PHASE, || {
        (0..3).all(|i| nodes.status(i).is_ok())
    })?;
    let answered = Instant::now();
    std::thread::sleep(delay);
    let mut victim = None;
    wait_until("some node reports the group's leader", PHASE, || {
        victim = (0..3).find_map(|i| nodes.leader_seen_by(i));
        victim.is_some()
    })?;
    let victim = victim.ok_or("no leader")?;
    nodes.kill(victim);
    let kill_after = answered.elapsed();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let mut slowest_write = Duration::ZERO;
    for k in 0..WRITES_AFTER_KILL {
        let via = survivors[k % survivors.len()];
        let key = format!("/kv/t{trial}-{k}");
        let sent = Instant::now();
        let response = http::put(nodes.http(via), &key, b"v", WRITE_DEADLINE);
        let took = sent.elapsed();
        match response {
            Ok(r) if r.status == 200 && took <= WRITE_DEADLINE => {
                slowest_write = slowest_write.max(took)
            }
            Ok(r) => {
                return Err(format!(
                    "write {k} through node {via} after killing leader node {victim} \
                     {kill_after:.2?} after start: {} {} in {took:.2?}",
                    r.status,
                    r.text().trim()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "write {k} through node {via} after killing leader node {victim} \
                     {kill_after:.2?} after start: {e} after {took:.2?}"
                ))
            }
        }
    }
    for &i in &survivors {
        let last = format!("/kv/t{trial}-{}", WRITES_AFTER_KILL - 1);
        let read = http::get(nodes.http(i), &format!("{last}?consistent=true"), QUICK)
            .map_err(|e| format!("consistent read on node {i}: {e}"))?;
        if read.status != 200 {
            return Err(format!("node {i} lacks {last}: {}", read.status));
        }
    }
    Ok(Trial {
        kill_after,
        slowest_write,
    })
}
