//! A publication's capacity, enforced where the publication lives: at most `concurrency`
//! requests in flight at once, then callers wait FIFO, at most `queue_size` of them, then
//! overcapacity.
//!
//! Every request to a publication made through this node's API passes here, whether it
//! came through this node's gateway or from another node's gateway through the forwarding
//! entry ([`super::forward`]), so the limit holds cluster-wide. The queue is one
//! publication's: two publications of one name at different owners queue apart (Copper
//! sums their queues; summing across owners would need a coordination round per request).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a slot was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    /// Every slot was busy and `queued` callers were already waiting (the queue is full);
    /// nothing changed. Normal under load: the caller answers 503.
    #[error("all {concurrency} slots busy and {queued} callers queued")]
    QueueFull {
        /// The publication's concurrency.
        concurrency: u32,
        /// Callers waiting when this one was refused.
        queued: usize,
    },
    /// The wait in the queue took longer than the caller's deadline; the caller left the
    /// queue. Normal under sustained load: the caller answers 503.
    #[error("no free slot of {concurrency} within {waited:?}")]
    TimedOut {
        /// The publication's concurrency.
        concurrency: u32,
        /// How long the caller waited.
        waited: Duration,
    },
}

/// One publication's slots and queue. Shared (`Arc`) by the table of the node's
/// publications and every request in flight, so a request that holds a slot keeps it
/// valid even after the publication is withdrawn.
#[derive(Debug)]
pub struct Capacity {
    concurrency: u32,
    queue_size: usize,
    /// `concurrency` permits; tokio's semaphore serves waiters in FIFO order, and a
    /// waiter that gives up (its future dropped) leaves the queue at once.
    slots: Arc<Semaphore>,
    /// Callers waiting now; bounded by `queue_size` (checked before joining).
    queued: AtomicUsize,
}

/// A slot held; dropping it frees the slot for the first waiter.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Capacity {
    /// Slots and a queue for a publication with these settings (`concurrency` ≥ 1, which
    /// the registry checks at publication).
    pub fn new(concurrency: u32, queue_size: u32) -> Capacity {
        let concurrency = concurrency.max(1);
        let permits = (concurrency as usize).min(Semaphore::MAX_PERMITS);
        Capacity {
            concurrency,
            queue_size: queue_size as usize,
            slots: Arc::new(Semaphore::new(permits)),
            queued: AtomicUsize::new(0),
        }
    }

    /// A free slot now, else a place in the queue and a slot within `timeout`, else an
    /// error. Cancel-safe: dropping the future leaves the queue.
    pub async fn acquire(&self, timeout: Duration) -> Result<Slot, CapacityError> {
        // Fast path, and FIFO fairness: `try_acquire` fails while anyone is queued.
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot { _permit: permit });
        }
        let joined = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.queue_size).then_some(n + 1)
            });
        if let Err(queued) = joined {
            return Err(CapacityError::QueueFull {
                concurrency: self.concurrency,
                queued,
            });
        }
        let _leave = QueuePlace(&self.queued);
        match tokio::time::timeout(timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot { _permit: permit }),
            // The semaphore is never closed; treat it as a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(CapacityError::TimedOut {
                concurrency: self.concurrency,
                waited: timeout,
            }),
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        (self.concurrency as usize).saturating_sub(self.slots.available_permits())
    }

    /// Callers waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// A place in the queue, given back when the wait ends (granted, timed out or dropped).
struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn slots_then_fifo_queue_then_overcapacity() {
        let capacity = Arc::new(Capacity::new(1, 2));
        let first = capacity.acquire(LONG).await.expect("free slot");
        assert_eq!(capacity.in_flight(), 1);
        let (order_tx, mut order_rx) = tokio::sync::mpsc::channel(4);
        let mut waiters = Vec::new();
        for n in 0..2 {
            let (waiter, order) = (capacity.clone(), order_tx.clone());
            waiters.push(tokio::spawn(async move {
                let slot = waiter.acquire(LONG).await.expect("queued then granted");
                order.send(n).await.expect("order");
                drop(slot);
            }));
            while capacity.queued() < n + 1 {
                tokio::task::yield_now().await;
            }
        }
        let refused = capacity.acquire(LONG).await.expect_err("queue full");
        assert_eq!(
            refused,
            CapacityError::QueueFull {
                concurrency: 1,
                queued: 2
            }
        );
        drop(first);
        assert_eq!(
            order_rx.recv().await,
            Some(0),
            "the first waiter goes first"
        );
        assert_eq!(order_rx.recv().await, Some(1));
        for waiter in waiters {
            waiter.await.expect("waiter");
        }
        assert_eq!((capacity.in_flight(), capacity.queued()), (0, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_times_out_or_is_dropped_leaves_the_queue() {
        let capacity = Capacity::new(1, 1);
        let _held = capacity.acquire(LONG).await.expect("free slot");
        let timed_out = capacity.acquire(Duration::from_millis(10)).await;
        assert!(matches!(timed_out, Err(CapacityError::TimedOut { .. })));
        assert_eq!(capacity.queued(), 0);
        let dropped = tokio::time::timeout(Duration::from_millis(10), capacity.acquire(LONG)).await;
        assert!(dropped.is_err());
        assert_eq!(capacity.queued(), 0, "a dropped waiter leaves its place");
    }

    #[tokio::test]
    async fn queue_zero_refuses_at_once() {
        let capacity = Capacity::new(1, 0);
        let _held = capacity.acquire(LONG).await.expect("free slot");
        assert!(matches!(
            capacity.acquire(LONG).await,
            Err(CapacityError::QueueFull { queued: 0, .. })
        ));
    }
}
