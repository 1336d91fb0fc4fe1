//! The registry's replicated state machine: publications keyed by owner, the owners'
//! epochs, and a bounded history of changes that watches read from.
//!
//! Every replica applies the same operations in log order, so publications, revisions and
//! history are identical everywhere; a watch can resume on any node from a revision.

use std::collections::{BTreeMap, VecDeque};

use bincode::{Decode, Encode};

use super::publication::{Publication, PublicationId};
use crate::NodeId;

/// Position in the registry's sequence of changes; each change gets the next one.
pub type Revision = u64;

/// How many changes the state keeps for watches to resume from.
pub(crate) const HISTORY_LIMIT: usize = 10_000;

/// Leading byte of every encoded operation and snapshot, so a future format can coexist.
const FORMAT_VERSION: u8 = 1;

/// Why a publication went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum RemovalReason {
    /// Its owner unpublished it (explicitly or by dropping the handle).
    Unpublished,
    /// Its owner died: gossip declared the node dead for longer than the grace period, or
    /// the node restarted and its new registry instance replaced the old one.
    OwnerDead,
}

/// What happened to a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Change {
    /// It appeared.
    Added,
    /// Its endpoint or settings changed.
    Changed,
    /// It went away.
    Removed(RemovalReason),
}

/// One change of the registry, as watches deliver it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct WatchEvent {
    /// The change's revision; resume a watch after it to continue from here.
    pub revision: Revision,
    /// What happened.
    pub change: Change,
    /// The publication (for a removal: as it was last).
    pub publication: Publication,
}

/// A registry operation, as proposed to the registry's data structure.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) enum Op {
    /// A registry instance started on `node`; publications of older instances are dead.
    Hello { node: NodeId, epoch: u64 },
    /// Add or replace a publication (ignored if its owner's instance is stale).
    Publish(Publication),
    /// Remove a publication.
    Unpublish(PublicationId),
    /// `node` is dead: remove its publications from instances up to `epoch`.
    OwnerDead { node: NodeId, epoch: u64 },
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

impl Op {
    /// The bytes proposed for this operation.
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Decodes an entry of the registry's log; `None` for bytes no registry wrote.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Op> {
        decode_versioned(bytes)
    }
}

fn encode_versioned(value: &impl Encode) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // Encoding into a Vec cannot fail for these plain types.
    if let Ok(body) = bincode::encode_to_vec(value, bincode_config()) {
        out.extend(body);
    }
    out
}

fn decode_versioned<T: Decode<()>>(bytes: &[u8]) -> Option<T> {
    let (&version, body) = bytes.split_first()?;
    if version != FORMAT_VERSION {
        return None;
    }
    match crate::bounded_bincode_decode(body) {
        Ok((value, read)) if read == body.len() => Some(value),
        _ => None,
    }
}

/// The replicated registry map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub(crate) struct RegistryState {
    /// Index of the last log entry applied.
    pub applied: u64,
    /// The current registry instance of each node that ever ran one.
    pub epochs: BTreeMap<NodeId, u64>,
    /// Every live publication.
    pub publications: BTreeMap<PublicationId, Publication>,
    /// The revision of the latest change (0: none yet).
    pub revision: Revision,
    /// The latest changes, oldest first, at most [`HISTORY_LIMIT`].
    pub history: VecDeque<WatchEvent>,
}

impl RegistryState {
    /// Applies the log entry at `index`; bytes that are no registry operation only advance
    /// `applied` (the registry's data structure may be written by foreign code).
    pub(crate) fn apply_entry(&mut self, index: u64, data: &[u8]) -> bool {
        self.applied = index;
        match Op::decode(data) {
            Some(op) => {
                self.apply(op);
                true
            }
            None => false,
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Hello { node, epoch } => {
                self.observe_epoch(node, epoch);
            }
            Op::Publish(publication) => self.publish(publication),
            Op::Unpublish(id) => {
                if let Some(old) = self.publications.remove(&id) {
                    self.record(Change::Removed(RemovalReason::Unpublished), old);
                }
            }
            Op::OwnerDead { node, epoch } => self.remove_owner(node, epoch),
        }
    }

    /// Records `epoch` as `node`'s instance if it is newer; returns false if it is stale.
    fn observe_epoch(&mut self, node: NodeId, epoch: u64) -> bool {
        let current = self.epochs.get(&node).copied().unwrap_or(0);
        if epoch < current {
            return false;
        }
        if epoch > current {
            self.epochs.insert(node, epoch);
            self.remove_owner(node, epoch - 1);
        }
        true
    }

    fn publish(&mut self, publication: Publication) {
        if !self.observe_epoch(publication.id.node, publication.id.epoch) {
            return;
        }
        match self
            .publications
            .insert(publication.id, publication.clone())
        {
            None => self.record(Change::Added, publication),
            Some(old) if old != publication => self.record(Change::Changed, publication),
            Some(_) => {}
        }
    }

    /// Removes the publications of `node` made by instances up to `epoch`.
    fn remove_owner(&mut self, node: NodeId, epoch: u64) {
        let dead: Vec<PublicationId> = self
            .publications
            .keys()
            .filter(|id| id.node == node && id.epoch <= epoch)
            .copied()
            .collect();
        for id in dead {
            if let Some(old) = self.publications.remove(&id) {
                self.record(Change::Removed(RemovalReason::OwnerDead), old);
            }
        }
    }

    fn record(&mut self, change: Change, publication: Publication) {
        self.revision += 1;
        self.history.push_back(WatchEvent {
            revision: self.revision,
            change,
            publication,
        });
        while self.history.len() > HISTORY_LIMIT {
            self.history.pop_front();
        }
    }

    /// The changes after `revision`, or `Err(oldest)` if some of them left the history.
    pub(crate) fn changes_after(
        &self,
        revision: Revision,
    ) -> Result<impl Iterator<Item = &WatchEvent>, Revision> {
        let oldest = self
            .history
            .front()
            .map_or(self.revision + 1, |e| e.revision);
        if revision + 1 < oldest && revision < self.revision {
            return Err(oldest);
        }
        Ok(self.history.iter().filter(move |e| e.revision > revision))
    }

    /// The publications of one node.
    pub(crate) fn owned_by(&self, node: NodeId) -> impl Iterator<Item = &Publication> {
        self.publications
            .values()
            .filter(move |p| p.id.node == node)
    }

    /// The snapshot bytes of this state.
    pub(crate) fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// A state from snapshot bytes; `None` if they are not a registry snapshot.
    pub(crate) fn decode(bytes: &[u8]) -> Option<RegistryState> {
        decode_versioned(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::publication::PublishSettings;

    fn publication(node: NodeId, epoch: u64, seq: u64, endpoint: &str) -> Publication {
        Publication {
            id: PublicationId { node, epoch, seq },
            name: "svc".to_string(),
            endpoint: endpoint.to_string(),
            datacenter: "dc".to_string(),
            settings: PublishSettings::default(),
        }
    }

    fn apply_all(ops: &[Op]) -> RegistryState {
        let mut state = RegistryState::default();
        for (i, op) in ops.iter().enumerate() {
            assert!(state.apply_entry(i as u64 + 1, &op.encode()));
        }
        state
    }

    fn changes(state: &RegistryState) -> Vec<(Revision, Change)> {
        state
            .history
            .iter()
            .map(|e| (e.revision, e.change))
            .collect()
    }

    /// The directory's fuzz target found that unbounded bincode allocates whatever a length
    /// prefix claims; registry entries may come from foreign code, so the same holds here.
    #[test]
    fn a_forged_length_is_refused_without_allocating() {
        // Version 1, Op::Publish (tag 1), id (0, 0, 0), then a name claiming 2^33 bytes.
        let forged = [1, 1, 0, 0, 0, 0xfd, 0, 0, 0, 0, 2, 0, 0, 0];
        assert_eq!(Op::decode(&forged), None);
        let mut state = RegistryState::default();
        assert!(!state.apply_entry(1, &forged));
    }

    #[test]
    fn publish_change_unpublish_record_exact_diffs() {
        let a = publication(1, 5, 1, "a:1");
        let state = apply_all(&[
            Op::Publish(a.clone()),
            Op::Publish(a.clone()),
            Op::Publish(publication(1, 5, 1, "a:2")),
            Op::Unpublish(a.id),
            Op::Unpublish(a.id),
        ]);
        assert_eq!(
            changes(&state),
            vec![
                (1, Change::Added),
                (2, Change::Changed),
                (3, Change::Removed(RemovalReason::Unpublished))
            ]
        );
        assert!(state.publications.is_empty());
    }

    #[test]
    fn a_stale_instance_never_overwrites_its_replacement() {
        let state = apply_all(&[
            Op::Publish(publication(1, 5, 1, "old")),
            Op::Hello { node: 1, epoch: 6 },
            Op::Publish(publication(1, 5, 2, "stale")),
            Op::Publish(publication(1, 6, 1, "new")),
        ]);
        let endpoints: Vec<&str> = state
            .publications
            .values()
            .map(|p| p.endpoint.as_str())
            .collect();
        assert_eq!(endpoints, vec!["new"]);
        assert_eq!(
            changes(&state),
            vec![
                (1, Change::Added),
                (2, Change::Removed(RemovalReason::OwnerDead)),
                (3, Change::Added)
            ]
        );
    }

    #[test]
    fn owner_dead_is_idempotent_and_spares_newer_instances() {
        let state = apply_all(&[
            Op::Publish(publication(1, 5, 1, "a")),
            Op::Publish(publication(2, 3, 1, "b")),
            Op::OwnerDead { node: 1, epoch: 5 },
            Op::OwnerDead { node: 1, epoch: 5 },
            Op::Publish(publication(1, 7, 1, "a2")),
            Op::OwnerDead { node: 1, epoch: 5 },
        ]);
        let owners: Vec<(NodeId, u64)> = state
            .publications
            .keys()
            .map(|id| (id.node, id.epoch))
            .collect();
        assert_eq!(owners, vec![(1, 7), (2, 3)]);
        assert_eq!(state.revision, 4);
    }

    #[test]
    fn history_is_bounded_and_resuming_past_it_is_refused() {
        let mut state = RegistryState::default();
        for i in 0..(HISTORY_LIMIT as u64 + 10) {
            let p = publication(1, 1, i, "x");
            state.apply_entry(i + 1, &Op::Publish(p).encode());
        }
        assert_eq!(state.history.len(), HISTORY_LIMIT);
        assert_eq!(state.changes_after(3).err(), Some(11));
        assert_eq!(
            state.changes_after(10).map(|c| c.count()).ok(),
            Some(HISTORY_LIMIT)
        );
        let last = state.revision;
        assert_eq!(state.changes_after(last).map(|c| c.count()).ok(), Some(0));
    }

    #[test]
    fn foreign_bytes_and_snapshots_round_trip() {
        let mut state = apply_all(&[Op::Publish(publication(1, 1, 1, "a"))]);
        assert!(!state.apply_entry(9, b"not a registry op"));
        assert_eq!(state.applied, 9);
        assert_eq!(RegistryState::decode(&state.encode()), Some(state.clone()));
        assert_eq!(RegistryState::decode(b"\x01garbage"), None);
        assert_eq!(RegistryState::decode(b""), None);
    }
}
