//! The publications made through the local API, each with a time to live: the HTTP form of
//! Copper's "a publication lives as long as its client's connection". The table holds each
//! publication's registry handle; a publication whose client stops sending keepalives is
//! dropped here, and dropping its handle withdraws it from the registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use copycat::registry::{PublicationHandle, PublicationId};

use crate::gateway::capacity::Capacity;
use slog::{info, Logger};
use tokio::sync::Notify;

/// The id of a publication in the API: `<node>-<epoch>-<seq>`, all decimal.
pub fn api_id(id: &PublicationId) -> String {
    format!("{}-{}-{}", id.node, id.epoch, id.seq)
}

/// One publication of the table.
struct Entry {
    handle: PublicationHandle,
    ttl: Duration,
    expires_at: Instant,
    /// Where the gateway and the forwarding entry send its requests.
    route: Route,
}

/// How to call a publication of this node: its endpoint and its capacity, shared by every
/// request to it (through this node's gateway or forwarded by another node's).
#[derive(Debug, Clone)]
pub struct Route {
    /// The service name (`http:hello`).
    pub name: Arc<str>,
    /// The endpoint, as published.
    pub endpoint: Arc<str>,
    /// Its slots and queue.
    pub capacity: Arc<Capacity>,
}

/// The API's publications by API id. Cheap to clone; clones share the table.
#[derive(Clone, Default)]
pub struct Publications {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: Mutex<HashMap<String, Entry>>,
    /// Woken when an entry is added, so the sweeper sleeps until the new earliest expiry.
    added: Notify,
}

/// When a publication expires, as [`Publications::keepalive`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// The publication's time to live.
    pub ttl: Duration,
    /// Time left until it expires without a keepalive.
    pub expires_in: Duration,
}

impl Publications {
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Every critical section leaves the map consistent: a poisoned lock is still usable.
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a published handle that expires `ttl` from now unless kept alive; returns its
    /// API id.
    pub fn insert(&self, handle: PublicationHandle, ttl: Duration) -> String {
        let id = api_id(&handle.id());
        let publication = handle.publication();
        let route = Route {
            name: publication.name.as_str().into(),
            endpoint: publication.endpoint.as_str().into(),
            capacity: Arc::new(Capacity::new(
                publication.settings.concurrency,
                publication.settings.queue_size,
            )),
        };
        let entry = Entry {
            handle,
            ttl,
            expires_at: Instant::now() + ttl,
            route,
        };
        self.entries().insert(id.clone(), entry);
        self.inner.added.notify_one();
        id
    }

    /// Restarts the time to live of `id`; `None` if there is no such publication (never
    /// made here, deleted, or expired).
    pub fn keepalive(&self, id: &str) -> Option<Lifetime> {
        let mut entries = self.entries();
        let entry = entries.get_mut(id)?;
        entry.expires_at = Instant::now() + entry.ttl;
        Some(Lifetime {
            ttl: entry.ttl,
            expires_in: entry.ttl,
        })
    }

    /// Takes `id` out of the table (to unpublish it); `None` if absent.
    pub fn take(&self, id: &str) -> Option<PublicationHandle> {
        self.entries().remove(id).map(|e| e.handle)
    }

    /// Takes every publication out (at shutdown).
    pub fn take_all(&self) -> Vec<PublicationHandle> {
        self.entries().drain().map(|(_, e)| e.handle).collect()
    }

    /// Takes out the publications whose time to live ran out at `now`, and tells when the
    /// next one expires.
    fn take_expired(&self, now: Instant) -> (Vec<PublicationHandle>, Option<Instant>) {
        let mut entries = self.entries();
        let expired: Vec<String> = entries
            .iter()
            .filter(|(_, e)| e.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let handles = expired
            .iter()
            .filter_map(|id| entries.remove(id))
            .map(|e| e.handle)
            .collect();
        let next = entries.values().map(|e| e.expires_at).min();
        (handles, next)
    }

    /// How to call `id`; `None` if it is not a publication of this table (made elsewhere,
    /// deleted, or expired).
    pub fn route(&self, id: &str) -> Option<Route> {
        self.entries().get(id).map(|e| e.route.clone())
    }

    /// Requests in flight to the table's publications and requests waiting for a slot.
    pub fn load(&self) -> (usize, usize) {
        self.entries().values().fold((0, 0), |(busy, queued), e| {
            let capacity = &e.route.capacity;
            (busy + capacity.in_flight(), queued + capacity.queued())
        })
    }

    /// Whether the table holds `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.entries().contains_key(id)
    }

    /// Publications in the table.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Removes expired publications until the task is dropped: sleeps until the earliest
    /// expiry (or an insertion), then drops the handles of the expired ones on a blocking
    /// thread (a drop hands the withdrawal to the registry's proposal channel, which may
    /// wait while the node is behind).
    pub async fn sweep(self, log: Logger) {
        /// Longest sleep with nothing to expire; keepalives only push expiries later.
        const IDLE: Duration = Duration::from_secs(1);
        loop {
            let now = Instant::now();
            let (expired, next) = self.take_expired(now);
            if !expired.is_empty() {
                for handle in &expired {
                    info!(log, "publication expired without keepalive";
                        "id" => api_id(&handle.id()), "name" => &handle.publication().name);
                }
                let _ = tokio::task::spawn_blocking(move || drop(expired)).await;
            }
            let wake = next.map_or(now + IDLE, |next| next.min(now + IDLE));
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {}
                () = self.inner.added.notified() => {}
            }
        }
    }
}
