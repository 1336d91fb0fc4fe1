//! A counter that waiters can await (async), poll (streams) or block on (threads): bumped
//! on the core thread each time a subscription's channel takes a commit, and once more
//! when the channel closes.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

use tokio::sync::Notify;

/// A counter with both kinds of waiters.
#[derive(Default)]
pub(crate) struct Signal {
    state: Mutex<Count>,
    changed: Condvar,
    notify: Notify,
}

/// The count, how many threads block on it (so a bump with none skips the condvar's
/// wake-up, a system call, once per commit), and the tasks polling it.
#[derive(Default)]
struct Count {
    value: u64,
    blocked: usize,
    wakers: Vec<Waker>,
}

impl Signal {
    fn lock(&self) -> MutexGuard<'_, Count> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current count: wait for it to change with [`Signal::changed`].
    pub(crate) fn count(&self) -> u64 {
        self.lock().value
    }

    /// Something happened: wakes every waiter.
    pub(crate) fn bump(&self) {
        let (blocked, wakers) = {
            let mut count = self.lock();
            count.value += 1;
            (count.blocked, std::mem::take(&mut count.wakers))
        };
        if blocked > 0 {
            self.changed.notify_all();
        }
        self.notify.notify_waiters();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Has `waker` woken at the next bump, unless the count is no longer `seen` (then
    /// false: poll again).
    pub(crate) fn register(&self, seen: u64, waker: &Waker) -> bool {
        let mut count = self.lock();
        if count.value != seen {
            return false;
        }
        if !count.wakers.iter().any(|w| w.will_wake(waker)) {
            count.wakers.push(waker.clone());
        }
        true
    }

    /// Waits until the count is no longer `seen` or `deadline` passes; false on timeout.
    pub(crate) async fn changed(&self, seen: u64, deadline: Instant) -> bool {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a bump between the check and the await is
            // not missed.
            notified.as_mut().enable();
            if self.count() != seen {
                return true;
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() != seen;
            }
        }
    }

    /// The blocking form of [`Signal::changed`].
    pub(crate) fn changed_blocking(&self, seen: u64, deadline: Instant) -> bool {
        let mut count = self.lock();
        count.blocked += 1;
        while count.value == seen {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            count = match self.changed.wait_timeout(count, deadline - now) {
                Ok((count, _)) => count,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        count.blocked -= 1;
        count.value != seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn blocking_and_async_waiters_wake_on_a_bump_and_time_out_without_one() {
        let signal = Arc::new(Signal::default());
        let soon = || Instant::now() + Duration::from_millis(50);
        assert!(!signal.changed_blocking(0, soon()));
        let bumper = signal.clone();
        let thread = std::thread::spawn(move || bumper.bump());
        assert!(signal.changed_blocking(0, Instant::now() + Duration::from_secs(10)));
        thread.join().expect("bumper");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            assert!(!signal.changed(1, soon()).await);
            let bumper = signal.clone();
            tokio::spawn(async move { bumper.bump() });
            assert!(
                signal
                    .changed(1, Instant::now() + Duration::from_secs(10))
                    .await
            );
        });
    }
}
