//! Subscriptions: a local application's view of one data structure's commit stream.

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::error::Error;
use crate::group::{GroupLog, BOOTSTRAP_INDEX};
use crate::id::DataStructureId;

/// Identifies a subscription within a node.
pub(crate) type SubId = u64;

/// Capacity of a subscription's commit channel. When it is full, delivery pauses and
/// resumes from the log once the application catches up (nothing is dropped).
pub(crate) const COMMIT_CHANNEL_CAPACITY: usize = 4096;

/// Capacity of a subscription's error channel; errors beyond it are dropped (and logged).
pub(crate) const ERROR_CHANNEL_CAPACITY: usize = 1024;

/// A channel for one subscription's commits or errors. Unbounded underneath, because a
/// bounded crossbeam channel allocates every slot up front (about 250 KiB per
/// subscription for both, 2.5 GiB for 10,000 subscriptions); the sender keeps it within
/// its capacity with [`try_send_within`].
pub(crate) fn subscription_channel<T>() -> (Sender<T>, Receiver<T>) {
    crossbeam_channel::unbounded()
}

/// Sends `item` unless `tx` already holds `capacity` items.
fn try_send_within<T>(tx: &Sender<T>, item: T, capacity: usize) -> Result<(), TrySendError<T>> {
    if tx.len() >= capacity {
        return Err(TrySendError::Full(item));
    }
    tx.try_send(item)
}

/// Entries read from the log per subscription per round while catching up.
const CATCH_UP_CHUNK_BYTES: u64 = 4 << 20;

/// One item of a data structure's commit stream.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The channels a subscription delivers into.
pub(crate) struct SubscriberChannels {
    pub commits: Sender<Commit>,
    pub errors: Sender<Error>,
}

/// A local subscriber of one group.
pub(crate) struct Subscription {
    pub group: DataStructureId,
    pub channels: SubscriberChannels,
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
}

impl Subscription {
    /// Delivers the log from `next_index` up to `applied`.
    pub(crate) fn deliver(&mut self, log: &GroupLog, applied: u64) -> Delivery {
        let snapshot = log.snapshot_index();
        if self.next_index <= snapshot {
            // The entries this subscription needs next are compacted: reload from the
            // snapshot instead (the synthetic first snapshot holds no state).
            if snapshot > BOOTSTRAP_INDEX {
                let marker = Commit::Snapshot { index: snapshot };
                match try_send_within(&self.channels.commits, marker, COMMIT_CHANNEL_CAPACITY) {
                    Ok(()) => self.last_delivered = snapshot,
                    Err(TrySendError::Full(_)) => return Delivery::Paused,
                    Err(TrySendError::Disconnected(_)) => return Delivery::Closed,
                }
            }
            self.next_index = snapshot + 1;
        }
        while self.next_index <= applied {
            let entries =
                match log.read_entries(self.next_index, applied + 1, Some(CATCH_UP_CHUNK_BYTES)) {
                    Ok(entries) if !entries.is_empty() => entries,
                    _ => return Delivery::Paused,
                };
            for entry in entries {
                if log.first_copy(&entry).is_some() {
                    let commit = Commit::Entry {
                        index: entry.index,
                        data: entry.data.to_vec(),
                    };
                    match try_send_within(&self.channels.commits, commit, COMMIT_CHANNEL_CAPACITY) {
                        Ok(()) => self.last_delivered = entry.index,
                        Err(TrySendError::Full(_)) => return Delivery::Paused,
                        Err(TrySendError::Disconnected(_)) => return Delivery::Closed,
                    }
                }
                self.next_index = entry.index + 1;
            }
        }
        Delivery::CaughtUp
    }

    /// Reports `error` on the error channel; false if it could not be delivered.
    pub(crate) fn report(&self, error: Error) -> bool {
        try_send_within(&self.channels.errors, error, ERROR_CHANNEL_CAPACITY).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::test_support::{bootstrapped_log, ctx, entry};

    #[test]
    fn a_full_commit_channel_pauses_delivery_without_losing_entries() {
        let (_dir, mut log) = bootstrapped_log();
        let first = BOOTSTRAP_INDEX + 1;
        let last = first + COMMIT_CHANNEL_CAPACITY as u64 + 9;
        let entries: Vec<_> = (first..=last).map(|i| entry(i, ctx(i, None))).collect();
        log.append(&entries);
        let (commits, received) = subscription_channel();
        let (errors, _errors) = subscription_channel();
        let mut sub = Subscription {
            group: DataStructureId::new(),
            channels: SubscriberChannels { commits, errors },
            next_index: first,
            last_delivered: 0,
        };
        assert_eq!(sub.deliver(&log, last), Delivery::Paused);
        assert_eq!(received.len(), COMMIT_CHANNEL_CAPACITY);
        let mut indexes: Vec<u64> = received.try_iter().map(index_of).collect();
        assert_eq!(sub.deliver(&log, last), Delivery::CaughtUp);
        indexes.extend(received.try_iter().map(index_of));
        assert_eq!(indexes, (first..=last).collect::<Vec<_>>());
    }

    fn index_of(commit: Commit) -> u64 {
        match commit {
            Commit::Entry { index, .. } | Commit::Snapshot { index } => index,
        }
    }
}
