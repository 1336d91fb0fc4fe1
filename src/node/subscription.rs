//! Subscriptions: a local application's view of one data structure's commit stream.

use super::{Map, Set};
use crate::error::Error;
use crate::group::{GroupLog, BOOTSTRAP_INDEX};
use crate::id::DataStructureId;

/// Identifies a subscription within a node.
pub(crate) type SubId = u64;

/// Entries read from the log per subscription per round while catching up.
const CATCH_UP_CHUNK_BYTES: u64 = 4 << 20;

/// One item of a data structure's commit stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Commit {
    /// A committed proposal, delivered exactly once per subscription, in log order.
    Entry {
        /// Its index in the group's log (the same on every node).
        index: u64,
        /// The proposed bytes.
        data: Vec<u8>,
    },
    /// Reload state from the snapshot taken at `index` (see `DataStructure::load_snapshot`);
    /// the entries that follow continue from `index + 1`.
    Snapshot {
        /// The log index the snapshot covers.
        index: u64,
    },
}

/// What a subscriber did with an offered commit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    Taken,
    /// It holds as many commits as it may: offer again later (nothing is dropped).
    Full,
    /// The application is gone.
    Closed,
}

/// Where one subscription's commits and errors go: the application's channels (the
/// runtime's), or a simulated application's queue. Never blocks: the core offers, and a
/// full subscriber pauses its delivery until it has room again, which the core retries
/// every tick. A port rather than an output because whether a commit fits decides, then
/// and there, where the subscription's cursor stops.
pub(crate) trait SubscriberSink: Send {
    /// Offers the next commit of the stream.
    fn offer(&self, commit: Commit) -> Offer;
    /// Reports an error; false if the subscriber could not take it (full or gone).
    fn report(&self, error: Error) -> bool;
    /// Every commit up to log index `index` has been offered and taken: the indexes in
    /// between that carry no commit (leader no-ops, membership changes) are passed too.
    fn caught_up(&self, index: u64);
}

/// A local subscriber of one group.
pub(crate) struct Subscription {
    pub group: DataStructureId,
    pub sink: Box<dyn SubscriberSink>,
    /// Index of the next log entry to look at.
    pub next_index: u64,
    /// Index of the last commit (entry or snapshot marker) handed to the channel; 0 before
    /// any. Read barriers answer with it: an index the application actually receives.
    pub last_delivered: u64,
}

/// How far a delivery attempt got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Everything applied so far was delivered.
    CaughtUp,
    /// The commit channel is full; resume later.
    Paused,
    /// The application dropped the receiver; the subscription is over.
    Closed,
    /// The log could not be read (why): the node cannot go on delivering.
    Unreadable(String),
}

impl Subscription {
    /// Delivers the log from `next_index` up to `applied`.
    pub(crate) fn deliver(&mut self, log: &mut GroupLog, applied: u64) -> Delivery {
        let snapshot = log.snapshot_index();
        if self.next_index <= snapshot {
            // The entries this subscription needs next are compacted: reload from the
            // snapshot instead (the synthetic first snapshot holds no state).
            if snapshot > BOOTSTRAP_INDEX {
                match self.sink.offer(Commit::Snapshot { index: snapshot }) {
                    Offer::Taken => self.last_delivered = snapshot,
                    Offer::Full => return Delivery::Paused,
                    Offer::Closed => return Delivery::Closed,
                }
            }
            self.next_index = snapshot + 1;
        }
        while self.next_index <= applied {
            let entries =
                match log.read_entries(self.next_index, applied + 1, Some(CATCH_UP_CHUNK_BYTES)) {
                    Ok(entries) if !entries.is_empty() => entries,
                    Ok(_) => return Delivery::Paused,
                    Err(e) => {
                        return Delivery::Unreadable(format!("from index {}: {e}", self.next_index))
                    }
                };
            // The duplicate check of a reopened replica takes them too, rather than reading
            // the log a second time.
            log.note_read(&entries);
            for entry in entries {
                let first_copy = match log.first_copy(&entry) {
                    Ok(first_copy) => first_copy,
                    Err(e) => {
                        return Delivery::Unreadable(format!("at index {}: {e}", entry.index))
                    }
                };
                if first_copy.is_some() {
                    let commit = Commit::Entry {
                        index: entry.index,
                        data: entry.data.to_vec(),
                    };
                    match self.sink.offer(commit) {
                        Offer::Taken => self.last_delivered = entry.index,
                        Offer::Full => return Delivery::Paused,
                        Offer::Closed => return Delivery::Closed,
                    }
                }
                self.next_index = entry.index + 1;
            }
        }
        self.sink.caught_up(applied);
        Delivery::CaughtUp
    }

    /// Reports `error` to the subscriber; false if it could not be delivered.
    pub(crate) fn report(&self, error: Error) -> bool {
        self.sink.report(error)
    }
}

/// Every local subscription: by id, by group, and the ones whose delivery is paused.
#[derive(Default)]
pub(crate) struct Subscriptions {
    subs: Map<SubId, Subscription>,
    by_group: Map<DataStructureId, Vec<SubId>>,
    /// Subscriptions whose delivery paused on a full subscriber (retried every tick).
    lagging: Set<SubId>,
}

impl Subscriptions {
    /// A new subscription to `group`, delivering from the start of its history.
    pub(crate) fn add(
        &mut self,
        sub: SubId,
        group: DataStructureId,
        sink: Box<dyn SubscriberSink>,
    ) {
        let subscription = Subscription {
            group,
            sink,
            // From the start: a compacted log yields a snapshot marker first.
            next_index: BOOTSTRAP_INDEX + 1,
            last_delivered: 0,
        };
        let earlier = self.subs.insert(sub, subscription);
        debug_assert!(earlier.is_none(), "subscription id {sub} used twice");
        self.by_group.entry(group).or_default().push(sub);
        self.lagging.insert(sub);
    }

    /// Ends subscription `sub`.
    pub(crate) fn remove(&mut self, sub: SubId) {
        if let Some(s) = self.subs.remove(&sub) {
            if let Some(list) = self.by_group.get_mut(&s.group) {
                list.retain(|id| *id != sub);
                if list.is_empty() {
                    self.by_group.remove(&s.group);
                }
            }
        }
        self.lagging.remove(&sub);
    }

    /// Subscription `sub`, if it exists.
    pub(crate) fn get(&self, sub: SubId) -> Option<&Subscription> {
        self.subs.get(&sub)
    }

    /// Whether `group` has a local subscriber.
    pub(crate) fn has_any(&self, group: DataStructureId) -> bool {
        self.by_group.contains_key(&group)
    }

    /// The first local subscription of `group` (the one asked for snapshots).
    pub(crate) fn first_of(&self, group: DataStructureId) -> Option<(SubId, &Subscription)> {
        self.by_group
            .get(&group)?
            .iter()
            .find_map(|id| self.subs.get(id).map(|sub| (*id, sub)))
    }

    /// Reports `error` to every subscriber of `group`.
    pub(crate) fn report_to_group(&self, group: DataStructureId, error: &Error) {
        for sub in self.by_group.get(&group).into_iter().flatten() {
            if let Some(s) = self.subs.get(sub) {
                s.report(error.clone());
            }
        }
    }

    /// Reports `error` to every subscriber.
    pub(crate) fn report_to_all(&self, error: &Error) {
        for sub in self.subs.values() {
            sub.report(error.clone());
        }
    }

    /// Delivers to `group`'s subscribers what `log` holds up to `applied`, and ends the
    /// subscriptions whose application is gone. Fails if the log cannot be read (the
    /// subscriptions stay paused).
    pub(crate) fn deliver(
        &mut self,
        group: DataStructureId,
        log: &mut GroupLog,
        applied: u64,
    ) -> Result<(), String> {
        let Some(ids) = self.by_group.get(&group) else {
            return Ok(());
        };
        let mut unreadable = Ok(());
        let mut closed = Vec::new();
        for id in ids {
            let Some(sub) = self.subs.get_mut(id) else {
                continue;
            };
            match sub.deliver(log, applied) {
                Delivery::CaughtUp => {
                    self.lagging.remove(id);
                }
                Delivery::Paused => {
                    self.lagging.insert(*id);
                }
                Delivery::Unreadable(why) => {
                    self.lagging.insert(*id);
                    unreadable = Err(format!("the log of {group} {why}"));
                }
                Delivery::Closed => closed.push(*id),
            }
        }
        for id in closed {
            self.remove(id);
        }
        unreadable
    }

    /// The groups with a subscription whose delivery is paused.
    pub(crate) fn lagging_groups(&self) -> Set<DataStructureId> {
        self.lagging
            .iter()
            .filter_map(|s| self.subs.get(s).map(|s| s.group))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::group::test_support::{bootstrapped_log, ctx, entry};

    /// A subscriber that takes at most `capacity` commits until they are taken out.
    struct Bounded {
        taken: Arc<Mutex<Vec<Commit>>>,
        capacity: usize,
    }

    impl SubscriberSink for Bounded {
        fn offer(&self, commit: Commit) -> Offer {
            let mut taken = self.taken.lock().expect("test lock");
            if taken.len() >= self.capacity {
                return Offer::Full;
            }
            taken.push(commit);
            Offer::Taken
        }

        fn report(&self, _: Error) -> bool {
            true
        }

        fn caught_up(&self, _: u64) {}
    }

    #[test]
    fn a_full_subscriber_pauses_delivery_without_losing_entries() {
        let (_dir, mut log) = bootstrapped_log();
        let capacity = 64;
        let first = BOOTSTRAP_INDEX + 1;
        let last = first + capacity as u64 + 9;
        let entries: Vec<_> = (first..=last).map(|i| entry(i, ctx(i, None))).collect();
        log.append(&entries);
        let taken = Arc::new(Mutex::new(Vec::new()));
        let mut sub = Subscription {
            group: DataStructureId::new(),
            sink: Box::new(Bounded {
                taken: taken.clone(),
                capacity,
            }),
            next_index: first,
            last_delivered: 0,
        };
        let drain = || std::mem::take(&mut *taken.lock().expect("test lock"));
        assert_eq!(sub.deliver(&mut log, last), Delivery::Paused);
        let mut indexes: Vec<u64> = drain().into_iter().map(index_of).collect();
        assert_eq!(indexes.len(), capacity);
        assert_eq!(sub.deliver(&mut log, last), Delivery::CaughtUp);
        indexes.extend(drain().into_iter().map(index_of));
        assert_eq!(indexes, (first..=last).collect::<Vec<_>>());
    }

    fn index_of(commit: Commit) -> u64 {
        match commit {
            Commit::Entry { index, .. } | Commit::Snapshot { index } => index,
        }
    }
}
