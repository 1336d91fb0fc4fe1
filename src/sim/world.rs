//! The simulated world: node cores on one thread, a fake clock, an event queue, a faulty
//! network, disks whose unwritten batches die with their node, and a membership view in
//! place of gossip. The cores are production's; only the runtime around them is swapped.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::Rng;

use super::app::{App, Delivered};
use super::checker::Checker;
use super::disk_full::SimCore;
use super::registry::RegistryAgent;
use super::Params;
use crate::group::RaftSettings;
use crate::id::{DataStructureId, NodeId};
use crate::node::member::NodeInfo;
use crate::node::streams::SnapshotIo;
use crate::node::subscription::SubId;
use crate::node::{CoreConfig, NodeCore, Output, SnapshotRequest};
use crate::node::{Input, Waiter};
use crate::proto;
use crate::registry::state::Op;
use crate::storage::{SledStore, WriteBatch};

/// What happens at a point of simulated time.
pub(crate) enum Event {
    Tick(usize),
    Deliver {
        to: usize,
        life: u64,
        from: NodeId,
        batch: proto::Batch,
    },
    DiskDone {
        node: usize,
        life: u64,
    },
    Unreachable {
        node: usize,
        life: u64,
        peer: NodeId,
    },
    TakeSnapshot {
        node: usize,
        life: u64,
        request: SnapshotRequest,
    },
    SnapshotIo {
        node: usize,
        life: u64,
        io: SnapshotIo,
    },
    Gossip,
    RegistryUpkeep,
    Workload,
    Fault,
}

/// A running node: its core, its store, and its disk queue.
pub(crate) struct Running {
    pub core: SimCore,
    /// Until when (ms) its disk has no room, if it filled up.
    pub disk_full_until: Option<u64>,
    pub store: Arc<SledStore>,
    pub disk: VecDeque<(u64, WriteBatch)>,
    pub disk_busy: bool,
    /// When the last piece of queued snapshot file work is done (ms).
    pub snapshot_io_at: u64,
    pub stream_files: crate::snapshot_io::StreamFiles,
    pub apps: Vec<App>,
    /// Applications on the typed API.
    pub typed: Vec<super::typed_app::TypedApp>,
    pub registry: Option<RegistryAgent>,
}

impl Running {
    /// The snapshot provider of subscription `sub` on this node: an app's or the registry's.
    pub(crate) fn provider(&self, sub: SubId) -> Option<Box<dyn crate::SnapshotProvider>> {
        if let Some(app) = self.apps.iter().find(|a| a.sub == sub) {
            return Some(Box::new(app.provider()));
        }
        if let Some(app) = self.typed.iter().find(|a| a.sub == sub) {
            return Some(Box::new(app.provider()));
        }
        let registry = self.registry.as_ref().filter(|r| r.sub == sub)?;
        Some(Box::new(registry.provider()))
    }
}

/// A node of the simulation, running or not.
pub(crate) struct SimNode {
    pub info: NodeInfo,
    pub dir: PathBuf,
    /// Incremented at every start: events of an earlier life are void.
    pub life: u64,
    pub running: Option<Running>,
    /// Killed for good.
    pub gone: bool,
    /// Network side; nodes talk only to nodes on the same side.
    pub side: u8,
    /// When it last crashed, while it is down (ms).
    pub dead_since: Option<u64>,
    /// This node's membership view: alive, and when it last heard of each peer.
    pub view: BTreeMap<NodeId, (bool, u64)>,
}

/// The simulated world.
pub(crate) struct World {
    pub params: Params,
    pub now: u64,
    /// Completions the cores reported, `(waiter, when, outcome)`, for the workload to
    /// collect.
    pub completed: Vec<(Waiter, u64, crate::Result<u64>)>,
    pub rng: SmallRng,
    events: BTreeMap<(u64, u64), Event>,
    seq: u64,
    pub nodes: Vec<SimNode>,
    pub checker: Checker,
    root: PathBuf,
    next_sub: SubId,
    /// The instant simulated time 0 maps to, for the registry's `Instant`-based upkeep.
    pub base: std::time::Instant,
    /// Running hash of every event processed: equal for equal seeds.
    pub trace: u64,
    pub faults: u64,
    pub messages: u64,
    /// Times a core went dormant on a full disk.
    pub slept: u64,
    pub logger: slog::Logger,
}

impl World {
    pub(crate) fn new(params: Params, rng: SmallRng, root: PathBuf) -> World {
        World {
            params,
            now: 0,
            completed: Vec::new(),
            rng,
            events: BTreeMap::new(),
            seq: 0,
            nodes: Vec::new(),
            checker: Checker::default(),
            root,
            next_sub: 1,
            base: std::time::Instant::now(),
            trace: 0xcbf2_9ce4_8422_2325,
            faults: 0,
            messages: 0,
            slept: 0,
            logger: sim_logger(),
        }
    }

    /// Schedules `event` `delay` ms from now.
    pub(crate) fn at(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.events.insert((self.now + delay, self.seq), event);
    }

    /// Processes events until `until` (ms); false if the queue ran dry.
    pub(crate) fn run_until(&mut self, until: u64, mut on: impl FnMut(&mut World, Event)) {
        while let Some(entry) = self.events.first_entry() {
            let (time, seq) = *entry.key();
            if time > until {
                break;
            }
            let event = entry.remove();
            self.now = time;
            self.trace = (self.trace ^ time ^ (seq << 20)).wrapping_mul(0x100_0000_01b3);
            on(self, event);
        }
        self.now = until;
    }

    /// Adds a node (not started); returns its index.
    pub(crate) fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let id: NodeId = 1000 + i as u64;
        let addr =
            |port: u16| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], port));
        self.nodes.push(SimNode {
            info: NodeInfo {
                node_id: id,
                raft_addr: addr(7458),
                gossip_addr: addr(7459),
                datacenter: format!("dc{}", i % 2),
            },
            dir: self.root.join(format!("node{i}")),
            life: 0,
            running: None,
            gone: false,
            side: 0,
            dead_since: None,
            view: BTreeMap::new(),
        });
        i
    }

    /// Starts (or restarts) node `i` from its data dir.
    pub(crate) fn start(&mut self, i: usize) -> Result<(), String> {
        let store = SledStore::open_without_fsync(&self.nodes[i].dir, self.logger.clone())
            .map_err(|e| format!("node {i} store: {e}"))?;
        let store = Arc::new(store);
        let founder = i == 0 && self.nodes[i].life == 0;
        let config = self.core_config(i, founder);
        let core =
            NodeCore::open(config, store.clone()).map_err(|e| format!("node {i} open: {e}"))?;
        let node = &mut self.nodes[i];
        node.life += 1;
        node.view.clear();
        node.dead_since = None;
        let stream_files = crate::snapshot_io::StreamFiles::new(store.snapshot_files().clone());
        node.running = Some(Running {
            core: SimCore::Awake(Box::new(core)),
            disk_full_until: None,
            store,
            disk: VecDeque::new(),
            disk_busy: false,
            snapshot_io_at: 0,
            stream_files,
            apps: Vec::new(),
            typed: Vec::new(),
            registry: None,
        });
        let first_tick = self.rng.gen_range(1..=self.params.tick_ms);
        self.at(first_tick, Event::Tick(i));
        self.flush(i);
        if self.params.registry {
            self.start_registry(i);
        }
        Ok(())
    }

    /// Starts node `i`'s registry instance: a fresh epoch (above any earlier one of the
    /// node: the clock only moves forward), its subscription, and its hello.
    fn start_registry(&mut self, i: usize) {
        let sub = self.next_sub;
        self.next_sub += 1;
        let epoch = self.now * 1_000 + self.nodes[i].life;
        let (agent, sink) = RegistryAgent::new(sub, epoch);
        let Some(running) = self.nodes[i].running.as_mut() else {
            return;
        };
        running.registry = Some(agent);
        let group = RegistryAgent::group();
        self.input(i, Input::Subscribe { sub, group, sink });
        let node = self.nodes[i].info.node_id;
        self.propose_registry(i, &Op::Hello { node, epoch });
    }

    /// Proposes a registry operation from node `i`'s instance, without waiting.
    pub(crate) fn propose_registry(&mut self, i: usize, op: &Op) {
        let Some(sub) = self.nodes[i]
            .running
            .as_ref()
            .and_then(|r| r.registry.as_ref())
            .map(|a| a.sub)
        else {
            return;
        };
        let input = Input::Propose {
            group: RegistryAgent::group(),
            data: op.encode(),
            sub: Some(sub),
            waiter: None,
            timeout: None,
        };
        self.input(i, input);
    }

    /// The registry's upkeep on every running node, as its worker thread would do it.
    fn registry_upkeep(&mut self) {
        self.at(500, Event::RegistryUpkeep);
        let now = self.base + std::time::Duration::from_millis(self.now);
        let grace = std::time::Duration::from_millis(self.params.dead_node_grace_ms);
        for i in self.running() {
            let me = self.nodes[i].info.node_id;
            let ops = match self.nodes[i].running.as_mut() {
                Some(Running {
                    core,
                    registry: Some(agent),
                    ..
                }) => {
                    // A dormant core answers no query: the registry's worker waits.
                    let Some(core) = core.awake() else { continue };
                    let members = core.member_statuses();
                    agent.upkeep(&members, me, grace, now)
                }
                _ => continue,
            };
            for op in ops {
                self.propose_registry(i, &op);
            }
        }
    }

    fn core_config(&mut self, i: usize, founder: bool) -> CoreConfig {
        let logger = self.logger.new(slog::o!("node" => i));
        let p = &self.params;
        CoreConfig {
            me: self.nodes[i].info.clone(),
            replication_factor: p.replication_factor,
            raft: RaftSettings {
                election_ticks: 10,
                heartbeat_ticks: 2,
                logger: logger.clone(),
            },
            max_proposal_bytes: 1 << 20,
            proposal_timeout_ms: p.proposal_timeout_ms,
            rng_seed: self.rng.gen(),
            logger,
            founder,
            bootstrap_expect: p.bootstrap_expect,
            dead_node_grace_ms: p.dead_node_grace_ms,
            snapshot_interval: p.snapshot_interval,
            snapshot_max_log_bytes: 1 << 20,
            snapshot_log_percent: 50,
        }
    }

    /// Crashes node `i`: its core, queued disk writes and in-flight messages are lost.
    pub(crate) fn crash(&mut self, i: usize) {
        if let Some(running) = self.nodes[i].running.take() {
            // What sled flushed survives the crash of a node (the machine stays up).
            let _ = running.store.flush_for_simulation();
            drop(running);
            self.nodes[i].dead_since = Some(self.now);
        }
        self.nodes[i].life += 1;
    }

    /// Whether `a` and `b` can talk now.
    pub(crate) fn connected(&self, a: usize, b: usize) -> bool {
        let (na, nb) = (&self.nodes[a], &self.nodes[b]);
        na.running.is_some() && nb.running.is_some() && na.side == nb.side
    }

    pub(crate) fn index_of(&self, node: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.info.node_id == node)
    }

    /// Feeds `input` to node `i` (if running) and routes what it produces.
    pub(crate) fn input(&mut self, i: usize, input: Input) {
        let now = self.now;
        let Some(running) = self.nodes[i].running.as_mut() else {
            return;
        };
        running.core.handle(now, input);
        self.flush(i);
    }

    /// Routes node `i`'s output and hands its subscribers what was delivered.
    pub(crate) fn flush(&mut self, i: usize) {
        let Some(running) = self.nodes[i].running.as_mut() else {
            return;
        };
        let output = running.core.poll_output();
        self.route(i, output);
        self.sleep_if_exhausted(i);
        self.drain_apps(i);
    }

    pub(super) fn drain_apps(&mut self, i: usize) {
        let Some(running) = self.nodes[i].running.as_ref() else {
            return;
        };
        let files = running.store.snapshot_files();
        let mut observed = Vec::new();
        let mut resubscribe = Vec::new();
        for (k, app) in running.apps.iter().enumerate() {
            let delivered = app.drain(files);
            if matches!(delivered.last(), Some(Delivered::Superseded(_))) {
                resubscribe.push((k, app.group));
            }
            if !delivered.is_empty() {
                observed.push((app.sub, app.group, delivered));
            }
        }
        let registry_ok = running.registry.as_ref().is_none_or(|r| r.drain(files));
        let handed: Vec<_> = running
            .typed
            .iter()
            .map(|app| (app.sub, app.group, app.drain()))
            .collect();
        for (sub, group, delivered) in observed {
            self.checker.observe(i, sub, group, delivered);
        }
        for (sub, group, handed) in handed {
            self.checker.observe_typed(i, sub, group, handed);
        }
        for (k, group) in resubscribe.into_iter().rev() {
            self.unsubscribe(i, k);
            self.subscribe(i, group);
        }
        if !registry_ok {
            self.checker
                .note(format!("node {i}: a registry snapshot could not be loaded"));
        }
        if let Some((group, a, b)) = self.checker.fresh_duplicate.take() {
            if std::env::var_os("COPYCAT_SIM_DUMP").is_some() {
                self.dump(group, a.saturating_sub(3), b + 3);
            }
        }
    }

    fn dump(&self, group: DataStructureId, from: u64, to: u64) {
        eprintln!(
            "DUMP at {} ms: duplicate in {group} between {from} and {to}",
            self.now
        );
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(r) = node.running.as_ref() else {
                continue;
            };
            let entries = (from..to)
                .filter_map(|k| {
                    crate::storage::LogStore::entries(r.store.as_ref(), group, k, k + 1, None).ok()
                })
                .flatten();
            for e in entries {
                let ctx = crate::group::ProposalContext::decode(&e.context);
                eprintln!(
                    "DUMP node{i} idx={} term={} ctx={:?} data={}",
                    e.index,
                    e.term,
                    ctx,
                    String::from_utf8_lossy(&e.data)
                );
            }
        }
    }

    pub(super) fn route(&mut self, i: usize, output: Output) {
        let life = self.nodes[i].life;
        let from = self.nodes[i].info.node_id;
        let now = self.now;
        self.completed.extend(
            output
                .completions
                .into_iter()
                .map(|(waiter, result)| (waiter, now, result)),
        );
        for (to, _, batch) in output.sends {
            self.send(i, from, to, batch);
        }
        if let Some(write) = output.write {
            if let Some(running) = self.nodes[i].running.as_mut() {
                running.disk.push_back(write);
            }
            self.start_disk(i);
        }
        for request in output.snapshots {
            let delay = self.rng.gen_range(1..20);
            self.at(
                delay,
                Event::TakeSnapshot {
                    node: i,
                    life,
                    request,
                },
            );
        }
        for io in output.snapshot_io {
            self.queue_snapshot_io(i, io);
        }
    }

    /// Handles the world's own events (everything but the workload and faults).
    pub(crate) fn handle(&mut self, event: Event) {
        match event {
            Event::Tick(i) => self.tick(i),
            Event::Deliver {
                to,
                life,
                from,
                batch,
            } => {
                if self.nodes[to].life == life && self.nodes[to].running.is_some() {
                    let Some(from_index) = self.index_of(from) else {
                        return;
                    };
                    if self.nodes[to].side == self.nodes[from_index].side {
                        self.deliver(to, from, batch);
                    }
                }
            }
            Event::DiskDone { node, life } => self.disk_done(node, life),
            Event::Unreachable { node, life, peer } => {
                if self.nodes[node].life == life {
                    self.input(node, Input::Unreachable(peer));
                }
            }
            Event::TakeSnapshot {
                node,
                life,
                request,
            } => {
                if self.nodes[node].life == life {
                    self.take_snapshot(node, request);
                }
            }
            Event::SnapshotIo { node, life, io } => self.snapshot_io(node, life, io),
            Event::Gossip => self.gossip(),
            Event::RegistryUpkeep => self.registry_upkeep(),
            Event::Workload | Event::Fault => {}
        }
    }

    fn tick(&mut self, i: usize) {
        let now = self.now;
        let Some(running) = self.nodes[i].running.as_mut() else {
            return;
        };
        if let SimCore::Awake(core) = &mut running.core {
            core.handle_tick(now);
        } else {
            self.wake_if_room(i);
        }
        let tick = self.params.tick_ms;
        self.at(tick, Event::Tick(i));
        self.flush(i);
    }

    /// Subscribes a new simulated application to `group` on node `i`.
    pub(crate) fn subscribe(&mut self, i: usize, group: DataStructureId) {
        let sub = self.next_sub;
        self.next_sub += 1;
        let Some(running) = self.nodes[i].running.as_mut() else {
            return;
        };
        let (app, sink) = App::new(sub, group);
        running.apps.push(app);
        self.input(i, Input::Subscribe { sub, group, sink });
    }

    /// Subscribes a new simulated application on the typed API to `group` on node `i`.
    pub(crate) fn subscribe_typed(&mut self, i: usize, group: DataStructureId) {
        let sub = self.next_sub;
        self.next_sub += 1;
        let node_id = self.nodes[i].info.node_id;
        let Some(running) = self.nodes[i].running.as_mut() else {
            return;
        };
        let files = running.store.snapshot_files().clone();
        let (app, sink) = super::typed_app::TypedApp::new(sub, group, node_id, files);
        running.typed.push(app);
        self.input(i, Input::Subscribe { sub, group, sink });
    }

    /// Drops subscription number `k` on node `i`.
    pub(crate) fn unsubscribe(&mut self, i: usize, k: usize) {
        let Some(running) = self.nodes[i].running.as_mut() else {
            return;
        };
        if k >= running.apps.len() {
            return;
        }
        let app = running.apps.remove(k);
        self.input(i, Input::Unsubscribe(app.sub));
    }

    /// Indexes of running nodes.
    pub(crate) fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].running.is_some())
            .collect()
    }
}

/// Logs to stderr when `COPYCAT_SIM_LOG` is set: info and above, or debug with
/// `COPYCAT_SIM_LOG=debug` (raft's debug lines are many; release builds compile them out).
fn sim_logger() -> slog::Logger {
    use slog::Drain;
    let Some(level) = std::env::var_os("COPYCAT_SIM_LOG") else {
        return slog::Logger::root(slog::Discard, slog::o!());
    };
    let level = if level == "debug" {
        slog::Level::Debug
    } else {
        slog::Level::Info
    };
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog::LevelFilter::new(drain, level).fuse();
    slog::Logger::root(drain, slog::o!())
}
