//! The simulated application: one subscription whose state is the whole history it
//! applied, so its snapshots can be checked against what other subscribers saw.

use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;

use crate::id::DataStructureId;
use crate::node::subscription::{SubId, SubscriberSink};
use crate::storage::SnapshotFiles;
use crate::subscriber_sink::channel_sink;
use crate::{Commit, Error};

/// Entries `(index, data)` applied, in order.
pub(crate) type History = Vec<(u64, Vec<u8>)>;

/// The state a subscription's snapshot provider captures.
#[derive(Default)]
pub(crate) struct AppState {
    pub history: History,
    /// Index of the last commit applied (entry or snapshot).
    pub applied: u64,
}

fn encode(history: &History) -> Vec<u8> {
    bincode::encode_to_vec(history, bincode::config::standard()).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Option<History> {
    bincode::decode_from_slice(bytes, bincode::config::standard())
        .ok()
        .map(|(h, _)| h)
}

/// One subscription of the simulated application.
pub(crate) struct App {
    pub sub: SubId,
    pub group: DataStructureId,
    pub commits: Receiver<Commit>,
    pub errors: Receiver<Error>,
    pub state: Arc<Mutex<AppState>>,
}

/// What draining a subscription's channel produced, for the checker.
pub(crate) enum Delivered {
    Entry(u64, Vec<u8>),
    /// A snapshot marker and the history the snapshot holds (`None`: unreadable).
    Snapshot(u64, Option<History>),
    /// A snapshot marker whose file two newer snapshots had already superseded: the load
    /// fails with `SnapshotUnavailable` and, as the contract says, the application
    /// subscribes again (this subscription delivers nothing more).
    Superseded(u64),
}

impl App {
    /// A subscription and the channels the core delivers into.
    pub(crate) fn new(sub: SubId, group: DataStructureId) -> (App, Box<dyn SubscriberSink>) {
        let state = Arc::new(Mutex::new(AppState::default()));
        let (sink, commits, errors) = channel_sink();
        let app = App {
            sub,
            group,
            commits,
            errors,
            state,
        };
        (app, sink)
    }

    /// Its snapshot provider: the history applied so far, read under the state's lock.
    pub(crate) fn provider(&self) -> impl crate::SnapshotProvider {
        let state = self.state.clone();
        move || {
            let state = state.lock().ok()?;
            (state.applied > 0).then(|| (state.applied, encode(&state.history)))
        }
    }

    /// Applies everything the core delivered so far.
    pub(crate) fn drain(&self, files: &SnapshotFiles) -> Vec<Delivered> {
        let mut out = Vec::new();
        let Ok(mut state) = self.state.lock() else {
            return out;
        };
        while let Ok(commit) = self.commits.try_recv() {
            match commit {
                Commit::Entry { index, data } => {
                    state.history.push((index, data.clone()));
                    state.applied = index;
                    out.push(Delivered::Entry(index, data));
                }
                Commit::Snapshot { index } if superseded(files, self.group, index) => {
                    out.push(Delivered::Superseded(index));
                    break;
                }
                Commit::Snapshot { index } => {
                    let history = files
                        .read(self.group, index)
                        .ok()
                        .flatten()
                        .and_then(|b| decode(&b));
                    if let Some(h) = &history {
                        state.history = h.clone();
                    }
                    state.applied = index;
                    out.push(Delivered::Snapshot(index, history));
                }
            }
        }
        while self.errors.try_recv().is_ok() {}
        out
    }

    /// The index of the last commit applied.
    pub(crate) fn applied(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.applied)
    }
}

/// Whether snapshot `index` of `group` is gone and two newer ones are kept instead.
fn superseded(files: &SnapshotFiles, group: DataStructureId, index: u64) -> bool {
    let kept = files.indexes(group).unwrap_or_default();
    !kept.contains(&index) && kept.iter().filter(|i| **i > index).count() >= 2
}
