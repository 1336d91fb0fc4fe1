//! A subscription's commit and error channels: the application's end of the commit stream,
//! behind the core's [`SubscriberSink`] port.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::error::Error;
use crate::node::subscription::{Offer, SubscriberSink};
use crate::node::Commit;
use crate::signal::Signal;

/// Capacity of a subscription's commit channel. When it is full, delivery pauses and
/// resumes from the log once the application catches up (nothing is dropped).
pub(crate) const COMMIT_CHANNEL_CAPACITY: usize = 4096;

/// Capacity of a subscription's error channel; errors beyond it are dropped (and logged).
pub(crate) const ERROR_CHANNEL_CAPACITY: usize = 1024;

/// The sending ends the core delivers into.
struct ChannelSink {
    commits: Sender<Commit>,
    errors: Sender<Error>,
    progress: Option<Progress>,
}

/// What a subscription's readers hear besides the channels: a signal bumped for each
/// commit taken (and when the channel closes), and how far the stream has caught up
/// (see `SubscriberSink::caught_up`), gaps included.
#[derive(Clone, Default)]
pub(crate) struct Progress {
    pub signal: Arc<Signal>,
    pub caught_up: Arc<AtomicU64>,
}

/// A subscription's sink and the receivers the application reads. The channels are
/// unbounded underneath, because a bounded crossbeam channel allocates every slot up front
/// (about 250 KiB per subscription for both, 2.5 GiB for 10,000 subscriptions); the sink
/// keeps each within its capacity.
#[cfg(test)]
pub(crate) fn channel_sink() -> (Box<dyn SubscriberSink>, Receiver<Commit>, Receiver<Error>) {
    notifying_channel_sink(None)
}

/// [`channel_sink`] that reports its [`Progress`].
pub(crate) fn notifying_channel_sink(
    progress: Option<Progress>,
) -> (Box<dyn SubscriberSink>, Receiver<Commit>, Receiver<Error>) {
    let (commits, commit_rx) = crossbeam_channel::unbounded();
    let (errors, error_rx) = crossbeam_channel::unbounded();
    let sink = ChannelSink {
        commits,
        errors,
        progress,
    };
    (Box::new(sink), commit_rx, error_rx)
}

/// Sends `item` unless `tx` already holds `capacity` items.
fn try_send_within<T>(tx: &Sender<T>, item: T, capacity: usize) -> Result<(), TrySendError<T>> {
    if tx.len() >= capacity {
        return Err(TrySendError::Full(item));
    }
    tx.try_send(item)
}

impl SubscriberSink for ChannelSink {
    fn offer(&self, commit: Commit) -> Offer {
        match try_send_within(&self.commits, commit, COMMIT_CHANNEL_CAPACITY) {
            Ok(()) => {
                if let Some(progress) = &self.progress {
                    progress.signal.bump();
                }
                Offer::Taken
            }
            Err(TrySendError::Full(_)) => Offer::Full,
            Err(TrySendError::Disconnected(_)) => Offer::Closed,
        }
    }

    fn report(&self, error: Error) -> bool {
        try_send_within(&self.errors, error, ERROR_CHANNEL_CAPACITY).is_ok()
    }

    fn caught_up(&self, index: u64) {
        if let Some(progress) = &self.progress {
            // A waiter for an index that only no-ops reach has no commit to wake it.
            if progress.caught_up.fetch_max(index, Ordering::Release) < index {
                progress.signal.bump();
            }
        }
    }
}

impl Drop for ChannelSink {
    /// The channels close: whoever waits for a commit must wake to see it.
    fn drop(&mut self) {
        if let Some(progress) = &self.progress {
            progress.signal.bump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_at_capacity_and_a_dropped_receiver_closes() {
        let (sink, commits, errors) = channel_sink();
        for index in 0..COMMIT_CHANNEL_CAPACITY as u64 {
            assert_eq!(sink.offer(Commit::Snapshot { index }), Offer::Taken);
        }
        assert_eq!(sink.offer(Commit::Snapshot { index: 0 }), Offer::Full);
        assert_eq!(commits.len(), COMMIT_CHANNEL_CAPACITY);
        assert!(sink.report(Error::Timeout));
        assert_eq!(
            errors.try_recv().ok().map(|e| e.to_string()),
            Some(Error::Timeout.to_string())
        );
        drop(commits);
        assert_eq!(sink.offer(Commit::Snapshot { index: 1 }), Offer::Closed);
    }
}
