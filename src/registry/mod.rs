//! A service registry with Copper's semantics, built on copycat's public API as any
//! application would: one well-known data structure holds a replicated map of publications.
//!
//! - **Publish** a named endpoint with a concurrency, a queue size, a max distance and a
//!   priority ([`Registry::publish`]); it lives until unpublished, its handle is dropped, or
//!   its owner node is dead (gossip) for longer than [`RegistryConfig::owner_grace`].
//! - **Subscribe** with an ordered list of `(name, min distance, max distance)` options
//!   ([`SubscribeOptions`]); the first option with a visible publication wins, then the
//!   lowest priority value, then a random choice weighted by concurrency.
//! - **Acquire** a [`Lease`] to respect capacity: `concurrency` leases per publication at
//!   once on a node, FIFO waiting up to the summed queue size, overcapacity beyond.
//! - **Watch** changes per name or subscription, resumable from a revision
//!   ([`Registry::watch`]); wait for services with [`Registry::await_ready`].
//!
//! Reads are served from this node's replica; [`Registry::read_barrier`] makes the next
//! reads linearizable.
//!
//! ```
//! use std::time::Duration;
//! use copycat::registry::{PublishSettings, Registry, RegistryConfig, SubscribeOptions};
//! use copycat::{Config, CopyCat};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let node = CopyCat::start(Config {
//!     data_dir: dir.path().to_path_buf(),
//!     port: 0,
//!     gossip_port: 0,
//!     ..Config::default()
//! })?;
//! let registry = Registry::start(&node, RegistryConfig::default())?;
//! let _hello = registry.publish("http:hello", "http://127.0.0.1:8080", PublishSettings::default())?;
//!
//! let subscription = registry.subscribe(SubscribeOptions::name("http:hello"))?;
//! let lease = subscription.acquire(Duration::from_secs(5))?;
//! assert_eq!(lease.endpoint(), "http://127.0.0.1:8080");
//! # drop(lease);
//! # drop(_hello);
//! # drop(subscription);
//! # drop(registry);
//! # node.shutdown();
//! # Ok(())
//! # }
//! ```

mod capacity;
mod error;
mod handles;
pub(crate) mod liveness;
mod publication;
pub(crate) mod resolve;
pub(crate) mod shared;
pub(crate) mod state;
#[cfg(test)]
mod tests;
pub(crate) mod upkeep;
mod watch;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;

pub use error::{RegistryError, RegistryResult};
pub use handles::{Lease, PublicationHandle, Subscription};
pub use publication::{Distance, Publication, PublicationId, PublishSettings, MAX_NAME_BYTES};
pub use resolve::{ResolveOption, SubscribeOptions};
pub use state::{Change, RemovalReason, Revision, WatchEvent};
pub use watch::Watch;

use capacity::LeaseTable;
use shared::{lock, read, write, Shared};
use state::{Op, RegistryState};

use crate::{CopyCat, DataStructureId};

/// The registry's data structure id unless configured otherwise: the ASCII of "REGISTRY".
pub const REGISTRY_ID: DataStructureId = DataStructureId::from_u128(0x5245_4749_5354_5259);

/// Registry settings; [`RegistryConfig::default`] suits most uses.
#[derive(Clone)]
pub struct RegistryConfig {
    /// The data structure holding the map (default [`REGISTRY_ID`]); registries with
    /// different ids are independent.
    pub id: DataStructureId,
    /// How long gossip must consider an owner dead before its publications are removed
    /// (default 30 s). Until then they stay in the map but are not resolved.
    pub owner_grace: Duration,
    /// Deadline of acknowledged operations: start, publish, update, unpublish (default 10 s).
    pub timeout: Duration,
    /// How often the registry polls gossip and reconciles its own publications
    /// (default 250 ms).
    pub maintenance_interval: Duration,
    /// Seed of the random spreading over equal publications; `None` draws one.
    pub rng_seed: Option<u64>,
    /// Logger (default: discards everything).
    pub logger: slog::Logger,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            id: REGISTRY_ID,
            owner_grace: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            maintenance_interval: Duration::from_millis(250),
            rng_seed: None,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
        }
    }
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("id", &self.id)
            .field("owner_grace", &self.owner_grace)
            .field("timeout", &self.timeout)
            .field("maintenance_interval", &self.maintenance_interval)
            .finish_non_exhaustive()
    }
}

/// The service registry of one node. Cheap to clone. Run one per node: a second instance
/// on the same node supersedes the first (whose publications are removed).
#[derive(Clone)]
pub struct Registry {
    core: Arc<RegistryCore>,
}

/// Owns the worker thread; handles keep it alive.
pub(crate) struct RegistryCore {
    pub(crate) shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for RegistryCore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(worker) = lock(&self.worker).take() {
            let _ = worker.join();
        }
    }
}

impl RegistryCore {
    /// Adds or replaces one of this instance's publications and waits until it is applied.
    pub(crate) fn publish_and_wait(&self, publication: Publication) -> RegistryResult<()> {
        let shared = &self.shared;
        let id = publication.id;
        {
            let mut wanted = lock(&shared.wanted);
            wanted.publications.insert(id, publication.clone());
            wanted.proposed_at.insert(id, Instant::now());
        }
        let result = shared.propose_and_apply(&Op::Publish(publication), shared.config.timeout);
        if let Err(e) = result {
            lock(&shared.wanted).publications.remove(&id);
            return Err(e);
        }
        if shared.is_superseded(&read(&shared.state)) {
            lock(&shared.wanted).publications.remove(&id);
            return Err(RegistryError::Superseded);
        }
        Ok(())
    }
}

impl Registry {
    /// Starts the registry on `node`: subscribes to the registry's data structure, catches
    /// up with it (read barrier), and registers a new instance for this node, which removes
    /// what an earlier instance of this node had published.
    pub fn start(node: &CopyCat, config: RegistryConfig) -> RegistryResult<Registry> {
        let deadline = Instant::now() + config.timeout;
        let datacenter = node
            .members_blocking()?
            .into_iter()
            .find(|m| m.node_id == node.node_id())
            .map(|m| m.datacenter)
            .unwrap_or_default();
        let state = Arc::new(RwLock::new(RegistryState::default()));
        let ds = node.subscribe(config.id, snapshot_provider(state.clone()))?;
        let rng = match config.rng_seed {
            Some(seed) => rand::rngs::SmallRng::seed_from_u64(seed),
            None => rand::rngs::SmallRng::from_entropy(),
        };
        let shared = Arc::new(Shared::new(
            node.clone(),
            ds,
            datacenter,
            config,
            state,
            LeaseTable::new(rng),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("copycat-registry".to_string())
                .spawn(move || worker::run(shared, stop))
                .map_err(crate::Error::from)?
        };
        // Resolution only shows publications of nodes seen alive: see them before the
        // first answer.
        write(&shared.view).update(&node.members_blocking()?, Instant::now());
        let registry = Registry {
            core: Arc::new(RegistryCore {
                shared,
                stop,
                worker: Mutex::new(Some(worker)),
            }),
        };
        registry.register_instance(deadline)?;
        Ok(registry)
    }

    /// Catches up with the map, then claims an epoch above every earlier instance of this
    /// node (wall-clock microseconds, or one more than the last if the clock went back).
    fn register_instance(&self, deadline: Instant) -> RegistryResult<()> {
        let shared = &self.core.shared;
        self.read_barrier(deadline.saturating_duration_since(Instant::now()))?;
        let previous = read(&shared.state)
            .epochs
            .get(&shared.me)
            .copied()
            .unwrap_or(0);
        let now_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let epoch = now_micros.max(previous + 1);
        shared.epoch.store(epoch, Ordering::Release);
        let hello = Op::Hello {
            node: shared.me,
            epoch,
        };
        shared.propose_and_apply(&hello, deadline.saturating_duration_since(Instant::now()))
    }

    /// Publishes `endpoint` under `name`; returns once the publication is committed and
    /// visible on this node. Fails with [`RegistryError::InvalidPublication`] for an empty
    /// or oversized name or endpoint, or a concurrency of 0.
    pub fn publish(
        &self,
        name: &str,
        endpoint: &str,
        settings: PublishSettings,
    ) -> RegistryResult<PublicationHandle> {
        publication::validate(name, endpoint, &settings)?;
        let shared = &self.core.shared;
        let publication = Publication {
            id: PublicationId {
                node: shared.me,
                epoch: shared.epoch(),
                seq: shared.next_seq.fetch_add(1, Ordering::Relaxed),
            },
            name: name.to_string(),
            endpoint: endpoint.to_string(),
            datacenter: shared.datacenter.clone(),
            settings,
        };
        self.core.publish_and_wait(publication.clone())?;
        Ok(PublicationHandle {
            core: self.core.clone(),
            publication,
            live: true,
        })
    }

    /// A subscription resolving `options`.
    pub fn subscribe(&self, options: SubscribeOptions) -> RegistryResult<Subscription> {
        options.validate()?;
        Ok(Subscription {
            core: self.core.clone(),
            options,
        })
    }

    /// A watch of the publications named `names` (every name if empty). `from: None` starts
    /// with an `Added` event per current publication, then follows changes; `Some(r)`
    /// resumes exactly after revision `r`.
    pub fn watch(&self, names: &[&str], from: Option<Revision>) -> RegistryResult<Watch> {
        let names = (!names.is_empty()).then_some(names);
        Watch::new(self.core.clone(), names, from)
    }

    /// Waits until every service in `names` has a publication visible from this node (as a
    /// bare-name subscription would see it), or fails with [`RegistryError::Timeout`].
    pub fn await_ready(&self, names: &[&str], timeout: Duration) -> RegistryResult<()> {
        let shared = &self.core.shared;
        let subscriptions: Vec<SubscribeOptions> =
            names.iter().map(|n| SubscribeOptions::name(n)).collect();
        shared.wait_for(Instant::now() + timeout, |state, view| {
            subscriptions
                .iter()
                .all(|s| {
                    s.options
                        .iter()
                        .any(|o| !shared.tier_of(state, view, o).is_empty())
                })
                .then_some(())
        })
    }

    /// Every publication named `name` in this node's replica of the map (owners reported
    /// down included), in id order.
    pub fn publications(&self, name: &str) -> Vec<Publication> {
        read(&self.core.shared.state)
            .publications
            .values()
            .filter(|p| p.name == name)
            .cloned()
            .collect()
    }

    /// Leases out now on this node for the publication `id`.
    pub fn leases_out(&self, id: PublicationId) -> u32 {
        lock(&self.core.shared.leases).leases_on(&id)
    }

    /// Callers on this node waiting for a lease on a publication named `name`.
    pub fn waiting(&self, name: &str) -> usize {
        lock(&self.core.shared.leases).waiting_for(name)
    }

    /// The revision of the latest change applied on this node.
    pub fn revision(&self) -> Revision {
        read(&self.core.shared.state).revision
    }

    /// Makes the reads that follow linearizable: returns once this node's replica of the
    /// map includes every change committed anywhere before the call.
    pub fn read_barrier(&self, timeout: Duration) -> RegistryResult<()> {
        let deadline = Instant::now() + timeout;
        let shared = &self.core.shared;
        let index = shared.ds.read_barrier_blocking(timeout)?;
        shared.wait_applied(index, deadline)
    }

    /// This registry's node.
    pub fn node(&self) -> &CopyCat {
        &self.core.shared.node
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = &self.core.shared;
        f.debug_struct("Registry")
            .field("node", &shared.me)
            .field("epoch", &shared.epoch())
            .finish()
    }
}

/// The registry's snapshot hook: the map with the index of the last entry applied to it.
fn snapshot_provider(
    state: Arc<RwLock<RegistryState>>,
) -> impl Fn() -> Option<(u64, Vec<u8>)> + Send + Sync + 'static {
    move || {
        let state = read(&state);
        (state.applied > 0).then(|| (state.applied, state.encode()))
    }
}
