//! Snapshots of data groups: when to ask the application for one, compacting the log under
//! it, and installing one received from the leader.
//!
//! A replica with a subscriber asks that subscriber's provider for a snapshot every
//! `snapshot_interval` applied entries (or `snapshot_max_log_bytes` applied bytes), once
//! the bytes applied since its last snapshot are also at least `snapshot_log_percent` %
//! of that snapshot's size — so a large state is not rewritten whole for every few
//! megabytes of log: writing snapshots costs about 100/percent times the bytes written,
//! and the log holds about percent % of the state (beside the two newest snapshots). It
//! also takes one on demand when raft needs a snapshot for a replica its stored one does
//! not include. The provider runs on the runtime's snapshot thread; the core only sees the
//! result, compacts its log up to the snapshot's index and serves the stored snapshot to
//! lagging replicas.
//!
//! A replica without a subscriber cannot snapshot: when it is due by the same rule (sizes
//! from the last snapshot it received), or when raft needs one, it asks the other replicas,
//! and one with a subscriber takes a snapshot and offers it to the replicas that asked —
//! only to them: replicas with subscribers take their own. So while a data structure has
//! no subscriber anywhere, its log is kept whole.

use protobuf::Message as _;
use raft::eraftpb::SnapshotMetadata;

use super::{NodeCore, SnapshotRequest};
use crate::error::Error;
use crate::id::{node_of, DataStructureId, NodeId};

/// When this node last did what for a group's snapshots: the pacing of its requests.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pacing {
    /// A snapshot of the replica is being taken.
    taking: bool,
    /// No snapshot is asked for before this applied index (after one was declined).
    not_before: u64,
    /// When this replica last asked others for a snapshot (ms, node clock; 0: never).
    asked_ms: u64,
    /// When this replica last took a snapshot because another asked (ms; 0: never).
    forced_ms: u64,
    /// Size of the last snapshot taken or received here (bytes; 0: unknown).
    snapshot_bytes: u64,
    /// Nodes whose replicas asked for a snapshot since the last one was offered.
    askers: Vec<NodeId>,
    /// This replica (without a subscriber) is due a snapshot and has asked the others for
    /// one, not yet compacted under an offer: it asks again every
    /// [`SNAPSHOT_ASK_PERIOD_MS`] until one arrives. An ask can go unanswered — dropped
    /// inside the ask period, refused by a replica that took a snapshot too recently, or
    /// answered by an offer it could not use yet — and a quiet group applies nothing that
    /// would make it ask again.
    asking: bool,
}

/// How often a replica without a subscriber asks the others for a snapshot.
const SNAPSHOT_ASK_PERIOD_MS: u64 = 1_000;
/// How often a replica takes a snapshot because another one asked.
const FORCED_SNAPSHOT_PERIOD_MS: u64 = 5_000;

impl NodeCore {
    /// After applying: asks for a snapshot once enough was applied since the last one.
    pub(super) fn maybe_request_snapshot(&mut self, group: DataStructureId, applied_bytes: u64) {
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        raft.note_applied_bytes(applied_bytes);
        if !self.snapshot_due(group) {
            return;
        }
        if self.subscriptions.has_any(group) {
            self.request_snapshot(group);
        } else {
            self.ask_for_snapshot(group);
        }
    }

    /// Whether enough was applied to `group` since its last snapshot to want a new one.
    fn snapshot_due(&self, group: DataStructureId) -> bool {
        let Some(raft) = self.groups.get(&group) else {
            return false;
        };
        let bytes = raft.applied_bytes_since_snapshot();
        let entries = raft.applied().saturating_sub(raft.log().snapshot_index());
        let pacing = self.pacing.get(&group);
        let (not_before, snapshot_bytes) =
            pacing.map_or((0, 0), |p| (p.not_before, p.snapshot_bytes));
        let often_enough =
            entries >= self.cfg.snapshot_interval || bytes >= self.cfg.snapshot_max_log_bytes;
        let worth_it = bytes >= snapshot_bytes.saturating_mul(self.cfg.snapshot_log_percent) / 100;
        often_enough && worth_it && raft.applied() >= not_before
    }

    /// Asks again for the snapshots this node's detached replicas still wait for (see
    /// [`Pacing::asking`]); a replica no longer due stops asking.
    pub(super) fn ask_again_for_snapshots(&mut self) {
        let asking: Vec<_> = self
            .pacing
            .iter()
            .filter(|(_, p)| p.asking)
            .map(|(group, _)| *group)
            .collect();
        for group in asking {
            if self.snapshot_due(group) && !self.subscriptions.has_any(group) {
                self.ask_for_snapshot(group);
            } else if let Some(pacing) = self.pacing.get_mut(&group) {
                pacing.asking = false;
            }
        }
    }

    /// Raft needs a snapshot for a lagging replica that the stored one cannot serve: take
    /// one, or without a local subscriber ask the other replicas to take one and offer it.
    pub(super) fn request_wanted_snapshots(&mut self, full: bool) {
        // A group comes to want a snapshot by applying entries, awake; the full pass
        // catches one that fell asleep first.
        let wanted: Vec<_> = self
            .visited_groups(full)
            .into_iter()
            .filter(|id| !id.is_system())
            .filter(|id| {
                self.groups
                    .get_mut(id)
                    .is_some_and(|raft| raft.log_mut().take_snapshot_wanted())
            })
            .collect();
        for group in wanted {
            if self.subscriptions.has_any(group) {
                self.request_snapshot(group);
            } else {
                self.ask_for_snapshot(group);
            }
        }
    }

    /// Asks every other replica of `group` for a fresh snapshot (at most once a second).
    fn ask_for_snapshot(&mut self, group: DataStructureId) {
        let now = self.now_ms;
        let Some(raft) = self.groups.get(&group) else {
            return;
        };
        let pacing = self.pacing.entry(group).or_default();
        pacing.asking = true;
        if pacing.asked_ms > 0 && now < pacing.asked_ms + SNAPSHOT_ASK_PERIOD_MS {
            return;
        }
        pacing.asked_ms = now;
        let cs = raft.log().conf_state();
        let nodes: Vec<_> = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .map(|r| node_of(*r))
            .filter(|n| *n != self.me)
            .collect();
        for node in nodes {
            self.round
                .to(node)
                .snapshots_needed
                .push(crate::proto::SnapshotNeeded {
                    group: group.to_bytes().to_vec(),
                });
        }
    }

    /// The replica of `group` on node `from` needs a snapshot it cannot take: a replica
    /// with a subscriber takes one now (at most once per [`FORCED_SNAPSHOT_PERIOD_MS`]) and
    /// offers it to the replicas that asked.
    pub(super) fn handle_snapshot_needed(&mut self, from: NodeId, group: DataStructureId) {
        let now = self.now_ms;
        if !self.subscriptions.has_any(group) || !self.groups.contains_key(&group) {
            return;
        }
        if let Some(stored) = self.snapshot_with_nothing_after(group) {
            // Nothing applied since the stored snapshot: no new one would be taken, so
            // the asker gets that one.
            self.offer_snapshot(group, &stored, &[from]);
            return;
        }
        let pacing = self.pacing.entry(group).or_default();
        if !pacing.askers.contains(&from) {
            pacing.askers.push(from);
        }
        if pacing.forced_ms > 0 && now < pacing.forced_ms + FORCED_SNAPSHOT_PERIOD_MS {
            return;
        }
        pacing.forced_ms = now;
        self.request_snapshot(group);
    }

    /// The metadata of `group`'s stored snapshot if nothing was applied after it (and it is
    /// a real one, not the synthetic first).
    fn snapshot_with_nothing_after(&self, group: DataStructureId) -> Option<SnapshotMetadata> {
        let raft = self.groups.get(&group)?;
        let meta = raft.log().snapshot_metadata();
        (meta.index > crate::group::BOOTSTRAP_INDEX && raft.applied() <= meta.index)
            .then(|| meta.clone())
    }

    /// Asks a local subscriber's provider for a snapshot of `group`, unless one is being
    /// taken or nothing new was applied.
    fn request_snapshot(&mut self, group: DataStructureId) {
        if group.is_system() {
            return;
        }
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        let min_index = raft.log().snapshot_index() + 1;
        let taking = self.pacing.get(&group).is_some_and(|p| p.taking);
        if taking || raft.applied() < min_index {
            return;
        }
        let Some((sub_id, sub)) = self.subscriptions.first_of(group) else {
            return;
        };
        let max_index = sub.next_index.saturating_sub(1).min(raft.applied());
        if max_index < min_index {
            return;
        }
        let last_entry_index = if max_index == raft.applied() {
            match raft.last_entry_applied() {
                Ok(index) => index,
                Err(e) => {
                    if !self.storage_failed() {
                        self.stop_on_storage_failure("reading", e);
                    }
                    return;
                }
            }
        } else {
            max_index
        };
        self.pacing.entry(group).or_default().taking = true;
        self.snapshot_requests.push(SnapshotRequest {
            group,
            sub: sub_id,
            min_index,
            max_index,
            last_entry_index,
        });
    }

    /// The snapshot of `group` at `index` (`bytes` long) is stored: compact the log under
    /// it, and offer it to the replicas that asked for one.
    pub(crate) fn handle_snapshot_taken(&mut self, group: DataStructureId, index: u64, bytes: u64) {
        let pacing = self.pacing.entry(group).or_default();
        pacing.taking = false;
        pacing.snapshot_bytes = bytes;
        let askers = std::mem::take(&mut pacing.askers);
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        match raft.compact_to(index) {
            Some((meta, ids)) => {
                slog::info!(self.cfg.logger, "snapshot taken, log compacted"; "group" => %group,
                    "index" => index);
                self.offer_snapshot(group, &meta, &askers);
                let write = self.round.write_for(group);
                write.compact = Some(meta);
                write.compact_ids = Some(ids);
                self.active.insert(group);
            }
            None => {
                slog::warn!(self.cfg.logger, "snapshot at an unusable index ignored";
                    "group" => %group, "index" => index);
            }
        }
    }

    /// Another replica's snapshot file is installed here: a replica with no subscriber
    /// compacts its log under it (one with a subscriber takes its own snapshots). The
    /// snapshot must be of an applied index whose term matches the local log, so both
    /// cover the same committed prefix.
    pub(super) fn handle_snapshot_offered(
        &mut self,
        group: DataStructureId,
        metadata: &[u8],
        bytes: u64,
    ) {
        let mut meta = SnapshotMetadata::default();
        if meta.merge_from_bytes(metadata).is_err() || self.subscriptions.has_any(group) {
            return;
        }
        let Some(raft) = self.groups.get_mut(&group) else {
            return;
        };
        let local_term = raft::Storage::term(raft.log(), meta.index).ok();
        if local_term != Some(meta.term) {
            return;
        }
        if let Some((compacted, ids)) = raft.compact_to(meta.index) {
            slog::debug!(self.cfg.logger, "compacted under an offered snapshot";
                "group" => %group, "index" => meta.index);
            let write = self.round.write_for(group);
            write.compact = Some(compacted);
            write.adopt_offer = true;
            write.compact_ids = Some(ids);
            let pacing = self.pacing.entry(group).or_default();
            pacing.snapshot_bytes = bytes;
            pacing.asking = false;
        }
    }

    /// No snapshot of `group` this time: the provider declined (an application that never
    /// snapshots), or taking it failed, which its subscribers hear about. Either way the
    /// next attempt waits for another `snapshot_interval` entries.
    pub(crate) fn handle_snapshot_failed(
        &mut self,
        group: DataStructureId,
        reason: Option<String>,
    ) {
        if let Some(raft) = self.groups.get(&group) {
            let pacing = self.pacing.entry(group).or_default();
            pacing.taking = false;
            pacing.not_before = raft.applied() + self.cfg.snapshot_interval;
        }
        let Some(reason) = reason else {
            return;
        };
        slog::warn!(self.cfg.logger, "snapshot failed"; "group" => %group, "reason" => &reason);
        self.subscriptions
            .report_to_group(group, &Error::SnapshotUnavailable(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_covers_trailing_non_application_entries_only_when_complete() {
        let request = SnapshotRequest {
            group: DataStructureId::new(),
            sub: 1,
            min_index: 10,
            max_index: 20,
            last_entry_index: 17,
        };
        // State through the last application entry covers the no-ops after it.
        assert_eq!(request.covered_index(17), Some(20));
        // Older state covers only itself; state from before the range is refused.
        assert_eq!(request.covered_index(12), Some(12));
        assert_eq!(request.covered_index(9), None);
        // State that moved on since the request covers exactly itself, never less: a
        // snapshot labelled 20 holding entry 23 would hand entry 23 out twice.
        assert_eq!(request.covered_index(23), Some(23));
    }
}
