//! The state behind a [`super::Replicated`] handle: the machine, how far it has applied,
//! and the proposals of this handle waiting for their responses. Whoever needs the state
//! current (a proposer, a reader, the snapshot thread) drains the commit channel into the
//! machine under the lock first.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::{Codec, StateMachine};
use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::{Commit, DataStructure};

/// Bytes before the command in an entry: the proposing node and its number for the
/// proposal.
const HEADER: usize = 16;

/// An entry's tag: which node proposed it, and that node's number for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    pub node: NodeId,
    pub nonce: u64,
}

/// The entry for `command` tagged with `tag`.
pub(crate) fn envelope(tag: Tag, command: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(HEADER + command.len());
    data.extend_from_slice(&tag.node.to_be_bytes());
    data.extend_from_slice(&tag.nonce.to_be_bytes());
    data.extend_from_slice(command);
    data
}

/// The tag and command bytes of an entry, if it has a tag.
pub(crate) fn open_envelope(data: &[u8]) -> Option<(Tag, &[u8])> {
    let (header, command) = data.split_at_checked(HEADER)?;
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_be_bytes(b)
    };
    Some((
        Tag {
            node: word(0),
            nonce: word(8),
        },
        command,
    ))
}

/// A local proposal waiting for its response.
struct Waiting<R> {
    /// Its log index, once the proposal returned it.
    index: Option<u64>,
    /// Set when this replica applied it (or restored a snapshot past it).
    outcome: Option<Result<R>>,
}

/// The machine and its bookkeeping, under one lock.
pub(crate) struct Applied<S: StateMachine> {
    pub machine: S,
    /// The index of the last commit applied into `machine` (0: none).
    pub applied: u64,
    waiting: HashMap<u64, Waiting<S::Response>>,
    /// Set when a snapshot could not be restored: the handle is unusable.
    broken: Option<String>,
    /// Entries that were not commands of this machine (skipped on every replica alike).
    pub skipped: u64,
}

/// Where an applier's commits come from: a subscription (a [`DataStructure`]), or in the
/// simulator a subscription's bare channels.
pub(crate) trait CommitSource: Send + Sync + 'static {
    /// The next commit delivered, if any.
    fn next_commit(&self) -> Option<Commit>;
    /// Discards the errors delivered (failures of calls come back as their results).
    fn discard_errors(&self);
    /// The state of the snapshot at `index`.
    fn load_snapshot(&self, index: u64) -> Result<Vec<u8>>;
    /// The index of the newest stored snapshot, if any.
    fn newest_snapshot(&self) -> Result<Option<u64>>;
    /// The newest stored snapshot: its index and state.
    fn load_newest_snapshot(&self) -> Result<(u64, Vec<u8>)> {
        let index = self
            .newest_snapshot()?
            .ok_or_else(|| Error::SnapshotUnavailable("no snapshot is stored".to_string()))?;
        Ok((index, self.load_snapshot(index)?))
    }
    /// How far delivery has caught up, log indexes without commits included.
    fn caught_up(&self) -> u64;
}

impl CommitSource for DataStructure {
    fn next_commit(&self) -> Option<Commit> {
        self.commits().try_recv().ok()
    }

    fn discard_errors(&self) {
        while self.errors().try_recv().is_ok() {}
    }

    fn load_snapshot(&self, index: u64) -> Result<Vec<u8>> {
        DataStructure::load_snapshot(self, index)
    }

    fn newest_snapshot(&self) -> Result<Option<u64>> {
        DataStructure::newest_snapshot(self)
    }

    fn caught_up(&self) -> u64 {
        self.progress.caught_up.load(Ordering::Acquire)
    }
}

/// Everything a handle's clones share.
pub(crate) struct Applier<S: StateMachine, C: Codec, Src: CommitSource = DataStructure> {
    pub source: Src,
    pub node: NodeId,
    next_nonce: AtomicU64,
    state: Mutex<Applied<S>>,
    codec: PhantomData<C>,
}

impl<S: StateMachine, C: Codec, Src: CommitSource> Applier<S, C, Src> {
    pub(crate) fn new(source: Src, node: NodeId, machine: S) -> Self {
        Applier {
            source,
            node,
            // Random, so a restarted node's numbers do not meet those of its earlier run
            // still in the log.
            next_nonce: AtomicU64::new(rand::random::<u64>() >> 1),
            state: Mutex::new(Applied {
                machine,
                applied: 0,
                waiting: HashMap::new(),
                broken: None,
                skipped: 0,
            }),
            codec: PhantomData,
        }
    }

    /// The state, with everything the commit channel holds applied.
    pub(crate) fn current(&self) -> Result<MutexGuard<'_, Applied<S>>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Read before draining: every commit up to it is in the channel by then, so once
        // drained the indexes without a commit (no-ops, membership changes) are passed too.
        let caught_up = self.source.caught_up();
        while let Some(commit) = self.source.next_commit() {
            self.apply(&mut state, commit);
        }
        // Failures that concern a call come back as its result; the rest (a storage
        // failure reported to every subscriber, too) is in the node's log.
        self.source.discard_errors();
        if state.broken.is_none() {
            state.applied = state.applied.max(caught_up);
        }
        match &state.broken {
            Some(why) => Err(Error::Corrupted(why.clone())),
            None => Ok(state),
        }
    }

    fn apply(&self, state: &mut Applied<S>, commit: Commit) {
        if state.broken.is_some() {
            return;
        }
        match commit {
            Commit::Entry { index, data } => self.apply_entry(state, index, &data),
            Commit::Snapshot { index } => self.restore(state, index),
        }
    }

    fn apply_entry(&self, state: &mut Applied<S>, index: u64, data: &[u8]) {
        if index <= state.applied {
            // Covered by a newer snapshot restored after a superseded one.
            return;
        }
        state.applied = index;
        let decoded = open_envelope(data)
            .and_then(|(tag, bytes)| C::decode::<S::Command>(bytes).ok().map(|c| (tag, c)));
        let Some((tag, command)) = decoded else {
            state.skipped += 1;
            return;
        };
        let response = state.machine.apply(command);
        if tag.node == self.node {
            if let Some(waiting) = state.waiting.get_mut(&tag.nonce) {
                waiting.outcome = Some(Ok(response));
            }
        }
    }

    /// Restores the snapshot at `index`; if it was superseded meanwhile, the newest one.
    fn restore(&self, state: &mut Applied<S>, index: u64) {
        let loaded = match self.source.load_snapshot(index) {
            Ok(bytes) => Ok((index, bytes)),
            Err(Error::SnapshotUnavailable(_)) => self.source.load_newest_snapshot(),
            Err(e) => Err(e),
        };
        let restored =
            loaded.and_then(|(index, bytes)| {
                state.machine.restore(&bytes).map(|()| index).map_err(|e| {
                    Error::Corrupted(format!("restoring the snapshot at {index}: {e}"))
                })
            });
        match restored {
            Ok(index) => {
                state.applied = state.applied.max(index);
                let applied = state.applied;
                for waiting in state.waiting.values_mut() {
                    if waiting.outcome.is_none() && waiting.index.is_some_and(|i| i <= applied) {
                        waiting.outcome = Some(Err(Error::ResponseUnknown {
                            index: waiting.index.unwrap_or(applied),
                        }));
                    }
                }
            }
            Err(e) => state.broken = Some(e.to_string()),
        }
    }

    /// A fresh tag for a proposal of this handle, registered as waiting.
    pub(crate) fn register(&self) -> Tag {
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = Waiting {
            index: None,
            outcome: None,
        };
        state.waiting.insert(nonce, waiting);
        Tag {
            node: self.node,
            nonce,
        }
    }

    /// Forgets a proposal (answered, failed or abandoned by its caller).
    pub(crate) fn forget(&self, tag: Tag) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.waiting.remove(&tag.nonce);
    }

    /// The outcome of the proposal `tag`, committed at `index`, if this replica has it:
    /// its response, or `ResponseUnknown` if a snapshot restored past it first.
    pub(crate) fn outcome(&self, tag: Tag, index: u64) -> Option<Result<S::Response>> {
        let mut state = match self.current() {
            Ok(state) => state,
            Err(e) => return Some(Err(e)),
        };
        let applied = state.applied;
        let waiting = state.waiting.get_mut(&tag.nonce)?;
        waiting.index = Some(index);
        if waiting.outcome.is_none() && applied >= index {
            waiting.outcome = Some(Err(Error::ResponseUnknown { index }));
        }
        let outcome = waiting.outcome.take()?;
        state.waiting.remove(&tag.nonce);
        Some(outcome)
    }

    /// The state for the snapshot provider: its index and bytes (none before any commit).
    pub(crate) fn snapshot(&self) -> Option<(u64, Vec<u8>)> {
        let state = self.current().ok()?;
        (state.applied > 0).then(|| (state.applied, state.machine.snapshot()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_carries_its_tag_and_command() {
        let tag = Tag {
            node: 7,
            nonce: u64::MAX,
        };
        let data = envelope(tag, b"cmd");
        assert_eq!(open_envelope(&data), Some((tag, &b"cmd"[..])));
        assert_eq!(open_envelope(b"short"), None);
    }
}
