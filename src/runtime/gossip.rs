//! SWIM gossip membership over UDP, built on `foca` and run as one tokio task.
//!
//! One task owns the [`Foca`] instance and multiplexes, in a `select!` loop:
//! datagrams from the socket, foca's timers (kept in a local min-heap and
//! awaited with `sleep_until`), a periodic re-announce tick and commands from
//! the [`Gossip`] handle. Every datagram is wrapped in a prost-encoded
//! [`GossipPacket`] carrying the protocol version and the cluster name; a
//! datagram with the wrong version or cluster, or that does not decode, is
//! dropped (with a rate-limited log) and never stops the task. With a keyring, the
//! encoded envelope is sealed ([`GossipSeal`]) and a datagram that does not open is
//! dropped the same way (and counted) before foca sees it.
//!
//! Membership is reported as [`MembershipEvent`]s per *node id*: the task
//! recomputes its view from foca's active members whenever foca reports a
//! membership change, so a node that renewed its identity (after being
//! declared down) or restarted on another port is reported `Up` with its new
//! info, and is only reported `Down` once none of its identities is alive.

use std::cmp::{Ordering, Reverse};
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use prost::Message as _;
use rand_foca::rngs::SmallRng;
use rand_foca::SeedableRng;
use serde::{Deserialize, Serialize};
use slog::{debug, error, info, o, warn, Logger};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};

use crate::log_pacer::ClockedLogPacer;

use crate::id::NodeId;
use crate::node::member::{MembershipEvent, NodeInfo};
use crate::proto::{GossipPacket, PROTOCOL_VERSION};
use crate::runtime::gossip_seal::{GossipSeal, SEAL_OVERHEAD};

/// How often a node with no known member announces itself to its seeds.
///
/// UDP announces sent before a seed binds its socket are simply lost, so a
/// lonely node keeps announcing until someone answers (and starts again if it
/// later loses every member).
const REANNOUNCE_EVERY: Duration = Duration::from_millis(500);

/// Longest time [`Gossip::leave`] blocks waiting for the task to send its
/// leave packets and stop.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest datagram we send, envelope included: below a 1500-byte Ethernet
/// MTU once IP and UDP headers are added (RFC 8085 guidance).
const MAX_DATAGRAM: usize = 1400;

/// Smallest foca packet size we configure, whatever the cluster name length
/// (a very long cluster name makes datagrams exceed [`MAX_DATAGRAM`]).
const MIN_FOCA_PACKET: usize = 512;

/// Size of the receive buffer: the largest possible UDP payload, so an
/// oversized datagram is seen whole and rejected instead of being truncated.
const RECV_BUFFER: usize = 65_536;

/// Minimum interval between two logs about dropped datagrams.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// Pause after a socket receive error, so a persistently failing socket cannot
/// spin the task.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Settings of one gossip instance.
pub(crate) struct GossipConfig {
    /// Cluster name: datagrams from another cluster are dropped.
    pub cluster: String,
    /// This node's metadata, spread to the others (`gossip_addr` must be the
    /// address the others can reach the gossip socket at).
    pub me: NodeInfo,
    /// Gossip addresses to announce to until at least one member is known.
    pub seeds: Vec<SocketAddr>,
    /// Seed of the RNG foca uses to pick members.
    pub rng_seed: u64,
    /// Where the gossip task logs.
    pub logger: Logger,
    /// Seals and opens every datagram; `None` sends plaintext envelopes.
    pub seal: Option<Arc<GossipSeal>>,
}

/// Callback receiving membership changes; called from a tokio task, so it must
/// not block (a panic in it is caught and logged).
pub(crate) type OnMembership = Arc<dyn Fn(MembershipEvent) + Send + Sync>;

mod identity;

pub(crate) use identity::*;

/// The foca instance type used here.
type FocaInstance = Foca<GossipIdentity, PostcardCodec, SmallRng, NoCustomBroadcast>;

/// What the [`Gossip`] handle asks of its task.
enum Command {
    /// Leave the cluster, send the leave packets, report on the channel, stop.
    Leave(std::sync::mpsc::SyncSender<()>),
}

/// State shared by the handle and the task.
struct Shared {
    /// Alive members by node id (self excluded), as last reported.
    members: Mutex<HashMap<NodeId, NodeInfo>>,
    /// How many `MemberDown` notifications foca emitted (any identity).
    foca_downs: AtomicU64,
}

impl Shared {
    /// Locks the member map, recovering from a poisoned lock (the map is
    /// always left consistent).
    fn members(&self) -> MutexGuard<'_, HashMap<NodeId, NodeInfo>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running gossip instance: a handle on the task that owns foca and the
/// socket. Dropping it stops the task abruptly (without leaving the cluster).
pub(crate) struct Gossip {
    /// Commands to the task; closed when the task stops.
    commands: mpsc::UnboundedSender<Command>,
    /// State the task publishes.
    shared: Arc<Shared>,
    /// The task, taken by `leave` or `drop` to abort it.
    task: Mutex<Option<JoinHandle<()>>>,
    /// Where the handle logs.
    logger: Logger,
}

impl Gossip {
    /// Starts gossiping on `socket` (already bound std UdpSocket; set nonblocking inside) on `handle`.
    ///
    /// Announces to every seed right away, and again every
    /// [`REANNOUNCE_EVERY`] while no member is known.
    pub(crate) fn start(
        handle: &tokio::runtime::Handle,
        socket: std::net::UdpSocket,
        config: GossipConfig,
        on_membership: OnMembership,
    ) -> std::io::Result<Gossip> {
        socket.set_nonblocking(true)?;
        let local_addr = socket.local_addr()?;
        let socket = {
            let _entered = handle.enter();
            UdpSocket::from_std(socket)?
        };
        let GossipConfig {
            cluster,
            me,
            seeds,
            rng_seed,
            logger,
            seal,
        } = config;
        let logger =
            logger.new(o!("component" => "gossip", "gossip" => me.gossip_addr.to_string()));
        if local_addr != me.gossip_addr {
            debug!(logger, "gossip socket bound to another address than advertised";
                "bound" => %local_addr);
        }

        let identity = GossipIdentity::new(me.clone());
        let foca = Foca::new(
            identity,
            foca_config(&cluster),
            SmallRng::seed_from_u64(rng_seed),
            PostcardCodec,
        );
        let shared = Arc::new(Shared {
            members: Mutex::new(HashMap::new()),
            foca_downs: AtomicU64::new(0),
        });
        let seeds: Vec<SocketAddr> = seeds
            .into_iter()
            .filter(|seed| *seed != me.gossip_addr && *seed != local_addr)
            .collect();
        let (commands, command_rx) = mpsc::unbounded_channel();
        let worker = Worker {
            foca,
            runtime: AccumulatingRuntime::new(),
            socket,
            envelope: GossipPacket {
                version: PROTOCOL_VERSION,
                cluster,
                payload: Vec::new(),
            },
            send_buf: Vec::with_capacity(MAX_DATAGRAM * 2),
            sealed_buf: Vec::with_capacity(MAX_DATAGRAM * 2),
            seal,
            me: me.node_id,
            seeds,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            view: HashMap::new(),
            shared: shared.clone(),
            on_membership,
            drops: ClockedLogPacer::new(DROP_LOG_EVERY),
            leaving: false,
            logger: logger.clone(),
        };
        info!(logger, "gossip started"; "seeds" => ?worker.seeds);
        let task = handle.spawn(worker.run(command_rx));
        Ok(Gossip {
            commands,
            shared,
            task: Mutex::new(Some(task)),
            logger,
        })
    }

    /// Current alive members (excluding self); the node core keeps its own view, so only
    /// tests read this one.
    #[cfg(test)]
    pub(crate) fn members(&self) -> Vec<NodeInfo> {
        let mut members: Vec<NodeInfo> = self.shared.members().values().cloned().collect();
        members.sort_by_key(|m| m.node_id);
        members
    }

    /// Leaves the cluster gracefully (foca leave_cluster, sends the packets), then stops the task. Blocking, bounded time (≤ 1 s); callable from a plain thread.
    ///
    /// Idempotent. Must not be called from a current-thread runtime's own
    /// thread (the task could not run; the call would then wait out the
    /// timeout and stop the task without leaving). Afterwards `members()` is
    /// empty and no more events are reported.
    pub(crate) fn leave(&self) {
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        if self.commands.send(Command::Leave(done_tx)).is_ok() {
            match done_rx.recv_timeout(LEAVE_TIMEOUT) {
                Ok(()) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    warn!(
                        self.logger,
                        "gossip task did not leave in time; stopping it"
                    )
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    debug!(self.logger, "gossip task stopped before leaving")
                }
            }
        }
        self.stop_task();
        self.shared.members().clear();
    }

    /// Aborts the task if it is still there.
    fn stop_task(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
        }
    }

    /// How many `MemberDown` notifications foca emitted so far, for any
    /// identity (including ones not reported because the node id has another
    /// alive identity).
    #[cfg(test)]
    fn foca_downs(&self) -> u64 {
        self.shared.foca_downs.load(AtomicOrdering::Relaxed)
    }
}

impl Drop for Gossip {
    /// Stops the task abruptly: the others will detect this node as failed.
    fn drop(&mut self) {
        self.stop_task();
    }
}

/// A foca timer waiting for its deadline.
struct ScheduledTimer {
    /// When it is due.
    at: Instant,
    /// Insertion order, to make entries unique.
    seq: u64,
    /// The timer itself.
    timer: Timer<GossipIdentity>,
}

impl ScheduledTimer {
    /// Ordering: deadline, then foca's own timer order (which it relies on
    /// when several timers are due at once), then insertion order.
    fn order(&self, other: &Self) -> Ordering {
        self.at
            .cmp(&other.at)
            .then_with(|| self.timer.cmp(&other.timer))
            .then_with(|| self.seq.cmp(&other.seq))
    }
}

impl PartialEq for ScheduledTimer {
    /// Equal iff [`ScheduledTimer::order`] says so.
    fn eq(&self, other: &Self) -> bool {
        self.order(other) == Ordering::Equal
    }
}

impl Eq for ScheduledTimer {}

impl PartialOrd for ScheduledTimer {
    /// See [`ScheduledTimer::order`].
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ScheduledTimer {
    /// See [`ScheduledTimer::order`].
    fn cmp(&self, other: &Self) -> Ordering {
        self.order(other)
    }
}

/// The task owning foca and the socket.
struct Worker {
    /// The SWIM state machine.
    foca: FocaInstance,
    /// Collects what foca wants done; drained after every interaction.
    runtime: AccumulatingRuntime<GossipIdentity>,
    /// The gossip socket.
    socket: UdpSocket,
    /// Envelope template (version and cluster set, payload empty).
    envelope: GossipPacket,
    /// Reused encoding buffer.
    send_buf: Vec<u8>,
    /// Reused buffer of the sealed datagram.
    sealed_buf: Vec<u8>,
    /// Seals what is sent and opens what is received, if gossip is encrypted.
    seal: Option<Arc<GossipSeal>>,
    /// Our node id.
    me: NodeId,
    /// Where to announce while we know no member.
    seeds: Vec<SocketAddr>,
    /// Pending foca timers, earliest first.
    timers: BinaryHeap<Reverse<ScheduledTimer>>,
    /// Next [`ScheduledTimer::seq`].
    timer_seq: u64,
    /// Reported view: the representative alive identity of each node id.
    view: HashMap<NodeId, GossipIdentity>,
    /// State published to the handle.
    shared: Arc<Shared>,
    /// Membership callback.
    on_membership: OnMembership,
    /// Rate limiter for dropped-datagram logs.
    drops: ClockedLogPacer,
    /// Set while leaving: foca's `Defunct` is then expected.
    leaving: bool,
    /// Where the task logs.
    logger: Logger,
}

impl Worker {
    /// The select loop; returns on `Leave` or when the handle is dropped.
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut reannounce = tokio::time::interval(REANNOUNCE_EVERY);
        reannounce.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let next_timer = self.timers.peek().map(|Reverse(t)| t.at);
            tokio::select! {
                biased;
                command = commands.recv() => {
                    match command {
                        Some(Command::Leave(done)) => {
                            self.leave().await;
                            let _ = done.try_send(());
                        }
                        None => debug!(self.logger, "gossip handle dropped; stopping"),
                    }
                    return;
                }
                _ = sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => {
                    self.fire_due_timers();
                }
                _ = reannounce.tick() => self.reannounce(),
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.handle_datagram(&buf[..len], from),
                    Err(e) => {
                        debug!(self.logger, "gossip receive failed"; "error" => %e);
                        tokio::time::sleep(RECV_ERROR_PAUSE).await;
                    }
                },
            }
            self.drain().await;
        }
    }

    /// Hands every due timer to foca, in order.
    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while self.timers.peek().is_some_and(|Reverse(t)| t.at <= now) {
            let Some(Reverse(scheduled)) = self.timers.pop() else {
                break;
            };
            if let Err(e) = self.foca.handle_timer(scheduled.timer, &mut self.runtime) {
                debug!(self.logger, "foca timer error"; "error" => %e);
            }
        }
    }

    /// Announces to every seed if we know no member.
    fn reannounce(&mut self) {
        if self.foca.num_members() > 0 || self.seeds.is_empty() {
            return;
        }
        debug!(self.logger, "announcing to seeds"; "seeds" => ?self.seeds);
        for seed in &self.seeds {
            if let Err(e) = self
                .foca
                .announce(GossipIdentity::placeholder(*seed), &mut self.runtime)
            {
                debug!(self.logger, "foca announce error"; "seed" => %seed, "error" => %e);
            }
        }
    }

    /// Opens (if sealed), unwraps a datagram and feeds it to foca, dropping anything
    /// invalid.
    fn handle_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        match unwrap_datagram(self.seal.as_deref(), &self.envelope.cluster, datagram) {
            Ok(packet) => {
                if let Err(e) = self.foca.handle_data(&packet.payload, &mut self.runtime) {
                    debug!(self.logger, "foca rejected a packet"; "from" => %from, "error" => %e);
                }
            }
            Err((len, problem)) => self.log_drop(len, from, problem),
        }
    }

    /// Logs a dropped datagram, at most once per [`DROP_LOG_EVERY`].
    fn log_drop(&mut self, len: usize, from: SocketAddr, problem: String) {
        if let Some(suppressed) = self.drops.admit() {
            warn!(self.logger, "dropped a gossip datagram";
                "from" => %from, "len" => len, "reason" => problem,
                "suppressed_since_last_log" => suppressed);
        }
    }

    /// Leaves the cluster and sends the resulting packets.
    async fn leave(&mut self) {
        self.leaving = true;
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            warn!(self.logger, "foca leave error"; "error" => %e);
        }
        self.drain().await;
        self.view.clear();
        self.shared.members().clear();
        info!(self.logger, "left the cluster");
    }

    /// Does what foca asked during the last interactions: sends packets,
    /// schedules timers, handles notifications.
    async fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.envelope.payload.clear();
            self.envelope.payload.extend_from_slice(&data);
            self.send_buf.clear();
            if let Err(e) = self.envelope.encode(&mut self.send_buf) {
                error!(self.logger, "cannot encode gossip envelope"; "error" => %e);
                continue;
            }
            let datagram = match &self.seal {
                None => &self.send_buf,
                Some(seal) => {
                    seal.seal(&self.send_buf, &mut self.sealed_buf);
                    &self.sealed_buf
                }
            };
            let addr = to.info.gossip_addr;
            if let Err(e) = self.socket.send_to(datagram, addr).await {
                debug!(self.logger, "gossip send failed"; "to" => %addr, "error" => %e);
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timer_seq += 1;
            self.timers.push(Reverse(ScheduledTimer {
                at: now + after,
                seq: self.timer_seq,
                timer,
            }));
        }
        let mut membership_changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => {
                    debug!(self.logger, "foca: member up"; "id" => ?id);
                    membership_changed = true;
                }
                OwnedNotification::MemberDown(id) => {
                    debug!(self.logger, "foca: member down"; "id" => ?id);
                    self.shared.foca_downs.fetch_add(1, AtomicOrdering::Relaxed);
                    membership_changed = true;
                }
                OwnedNotification::Rename(old, new) => {
                    debug!(self.logger, "foca: member renamed"; "old" => ?old, "new" => ?new);
                    membership_changed = true;
                }
                OwnedNotification::Active => info!(self.logger, "joined the cluster"),
                OwnedNotification::Idle => {
                    info!(self.logger, "no member left; announcing to seeds again")
                }
                OwnedNotification::Rejoin(id) => {
                    warn!(self.logger, "declared down by the cluster; rejoined with a renewed identity";
                        "bump" => id.bump)
                }
                OwnedNotification::Defunct => {
                    if !self.leaving {
                        error!(self.logger, "declared down and could not rejoin")
                    }
                }
            }
        }
        if membership_changed && !self.leaving {
            self.refresh_view();
        }
    }

    /// Recomputes the per-node view from foca's active members, publishes it
    /// and reports the differences.
    fn refresh_view(&mut self) {
        let (view, events) = diff_view(
            &self.view,
            self.foca.iter_members().map(|m| m.id()),
            self.me,
        );
        if events.is_empty() {
            self.view = view;
            return;
        }
        {
            let mut members = self.shared.members();
            members.clear();
            members.extend(
                view.iter()
                    .map(|(id, identity)| (*id, identity.info.clone())),
            );
        }
        self.view = view;
        for event in events {
            match &event {
                MembershipEvent::Up(node) => info!(self.logger, "member up";
                    "member" => node.node_id, "gossip_addr" => %node.gossip_addr,
                    "raft_addr" => %node.raft_addr, "datacenter" => &node.datacenter),
                MembershipEvent::Down(node) => info!(self.logger, "member down"; "member" => node),
            }
            let callback = &self.on_membership;
            if catch_unwind(AssertUnwindSafe(|| callback(event))).is_err() {
                error!(self.logger, "membership callback panicked");
            }
        }
    }
}

/// The envelope of a received `datagram`, opened first under `seal` (if gossip is sealed):
/// only a packet of this protocol version and `cluster` goes to foca. A dropped datagram
/// gives its length (opened, if it opened) and why.
pub(crate) fn unwrap_datagram(
    seal: Option<&GossipSeal>,
    cluster: &str,
    datagram: &[u8],
) -> Result<GossipPacket, (usize, String)> {
    let opened;
    let datagram = match seal.map(|seal| seal.open(datagram)) {
        None => datagram,
        Some(Ok(plaintext)) => {
            opened = plaintext;
            &opened
        }
        Some(Err(e)) => return Err((datagram.len(), e.to_string())),
    };
    let problem = match GossipPacket::decode(datagram) {
        Err(e) => format!("undecodable envelope: {e}"),
        Ok(packet) if packet.version != PROTOCOL_VERSION => {
            format!(
                "protocol version {} (ours {PROTOCOL_VERSION})",
                packet.version
            )
        }
        Ok(packet) if packet.cluster != cluster => {
            format!("cluster {:?} (ours {:?})", packet.cluster, cluster)
        }
        Ok(packet) => return Ok(packet),
    };
    Err((datagram.len(), problem))
}

/// Computes the new per-node view from foca's active identities and the
/// events that lead from `previous` to it.
///
/// A node id is represented by its alive identity with the largest
/// [`GossipIdentity::conflict_key`]; it is `Up` when it appears or its
/// representative identity changes (renewed or restarted node), and `Down`
/// only when none of its identities is alive any more. `me` is excluded (an
/// older identity of ours, on another address, may still be around).
fn diff_view<'a>(
    previous: &HashMap<NodeId, GossipIdentity>,
    active: impl Iterator<Item = &'a GossipIdentity>,
    me: NodeId,
) -> (HashMap<NodeId, GossipIdentity>, Vec<MembershipEvent>) {
    let mut view: HashMap<NodeId, GossipIdentity> = HashMap::new();
    for identity in active {
        if identity.info.node_id == me {
            continue;
        }
        match view.entry(identity.info.node_id) {
            Entry::Vacant(slot) => {
                slot.insert(identity.clone());
            }
            Entry::Occupied(mut slot) => {
                if identity.conflict_key() > slot.get().conflict_key() {
                    slot.insert(identity.clone());
                }
            }
        }
    }
    let mut downs: Vec<NodeId> = previous
        .keys()
        .filter(|id| !view.contains_key(id))
        .copied()
        .collect();
    downs.sort_unstable();
    let mut ups: Vec<&GossipIdentity> = view
        .iter()
        .filter(|(id, identity)| previous.get(id) != Some(identity))
        .map(|(_, identity)| identity)
        .collect();
    ups.sort_unstable_by_key(|identity| identity.info.node_id);
    let events = downs
        .into_iter()
        .map(MembershipEvent::Down)
        .chain(ups.into_iter().map(|i| MembershipEvent::Up(i.info.clone())))
        .collect();
    (view, events)
}

#[cfg(test)]
mod tests;
