//! Disks that fill up: for a while a node's writes fail with "no space left"; its core goes
//! dormant, as production's core thread puts it, and wakes over its store once there is
//! room again, keeping its subscriptions (which the checkers then follow as any other).

use std::sync::Arc;

use super::world::World;
use crate::error::Error;
use crate::node::{Dormant, Input, NodeCore, Output};
use crate::storage::StorageError;

/// A node's core: awake, or dormant while its disk is full.
pub(crate) enum SimCore {
    Awake(Box<NodeCore>),
    Dormant(Box<Dormant>),
}

impl SimCore {
    /// The core, if awake.
    pub(crate) fn awake(&self) -> Option<&NodeCore> {
        match self {
            SimCore::Awake(core) => Some(core),
            SimCore::Dormant(_) => None,
        }
    }

    /// Feeds an input to the core, awake or dormant.
    pub(crate) fn handle(&mut self, now_ms: u64, input: Input) {
        match self {
            SimCore::Awake(core) => {
                core.handle(now_ms, input);
            }
            SimCore::Dormant(dormant) => {
                dormant.handle(now_ms, input);
            }
        }
    }

    /// The core's output; a dormant core has only its failed calls.
    pub(crate) fn poll_output(&mut self) -> Output {
        match self {
            SimCore::Awake(core) => core.poll_output(),
            SimCore::Dormant(dormant) => Output {
                completions: dormant.take_completions(),
                ..Output::default()
            },
        }
    }
}

/// The error of a write to a full disk, as sled reports it.
pub(crate) fn no_space() -> Error {
    let io = std::io::Error::from(std::io::ErrorKind::StorageFull);
    Error::Storage(Arc::new(StorageError::Io(io)))
}

impl World {
    /// Node `i`'s disk has no room for the next `ms` milliseconds.
    pub(crate) fn fill_disk(&mut self, i: usize, ms: u64) {
        let until = self.now + ms;
        if let Some(running) = self.nodes[i].running.as_mut() {
            running.disk_full_until = Some(until);
        }
    }

    /// Whether node `i`'s disk has no room now.
    pub(crate) fn disk_is_full(&self, i: usize) -> bool {
        let now = self.now;
        self.nodes[i]
            .running
            .as_ref()
            .and_then(|r| r.disk_full_until)
            .is_some_and(|until| now < until)
    }

    /// Gives every disk its room back (the end of the faults).
    pub(crate) fn empty_disks(&mut self) {
        for node in &mut self.nodes {
            if let Some(running) = node.running.as_mut() {
                running.disk_full_until = None;
            }
        }
    }

    /// After node `i`'s round: a core whose disk ran out of space goes dormant. Its queued
    /// writes are dropped (sled fails every write after a failed one) and the events of its
    /// former life are void (the runtime drains its former storage threads' reports).
    pub(crate) fn sleep_if_exhausted(&mut self, i: usize) {
        let cause = match self.nodes[i].running.as_ref().map(|r| &r.core) {
            Some(SimCore::Awake(core)) => match core.storage_failure() {
                Some(cause) if cause.is_exhausted() => cause.clone(),
                _ => return,
            },
            _ => return,
        };
        let Some(mut running) = self.nodes[i].running.take() else {
            return;
        };
        if let SimCore::Awake(core) = running.core {
            running.core = SimCore::Dormant(Box::new(core.into_dormant(cause)));
        } else {
            unreachable!("matched awake above");
        }
        running.disk.clear();
        running.disk_busy = false;
        let output = running.core.poll_output();
        self.nodes[i].running = Some(running);
        self.nodes[i].life += 1;
        self.slept += 1;
        self.route(i, output);
    }

    /// At node `i`'s tick: a dormant core wakes over its store once the disk has room.
    pub(crate) fn wake_if_room(&mut self, i: usize) {
        let dormant = matches!(
            self.nodes[i].running.as_ref().map(|r| &r.core),
            Some(SimCore::Dormant(_))
        );
        if !dormant || self.disk_is_full(i) {
            return;
        }
        let Some(mut running) = self.nodes[i].running.take() else {
            return;
        };
        let SimCore::Dormant(dormant) = running.core else {
            unreachable!("matched dormant above");
        };
        match dormant.wake(running.store.clone()) {
            Ok(core) => {
                running.core = SimCore::Awake(Box::new(core));
                running.disk_full_until = None;
                self.nodes[i].running = Some(running);
            }
            Err(e) => {
                self.nodes[i].dead_since = Some(self.now);
                self.checker.note(format!("node {i} could not wake: {e}"));
            }
        }
    }
}
