//! The handles the registry gives out: a publication's handle, a subscription, a lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::capacity::{Attempt, Sink, WaiterId};
use super::error::{RegistryError, RegistryResult};
use super::publication::{validate, Publication, PublicationId, PublishSettings};
use super::resolve::{pick_weighted, SubscribeOptions};
use super::shared::{lock, read};
use super::state::{Op, Revision};
use super::watch::Watch;
use super::RegistryCore;

/// A live publication. [`PublicationHandle::unpublish`] or dropping it removes the
/// publication from the registry (dropping does so in the background).
pub struct PublicationHandle {
    pub(crate) core: Arc<RegistryCore>,
    pub(crate) publication: Publication,
    pub(crate) live: bool,
}

impl PublicationHandle {
    /// The publication's id.
    pub fn id(&self) -> PublicationId {
        self.publication.id
    }

    /// The publication as published.
    pub fn publication(&self) -> &Publication {
        &self.publication
    }

    /// Changes the endpoint and settings; watchers see a `Changed` event. Waits until the
    /// change is applied on this node.
    pub fn update(&mut self, endpoint: &str, settings: PublishSettings) -> RegistryResult<()> {
        validate(&self.publication.name, endpoint, &settings)?;
        let mut updated = self.publication.clone();
        updated.endpoint = endpoint.to_string();
        updated.settings = settings;
        self.core.publish_and_wait(updated.clone())?;
        self.publication = updated;
        Ok(())
    }

    /// Removes the publication and waits until the removal is applied on this node.
    pub fn unpublish(mut self) -> RegistryResult<()> {
        self.live = false;
        let shared = &self.core.shared;
        lock(&shared.wanted)
            .publications
            .remove(&self.publication.id);
        shared.propose_and_apply(&Op::Unpublish(self.publication.id), shared.config.timeout)
    }
}

impl Drop for PublicationHandle {
    fn drop(&mut self) {
        if self.live {
            let shared = &self.core.shared;
            lock(&shared.wanted)
                .publications
                .remove(&self.publication.id);
            shared.propose_detached(&Op::Unpublish(self.publication.id));
        }
    }
}

impl std::fmt::Debug for PublicationHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicationHandle")
            .field("publication", &self.publication)
            .finish()
    }
}

/// A subscription: resolves its options to a publication, with or without taking a lease.
pub struct Subscription {
    pub(crate) core: Arc<RegistryCore>,
    pub(crate) options: SubscribeOptions,
}

/// Where one pass over the options ended.
enum Step {
    Granted(Publication),
    Queued(WaiterId),
    Failed(RegistryError),
}

impl Subscription {
    /// The options this subscription resolves.
    pub fn options(&self) -> &SubscribeOptions {
        &self.options
    }

    /// The publication a caller would use now, ignoring capacity: the first option with a
    /// visible publication, its lowest priority value, a random choice weighted by
    /// concurrency among equals. Served from this node's replica of the registry.
    pub fn resolve(&self) -> RegistryResult<Publication> {
        let shared = &self.core.shared;
        let state = read(&shared.state);
        let view = read(&shared.view);
        for option in &self.options.options {
            let tier = shared.tier_of(&state, &view, option);
            if let Some(chosen) = pick_weighted(&tier, &mut lock(&shared.leases).rng) {
                return Ok(chosen.clone());
            }
        }
        Err(self.no_publication())
    }

    /// Takes a lease on a publication, waiting up to `timeout` in FIFO order if every slot
    /// of the winning publications is busy. Fails with [`RegistryError::Overcapacity`] when
    /// their summed queue is full (or tries the next option, if the subscription falls
    /// through), [`RegistryError::NoPublication`] when no option sees one, and
    /// [`RegistryError::Timeout`].
    pub fn acquire(&self, timeout: Duration) -> RegistryResult<Lease> {
        let deadline = Instant::now() + timeout;
        let (tx, rx) = crossbeam_channel::bounded(1);
        match self.first_step(|| Sink::Blocking(tx)) {
            Step::Granted(publication) => Ok(self.lease(publication)),
            Step::Failed(e) => Err(e),
            Step::Queued(waiter) => match rx.recv_deadline(deadline) {
                Ok(publication) => Ok(self.lease(publication)),
                Err(_) => self.give_up(waiter, || rx.try_recv().ok()),
            },
        }
    }

    /// The async form of [`Subscription::acquire`], without a deadline of its own: wrap it
    /// in a timeout. Cancelling it (dropping the future) leaves the queue cleanly.
    pub async fn acquire_async(&self) -> RegistryResult<Lease> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match self.first_step(|| Sink::Async(tx)) {
            Step::Granted(publication) => Ok(self.lease(publication)),
            Step::Failed(e) => Err(e),
            Step::Queued(waiter) => {
                let mut guard = QueuedGuard {
                    subscription: self,
                    waiter,
                    rx,
                    done: false,
                };
                let granted = (&mut guard.rx).await;
                guard.done = true;
                match granted {
                    Ok(publication) => Ok(self.lease(publication)),
                    Err(_) => Err(RegistryError::CopyCat(crate::Error::Shutdown)),
                }
            }
        }
    }

    /// A watch of this subscription's names; see [`super::Registry::watch`].
    pub fn watch(&self, from: Option<Revision>) -> RegistryResult<Watch> {
        let names = self.options.names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Watch::new(self.core.clone(), Some(&names), from)
    }

    /// Tries the options in order until one grants, queues or refuses the caller.
    fn first_step(&self, sink: impl FnOnce() -> Sink) -> Step {
        let shared = &self.core.shared;
        let state = read(&shared.state);
        let view = read(&shared.view);
        let mut leases = lock(&shared.leases);
        let mut sink = Some(sink);
        let mut refused = None;
        for option in &self.options.options {
            let tier = shared.tier_of(&state, &view, option);
            if tier.is_empty() {
                continue;
            }
            let make_sink = || sink.take().map(|make| make()).expect("one queued attempt");
            match leases.attempt(option, &tier, make_sink) {
                Attempt::Granted(publication) => return Step::Granted(publication),
                Attempt::Queued(waiter) => return Step::Queued(waiter),
                Attempt::Overcapacity { queued } => {
                    let error = RegistryError::Overcapacity {
                        name: option.name.clone(),
                        queued,
                    };
                    if !self.options.fall_through_on_overcapacity {
                        return Step::Failed(error);
                    }
                    refused = Some(error);
                }
            }
        }
        Step::Failed(refused.unwrap_or_else(|| self.no_publication()))
    }

    /// Leaves the queue after the deadline; a grant that raced with it is still taken.
    fn give_up(
        &self,
        waiter: WaiterId,
        late_grant: impl FnOnce() -> Option<Publication>,
    ) -> RegistryResult<Lease> {
        if lock(&self.core.shared.leases).cancel(waiter) {
            return Err(RegistryError::Timeout);
        }
        late_grant()
            .map(|publication| self.lease(publication))
            .ok_or(RegistryError::Timeout)
    }

    fn lease(&self, publication: Publication) -> Lease {
        Lease {
            core: self.core.clone(),
            publication,
        }
    }

    fn no_publication(&self) -> RegistryError {
        RegistryError::NoPublication(self.options.names().join(", "))
    }
}

/// Takes an async waiter out of the queue if its future is dropped before the grant.
struct QueuedGuard<'a> {
    subscription: &'a Subscription,
    waiter: WaiterId,
    rx: tokio::sync::oneshot::Receiver<Publication>,
    done: bool,
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let rx = &mut self.rx;
        if let Ok(lease) = self
            .subscription
            .give_up(self.waiter, || rx.try_recv().ok())
        {
            drop(lease);
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("options", &self.options)
            .finish()
    }
}

/// The right to use one slot of a publication; dropping it frees the slot for the next
/// waiting caller.
pub struct Lease {
    core: Arc<RegistryCore>,
    publication: Publication,
}

impl Lease {
    /// The endpoint to call.
    pub fn endpoint(&self) -> &str {
        &self.publication.endpoint
    }

    /// The publication leased.
    pub fn publication(&self) -> &Publication {
        &self.publication
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.core.shared.release_lease(&self.publication.id);
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("publication", &self.publication)
            .finish()
    }
}
