//! This node's view of which publication owners are alive, from gossip (polled through
//! [`crate::CopyCat::members`]), and who removes the publications of a dead owner.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::MemberStatus;
use crate::{DataStructureId, NodeId};

/// Which nodes gossip reports down, and since when.
#[derive(Debug, Default)]
pub(crate) struct MemberView {
    /// Nodes gossip reports down.
    pub down: HashSet<NodeId>,
    /// Nodes gossip reports alive (this one included); only their publications resolve.
    pub alive: HashSet<NodeId>,
    /// When each down node went down, in this process's clock.
    down_since: HashMap<NodeId, Instant>,
    /// Owners gossip does not know at all, since when this view noticed.
    missing_since: HashMap<NodeId, Instant>,
}

impl MemberView {
    /// Replaces the view with `members` as polled at `now`; returns whether the set of
    /// alive nodes changed.
    pub(crate) fn update(&mut self, members: &[MemberStatus], now: Instant) -> bool {
        let before = std::mem::take(&mut self.alive);
        self.down.clear();
        for member in members {
            match member.down_for {
                Some(down_for) => {
                    self.down.insert(member.node_id);
                    let since = now.checked_sub(down_for).unwrap_or(now);
                    self.down_since.insert(member.node_id, since);
                }
                None => {
                    self.alive.insert(member.node_id);
                }
            }
        }
        self.down_since.retain(|node, _| self.down.contains(node));
        self.missing_since
            .retain(|node, _| !self.down.contains(node) && !self.alive.contains(node));
        before != self.alive
    }

    /// Whether `node` counts as alive here.
    pub(crate) fn is_alive(&self, node: NodeId) -> bool {
        self.alive.contains(&node)
    }

    /// How long `node` has been dead as far as this view knows: down in gossip, or unknown
    /// to gossip (counted from when this view first looked for it).
    pub(crate) fn dead_for(&mut self, node: NodeId, now: Instant) -> Option<Duration> {
        if self.alive.contains(&node) {
            return None;
        }
        let since = match self.down_since.get(&node) {
            Some(since) => *since,
            None => *self.missing_since.entry(node).or_insert(now),
        };
        Some(now.saturating_duration_since(since))
    }

    /// Whether `me` should remove the publications of `dead`: the first of the alive
    /// registry nodes in rendezvous order for `dead`, so one node does it. Every node
    /// helps once `dead` has been dead for twice the grace period (idempotent), in case the
    /// first one runs no registry any more.
    pub(crate) fn responsible_for(
        &self,
        dead: NodeId,
        me: NodeId,
        registry_nodes: impl IntoIterator<Item = NodeId>,
        dead_for: Duration,
        grace: Duration,
    ) -> bool {
        if dead_for < grace {
            return false;
        }
        if dead_for >= grace * 2 {
            return true;
        }
        let candidates = registry_nodes
            .into_iter()
            .filter(|n| *n == me || self.is_alive(*n));
        let ranked =
            crate::rendezvous_order(DataStructureId::from_u128(u128::from(dead)), candidates);
        ranked.first() == Some(&me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node_id: NodeId, down_for: Option<Duration>) -> MemberStatus {
        MemberStatus {
            node_id,
            addr: String::new(),
            datacenter: "a".to_string(),
            state: if down_for.is_some() {
                crate::MemberState::Down
            } else {
                crate::MemberState::Alive
            },
            down_for,
        }
    }

    #[test]
    fn down_time_comes_from_gossip_and_unknown_owners_count_from_first_sight() {
        let now = Instant::now();
        let mut view = MemberView::default();
        let changed = view.update(
            &[member(1, None), member(2, Some(Duration::from_secs(40)))],
            now,
        );
        assert!(changed);
        assert!(view.dead_for(1, now).is_none());
        assert!(view.dead_for(2, now) >= Some(Duration::from_secs(40)));
        assert_eq!(view.dead_for(3, now), Some(Duration::ZERO));
        let later = now + Duration::from_secs(5);
        assert_eq!(view.dead_for(3, later), Some(Duration::from_secs(5)));
        assert!(!view.update(
            &[member(1, None), member(2, Some(Duration::from_secs(45)))],
            later
        ));
    }

    #[test]
    fn exactly_one_alive_registry_node_is_responsible_within_twice_the_grace() {
        let mut view = MemberView::default();
        view.update(
            &[member(1, None), member(2, None), member(3, None)],
            Instant::now(),
        );
        let grace = Duration::from_secs(30);
        let dead_for = Duration::from_secs(31);
        let responsible: Vec<NodeId> = [1, 2, 3]
            .into_iter()
            .filter(|me| view.responsible_for(9, *me, [1, 2, 3, 9], dead_for, grace))
            .collect();
        assert_eq!(responsible.len(), 1);
        assert!(!view.responsible_for(9, 1, [1, 2, 3], Duration::from_secs(29), grace));
        assert!((1..=3).all(|me| view.responsible_for(9, me, [1, 2, 3], grace * 2, grace)));
    }
}
