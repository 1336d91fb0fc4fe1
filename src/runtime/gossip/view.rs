//! The per-node membership view computed from foca's active identities, admitting only
//! identities whose node id is bound to their raft address.
//!
//! Anyone holding the cluster's gossip key can gossip an identity naming any node id with
//! any addresses and any bump. Without a check, the highest bump would represent the node
//! id, so an insider could point every peer's raft traffic for node X at itself (with TLS
//! the handshake then fails: X is cut off), or make up node ids that are then added to the
//! system group. With TLS, an identity is admitted only once a probe proved that the
//! server at its raft address holds a certificate for its node id
//! ([`Verification::Verified`]); the gossip address stays unproved (see `verify.rs`).

use super::*;

/// What is known of the binding between an identity's node id and its raft address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verification {
    /// Proved (or nothing to prove: a plaintext cluster).
    Verified,
    /// Not proved yet, and no probe has failed yet: the node's previous representative,
    /// if any, keeps standing for it meanwhile.
    Pending,
    /// A probe failed (retried later) or it is not tracked: never admitted, and does not
    /// hold the node's previous representative.
    Refuted,
}

/// Computes the new per-node view from foca's active identities and the events that
/// lead from `previous` to it; `verification` says which identities are bound to their
/// node id.
///
/// A node id is represented by its [`Verification::Verified`] alive identity with the
/// largest [`GossipIdentity::conflict_key`]. When it has none, its previous
/// representative (if any) stays while one of its alive identities is
/// [`Verification::Pending`] (a restart on new ports, or a renewal, being proved); else it
/// is absent. It is `Up` when it appears or its representative changes (renewed or
/// restarted node), and `Down` when it leaves the view: none of its identities is alive,
/// or none that is alive can be proved. `me` is excluded (an older identity of ours, on
/// another address, may still be around).
pub(super) fn diff_view<'a>(
    previous: &HashMap<NodeId, GossipIdentity>,
    active: impl Iterator<Item = &'a GossipIdentity>,
    me: NodeId,
    verification: impl Fn(&GossipIdentity) -> Verification,
) -> (HashMap<NodeId, GossipIdentity>, Vec<MembershipEvent>) {
    let mut view: HashMap<NodeId, GossipIdentity> = HashMap::new();
    let mut awaiting: Vec<NodeId> = Vec::new();
    for identity in active {
        let node = identity.info.node_id;
        if node == me {
            continue;
        }
        match verification(identity) {
            Verification::Verified => {}
            Verification::Pending => {
                awaiting.push(node);
                continue;
            }
            Verification::Refuted => continue,
        }
        match view.entry(node) {
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
    for node in awaiting {
        if let (Entry::Vacant(slot), Some(kept)) = (view.entry(node), previous.get(&node)) {
            slot.insert(kept.clone());
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
