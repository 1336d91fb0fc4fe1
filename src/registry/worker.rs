//! The registry's worker thread: applies the registry's commits to the local state, and
//! keeps the map true to the world: re-publishes what this instance's application holds,
//! withdraws what it dropped, and removes the publications of owners dead past the grace
//! period.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use super::shared::{lock, read, write, Shared};
use super::state::RegistryState;
use super::upkeep;
use crate::Commit;
use crate::NodeId;

/// Most commits applied before waiters are woken, so a long backlog is applied in batches.
const APPLY_BATCH: usize = 1024;

/// Runs until `stop` is set or the node shuts down.
pub(crate) fn run(shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let interval = shared.config.maintenance_interval;
    let mut next_maintenance = Instant::now();
    let mut dead_proposed: HashMap<NodeId, Instant> = Default::default();
    while !stop.load(Ordering::Acquire) {
        let wait = next_maintenance
            .saturating_duration_since(Instant::now())
            .min(interval);
        match apply_commits(&shared, wait) {
            Ok(true) => shared.notify_changed(),
            Ok(false) => {}
            Err(()) => break,
        }
        if Instant::now() >= next_maintenance {
            maintain(&shared, &mut dead_proposed);
            next_maintenance = Instant::now() + interval;
        }
    }
    shared.closed.store(true, Ordering::Release);
    shared.notify_changed();
}

/// Applies the commits that arrive within `wait` (then whatever else is queued, up to a
/// batch); `Ok(true)` if the state changed, `Err` once the node is gone.
fn apply_commits(shared: &Shared, wait: Duration) -> Result<bool, ()> {
    let first = match shared.ds.commits().recv_timeout(wait) {
        Ok(commit) => commit,
        Err(RecvTimeoutError::Timeout) => return Ok(false),
        Err(RecvTimeoutError::Disconnected) => return Err(()),
    };
    let mut state = write(&shared.state);
    apply_commit(shared, &mut state, first);
    for _ in 1..APPLY_BATCH {
        match shared.ds.commits().try_recv() {
            Ok(commit) => apply_commit(shared, &mut state, commit),
            Err(_) => break,
        }
    }
    Ok(true)
}

fn apply_commit(shared: &Shared, state: &mut RegistryState, commit: Commit) {
    let log = &shared.config.logger;
    match commit {
        Commit::Entry { index, data } => {
            if !state.apply_entry(index, &data) {
                slog::warn!(log, "registry: skipped an entry that is no registry operation"; "index" => index);
            }
        }
        Commit::Snapshot { index } => match shared.ds.load_snapshot(index) {
            Ok(bytes) => match RegistryState::decode(&bytes) {
                Some(mut restored) => {
                    restored.applied = index;
                    *state = restored;
                }
                None => {
                    slog::error!(log, "registry: snapshot is no registry state"; "index" => index)
                }
            },
            Err(e) => {
                slog::error!(log, "registry: cannot load snapshot"; "index" => index, "error" => %e)
            }
        },
    }
}

/// One round of upkeep: refresh the member view, reconcile this instance's publications,
/// remove dead owners' publications, log the data structure's errors.
fn maintain(shared: &Shared, dead_proposed: &mut HashMap<NodeId, Instant>) {
    let now = Instant::now();
    if let Ok(members) = shared.node.members_blocking() {
        if write(&shared.view).update(&members, now) {
            shared.notify_changed();
        }
    }
    if shared.epoch() != 0 {
        reconcile_own(shared, now);
    }
    remove_dead_owners(shared, now, dead_proposed);
    while let Ok(error) = shared.ds.errors().try_recv() {
        slog::debug!(shared.config.logger, "registry: proposal failed"; "error" => %error);
    }
}

/// Proposes what the map lacks of this instance's publications, and withdraws what the
/// application no longer holds (a dropped handle whose proposal was lost).
fn reconcile_own(shared: &Shared, now: Instant) {
    let state = read(&shared.state);
    let ops = upkeep::own_ops(
        &state,
        &mut lock(&shared.wanted),
        shared.me,
        shared.epoch(),
        now,
    );
    for op in ops {
        shared.propose_detached(&op);
    }
}

/// Proposes the removal of the publications of owners dead past the grace period, when
/// this node is the one responsible.
fn remove_dead_owners(shared: &Shared, now: Instant, proposed: &mut HashMap<NodeId, Instant>) {
    let state = read(&shared.state);
    let mut view = write(&shared.view);
    let grace = shared.config.owner_grace;
    for (op, dead_for) in upkeep::dead_owner_ops(&state, &mut view, proposed, shared.me, grace, now)
    {
        slog::info!(shared.config.logger, "registry: removing a dead owner's publications";
            "op" => ?op, "dead_for_ms" => dead_for.as_millis() as u64);
        shared.propose_detached(&op);
    }
}
