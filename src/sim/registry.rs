//! The service registry in the simulation: on every node, an agent that replicates the
//! registry's map through the node's core (production's state machine, upkeep decisions,
//! member view and resolution rules), publishes, unpublishes and resolves; a checker that
//! no resolution ever returns a publication of a node dead past the grace period, and that
//! once faults stop every replica of the map agrees and holds nothing of dead owners.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::id::{DataStructureId, NodeId};
use crate::node::subscription::{SubId, SubscriberSink};
use crate::registry::liveness::MemberView;
use crate::registry::resolve::{pick_weighted, SubscribeOptions, Vantage};
use crate::registry::shared::Wanted;
use crate::registry::state::{Op, RegistryState};
use crate::registry::upkeep;
use crate::registry::{Publication, PublicationId, PublishSettings, REGISTRY_ID};
use crate::storage::SnapshotFiles;
use crate::subscriber_sink::channel_sink;
use crate::{Commit, Error, MemberStatus};

/// Service names the workload publishes under.
pub(crate) const NAMES: [&str; 3] = ["svc-a", "svc-b", "svc-c"];

/// One node's registry instance.
pub(crate) struct RegistryAgent {
    pub sub: SubId,
    commits: Receiver<Commit>,
    errors: Receiver<Error>,
    pub state: Arc<Mutex<RegistryState>>,
    pub epoch: u64,
    wanted: Wanted,
    next_seq: u64,
    view: MemberView,
    proposed: HashMap<NodeId, Instant>,
}

impl RegistryAgent {
    /// Its snapshot provider: the registry state, read under its lock.
    pub(crate) fn provider(&self) -> impl crate::SnapshotProvider {
        let state = self.state.clone();
        move || {
            let state = state.lock().ok()?;
            (state.applied > 0).then(|| (state.applied, state.encode()))
        }
    }

    /// A new instance (epoch `epoch`) and the channels its subscription delivers into.
    pub(crate) fn new(sub: SubId, epoch: u64) -> (RegistryAgent, Box<dyn SubscriberSink>) {
        let state = Arc::new(Mutex::new(RegistryState::default()));
        let (sink, commits, errors) = channel_sink();
        let agent = RegistryAgent {
            sub,
            commits,
            errors,
            state,
            epoch,
            wanted: Wanted::default(),
            next_seq: 1,
            view: MemberView::default(),
            proposed: HashMap::new(),
        };
        (agent, sink)
    }

    /// The group the registry lives in.
    pub(crate) fn group() -> DataStructureId {
        REGISTRY_ID
    }

    /// Applies what the core delivered; false if a snapshot could not be loaded.
    pub(crate) fn drain(&self, files: &SnapshotFiles) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let mut ok = true;
        while let Ok(commit) = self.commits.try_recv() {
            match commit {
                Commit::Entry { index, data } => {
                    state.apply_entry(index, &data);
                }
                Commit::Snapshot { index } => {
                    let restored = files
                        .read(REGISTRY_ID, index)
                        .ok()
                        .flatten()
                        .and_then(|b| RegistryState::decode(&b));
                    match restored {
                        Some(mut restored) => {
                            restored.applied = index;
                            *state = restored;
                        }
                        None => ok = false,
                    }
                }
            }
        }
        while self.errors.try_recv().is_ok() {}
        ok
    }

    /// A new publication of this instance under `name`; returns the operation to propose.
    pub(crate) fn publish(&mut self, me: NodeId, datacenter: &str, name: &str) -> Op {
        let publication = Publication {
            id: PublicationId {
                node: me,
                epoch: self.epoch,
                seq: self.next_seq,
            },
            name: name.to_string(),
            endpoint: format!("{me}/{}", self.next_seq),
            datacenter: datacenter.to_string(),
            settings: PublishSettings::default(),
        };
        self.next_seq += 1;
        self.wanted
            .publications
            .insert(publication.id, publication.clone());
        Op::Publish(publication)
    }

    /// Drops the publication number `k` of this instance, if any.
    pub(crate) fn unpublish(&mut self, k: usize) -> Option<Op> {
        let id = *self.wanted.publications.keys().nth(k)?;
        self.wanted.publications.remove(&id);
        Some(Op::Unpublish(id))
    }

    /// Whether every publication this instance holds is in `map`, as held.
    pub(crate) fn holds_all(
        &self,
        map: &std::collections::BTreeMap<PublicationId, Publication>,
    ) -> bool {
        self.wanted
            .publications
            .iter()
            .all(|(id, p)| map.get(id) == Some(p))
    }

    /// How many publications this instance holds.
    pub(crate) fn held(&self) -> usize {
        self.wanted.publications.len()
    }

    /// The upkeep of the real registry's worker: refresh the member view, then publish
    /// again, withdraw and remove dead owners as needed.
    pub(crate) fn upkeep(
        &mut self,
        members: &[MemberStatus],
        me: NodeId,
        grace: Duration,
        now: Instant,
    ) -> Vec<Op> {
        self.view.update(members, now);
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        let mut ops = upkeep::own_ops(&state, &mut self.wanted, me, self.epoch, now);
        let removals =
            upkeep::dead_owner_ops(&state, &mut self.view, &mut self.proposed, me, grace, now);
        ops.extend(removals.into_iter().map(|(op, _)| op));
        ops
    }

    /// What a bare-name subscription to `name` on this node resolves to.
    pub(crate) fn resolve(
        &self,
        me: NodeId,
        datacenter: &str,
        name: &str,
        rng: &mut impl rand::Rng,
    ) -> Option<Publication> {
        let state = self.state.lock().ok()?;
        let vantage = Vantage {
            node: me,
            datacenter,
            alive: &self.view.alive,
        };
        SubscribeOptions::name(name)
            .options()
            .iter()
            .find_map(|option| {
                let tier = vantage.best_tier(option, state.publications.values());
                pick_weighted(&tier, rng).cloned()
            })
    }
}
