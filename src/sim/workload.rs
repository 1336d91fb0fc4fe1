//! What the simulated clients and the fault injector do, chosen by the seeded RNG.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::Rng;

use super::checker::TypedResponse;
use super::checker::{Read, Write};
use super::registry::NAMES;
use super::typed_app::Count;
use super::world::{Event, World};
use crate::id::DataStructureId;
use crate::node::subscription::SubId;
use crate::node::{Input, Waiter};
use crate::typed::applier::{envelope, Tag};
use crate::{Bincode, Codec, Error};

/// What a client waits for.
enum Call {
    /// Write number `n` of the checker's history.
    Write(usize),
    /// A read barrier on `group`, invoked at this time.
    Read {
        group: DataStructureId,
        invoked: u64,
    },
    /// A typed command: which application proposed it, its tag and id.
    Typed(TypedCall),
}

/// A typed command in flight, or acknowledged and waiting for its response.
struct TypedCall {
    node: usize,
    sub: SubId,
    group: DataStructureId,
    tag: Tag,
    id: u64,
    /// Its log index, once acknowledged.
    index: u64,
}

/// The clients: proposals, read barriers, subscribe and unsubscribe.
#[derive(Default)]
pub(crate) struct Workload {
    pub groups: Vec<DataStructureId>,
    /// Groups used only by typed applications (whose snapshots hold a counter, not a
    /// history the plain applications could load).
    pub typed_groups: Vec<DataStructureId>,
    pub writing: bool,
    /// The calls waiting for a completion, by waiter id (unique across nodes).
    waiting: HashMap<Waiter, Call>,
    next_waiter: Waiter,
    /// How many writes failed.
    failed_writes: usize,
    /// Acknowledged typed commands waiting for their application's response.
    typed: Vec<TypedCall>,
    next_typed: u64,
}

impl Workload {
    /// Clients of `groups`, writing until told to stop.
    pub(crate) fn new(
        groups: Vec<DataStructureId>,
        typed_groups: Vec<DataStructureId>,
    ) -> Workload {
        Workload {
            groups,
            typed_groups,
            writing: true,
            ..Workload::default()
        }
    }

    /// One client action, then the next one is scheduled.
    pub(crate) fn step(&mut self, world: &mut World) {
        if !self.writing {
            return;
        }
        let delay = world.rng.gen_range(1..world.params.op_gap_ms);
        world.at(delay, Event::Workload);
        let running = world.running();
        let Some(&node) = running.choose(&mut world.rng) else {
            return;
        };
        match world.rng.gen_range(0..100) {
            0..=39 => self.propose(world, node),
            40..=49 => self.propose_typed(world, node),
            50..=64 => self.barrier(world, node),
            65..=71 => {
                let group = self.groups[world.rng.gen_range(0..self.groups.len())];
                world.subscribe(node, group);
            }
            72..=74 => {
                let k = world.rng.gen_range(0..self.typed_groups.len());
                world.subscribe_typed(node, self.typed_groups[k]);
            }
            75..=92 if world.params.registry => registry_action(world, node),
            75..=92 => {}
            _ => {
                let apps = world.nodes[node]
                    .running
                    .as_ref()
                    .map_or(0, |r| r.apps.len());
                if apps > 1 {
                    let k = world.rng.gen_range(0..apps);
                    world.unsubscribe(node, k);
                }
            }
        }
    }

    /// An application on `node` proposes to one of its groups and waits for the ack.
    fn propose(&mut self, world: &mut World, node: usize) {
        let Some((sub, group)) = pick_app(world, node) else {
            return;
        };
        let number = world.checker.writes.len();
        let data = format!("{group}/{number}").into_bytes();
        world.checker.writes.push(Write {
            group,
            data: data.clone(),
            acked: None,
        });
        let waiter = self.wait_for(Call::Write(number));
        world.input(
            node,
            Input::Propose {
                group,
                data,
                sub: Some(sub),
                waiter: Some(waiter),
                timeout: Some(std::time::Duration::from_millis(
                    world.params.proposal_timeout_ms,
                )),
            },
        );
    }

    /// A typed application on `node` proposes a command and waits for its response.
    fn propose_typed(&mut self, world: &mut World, node: usize) {
        let Some(running) = world.nodes[node].running.as_ref() else {
            return;
        };
        if running.typed.is_empty() {
            return;
        }
        let app = &running.typed[world.rng.gen_range(0..running.typed.len())];
        let (sub, group) = (app.sub, app.group);
        let tag = app.applier.register();
        self.next_typed += 1;
        let id = self.next_typed;
        let command = Bincode::encode(&Count::new(id)).expect("a count encodes");
        let data = envelope(tag, &command);
        let call = TypedCall {
            node,
            sub,
            group,
            tag,
            id,
            index: 0,
        };
        let waiter = self.wait_for(Call::Typed(call));
        let timeout = std::time::Duration::from_millis(world.params.proposal_timeout_ms);
        let input = Input::Propose {
            group,
            data,
            sub: Some(sub),
            waiter: Some(waiter),
            timeout: Some(timeout),
        };
        world.input(node, input);
    }

    /// Collects the responses of acknowledged typed commands whose application applied
    /// them; a response must be its own command's.
    fn collect_typed(&mut self, world: &mut World) {
        let mut waiting = Vec::new();
        for call in std::mem::take(&mut self.typed) {
            let app = world.nodes[call.node]
                .running
                .as_ref()
                .and_then(|r| r.typed.iter().find(|a| a.sub == call.sub));
            // The application died with its node: nobody waits for the response.
            let Some(app) = app else { continue };
            match app.applier.outcome(call.tag, call.index) {
                None => waiting.push(call),
                Some(Ok((id, count))) => {
                    if id != call.id {
                        world.checker.note(format!(
                            "group {}: typed command {} got the response of command {id}",
                            call.group, call.id
                        ));
                    }
                    world.checker.typed.push(TypedResponse {
                        group: call.group,
                        index: call.index,
                        count,
                    });
                }
                Some(Err(Error::ResponseUnknown { .. })) => world.checker.typed_unknown += 1,
                Some(Err(e)) => world.checker.note(format!(
                    "group {}: typed command {} failed after its commit: {e}",
                    call.group, call.id
                )),
            }
        }
        self.typed = waiting;
    }

    /// An application on `node` asks for a read barrier.
    fn barrier(&mut self, world: &mut World, node: usize) {
        let Some((sub, group)) = pick_app(world, node) else {
            return;
        };
        let invoked = world.now;
        let waiter = self.wait_for(Call::Read { group, invoked });
        let timeout = std::time::Duration::from_millis(world.params.proposal_timeout_ms);
        world.input(
            node,
            Input::ReadBarrier {
                group,
                sub,
                waiter,
                timeout,
            },
        );
    }

    /// A fresh waiter id for `call`.
    fn wait_for(&mut self, call: Call) -> Waiter {
        self.next_waiter += 1;
        self.waiting.insert(self.next_waiter, call);
        self.next_waiter
    }

    /// Whether every write has completed (acknowledged or failed), once collected.
    pub(crate) fn settled(&self, world: &World) -> bool {
        world.checker.acked() + self.failed_writes >= world.checker.writes.len()
    }

    /// Moves the cores' completions into the checker's history.
    pub(crate) fn collect(&mut self, world: &mut World) {
        for (waiter, at, result) in std::mem::take(&mut world.completed) {
            let call = self.waiting.remove(&waiter);
            debug_assert!(call.is_some(), "a core completed waiter {waiter} twice");
            match (call, result) {
                (Some(Call::Write(number)), Ok(index)) => {
                    if let Some(w) = world.checker.writes.get_mut(number) {
                        w.acked = Some((at, index));
                    }
                }
                (Some(Call::Write(_)), Err(_)) => self.failed_writes += 1,
                (Some(Call::Read { group, invoked }), Ok(index)) => {
                    world.checker.reads.push(Read {
                        group,
                        invoked,
                        completed: at,
                        index,
                    })
                }
                (Some(Call::Typed(call)), Ok(index)) => {
                    self.typed.push(TypedCall { index, ..call });
                }
                (Some(Call::Typed(call)), Err(_)) => {
                    let app = world.nodes[call.node]
                        .running
                        .as_ref()
                        .and_then(|r| r.typed.iter().find(|a| a.sub == call.sub));
                    if let Some(app) = app {
                        app.applier.forget(call.tag);
                    }
                }
                (Some(Call::Read { .. }), Err(_)) | (None, _) => {}
            }
        }
        self.collect_typed(world);
    }
}

fn pick_app(world: &mut World, node: usize) -> Option<(u64, DataStructureId)> {
    let apps = &world.nodes[node].running.as_ref()?.apps;
    if apps.is_empty() {
        return None;
    }
    let app = &apps[world.rng.gen_range(0..apps.len())];
    Some((app.sub, app.group))
}

/// The fault injector: crashes and restarts, partitions and heals, a node killed for good
/// and a new one joining.
pub(crate) struct Faults {
    pub killed_for_good: bool,
}

impl Faults {
    pub(crate) fn step(&mut self, world: &mut World) -> Result<(), String> {
        let delay = world
            .rng
            .gen_range(world.params.fault_gap_ms / 2..world.params.fault_gap_ms * 3 / 2);
        world.at(delay, Event::Fault);
        world.faults += 1;
        let n = world.nodes.len();
        let down: Vec<usize> = (0..n)
            .filter(|i| world.nodes[*i].running.is_none() && !world.nodes[*i].gone)
            .collect();
        let running = world.running();
        let max_down = (running.len() + down.len() - 1) / 2;
        match world.rng.gen_range(0..100) {
            0..=29 if down.len() < max_down => {
                if let Some(&victim) = running.choose(&mut world.rng) {
                    world.crash(victim);
                }
            }
            0..=49 => {
                if let Some(&back) = down.choose(&mut world.rng) {
                    world.start(back)?;
                }
            }
            50..=74 => {
                for i in 0..n {
                    world.nodes[i].side = u8::from(world.rng.gen_bool(0.3));
                }
            }
            75..=89 => {
                for node in &mut world.nodes {
                    node.side = 0;
                }
            }
            90..=95 => {
                if let Some(&victim) = running.choose(&mut world.rng) {
                    let ms = world.rng.gen_range(300..4_000);
                    world.fill_disk(victim, ms);
                }
            }
            _ if !self.killed_for_good && down.is_empty() && running.len() >= 3 => {
                self.killed_for_good = true;
                if let Some(&victim) = running.choose(&mut world.rng) {
                    world.crash(victim);
                    world.nodes[victim].gone = true;
                    let fresh = world.add_node();
                    world.start(fresh)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A registry client on `node`: publish, unpublish, or resolve and check the answer.
fn registry_action(world: &mut World, node: usize) {
    let me = world.nodes[node].info.node_id;
    let datacenter = world.nodes[node].info.datacenter.clone();
    let name = NAMES[world.rng.gen_range(0..NAMES.len())];
    let choice = world.rng.gen_range(0..3);
    let Some(agent) = world.nodes[node]
        .running
        .as_mut()
        .and_then(|r| r.registry.as_mut())
    else {
        return;
    };
    let op = match choice {
        0 if agent.held() < 4 => Some(agent.publish(me, &datacenter, name)),
        1 if agent.held() > 0 => {
            let k = world.rng.gen_range(0..agent.held());
            agent.unpublish(k)
        }
        _ => {
            let resolved = agent.resolve(me, &datacenter, name, &mut world.rng);
            if let Some(publication) = resolved {
                check_owner_alive(world, node, &publication);
            }
            None
        }
    };
    if let Some(op) = op {
        world.propose_registry(node, &op);
    }
}

/// Time for a crash to reach every member view (a second of silence, a gossip round) and
/// the registry's view of it (an upkeep round), on top of the grace period.
const DETECTION_MS: u64 = 2_000;

/// The registry never resolves to a publication whose owner has been dead for longer than
/// the grace period.
fn check_owner_alive(world: &mut World, node: usize, publication: &crate::registry::Publication) {
    let Some(owner) = world.index_of(publication.id.node) else {
        return;
    };
    let limit = world.params.dead_node_grace_ms + DETECTION_MS;
    if let Some(since) = world.nodes[owner].dead_since {
        if world.now.saturating_sub(since) > limit {
            let what = format!(
                "registry on node {node} resolved {} to node {owner}, dead since {since} ms (now {} ms)",
                publication.name, world.now
            );
            world.checker.note(what);
        }
    }
}
