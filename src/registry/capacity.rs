//! Leases on publications, local to one node: at most `concurrency` leases per publication
//! at once, FIFO waiting up to the summed queue size of the winning tier, overcapacity past
//! that. Grants are handed to waiters directly, so a released slot goes to the first
//! waiter that can use it and never to a newcomer jumping the queue.

use std::collections::{HashMap, VecDeque};

use rand::rngs::SmallRng;

use super::publication::{Publication, PublicationId};
use super::resolve::{pick_weighted, ResolveOption};

/// Waiters queue per service name and priority: the queue size of all publications of a
/// name with the same priority adds up.
type QueueKey = (String, u32);

/// Identifies one waiting caller.
pub(crate) type WaiterId = u64;

/// Where a waiting caller receives its grant.
pub(crate) enum Sink {
    /// A blocked thread.
    Blocking(crossbeam_channel::Sender<Publication>),
    /// An awaiting task.
    Async(tokio::sync::oneshot::Sender<Publication>),
}

impl Sink {
    /// Hands over a grant; gives it back if the caller stopped waiting.
    fn send(self, grant: Publication) -> Option<Publication> {
        match self {
            Sink::Blocking(tx) => tx.try_send(grant).err().map(|e| e.into_inner()),
            Sink::Async(tx) => tx.send(grant).err(),
        }
    }
}

struct Waiter {
    option: ResolveOption,
    sink: Sink,
}

/// The outcome of trying one option.
pub(crate) enum Attempt {
    /// A slot was free: the lease is on this publication.
    Granted(Publication),
    /// Every slot is busy; the caller waits in the queue.
    Queued(WaiterId),
    /// Every slot is busy and the queue is full (it holds `queued` callers).
    Overcapacity { queued: usize },
}

/// The node's leases and waiting callers.
pub(crate) struct LeaseTable {
    in_use: HashMap<PublicationId, u32>,
    queues: HashMap<QueueKey, VecDeque<WaiterId>>,
    waiters: HashMap<WaiterId, Waiter>,
    next_waiter: WaiterId,
    /// Randomness for spreading callers over equal publications.
    pub rng: SmallRng,
}

impl LeaseTable {
    pub(crate) fn new(rng: SmallRng) -> Self {
        LeaseTable {
            in_use: HashMap::new(),
            queues: HashMap::new(),
            waiters: HashMap::new(),
            next_waiter: 1,
            rng,
        }
    }

    /// Leases out now on `id`.
    pub(crate) fn leases_on(&self, id: &PublicationId) -> u32 {
        self.in_use.get(id).copied().unwrap_or(0)
    }

    /// Callers waiting for a lease on a publication named `name`.
    pub(crate) fn waiting_for(&self, name: &str) -> usize {
        self.queues
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, queue)| queue.len())
            .sum()
    }

    /// Tries `option`, whose winning tier is `tier` (non-empty): a free slot, else a place
    /// in the queue (`sink` receives the grant later), else overcapacity.
    pub(crate) fn attempt(
        &mut self,
        option: &ResolveOption,
        tier: &[&Publication],
        sink: impl FnOnce() -> Sink,
    ) -> Attempt {
        if let Some(granted) = self.take_free_slot(tier) {
            return Attempt::Granted(granted);
        }
        let priority = tier.first().map_or(0, |p| p.settings.priority);
        let capacity: usize = tier.iter().map(|p| p.settings.queue_size as usize).sum();
        let queue = self
            .queues
            .entry((option.name.clone(), priority))
            .or_default();
        if queue.len() >= capacity {
            return Attempt::Overcapacity {
                queued: queue.len(),
            };
        }
        let id = self.next_waiter;
        self.next_waiter += 1;
        queue.push_back(id);
        self.waiters.insert(
            id,
            Waiter {
                option: option.clone(),
                sink: sink(),
            },
        );
        Attempt::Queued(id)
    }

    /// Takes a slot on a publication of `tier` with one free, chosen at random weighted by
    /// concurrency.
    fn take_free_slot(&mut self, tier: &[&Publication]) -> Option<Publication> {
        let free: Vec<&Publication> = tier
            .iter()
            .copied()
            .filter(|p| self.leases_on(&p.id) < p.settings.concurrency)
            .collect();
        let chosen = pick_weighted(&free, &mut self.rng)?.clone();
        *self.in_use.entry(chosen.id).or_default() += 1;
        Some(chosen)
    }

    /// Frees one slot on `id`; call [`LeaseTable::dispatch`] afterwards.
    pub(crate) fn release(&mut self, id: &PublicationId) {
        if let Some(count) = self.in_use.get_mut(id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.in_use.remove(id);
            }
        }
    }

    /// Stops waiting for `waiter` (timed out or cancelled); false if it was granted already.
    pub(crate) fn cancel(&mut self, waiter: WaiterId) -> bool {
        if self.waiters.remove(&waiter).is_none() {
            return false;
        }
        self.queues.retain(|_, queue| {
            queue.retain(|w| *w != waiter);
            !queue.is_empty()
        });
        true
    }

    /// Hands free slots to waiters, in queue order; `tier_of` resolves a waiter's option
    /// against the current publications. Called after a release and after the state or
    /// the member view changed.
    pub(crate) fn dispatch<'p>(
        &mut self,
        tier_of: impl Fn(&ResolveOption) -> Vec<&'p Publication>,
    ) {
        let keys: Vec<QueueKey> = self.queues.keys().cloned().collect();
        for key in keys {
            let queued: Vec<WaiterId> = self
                .queues
                .get(&key)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            for waiter in queued {
                self.serve(&key, waiter, &tier_of);
            }
        }
        self.queues.retain(|_, queue| !queue.is_empty());
    }

    fn serve<'p>(
        &mut self,
        key: &QueueKey,
        waiter: WaiterId,
        tier_of: &impl Fn(&ResolveOption) -> Vec<&'p Publication>,
    ) {
        let Some(option) = self.waiters.get(&waiter).map(|w| w.option.clone()) else {
            return;
        };
        let Some(grant) = self.take_free_slot(&tier_of(&option)) else {
            return;
        };
        if let Some(queue) = self.queues.get_mut(key) {
            queue.retain(|w| *w != waiter);
        }
        if let Some(w) = self.waiters.remove(&waiter) {
            if let Some(unwanted) = w.sink.send(grant) {
                self.release(&unwanted.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::registry::publication::PublishSettings;
    use crate::registry::resolve::SubscribeOptions;

    fn publication(seq: u64, concurrency: u32, queue_size: u32) -> Publication {
        Publication {
            id: PublicationId {
                node: 1,
                epoch: 1,
                seq,
            },
            name: "svc".to_string(),
            endpoint: String::new(),
            datacenter: "a".to_string(),
            settings: PublishSettings {
                concurrency,
                queue_size,
                ..PublishSettings::default()
            },
        }
    }

    fn blocking() -> (
        impl FnOnce() -> Sink,
        crossbeam_channel::Receiver<Publication>,
    ) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        (move || Sink::Blocking(tx), rx)
    }

    #[test]
    fn slots_then_fifo_queue_then_overcapacity() {
        let mut table = LeaseTable::new(SmallRng::seed_from_u64(1));
        let p = publication(1, 2, 2);
        let option = SubscribeOptions::name("svc").options()[0].clone();
        let tier = [&p];
        for _ in 0..2 {
            let (sink, _) = blocking();
            assert!(matches!(
                table.attempt(&option, &tier, sink),
                Attempt::Granted(_)
            ));
        }
        let (first_sink, first) = blocking();
        let (second_sink, second) = blocking();
        assert!(matches!(
            table.attempt(&option, &tier, first_sink),
            Attempt::Queued(_)
        ));
        assert!(matches!(
            table.attempt(&option, &tier, second_sink),
            Attempt::Queued(_)
        ));
        let (sink, _) = blocking();
        assert!(matches!(
            table.attempt(&option, &tier, sink),
            Attempt::Overcapacity { queued: 2 }
        ));

        table.release(&p.id);
        table.dispatch(|_| vec![&p]);
        assert!(first.try_recv().is_ok(), "the first waiter is served first");
        assert!(second.try_recv().is_err());
        assert_eq!(table.leases_on(&p.id), 2);
    }

    #[test]
    fn a_grant_to_a_departed_waiter_frees_the_slot_again() {
        let mut table = LeaseTable::new(SmallRng::seed_from_u64(1));
        let p = publication(1, 1, 4);
        let option = SubscribeOptions::name("svc").options()[0].clone();
        let (sink, _) = blocking();
        assert!(matches!(
            table.attempt(&option, &[&p], sink),
            Attempt::Granted(_)
        ));
        let (sink, rx) = blocking();
        let Attempt::Queued(waiter) = table.attempt(&option, &[&p], sink) else {
            panic!("expected to queue");
        };
        drop(rx);
        table.release(&p.id);
        table.dispatch(|_| vec![&p]);
        assert_eq!(table.leases_on(&p.id), 0);
        assert!(!table.cancel(waiter), "the waiter is gone once served");
    }
}
