//! The per-node membership view computed from foca's active identities.

use super::*;

/// Computes the new per-node view from foca's active identities and the
/// events that lead from `previous` to it.
///
/// A node id is represented by its alive identity with the largest
/// [`GossipIdentity::conflict_key`]; it is `Up` when it appears or its
/// representative identity changes (renewed or restarted node), and `Down`
/// only when none of its identities is alive any more. `me` is excluded (an
/// older identity of ours, on another address, may still be around).
pub(super) fn diff_view<'a>(
    previous: &HashMap<NodeId, GossipIdentity>,
    active: impl Iterator<Item = &'a GossipIdentity>,
    me: NodeId,
) -> (HashMap<NodeId, GossipIdentity>, Vec<MembershipEvent>) {
    let mut view: HashMap<NodeId, GossipIdentity> = HashMap::new();
    for identity in active {
        if identity.info.node_id == me {
            continue;
        }
        match view.entry(identity.info.node_id) {
            Entry::Vacant(slot) => {
                slot.insert(identity.clone());
            }
            Entry::Occupied(mut slot) => {
                if identity.conflict_key() > slot.get().conflict_key() {
                    slot.insert(identity.clone());
                }
            }
        }
    }
    let mut downs: Vec<NodeId> = previous
        .keys()
        .filter(|id| !view.contains_key(id))
        .copied()
        .collect();
    downs.sort_unstable();
    let mut ups: Vec<&GossipIdentity> = view
        .iter()
        .filter(|(id, identity)| previous.get(id) != Some(identity))
        .map(|(_, identity)| identity)
        .collect();
    ups.sort_unstable_by_key(|identity| identity.info.node_id);
    let events = downs
        .into_iter()
        .map(MembershipEvent::Down)
        .chain(ups.into_iter().map(|i| MembershipEvent::Up(i.info.clone())))
        .collect();
    (view, events)
}
