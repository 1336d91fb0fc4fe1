//! The registry's upkeep decisions, as pure functions of the replicated state, this
//! instance's own publications and its member view: what to publish again, what to
//! withdraw, whose publications to remove. The worker thread proposes what they return;
//! the simulator drives them with its fake clock.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::liveness::MemberView;
use super::shared::Wanted;
use super::state::{Op, RegistryState};
use crate::NodeId;

/// How long a proposal the upkeep made may stay unapplied before it is proposed again.
pub(crate) const REPROPOSE_AFTER: Duration = Duration::from_secs(3);

/// The operations that make the map hold exactly the publications this instance
/// (`me`, `epoch`) holds: its hello until it is registered, a publication the map lacks
/// (lost proposal, or removed while this node was thought dead) again, and the withdrawal
/// of one the application dropped.
pub(crate) fn own_ops(
    state: &RegistryState,
    wanted: &mut Wanted,
    me: NodeId,
    epoch: u64,
    now: Instant,
) -> Vec<Op> {
    let registered = state.epochs.get(&me).copied().unwrap_or(0);
    if registered > epoch {
        return Vec::new();
    }
    let due = |at: Option<&Instant>| at.is_none_or(|at| now.duration_since(*at) >= REPROPOSE_AFTER);
    let mut ops = Vec::new();
    // The hello removes what this node's earlier instances published; it may have been lost.
    let mut hello = Vec::new();
    if registered < epoch && due(wanted.hello_at.as_ref()) {
        wanted.hello_at = Some(now);
        hello.push(Op::Hello { node: me, epoch });
    }
    for (id, publication) in &wanted.publications {
        if state.publications.get(id) != Some(publication) && due(wanted.proposed_at.get(id)) {
            ops.push((*id, Op::Publish(publication.clone())));
        }
    }
    for publication in state.owned_by(me) {
        let id = publication.id;
        if id.epoch == epoch
            && !wanted.publications.contains_key(&id)
            && due(wanted.proposed_at.get(&id))
        {
            ops.push((id, Op::Unpublish(id)));
        }
    }
    wanted.proposed_at.retain(|id, _| {
        wanted.publications.contains_key(id) || state.publications.contains_key(id)
    });
    hello
        .into_iter()
        .chain(ops.into_iter().map(|(id, op)| {
            wanted.proposed_at.insert(id, now);
            op
        }))
        .collect()
}

/// The removals of publications whose owner has been dead longer than `grace`, for the
/// owners this node (`me`) is responsible for; `proposed` remembers when each was last
/// proposed.
pub(crate) fn dead_owner_ops(
    state: &RegistryState,
    view: &mut MemberView,
    proposed: &mut HashMap<NodeId, Instant>,
    me: NodeId,
    grace: Duration,
    now: Instant,
) -> Vec<(Op, Duration)> {
    let mut owners: BTreeMap<NodeId, u64> = BTreeMap::new();
    for publication in state.publications.values() {
        let epoch = owners.entry(publication.id.node).or_default();
        *epoch = (*epoch).max(publication.id.epoch);
    }
    proposed.retain(|node, _| owners.contains_key(node));
    let mut ops = Vec::new();
    for (node, epoch) in owners {
        if node == me {
            continue;
        }
        let Some(dead_for) = view.dead_for(node, now) else {
            continue;
        };
        let registry_nodes = state.epochs.keys().copied();
        if !view.responsible_for(node, me, registry_nodes, dead_for, grace) {
            continue;
        }
        if proposed
            .get(&node)
            .is_some_and(|at| now.duration_since(*at) < REPROPOSE_AFTER)
        {
            continue;
        }
        proposed.insert(node, now);
        ops.push((Op::OwnerDead { node, epoch }, dead_for));
    }
    ops
}
