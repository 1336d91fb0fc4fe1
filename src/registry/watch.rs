//! Watches: the registry's changes for some names, in revision order, resumable.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::{RegistryError, RegistryResult};
use super::shared::read;
use super::state::{Change, Revision, WatchEvent};
use super::RegistryCore;

/// Most events taken from the history per look, so a far-behind watch does not hold the
/// state's lock for long.
const BATCH: usize = 1024;

/// A stream of changes (added, changed, removed with its reason) to the publications of
/// some names, in revision order; every replica has the same revisions, so a watch can
/// resume on any node after the last revision it handled.
pub struct Watch {
    core: Arc<RegistryCore>,
    /// `None`: every name.
    names: Option<BTreeSet<String>>,
    /// Every change up to here has been looked at.
    seen: Revision,
    /// The revision of the last event returned (or where the watch started).
    delivered: Revision,
    backlog: VecDeque<WatchEvent>,
}

impl Watch {
    /// A watch of `names` (all names if `None`). From `None`: first an `Added` event for
    /// each current publication (all at the current revision), then every later change.
    /// From `Some(r)`: exactly the changes after revision `r`, or
    /// [`RegistryError::RevisionCompacted`] if they left the history.
    pub(crate) fn new(
        core: Arc<RegistryCore>,
        names: Option<&[&str]>,
        from: Option<Revision>,
    ) -> RegistryResult<Watch> {
        let names: Option<BTreeSet<String>> =
            names.map(|names| names.iter().map(|n| n.to_string()).collect());
        let state = read(&core.shared.state);
        let mut watch = Watch {
            names,
            seen: state.revision,
            delivered: state.revision,
            backlog: VecDeque::new(),
            core: core.clone(),
        };
        match from {
            None => {
                watch.backlog = state
                    .publications
                    .values()
                    .filter(|p| watch.wants(&p.name))
                    .map(|p| WatchEvent {
                        revision: state.revision,
                        change: Change::Added,
                        publication: p.clone(),
                    })
                    .collect();
            }
            Some(asked) => {
                if let Err(oldest) = state.changes_after(asked) {
                    return Err(RegistryError::RevisionCompacted { asked, oldest });
                }
                // Past this replica's revision (it is still catching up): the changes up
                // to `asked` were handled elsewhere, so they are skipped when they arrive.
                watch.seen = asked;
                watch.delivered = asked;
            }
        }
        drop(state);
        Ok(watch)
    }

    fn wants(&self, name: &str) -> bool {
        self.names.as_ref().is_none_or(|names| names.contains(name))
    }

    /// The revision of the last event returned (where the watch started, before any):
    /// a watch resumed from it continues after that event.
    pub fn revision(&self) -> Revision {
        self.delivered
    }

    /// The next change, waiting up to `timeout`; `Ok(None)` if none came.
    pub fn next_timeout(&mut self, timeout: Duration) -> RegistryResult<Option<WatchEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.backlog.pop_front() {
                self.delivered = event.revision;
                return Ok(Some(event));
            }
            let seen = self.seen;
            let shared = &self.core.shared;
            let found = shared.wait_for(deadline, |state, _| match state.changes_after(seen) {
                Err(oldest) => Some(Err(oldest)),
                Ok(mut changes) => changes.next().is_some().then_some(Ok(())),
            });
            match found {
                Err(RegistryError::Timeout) => return Ok(None),
                Err(e) => return Err(e),
                Ok(Err(oldest)) => {
                    return Err(RegistryError::RevisionCompacted {
                        asked: seen,
                        oldest,
                    })
                }
                Ok(Ok(())) => self.take_changes(),
            }
        }
    }

    /// Moves the next changes from the history into the backlog, keeping the wanted ones.
    fn take_changes(&mut self) {
        let state = read(&self.core.shared.state);
        let Ok(changes) = state.changes_after(self.seen) else {
            return;
        };
        for event in changes.take(BATCH) {
            self.seen = event.revision;
            if self.wants(&event.publication.name) {
                self.backlog.push_back(event.clone());
            }
        }
    }
}

impl Iterator for Watch {
    type Item = RegistryResult<WatchEvent>;

    /// Blocks until the next change; ends only if the watch fails.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("names", &self.names)
            .field("revision", &self.revision())
            .finish()
    }
}
