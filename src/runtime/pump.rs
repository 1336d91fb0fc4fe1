//! The proposal pump: moves fire-and-forget proposals from every subscription's crossbeam
//! channel into the core's input channel.

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Select, Sender};

use super::Event;
use crate::id::DataStructureId;
use crate::node::subscription::SubId;
use crate::node::Input;

/// Changes to the set of channels the pump watches.
pub(crate) enum PumpControl {
    /// Watch a subscription's proposal channel.
    Add(SubId, DataStructureId, Receiver<Vec<u8>>),
    /// Stop the pump.
    Stop,
}

/// Starts the pump thread.
pub(super) fn spawn(core: Sender<Event>) -> std::io::Result<(Sender<PumpControl>, JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let handle = std::thread::Builder::new()
        .name("copycat-pump".to_string())
        .spawn(move || run(rx, core))?;
    Ok((tx, handle))
}

fn run(control: Receiver<PumpControl>, core: Sender<Event>) {
    let mut watched: Vec<(SubId, DataStructureId, Receiver<Vec<u8>>)> = Vec::new();
    loop {
        let mut select = Select::new();
        select.recv(&control);
        for (_, _, rx) in &watched {
            select.recv(rx);
        }
        let op = select.select();
        let index = op.index();
        if index == 0 {
            match op.recv(&control) {
                Ok(PumpControl::Add(sub, group, rx)) => watched.push((sub, group, rx)),
                Ok(PumpControl::Stop) | Err(_) => return,
            }
            continue;
        }
        let (sub, group, rx) = &watched[index - 1];
        match op.recv(rx) {
            Ok(data) => {
                let mut proposals = vec![data];
                proposals.extend(rx.try_iter().take(1024));
                for data in proposals {
                    let input = Input::Propose {
                        group: *group,
                        data,
                        sub: Some(*sub),
                        waiter: None,
                        timeout: None,
                    };
                    if core.send(input.into()).is_err() {
                        return;
                    }
                }
            }
            // The DataStructure (the only sender) was dropped: stop watching.
            Err(_) => {
                watched.remove(index - 1);
            }
        }
    }
}
