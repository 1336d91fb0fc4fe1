//! Hibernation of idle groups (as in TiKV): a replica with nothing in flight stops ticking,
//! so thousands of idle groups cost neither heartbeats nor timer work.
//!
//! A replica counts the ticks during which it was *settled*: a leader known, every entry
//! committed, applied and (on the leader) replicated to every peer, no configuration
//! change, read or leadership transfer pending. Anything that changes that (a proposal, a
//! read, any raft message but heartbeats) restarts the count. Followers stop ticking after
//! [`FOLLOWER_QUIET_ELECTIONS`] quiet election timeouts, the leader after
//! [`LEADER_QUIET_ELECTIONS`], so followers are asleep before the leader's heartbeats stop
//! and never start an election because of them. The node wakes a group on any proposal or
//! non-heartbeat message, and every group on any membership change, so a dead leader's
//! followers resume their election timers once gossip reports it down. A replica that
//! hears from no leader for an election timeout (a restarted learner, which never
//! campaigns, or one trusting a deposed leader) asks its peers to wake.

use super::RaftGroup;
use raft::eraftpb::MessageType;

/// Quiet election timeouts after which a follower stops ticking: above the longest
/// randomized timeout, so a follower woken by a membership change has time to elect.
const FOLLOWER_QUIET_ELECTIONS: u64 = 2;

/// Quiet election timeouts after which the leader stops ticking (and heartbeating).
const LEADER_QUIET_ELECTIONS: u64 = 3;

impl RaftGroup {
    /// Whether nothing is in flight in this replica (see the module docs).
    fn settled(&self) -> bool {
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        let common = raft.leader_id != 0
            && self.held.is_empty()
            && raft.raft_log.committed == last
            && self.applied >= last
            && !raft.has_pending_conf()
            && raft.pending_read_count() == 0
            && raft.lead_transferee.is_none();
        common && (!self.is_leader() || raft.prs().iter().all(|(_, p)| p.matched == last))
    }

    /// Counts one more tick as quiet, or restarts the count.
    pub(super) fn count_quiet_tick(&mut self) {
        self.quiet_ticks = if self.settled() {
            self.quiet_ticks + 1
        } else {
            0
        };
    }

    /// Something happened to this replica: it stays awake for a while again.
    pub(super) fn stir(&mut self) {
        self.quiet_ticks = 0;
    }

    /// Restarts the quiet count unless `msg_type` is steady-state heartbeat traffic.
    pub(super) fn stir_for(&mut self, msg_type: MessageType) {
        if !matches!(
            msg_type,
            MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse
        ) {
            self.stir();
        }
    }

    /// Whether this replica has been quiet long enough to stop ticking.
    pub(crate) fn may_hibernate(&self) -> bool {
        let elections = if self.is_leader() {
            LEADER_QUIET_ELECTIONS
        } else {
            FOLLOWER_QUIET_ELECTIONS
        };
        let timeout = self.raw.raft.election_timeout() as u64;
        self.quiet_ticks >= elections * timeout + 2
    }

    /// The node ticks this replica again. A leader trusts its followers afresh: its
    /// quorum check would otherwise count the time asleep as their silence and step down.
    pub(crate) fn wake(&mut self) {
        self.stir();
        if self.is_leader() {
            let raft = &mut self.raw.raft;
            raft.election_elapsed = 0;
            for (_, progress) in raft.mut_prs().iter_mut() {
                progress.recent_active = true;
            }
        }
    }

    /// Whether this replica, unheard from any leader for another election timeout, should
    /// ask its peers to wake: a hibernating leader sends nothing until something stirs it,
    /// and learners (which never campaign) or replicas trusting a deposed leader would
    /// wait forever.
    pub(crate) fn should_look_for_leader(&self) -> bool {
        let timeout = self.raw.raft.election_timeout() as u64;
        self.unheard_ticks > 0 && self.unheard_ticks % timeout == 0
    }
}
