//! Deterministic simulation: several production node cores in one thread, driven by a
//! fake clock and one seeded RNG through crashes, restarts, partitions, message loss,
//! duplication and reordering, disks that fill up for a while (the core sleeps, then wakes
//! over its store), a node killed for good and a new one joining, while
//! clients propose, read through barriers, subscribe and unsubscribe. Checkers then
//! verify that no acknowledged write is lost, every subscriber sees a prefix of one
//! sequence with each entry once, barrier reads are linearizable, and that once the faults
//! stop every group is back at its replication factor with converged replicas.
//!
//! `cargo test` runs a bounded number of seeds; `COPYCAT_SIM_SEEDS=N` runs N and
//! `COPYCAT_SIM_SEED_START=S` starts at seed S. The same seed replays the same run.
//!
//! What is simulated rather than run: gossip (a membership view from connectivity stands
//! in for foca) and the TCP transport (whole batches are delayed, dropped or duplicated;
//! snapshot stream chunks and acknowledgements travel in them, so the cores' stream state
//! machines meet loss, duplication and reordering). Storage is production's sled store on a temp
//! dir, without fdatasync: a crash loses the writes still queued, as a killed process does.

mod app;
mod checker;
mod disk_full;
mod io;
mod registry;
mod typed_app;
mod workload;
mod world;

use std::time::Instant;

use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::id::DataStructureId;
use workload::{Faults, Workload};
use world::{Event, World};

/// The shape of one simulated run.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub nodes: usize,
    pub groups: usize,
    pub replication_factor: usize,
    /// Alive nodes the founder (node 0) waits for before it bootstraps the cluster.
    pub bootstrap_expect: usize,
    pub tick_ms: u64,
    pub gossip_ms: u64,
    pub proposal_timeout_ms: u64,
    pub dead_node_grace_ms: u64,
    pub snapshot_interval: u64,
    pub drop_rate: f64,
    pub duplicate_rate: f64,
    pub max_delay_ms: u64,
    /// Mean gap between client actions and between faults.
    pub op_gap_ms: u64,
    pub fault_gap_ms: u64,
    /// How long clients and faults run, then how long healing may take.
    pub fault_phase_ms: u64,
    pub heal_deadline_ms: u64,
    /// Run the service registry on every node (its grace is `dead_node_grace_ms`).
    pub registry: bool,
    /// Inject crashes, partitions and node replacements.
    pub faults: bool,
    /// Share of batches whose forwarded proposals (`MsgPropose`) the network drops, on
    /// top of `drop_rate`: raft does not retransmit them, the proposer must.
    pub proposal_drop_rate: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            nodes: 4,
            groups: 3,
            replication_factor: 3,
            bootstrap_expect: 1,
            tick_ms: 50,
            gossip_ms: 200,
            proposal_timeout_ms: 3_000,
            dead_node_grace_ms: 3_000,
            snapshot_interval: 25,
            drop_rate: 0.02,
            duplicate_rate: 0.01,
            max_delay_ms: 15,
            op_gap_ms: 40,
            fault_gap_ms: 1_500,
            fault_phase_ms: 20_000,
            heal_deadline_ms: 60_000,
            registry: true,
            faults: true,
            proposal_drop_rate: 0.0,
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub trace: u64,
    pub faults: u64,
    pub messages: u64,
    pub acked: usize,
    /// Writes proposed but not acknowledged (failed, timed out, or lost with a crash).
    pub unacked: usize,
    pub reads: usize,
    pub delivered: u64,
    /// Subscribers that met a superseded snapshot marker and subscribed again.
    pub resubscribed: u64,
    /// Typed responses checked against the sequence, and those a snapshot left unknown.
    pub typed_checked: u64,
    pub typed_unknown: u64,
    /// Times a core went dormant on a full disk (and woke again).
    pub slept: u64,
    pub healed_at_ms: u64,
}

/// Runs seed `seed`; `Err` names the first violations found.
pub(crate) fn run_seed(seed: u64, params: &Params) -> Result<Report, String> {
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut world = World::new(
        params.clone(),
        SmallRng::seed_from_u64(seed),
        root.path().to_path_buf(),
    );
    for _ in 0..params.nodes {
        world.add_node();
    }
    for i in 0..params.nodes {
        world.start(i)?;
    }
    world.at(0, Event::Gossip);
    if params.registry {
        world.at(500, Event::RegistryUpkeep);
    }
    let groups: Vec<DataStructureId> = (0..params.groups)
        .map(|k| DataStructureId::from_u128((u128::from(seed) << 64) | (k as u128 + 1)))
        .collect();
    let typed_groups = vec![DataStructureId::from_u128(
        (u128::from(seed) << 64) | 0x7_0000,
    )];
    let mut workload = Workload::new(groups, typed_groups);
    let mut faults = Faults {
        killed_for_good: false,
    };
    world.at(1_000, Event::Workload);
    if params.faults {
        world.at(3_000, Event::Fault);
    }
    let mut failure = None;
    world.run_until(params.fault_phase_ms, |w, event| {
        match event {
            Event::Workload => workload.step(w),
            Event::Fault => {
                if let Err(e) = faults.step(w) {
                    failure.get_or_insert(e);
                }
            }
            other => w.handle(other),
        }
        workload.collect(w);
    });
    if let Some(e) = failure {
        return Err(e);
    }
    workload.writing = false;
    heal(&mut world)?;
    for &group in &workload.groups {
        for i in world.running() {
            world.subscribe(i, group);
        }
    }
    let healed_at_ms = wait_converged(&mut world, &workload, params)?;
    if !params.faults {
        wait_writes_settled(&mut world, &mut workload);
    }
    workload.collect(&mut world);
    world.checker.finish();
    if !world.checker.violations.is_empty() {
        return Err(world.checker.violations.join("\n"));
    }
    let acked = world.checker.acked();
    Ok(Report {
        trace: world.trace,
        faults: world.faults,
        messages: world.messages,
        acked,
        unacked: world.checker.writes.len() - acked,
        reads: world.checker.reads.len(),
        delivered: world.checker.delivered,
        resubscribed: world.checker.resubscribed,
        typed_checked: world.checker.typed_checked,
        typed_unknown: world.checker.typed_unknown,
        slept: world.slept,
        healed_at_ms,
    })
}

/// Ends the faults: one network again, every node that is not gone running.
fn heal(world: &mut World) -> Result<(), String> {
    world.empty_disks();
    for node in &mut world.nodes {
        node.side = 0;
    }
    for i in 0..world.nodes.len() {
        if world.nodes[i].running.is_none() && !world.nodes[i].gone {
            world.start(i)?;
        }
    }
    Ok(())
}

/// Runs until every group is back at its replication factor with converged replicas and
/// a subscriber on every node has caught up; returns when (simulated ms).
fn wait_converged(world: &mut World, workload: &Workload, params: &Params) -> Result<u64, String> {
    let deadline = world.now + params.heal_deadline_ms;
    loop {
        let until = world.now + 500;
        world.run_until(until, |w, event| match event {
            Event::Workload | Event::Fault => {}
            other => w.handle(other),
        });
        let state = convergence(world, workload);
        match state {
            Ok(()) => return Ok(world.now),
            Err(why) if world.now >= deadline => {
                return Err(format!(
                    "not healed {} ms after the faults stopped: {why}",
                    params.heal_deadline_ms
                ))
            }
            Err(_) => {}
        }
    }
}

/// Runs until every write has been acknowledged or has failed, or for one proposal
/// timeout. Only for runs without crashes: a crashed node's writes never complete.
fn wait_writes_settled(world: &mut World, workload: &mut Workload) {
    let deadline = world.now + world.params.proposal_timeout_ms;
    workload.collect(world);
    while world.now < deadline && !workload.settled(world) {
        let until = world.now + 100;
        world.run_until(until, |w, event| match event {
            Event::Workload | Event::Fault => {}
            other => w.handle(other),
        });
        workload.collect(world);
    }
}

/// `Ok` once every group (the directory's system group included) has as many voters as
/// the running nodes allow (`placement::voter_count`), all of them running nodes, every
/// replica has applied everything committed, and every subscriber has caught up.
fn convergence(world: &World, workload: &Workload) -> Result<(), String> {
    let running = world.running();
    let alive: Vec<u64> = running
        .iter()
        .map(|i| world.nodes[*i].info.node_id)
        .collect();
    let want = crate::node::placement::voter_count(running.len(), world.params.replication_factor);
    let mut groups = vec![DataStructureId::SYSTEM];
    groups.extend(&workload.groups);
    if world.params.registry {
        groups.push(crate::registry::REGISTRY_ID);
    }
    for group in groups {
        let statuses: Vec<_> = running
            .iter()
            .filter_map(|i| {
                world.nodes[*i]
                    .running
                    .as_ref()?
                    .core
                    .awake()?
                    .group_status(group)
            })
            .collect();
        let Some(first) = statuses.first() else {
            return Err(format!("group {group}: no replica"));
        };
        let mut voters = first.voters.clone();
        voters.sort();
        if voters.len() != want || !voters.iter().all(|v| alive.contains(v)) {
            return Err(format!(
                "group {group}: voters {voters:?}, want {want} of {alive:?}"
            ));
        }
        let applied = statuses.iter().map(|s| s.applied_index).max().unwrap_or(0);
        if statuses
            .iter()
            .any(|s| s.applied_index != applied || s.commit_index != applied || s.leader.is_none())
        {
            let records: Vec<String> = running
                .iter()
                .filter_map(|i| {
                    Some(
                        world.nodes[*i]
                            .running
                            .as_ref()?
                            .core
                            .awake()?
                            .debug_record(group),
                    )
                })
                .collect();
            return Err(format!(
                "group {group}: replicas not converged: {statuses:?} {records:?}"
            ));
        }
    }
    if world.params.registry {
        registry_convergence(world)?;
    }
    for i in &running {
        let Some(node) = world.nodes[*i].running.as_ref() else {
            continue;
        };
        for app in &node.apps {
            let last = world.checker.last_index(app.group);
            let acked = world
                .checker
                .writes
                .iter()
                .filter(|w| w.group == app.group)
                .filter_map(|w| w.acked.map(|(_, index)| index))
                .max()
                .unwrap_or(0);
            if app.applied() < acked.min(last) || (acked > 0 && last < acked) {
                return Err(format!(
                    "node {i}: subscriber of {} at {} of {acked}: {:?} {:?}",
                    app.group,
                    app.applied(),
                    node.core.awake().map(|core| core.group_status(app.group)),
                    node.core
                        .awake()
                        .map(|core| core.debug_subscription(app.sub))
                ));
            }
        }
    }
    Ok(())
}

/// `Ok` once every registry replica holds the same map, every publication in it belongs
/// to the current instance of a running node, and every instance's publications are in it.
fn registry_convergence(world: &World) -> Result<(), String> {
    let agents: Vec<(usize, &registry::RegistryAgent)> = world
        .running()
        .into_iter()
        .filter_map(|i| Some((i, world.nodes[i].running.as_ref()?.registry.as_ref()?)))
        .collect();
    let states: Vec<crate::registry::state::RegistryState> = agents
        .iter()
        .filter_map(|(_, a)| a.state.lock().ok().map(|s| s.clone()))
        .collect();
    let Some(first) = states.first() else {
        return Err("no registry replica".to_string());
    };
    for (k, state) in states.iter().enumerate() {
        if state.revision != first.revision || state.publications != first.publications {
            return Err(format!("registry replica on node {} differs", agents[k].0));
        }
    }
    for publication in first.publications.values() {
        let current = agents
            .iter()
            .find(|(i, _)| world.nodes[*i].info.node_id == publication.id.node)
            .map(|(_, a)| a.epoch);
        if current != Some(publication.id.epoch) {
            return Err(format!(
                "registry holds {} of node {} epoch {}, whose instance is {current:?}",
                publication.name, publication.id.node, publication.id.epoch
            ));
        }
    }
    for (i, agent) in &agents {
        if !agent.holds_all(&first.publications) {
            return Err(format!(
                "node {i}: a held publication is missing from the registry"
            ));
        }
    }
    Ok(())
}

/// The seeds to run: `COPYCAT_SIM_SEED_START` (default 1) and `COPYCAT_SIM_SEEDS`
/// (default `default_count`).
pub(crate) fn seeds(default_count: u64) -> std::ops::Range<u64> {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let start = var("COPYCAT_SIM_SEED_START", 1);
    start..start + var("COPYCAT_SIM_SEEDS", default_count)
}

/// The default parameters, with `COPYCAT_SIM_FAULT_SECS` (simulated seconds of faults and
/// client load per seed, default 20) applied.
pub(crate) fn params_from_env() -> Params {
    let defaults = Params::default();
    let fault_phase_ms = std::env::var("COPYCAT_SIM_FAULT_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(defaults.fault_phase_ms, |secs| secs * 1_000);
    Params {
        fault_phase_ms,
        ..defaults
    }
}

/// The parameters of `seed` in the seed sweeps: [`params_from_env`], with half of the
/// seeds founding the cluster once every node is up (`bootstrap_expect`) and half with
/// the founder alone, its groups growing as the others join.
pub(crate) fn params_for_seed(seed: u64) -> Params {
    let params = params_from_env();
    let bootstrap_expect = if seed % 4 < 2 { params.nodes } else { 1 };
    Params {
        bootstrap_expect,
        ..params
    }
}

/// Runs `seed`, turning a failure or a panic into a message with the replay command.
fn check_seed(seed: u64, params: &Params) -> Result<Report, String> {
    let started = Instant::now();
    let result = std::panic::catch_unwind(|| run_seed(seed, params)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("panic: {what}"))
    });
    match &result {
        Ok(report) => eprintln!("sim seed {seed}: ok in {:?}: {report:?}", started.elapsed()),
        Err(e) => eprintln!(
            "sim seed {seed} FAILED: {e}\nreplay: COPYCAT_SIM_SEED_START={seed} COPYCAT_SIM_SEEDS=1 cargo test --lib sim::tests -- --nocapture"
        ),
    }
    result.map_err(|e| format!("seed {seed}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Half of the seeds (`parity` 0 or 1), so the two halves run on two cores.
    fn run_half(parity: u64) {
        let failures: Vec<String> = seeds(16)
            .filter(|s| s % 2 == parity)
            .filter_map(|seed| check_seed(seed, &params_for_seed(seed)).err())
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn simulated_clusters_lose_nothing_and_heal_even_seeds() {
        run_half(0);
    }

    #[test]
    fn simulated_clusters_lose_nothing_and_heal_odd_seeds() {
        run_half(1);
    }

    /// Seeds beyond the default range that found bugs (each fixed): raft-rs append
    /// batching acknowledging missing entries (20), duplicate deliveries from lagging,
    /// removed or snapshot-skipped proposers (23, 39, 78, 82), diverging duplicate checks
    /// breaking read linearizability (49), a resolution of an owner its node never saw
    /// (96), a deleted replica revived with an empty log (102), a removed learner nobody
    /// reported stuck forever (137), a system replica ignoring its re-added older
    /// incarnation (553), a restarted learner never finding its hibernating leader (138), a
    /// restarted system leader re-adding an incarnation its node had deleted (145), a
    /// restarted system leader sending its stored snapshot as a file reference, which left
    /// the receiver's directory stale (398), a follower campaigning while the snapshot it
    /// received waited for its batch (raft-rs panicked; 281, found once followers of an
    /// unreachable leader campaign early), a replica still voting in the outgoing half of a
    /// joint configuration deleting itself as forgotten, which wedged the group (591),
    /// streamed snapshots raft ignored evicting the file the log starts from (1124), a
    /// group created with two voters during a partition losing one for good (1464), a
    /// system-group leader removed by a configuration change it applied while leading
    /// (raft-rs panicked on its next persisted batch; 266).
    /// Seeds of the default range
    /// found a snapshot labelled below its content (1), an unreadable adopted offer (3), a
    /// removal never recorded in the directory (9), learners never served a snapshot (2,
    /// 6). The workload changed since some were found, so a seed now runs a different
    /// schedule; they stay as extra coverage.
    const REGRESSION_SEEDS: [u64; 14] = [
        20, 23, 39, 49, 78, 82, 96, 102, 137, 138, 145, 266, 398, 553,
    ];

    #[test]
    fn seeds_that_found_bugs_stay_fixed() {
        let params = Params::default();
        let failures: Vec<String> = REGRESSION_SEEDS
            .iter()
            .filter_map(|seed| check_seed(*seed, &params).err())
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Forwarded proposals lost by the network (with no leader change) are proposed again
    /// and acknowledged, before their deadline, exactly once.
    #[test]
    fn lost_forwarded_proposals_are_retried() {
        let params = Params {
            faults: false,
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            proposal_drop_rate: 0.3,
            proposal_timeout_ms: 30_000,
            fault_phase_ms: 8_000,
            registry: false,
            ..Params::default()
        };
        let report = check_seed(seeds(1).start, &params).expect("a clean run");
        assert!(report.acked > 20, "{report:?}");
        assert_eq!(report.unacked, 0, "{report:?}");
    }

    #[test]
    fn the_same_seed_replays_the_same_run() {
        let params = Params {
            fault_phase_ms: 6_000,
            ..Params::default()
        };
        let seed = seeds(1).start;
        let first = check_seed(seed, &params).expect("first run");
        let second = check_seed(seed, &params).expect("second run");
        assert_eq!(first, second);
    }
}
