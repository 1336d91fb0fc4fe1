//! Follows the registry's changes on a thread of its own, so that async handlers can wait
//! for "something changed" without blocking a tokio worker: each change's revision goes to
//! a [`tokio::sync::watch`] channel, and a count of the publications per name is kept for
//! the metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use copycat::registry::{Change, PublicationId, Registry, RegistryError, Revision};
use slog::{warn, Logger};
use tokio::sync::watch;

/// How often the thread looks at its stop flag while no change comes.
const POLL: Duration = Duration::from_millis(200);

/// The follower thread's handle; [`Follower::stop`] ends it.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    view: FollowerView,
}

/// What the follower tells: the latest revision, and the publications' names. Cheap to
/// clone.
#[derive(Clone)]
pub struct FollowerView {
    revisions: watch::Receiver<Revision>,
    names: Arc<Mutex<BTreeMap<PublicationId, String>>>,
}

impl Follower {
    /// Starts following every change of `registry`.
    pub fn start(registry: Registry, log: Logger) -> std::io::Result<Follower> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, revisions) = watch::channel(registry.revision());
        let names = Arc::new(Mutex::new(BTreeMap::new()));
        let thread = {
            let (stop, names) = (stop.clone(), names.clone());
            std::thread::Builder::new()
                .name("registry-follower".to_string())
                .spawn(move || follow(registry, stop, tx, names, log))?
        };
        Ok(Follower {
            stop,
            thread: Some(thread),
            view: FollowerView { revisions, names },
        })
    }

    /// What the thread reports.
    pub fn view(&self) -> FollowerView {
        self.view.clone()
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl FollowerView {
    /// A receiver whose value is the revision of the latest change seen; it changes after
    /// every registry change (a publication added, changed or removed anywhere).
    pub fn revisions(&self) -> watch::Receiver<Revision> {
        self.revisions.clone()
    }

    /// Publications in the map, in total (owners reported down included).
    pub fn publication_count(&self) -> usize {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The distinct names of the publications in the map.
    pub fn names(&self) -> Vec<String> {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let mut distinct: Vec<String> = names.values().cloned().collect();
        distinct.sort();
        distinct.dedup();
        distinct
    }
}

/// The thread: a watch of every name from the current state on; starts over from the
/// current state if it fell so far behind that its revision left the history.
fn follow(
    registry: Registry,
    stop: Arc<AtomicBool>,
    tx: watch::Sender<Revision>,
    names: Arc<Mutex<BTreeMap<PublicationId, String>>>,
    log: Logger,
) {
    'restart: while !stop.load(Ordering::Acquire) {
        let mut watch = match registry.watch(&[], None) {
            Ok(watch) => watch,
            Err(e) => {
                warn!(log, "registry follower stops"; "error" => %e);
                return;
            }
        };
        names.lock().unwrap_or_else(|e| e.into_inner()).clear();
        while !stop.load(Ordering::Acquire) {
            match watch.next_timeout(POLL) {
                Ok(Some(event)) => {
                    let mut names = names.lock().unwrap_or_else(|e| e.into_inner());
                    match event.change {
                        Change::Removed(_) => {
                            names.remove(&event.publication.id);
                        }
                        _ => {
                            names.insert(event.publication.id, event.publication.name.clone());
                        }
                    }
                    drop(names);
                    tx.send_if_modified(|seen| {
                        let newer = event.revision > *seen;
                        *seen = (*seen).max(event.revision);
                        newer
                    });
                }
                Ok(None) => {}
                Err(RegistryError::RevisionCompacted { .. }) => continue 'restart,
                Err(e) => {
                    warn!(log, "registry follower stops"; "error" => %e);
                    return;
                }
            }
        }
    }
}
