//! Election timers: reproducible randomized timeouts, and a quick election when the
//! leader's node is known to be unreachable.

use rand::Rng;

use super::RaftGroup;
use crate::id::{node_of, NodeId};

impl RaftGroup {
    /// The node of this replica's leader is unreachable (most often its process died: the
    /// transport saw the connection close). A voter stops counting on that leader and
    /// campaigns within a few ticks instead of a whole election timeout. Returns whether it
    /// will. Harmless when the leader is alive: with pre-vote, the leader and the followers
    /// still hearing from it ignore the request (they are in their lease).
    pub(crate) fn on_leader_node_unreachable(&mut self, node: NodeId) -> bool {
        let leader = self.leader();
        if leader == 0 || node_of(leader) != node || self.is_leader() || !self.raw.raft.promotable()
        {
            return false;
        }
        let raft = &mut self.raw.raft;
        let timeout = raft.election_timeout();
        // Staggered by rank among the other voters, so two followers seldom split the vote.
        let rank = raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|id| *id != leader && *id < raft.id)
            .count();
        let stagger = (1 + 2 * rank).min(timeout.saturating_sub(1));
        raft.election_elapsed = raft.election_elapsed.max(timeout);
        raft.set_randomized_election_timeout(timeout + stagger);
        self.stir();
        true
    }

    /// Whether this replica is its group's only voter (not in a joint configuration): it
    /// needs nobody's vote, and no other replica can lead.
    pub(crate) fn is_sole_voter(&self) -> bool {
        let cs = self.raw.store().conf_state();
        cs.voters == [self.raw.raft.id] && cs.voters_outgoing.is_empty()
    }

    /// raft-rs resets the election timeout with its own thread RNG whenever the term or role
    /// changes; overwrite it from the node's seeded RNG so runs are reproducible.
    pub(super) fn randomize_timeout_if_changed(&mut self, rng: &mut impl Rng) {
        let now = (self.raw.raft.term, self.raw.raft.state);
        if now == self.last_term_role {
            return;
        }
        self.last_term_role = now;
        // raft-rs's defaults: [election_tick, 2 * election_tick).
        let min = self.raw.raft.election_timeout();
        let max = 2 * min;
        if min < max {
            self.raw
                .raft
                .set_randomized_election_timeout(rng.gen_range(min..max));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use raft::eraftpb::{Message, MessageType};
    use rand::SeedableRng;

    use super::*;
    use crate::group::{GroupLog, RaftSettings};
    use crate::id::DataStructureId;
    use crate::storage::{LogStore, SledStore};

    const ELECTION_TICKS: usize = 10;

    /// Replica `id` of a fresh group with voters 1, 2 and 3, following leader 1 (the bootstrap
    /// snapshot is at term 5).
    fn follower_of_1(id: u64, dir: &std::path::Path, rng: &mut rand::rngs::StdRng) -> RaftGroup {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let disk: Arc<dyn LogStore> =
            Arc::new(SledStore::open(dir, logger.clone()).expect("open sled"));
        let group = DataStructureId::from_u128(9);
        let mut log = GroupLog::empty(group, disk);
        log.apply_snapshot(&GroupLog::bootstrap_snapshot(&[1, 2, 3]));
        let settings = RaftSettings {
            election_ticks: ELECTION_TICKS,
            heartbeat_ticks: 2,
            logger,
        };
        let mut raft = RaftGroup::new(group, id, log, 0, &settings, rng).expect("raft group");
        let heartbeat = Message {
            msg_type: MessageType::MsgHeartbeat,
            from: 1,
            to: id,
            term: 6,
            ..Default::default()
        };
        raft.step(heartbeat, rng).expect("heartbeat");
        assert_eq!(raft.leader(), 1);
        raft
    }

    /// Ticks until the replica stops following leader 1 (it campaigns); `None` if it still
    /// follows after `limit` ticks.
    fn ticks_to_campaign(
        raft: &mut RaftGroup,
        rng: &mut rand::rngs::StdRng,
        limit: usize,
    ) -> Option<usize> {
        (1..=limit).find(|_| {
            raft.tick(rng);
            raft.leader() != 1
        })
    }

    #[test]
    fn followers_of_an_unreachable_leader_campaign_before_the_election_timeout() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let dirs = [
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        ];
        let mut second = follower_of_1(2, dirs[0].path(), &mut rng);
        let mut third = follower_of_1(3, dirs[1].path(), &mut rng);
        assert!(second.on_leader_node_unreachable(node_of(1)));
        assert!(third.on_leader_node_unreachable(node_of(1)));
        let second_after = ticks_to_campaign(&mut second, &mut rng, ELECTION_TICKS);
        let third_after = ticks_to_campaign(&mut third, &mut rng, ELECTION_TICKS);
        // Staggered by rank so they seldom split the vote.
        assert_eq!(second_after, Some(1));
        assert_eq!(third_after, Some(3));
    }

    #[test]
    fn a_follower_installing_a_snapshot_campaigns_only_once_it_is_applied() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let dir = tempfile::tempdir().expect("dir");
        let mut second = follower_of_1(2, dir.path(), &mut rng);
        let mut snapshot = GroupLog::bootstrap_snapshot(&[1, 2, 3]);
        snapshot.mut_metadata().index = 30;
        snapshot.mut_metadata().term = 6;
        let message = Message {
            msg_type: MessageType::MsgSnapshot,
            from: 1,
            to: 2,
            term: 6,
            snapshot: Some(snapshot).into(),
            ..Default::default()
        };
        second.step(message, &mut rng).expect("snapshot");
        second.collect_ready(1).expect("a ready with the snapshot");
        assert!(second.on_leader_node_unreachable(node_of(1)));
        // raft-rs would panic reading the entries the snapshot replaced if it campaigned
        // before the snapshot's batch is durable and applied.
        assert_eq!(
            ticks_to_campaign(&mut second, &mut rng, ELECTION_TICKS),
            None
        );
        second.on_durable(1).expect("the snapshot is released");
        second.advance_applied(30);
        assert!(ticks_to_campaign(&mut second, &mut rng, ELECTION_TICKS).is_some());
    }

    #[test]
    fn an_unreachable_node_that_holds_no_leader_changes_nothing() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let dir = tempfile::tempdir().expect("dir");
        let mut second = follower_of_1(2, dir.path(), &mut rng);
        assert!(!second.on_leader_node_unreachable(node_of(3)));
        assert_eq!(
            ticks_to_campaign(&mut second, &mut rng, ELECTION_TICKS - 1),
            None
        );
    }
}
