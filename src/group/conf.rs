//! Configuration changes of a group: proposing, applying (a removed leader steps down),
//! and the history of configurations by log index.

use raft::eraftpb::{ConfChangeV2, ConfState};
use raft::StateRole;

use super::RaftGroup;

impl RaftGroup {
    /// Proposes a configuration change.
    pub(crate) fn propose_conf_change(&mut self, cc: ConfChangeV2) -> raft::Result<()> {
        self.stir();
        self.raw.propose_conf_change(Vec::new(), cc)
    }

    /// Applies the conf change committed at `index`; returns the new configuration.
    pub(crate) fn apply_conf_change(
        &mut self,
        cc: &ConfChangeV2,
        index: u64,
    ) -> raft::Result<ConfState> {
        let cs = self.raw.apply_conf_change(cc)?;
        self.step_down_if_removed(&cs);
        self.raw.mut_store().set_conf_state(cs.clone());
        self.conf_history.push((index, cs.clone()));
        Ok(cs)
    }

    /// raft-rs keeps a leader that a configuration change removed leading (etcd's "step
    /// down" TODO), and its next persisted entries then look up its own progress, which is
    /// gone: a panic in `on_persist_ready` (simulator seed 266, a system-group leader
    /// elected in a joint configuration that was leaving it). It steps down instead; the
    /// remaining voters elect a leader among themselves.
    fn step_down_if_removed(&mut self, cs: &ConfState) {
        let me = self.raw.raft.id;
        let voter = cs.voters.contains(&me) || cs.voters_outgoing.contains(&me);
        if self.raw.raft.state == StateRole::Leader && !voter {
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
        }
    }

    /// The configuration as of log index `index`, if known: configurations are known from
    /// the applied index this replica opened at (its stored configuration) onwards.
    pub(crate) fn conf_at(&self, index: u64) -> Option<ConfState> {
        self.conf_history
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map(|(_, cs)| cs.clone())
    }
}
