//! Founding a cluster (Consul's `bootstrap_expect`): the founder creates the system group
//! only once `bootstrap_expect` nodes are alive, with as many of them as voters as the
//! replication factor allows. Until then no data group can be created either (creation is
//! a system-group entry), so neither the directory nor the first data groups start with one
//! voter and grow through a configuration a single failure would block for good.

use super::{placement, NodeCore};
use crate::id::DataStructureId;

impl NodeCore {
    /// Bootstraps the system group if this node founds the cluster, has none yet, and sees
    /// the expected number of alive nodes (itself included). The founder is the first voter
    /// and campaigns at once; the other voters create their replicas when its first
    /// message arrives and receive the (empty) directory as the group's snapshot.
    pub(super) fn bootstrap_when_expected_nodes_are_up(&mut self) {
        let system = DataStructureId::SYSTEM;
        if !self.cfg.founder || self.groups.contains_key(&system) {
            return;
        }
        let alive = self.alive_nodes();
        if alive.len() < self.cfg.bootstrap_expect {
            // Logged at start and at each node that comes up: an operator who expects a
            // cluster sees what it still waits for.
            slog::info!(self.cfg.logger, "waiting for nodes before founding the cluster";
                "alive" => alive.len(), "bootstrap_expect" => self.cfg.bootstrap_expect);
            return;
        }
        let count = self.voter_target();
        let others = alive.into_iter().filter(|(node, _)| *node != self.me);
        let mut voters = vec![self.me];
        voters.extend(placement::place(system, others, count - 1));
        debug_assert_eq!(voters.len(), count, "the founder sees enough alive nodes");
        slog::info!(self.cfg.logger, "founding the cluster"; "voters" => ?voters,
            "bootstrap_expect" => self.cfg.bootstrap_expect);
        self.create_replica(system, &voters, self.me);
    }
}
