//! A simulated application on the typed API: production's `Applier` over a subscription's
//! channels, applying tagged commands to a machine that counts them. Each response says
//! which command it answers and how many commands the group had applied with it, which
//! the checker compares with the group's one sequence of entries.

use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;
use serde::{Deserialize, Serialize};

use crate::id::DataStructureId;
use crate::node::subscription::{SubId, SubscriberSink};
use crate::storage::SnapshotFiles;
use crate::subscriber_sink::channel_sink;
use crate::typed::applier::{open_envelope, Applier, CommitSource};
use crate::{Bincode, Codec, Commit, Error, StateMachine};

/// Marks the simulation's typed commands (no other entry decodes with it).
const MAGIC: u32 = 0x00C0_FFEE;

/// The command: which proposal it is.
#[derive(Serialize, Deserialize)]
pub(crate) struct Count {
    magic: u32,
    pub id: u64,
}

impl Count {
    pub(crate) fn new(id: u64) -> Self {
        Count { magic: MAGIC, id }
    }
}

/// Counts the commands applied.
#[derive(Default)]
pub(crate) struct Counter {
    applied: u64,
}

impl StateMachine for Counter {
    type Command = Count;
    /// The command's id, and the number of commands applied with it.
    type Response = (u64, u64);

    fn apply(&mut self, command: Count) -> (u64, u64) {
        if command.magic == MAGIC {
            self.applied += 1;
        }
        (command.id, self.applied)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.applied.to_be_bytes().to_vec()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let bytes = snapshot.try_into().map_err(|_| "not 8 bytes".to_string())?;
        self.applied = u64::from_be_bytes(bytes);
        Ok(())
    }
}

/// Whether an entry is one of the simulation's typed commands (what `Counter` counts).
pub(crate) fn is_count(data: &[u8]) -> bool {
    open_envelope(data)
        .and_then(|(_, bytes)| Bincode::decode::<Count>(bytes).ok())
        .is_some_and(|c| c.magic == MAGIC)
}

/// What a typed application was handed: an entry, a snapshot marker, or the state of a
/// snapshot it loaded (its index and count: it must hold the commands up to its index).
pub(crate) enum Handed {
    Entry(u64, Vec<u8>),
    Restored(u64),
    Loaded(u64, Option<u64>),
}

/// A subscription's channels as the applier's source, noting what it hands out.
pub(crate) struct SimSource {
    group: DataStructureId,
    commits: Receiver<Commit>,
    errors: Receiver<Error>,
    files: SnapshotFiles,
    handed: Mutex<Vec<Handed>>,
}

impl CommitSource for SimSource {
    fn next_commit(&self) -> Option<Commit> {
        let commit = self.commits.try_recv().ok()?;
        let handed = match &commit {
            Commit::Entry { index, data } => Handed::Entry(*index, data.clone()),
            Commit::Snapshot { index } => Handed::Restored(*index),
        };
        self.handed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handed);
        Some(commit)
    }

    fn discard_errors(&self) {
        while self.errors.try_recv().is_ok() {}
    }

    fn load_snapshot(&self, index: u64) -> crate::Result<Vec<u8>> {
        let bytes = self
            .files
            .read(self.group, index)?
            .ok_or_else(|| Error::SnapshotUnavailable(format!("no snapshot at {index}")))?;
        let count = bytes.as_slice().try_into().ok().map(u64::from_be_bytes);
        self.handed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Handed::Loaded(index, count));
        Ok(bytes)
    }

    fn newest_snapshot(&self) -> crate::Result<Option<u64>> {
        Ok(self.files.newest(self.group)?)
    }

    fn caught_up(&self) -> u64 {
        0
    }
}

/// One typed subscription of the simulated application.
pub(crate) struct TypedApp {
    pub sub: SubId,
    pub group: DataStructureId,
    pub applier: Arc<Applier<Counter, Bincode, SimSource>>,
}

impl TypedApp {
    /// A typed subscription on node `node` and the sink the core delivers into.
    pub(crate) fn new(
        sub: SubId,
        group: DataStructureId,
        node: crate::id::NodeId,
        files: SnapshotFiles,
    ) -> (TypedApp, Box<dyn SubscriberSink>) {
        let (sink, commits, errors) = channel_sink();
        let source = SimSource {
            group,
            commits,
            errors,
            files,
            handed: Mutex::new(Vec::new()),
        };
        let applier = Arc::new(Applier::new(source, node, Counter::default()));
        (
            TypedApp {
                sub,
                group,
                applier,
            },
            sink,
        )
    }

    /// Its snapshot provider: production's, through the applier.
    pub(crate) fn provider(&self) -> impl crate::SnapshotProvider {
        let applier = self.applier.clone();
        move || applier.snapshot()
    }

    /// Applies what was delivered and returns what was handed out since the last call.
    pub(crate) fn drain(&self) -> Vec<Handed> {
        // Applying is all that is wanted here: the state and its lock go at once.
        drop(self.applier.current());
        let mut handed = self
            .applier
            .source
            .handed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *handed)
    }
}
