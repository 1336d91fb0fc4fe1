//! The proposal pump: moves fire-and-forget proposals from every subscription's channel
//! into the core's event queue.
//!
//! A subscription's sender rings the pump's doorbell (its id on the control channel) when
//! it puts a proposal into a channel not already scheduled, so each wake-up costs the
//! proposals it moves, not the number of subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::Event;
use crate::id::DataStructureId;
use crate::node::subscription::SubId;
use crate::node::Input;

/// Proposals moved from one channel per wake-up before other channels get their turn.
const MAX_PER_TURN: usize = 1024;

/// Changes to the set of channels the pump watches, and its doorbell.
pub(crate) enum PumpControl {
    /// Watch a subscription's proposal channel; `scheduled` is its doorbell flag.
    Add(SubId, DataStructureId, Receiver<Vec<u8>>, Arc<AtomicBool>),
    /// Forget a subscription's channel.
    Remove(SubId),
    /// The subscription's channel has proposals.
    Ready(SubId),
    /// Stop the pump.
    Stop,
}

/// The sending side's half of the doorbell: after putting a proposal into the channel,
/// ring unless a ring is already pending.
#[derive(Clone)]
pub(crate) struct Doorbell {
    pump: Sender<PumpControl>,
    sub: SubId,
    scheduled: Arc<AtomicBool>,
}

impl Doorbell {
    pub(crate) fn new(pump: Sender<PumpControl>, sub: SubId, scheduled: Arc<AtomicBool>) -> Self {
        Doorbell {
            pump,
            sub,
            scheduled,
        }
    }

    /// Tells the pump the channel has proposals (at most one pending ring per channel, so
    /// the control channel holds at most one per subscription).
    pub(crate) fn ring(&self) {
        if !self.scheduled.swap(true, Ordering::SeqCst) {
            let _ = self.pump.send(PumpControl::Ready(self.sub));
        }
    }
}

/// Starts the pump thread.
pub(super) fn spawn(core: Sender<Event>) -> std::io::Result<(Sender<PumpControl>, JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let ring = tx.clone();
    let handle = std::thread::Builder::new()
        .name("copycat-pump".to_string())
        .spawn(move || run(rx, ring, core))?;
    Ok((tx, handle))
}

/// A watched channel.
struct Watched {
    group: DataStructureId,
    proposals: Receiver<Vec<u8>>,
    scheduled: Arc<AtomicBool>,
}

fn run(control: Receiver<PumpControl>, ring: Sender<PumpControl>, core: Sender<Event>) {
    let mut watched: HashMap<SubId, Watched> = HashMap::new();
    while let Ok(message) = control.recv() {
        let sub = match message {
            PumpControl::Add(sub, group, proposals, scheduled) => {
                let channel = Watched {
                    group,
                    proposals,
                    scheduled,
                };
                watched.insert(sub, channel);
                continue;
            }
            PumpControl::Remove(sub) => {
                watched.remove(&sub);
                continue;
            }
            PumpControl::Stop => return,
            PumpControl::Ready(sub) => sub,
        };
        let Some(channel) = watched.get(&sub) else {
            continue;
        };
        // Cleared before draining: a proposal sent from now on rings again.
        channel.scheduled.store(false, Ordering::SeqCst);
        let mut moved = 0;
        for data in channel.proposals.try_iter().take(MAX_PER_TURN) {
            moved += 1;
            let input = Input::Propose {
                group: channel.group,
                data,
                sub: Some(sub),
                waiter: None,
                timeout: None,
            };
            if core.send(input.into()).is_err() {
                return;
            }
        }
        if moved == MAX_PER_TURN {
            // More may wait: back of the line, behind the other channels' rings.
            Doorbell::new(ring.clone(), sub, channel.scheduled.clone()).ring();
        }
    }
}
