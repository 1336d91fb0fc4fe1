//! SWIM gossip membership over UDP, built on `foca` and run as one tokio task.
//!
//! One task owns the [`Foca`] instance and multiplexes, in a `select!` loop:
//! datagrams from the socket, foca's timers (kept in a local min-heap and
//! awaited with `sleep_until`), a periodic re-announce tick and commands from
//! the [`Gossip`] handle. Every datagram is wrapped in a prost-encoded
//! [`GossipPacket`] carrying the protocol version and the cluster name; a
//! datagram with the wrong version or cluster, or that does not decode, is
//! dropped (with a rate-limited log) and never stops the task.
//!
//! Membership is reported as [`MembershipEvent`]s per *node id*: the task
//! recomputes its view from foca's active members whenever foca reports a
//! membership change, so a node that renewed its identity (after being
//! declared down) or restarted on another port is reported `Up` with its new
//! info, and is only reported `Down` once none of its identities is alive.

// Nothing outside the tests uses gossip until the node wires it in; remove
// this allow then.

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

use crate::id::NodeId;
use crate::node::member::{MembershipEvent, NodeInfo};
use crate::proto::{GossipPacket, PROTOCOL_VERSION};

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
}

/// Callback receiving membership changes; called from a tokio task, so it must
/// not block (a panic in it is caught and logged).
pub(crate) type OnMembership = Arc<dyn Fn(MembershipEvent) + Send + Sync>;

/// The identity foca gossips about: a node's metadata plus a bump counter.
///
/// Identities of the same gossip address conflict and the one with the larger
/// `bump` wins, so [`foca::Identity::renew`] (bump + 1) yields an identity that
/// replaces the one the cluster declared down (automatic rejoin), and a
/// restarted node (bump taken from the wall clock) replaces its previous life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GossipIdentity {
    /// The node's metadata.
    pub(crate) info: NodeInfo,
    /// Incarnation of the identity itself: starts at the wall clock in
    /// nanoseconds, incremented by every renewal.
    pub(crate) bump: u64,
}

impl GossipIdentity {
    /// A fresh identity for `info`, bumped from the wall clock so that it wins
    /// over any identity a previous run of the same node used.
    fn new(info: NodeInfo) -> Self {
        let bump = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        GossipIdentity { info, bump }
    }

    /// A stand-in identity for a seed we only know the address of.
    ///
    /// foca accepts an `Announce` whose destination has the receiver's address
    /// (whatever the rest of the identity), so this is enough to join.
    fn placeholder(addr: SocketAddr) -> Self {
        GossipIdentity {
            info: NodeInfo {
                node_id: 0,
                raft_addr: addr,
                gossip_addr: addr,
                datacenter: String::new(),
            },
            bump: 0,
        }
    }

    /// Total order deciding address conflicts (and which identity represents a
    /// node id that has several alive): the bump first, then the metadata so
    /// that two different identities never tie.
    fn conflict_key(&self) -> (u64, NodeId, SocketAddr, SocketAddr, &str) {
        (
            self.bump,
            self.info.node_id,
            self.info.raft_addr,
            self.info.gossip_addr,
            &self.info.datacenter,
        )
    }
}

impl foca::Identity for GossipIdentity {
    /// The gossip address: one identity per address survives in foca.
    type Addr = SocketAddr;

    /// The same node with `bump + 1`, which wins the conflict: auto-rejoin.
    fn renew(&self) -> Option<Self> {
        Some(GossipIdentity {
            info: self.info.clone(),
            bump: self.bump.wrapping_add(1),
        })
    }

    /// The node's gossip address.
    fn addr(&self) -> SocketAddr {
        self.info.gossip_addr
    }

    /// The larger [`GossipIdentity::conflict_key`] wins.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.conflict_key() > adversary.conflict_key()
    }
}

/// The foca configuration every copycat node uses (all nodes of a cluster
/// must agree on it, in particular on the packet size).
///
/// Tuned for a LAN (or loopback) cluster of a few to a few dozen nodes,
/// starting from `Config::new_lan`:
/// - `probe_period` 1 s, `probe_rtt` 400 ms: foca wants the period strictly
///   above the RTT, preferably more than twice it to leave room for the
///   indirect probe cycle.
/// - `suspect_to_down_after` 3 s (three probe periods): a suspect has time to
///   refute, and a dead node is reported `Down` within ~4-7 s.
/// - `remove_down_after` 1 h: down identities are remembered (and never
///   re-accepted) long after any stale gossip about them has died out, while
///   the addresses of nodes that are gone for good are eventually forgotten.
/// - `notify_down_members` on, plus `periodic_announce_to_down_members` every
///   10 s: a node wrongly declared down (pause, partition) learns it and
///   rejoins with a renewed identity.
/// - `periodic_gossip` every 200 ms to 3 members (only sent when there are
///   updates): joins, leaves and failures spread in well under a second.
/// - `periodic_announce` every 10 s to 1 member: a node eventually learns the
///   whole roster even if it missed some updates.
/// - `max_packet_size`: [`MAX_DATAGRAM`] minus the envelope (version and
///   cluster name), so wrapped datagrams stay under the MTU.
pub(crate) fn foca_config(cluster: &str) -> foca::Config {
    let max_packet = MAX_DATAGRAM
        .saturating_sub(envelope_overhead(cluster))
        .max(MIN_FOCA_PACKET);
    let mut config = foca::Config::new_lan(std::num::NonZeroU32::new(32).expect("non-zero"));
    config.probe_period = Duration::from_secs(1);
    config.probe_rtt = Duration::from_millis(400);
    config.num_indirect_probes = NonZeroUsize::new(3).expect("non-zero");
    config.max_transmissions = NonZeroU8::new(8).expect("non-zero");
    config.suspect_to_down_after = Duration::from_secs(3);
    config.remove_down_after = Some(Duration::from_secs(3600));
    config.max_packet_size = NonZeroUsize::new(max_packet).expect("non-zero");
    config.notify_down_members = true;
    config.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(10),
        num_members: NonZeroUsize::new(1).expect("non-zero"),
    });
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(10),
        num_members: NonZeroUsize::new(2).expect("non-zero"),
    });
    config.periodic_gossip = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(200),
        num_members: NonZeroUsize::new(3).expect("non-zero"),
    });
    config
}

/// Bytes the [`GossipPacket`] envelope adds around a foca packet of up to
/// [`MAX_DATAGRAM`] bytes.
fn envelope_overhead(cluster: &str) -> usize {
    let header = GossipPacket {
        version: PROTOCOL_VERSION,
        cluster: cluster.to_owned(),
        payload: Vec::new(),
    };
    // Payload field: one tag byte plus its length prefix.
    header.encoded_len() + 1 + prost::length_delimiter_len(MAX_DATAGRAM)
}

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
            me: me.node_id,
            seeds,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            view: HashMap::new(),
            shared: shared.clone(),
            on_membership,
            drops: DropLog::default(),
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

/// Rate limiter for logs about dropped datagrams.
#[derive(Default)]
struct DropLog {
    /// When we last logged.
    last: Option<Instant>,
    /// Drops not logged since then.
    suppressed: u64,
}

impl DropLog {
    /// Whether to log this drop; if so, returns how many were suppressed
    /// since the previous log.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < DROP_LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
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
    drops: DropLog,
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

    /// Unwraps a datagram and feeds it to foca, dropping anything invalid.
    fn handle_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        let problem = match GossipPacket::decode(datagram) {
            Err(e) => format!("undecodable envelope: {e}"),
            Ok(packet) if packet.version != PROTOCOL_VERSION => {
                format!(
                    "protocol version {} (ours {PROTOCOL_VERSION})",
                    packet.version
                )
            }
            Ok(packet) if packet.cluster != self.envelope.cluster => {
                format!(
                    "cluster {:?} (ours {:?})",
                    packet.cluster, self.envelope.cluster
                )
            }
            Ok(packet) => {
                if let Err(e) = self.foca.handle_data(&packet.payload, &mut self.runtime) {
                    debug!(self.logger, "foca rejected a packet"; "from" => %from, "error" => %e);
                }
                return;
            }
        };
        if let Some(suppressed) = self.drops.admit(Instant::now()) {
            warn!(self.logger, "dropped a gossip datagram";
                "from" => %from, "len" => datagram.len(), "reason" => problem,
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
            let addr = to.info.gossip_addr;
            if let Err(e) = self.socket.send_to(&self.send_buf, addr).await {
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
mod tests {
    use super::*;
    use foca::Identity as _;
    use std::time::Instant as StdInstant;

    /// Cluster name used by the tests.
    const CLUSTER: &str = "test-cluster";

    /// Logs to stderr when `COPYCAT_TEST_LOG` is set, else discards.
    fn logger() -> Logger {
        if std::env::var_os("COPYCAT_TEST_LOG").is_some() {
            use slog::Drain as _;
            let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
            let drain = slog_term::FullFormat::new(decorator).build().fuse();
            Logger::root(drain, o!())
        } else {
            Logger::root(slog::Discard, o!())
        }
    }

    /// A multi-thread runtime of its own for one test.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A gossip node under test and the events it reported.
    struct TestNode {
        /// The instance.
        gossip: Gossip,
        /// Its metadata.
        info: NodeInfo,
        /// Everything its callback received, in order.
        events: Arc<Mutex<Vec<MembershipEvent>>>,
    }

    impl TestNode {
        /// The events reported so far.
        fn events(&self) -> Vec<MembershipEvent> {
            self.events.lock().unwrap().clone()
        }

        /// The node ids `members()` returns, sorted.
        fn member_ids(&self) -> Vec<NodeId> {
            self.gossip.members().iter().map(|m| m.node_id).collect()
        }
    }

    /// A UDP socket on a free loopback port.
    fn bind() -> std::net::UdpSocket {
        std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")
    }

    /// Starts node `node_id` of `cluster` on `socket`, recording its events.
    fn start_on(
        rt: &tokio::runtime::Runtime,
        socket: std::net::UdpSocket,
        cluster: &str,
        node_id: NodeId,
        seeds: Vec<SocketAddr>,
    ) -> TestNode {
        let info = NodeInfo {
            node_id,
            raft_addr: SocketAddr::from(([127, 0, 0, 1], 10_000 + node_id as u16)),
            gossip_addr: socket.local_addr().unwrap(),
            datacenter: format!("dc-{node_id}"),
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let gossip = Gossip::start(
            rt.handle(),
            socket,
            GossipConfig {
                cluster: cluster.to_owned(),
                me: info.clone(),
                seeds,
                rng_seed: node_id,
                logger: logger(),
            },
            Arc::new(move |e| sink.lock().unwrap().push(e)),
        )
        .expect("start gossip");
        TestNode {
            gossip,
            info,
            events,
        }
    }

    /// Starts node `node_id` of the test cluster on a fresh socket.
    fn start(rt: &tokio::runtime::Runtime, node_id: NodeId, seeds: Vec<SocketAddr>) -> TestNode {
        start_on(rt, bind(), CLUSTER, node_id, seeds)
    }

    /// Polls `cond` until it holds, panicking after `timeout`.
    fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = StdInstant::now() + timeout;
        while !cond() {
            assert!(StdInstant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every node sees exactly all the others, with their metadata.
    fn wait_full_view(nodes: &[&TestNode], timeout: Duration) {
        wait_for("a full membership view", timeout, || {
            nodes.iter().all(|n| {
                let mut expected: Vec<NodeInfo> = nodes
                    .iter()
                    .filter(|o| o.info.node_id != n.info.node_id)
                    .map(|o| o.info.clone())
                    .collect();
                expected.sort_by_key(|i| i.node_id);
                n.gossip.members() == expected
            })
        });
    }

    /// Whether `node` reported `Down(id)`.
    fn saw_down(node: &TestNode, id: NodeId) -> bool {
        node.events().contains(&MembershipEvent::Down(id))
    }

    /// Two nodes join through a seed; everyone sees everyone with the right metadata.
    #[test]
    fn three_nodes_join_through_one_seed() {
        let rt = runtime();
        let a = start(&rt, 1, vec![]);
        let b = start(&rt, 2, vec![a.info.gossip_addr]);
        let c = start(&rt, 3, vec![a.info.gossip_addr]);
        wait_full_view(&[&a, &b, &c], Duration::from_secs(10));
        for (node, others) in [(&a, [&b, &c]), (&b, [&a, &c]), (&c, [&a, &b])] {
            let events = node.events();
            for other in others {
                assert!(
                    events.contains(&MembershipEvent::Up(other.info.clone())),
                    "node {} missed Up of {}: {events:?}",
                    node.info.node_id,
                    other.info.node_id
                );
            }
            assert!(
                !events.iter().any(|e| matches!(e, MembershipEvent::Down(_))),
                "unexpected Down: {events:?}"
            );
        }
        for n in [&a, &b, &c] {
            n.gossip.leave();
        }
        rt.shutdown_timeout(Duration::from_secs(1));
    }

    /// A node whose first announces are lost keeps announcing until it joins.
    #[test]
    fn joins_a_seed_that_binds_later() {
        let rt = runtime();
        // The seed's socket exists, but nobody gossips on it yet: whatever
        // arrives before the seed starts is read and thrown away, as if the
        // seed had not bound yet.
        let seed_socket = bind();
        let seed_addr = seed_socket.local_addr().unwrap();
        let b = start(&rt, 2, vec![seed_addr]);
        seed_socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let (len, from) = seed_socket.recv_from(&mut buf).expect("a first announce");
        assert_eq!(from, b.info.gossip_addr);
        assert!(len > 0);
        seed_socket.set_nonblocking(true).unwrap();
        while seed_socket.recv_from(&mut buf).is_ok() {}
        seed_socket.set_nonblocking(false).unwrap();
        // The seed has no seeds of its own: only re-announces can join them.
        let a = start_on(&rt, seed_socket, CLUSTER, 1, vec![]);
        wait_full_view(&[&a, &b], Duration::from_secs(10));
        a.gossip.leave();
        b.gossip.leave();
        rt.shutdown_timeout(Duration::from_secs(1));
    }

    /// A graceful leave is quick and reported `Down` to the others.
    #[test]
    fn a_node_that_leaves_is_reported_down() {
        let rt = runtime();
        let a = start(&rt, 1, vec![]);
        let b = start(&rt, 2, vec![a.info.gossip_addr]);
        let c = start(&rt, 3, vec![a.info.gossip_addr]);
        wait_full_view(&[&a, &b, &c], Duration::from_secs(10));

        let started = StdInstant::now();
        c.gossip.leave();
        assert!(
            started.elapsed() <= Duration::from_millis(1500),
            "leave too slow"
        );
        assert!(c.gossip.members().is_empty());
        c.gossip.leave(); // idempotent

        // A graceful leave spreads by gossip, well before failure detection
        // (probe + suspicion) could have declared it down.
        wait_for("Down(3) on the others", Duration::from_secs(3), || {
            saw_down(&a, 3) && saw_down(&b, 3)
        });
        assert_eq!(a.member_ids(), vec![2]);
        assert_eq!(b.member_ids(), vec![1]);
        assert!(!saw_down(&a, 2) && !saw_down(&b, 1));
        a.gossip.leave();
        b.gossip.leave();
        rt.shutdown_timeout(Duration::from_secs(1));
    }

    /// A node whose task stops without leaving is detected and reported `Down`.
    #[test]
    fn a_node_that_stops_abruptly_is_reported_down() {
        let rt = runtime();
        let a = start(&rt, 1, vec![]);
        let b = start(&rt, 2, vec![a.info.gossip_addr]);
        let c = start(&rt, 3, vec![a.info.gossip_addr]);
        wait_full_view(&[&a, &b, &c], Duration::from_secs(10));

        drop(c); // aborts the task without leaving
        wait_for("Down(3) on the others", Duration::from_secs(20), || {
            saw_down(&a, 3) && saw_down(&b, 3)
        });
        assert_eq!(a.member_ids(), vec![2]);
        assert_eq!(b.member_ids(), vec![1]);
        assert!(!saw_down(&a, 2) && !saw_down(&b, 1));
        a.gossip.leave();
        b.gossip.leave();
        rt.shutdown_timeout(Duration::from_secs(1));
    }

    /// A node restarted on another port is `Up` with its new info, and its old
    /// identity dying does not report it `Down`.
    #[test]
    fn a_restarted_node_is_up_with_new_info_and_never_down() {
        let rt = runtime();
        let a = start(&rt, 1, vec![]);
        let b = start(&rt, 2, vec![a.info.gossip_addr]);
        let c = start(&rt, 3, vec![a.info.gossip_addr]);
        wait_full_view(&[&a, &b, &c], Duration::from_secs(10));
        let downs_before = a.gossip.foca_downs();

        // Node 3 restarts on another port (new metadata) before its old life
        // is detected as dead.
        drop(c);
        let c2 = start(&rt, 3, vec![a.info.gossip_addr]);
        assert_ne!(c2.info.gossip_addr, a.info.gossip_addr);
        wait_full_view(&[&a, &b, &c2], Duration::from_secs(10));
        assert!(a.events().contains(&MembershipEvent::Up(c2.info.clone())));

        // foca eventually declares the old identity down; node 3 stays up.
        wait_for(
            "the old identity declared down",
            Duration::from_secs(20),
            || a.gossip.foca_downs() > downs_before,
        );
        assert!(!saw_down(&a, 3), "{:?}", a.events());
        assert_eq!(a.gossip.members().len(), 2);
        assert!(a.gossip.members().contains(&c2.info));
        for n in [&a, &b, &c2] {
            n.gossip.leave();
        }
        rt.shutdown_timeout(Duration::from_secs(1));
    }

    /// Garbage, wrong-version and other-cluster datagrams are dropped and gossip
    /// keeps working.
    #[test]
    fn garbage_and_foreign_packets_leave_gossip_working() {
        let rt = runtime();
        let a = start(&rt, 1, vec![]);
        let b = start(&rt, 2, vec![a.info.gossip_addr]);
        wait_full_view(&[&a, &b], Duration::from_secs(10));

        // A whole node of another cluster announces to `a`.
        let foreign = start_on(&rt, bind(), "other-cluster", 9, vec![a.info.gossip_addr]);

        let attacker = bind();
        let send = |bytes: &[u8]| {
            attacker.send_to(bytes, a.info.gossip_addr).unwrap();
            attacker.send_to(bytes, b.info.gossip_addr).unwrap();
        };
        send(&[]);
        send(&[0xff; 7]);
        send(&[0x42; 3000]);
        send(b"hello, is it me you're looking for?");
        let wrong_version = GossipPacket {
            version: PROTOCOL_VERSION + 1,
            cluster: CLUSTER.to_owned(),
            payload: vec![1, 2, 3],
        };
        send(&wrong_version.encode_to_vec());
        let bad_payload = GossipPacket {
            version: PROTOCOL_VERSION,
            cluster: CLUSTER.to_owned(),
            payload: vec![0xde, 0xad, 0xbe, 0xef],
        };
        send(&bad_payload.encode_to_vec());
        let too_big = GossipPacket {
            version: PROTOCOL_VERSION,
            cluster: CLUSTER.to_owned(),
            payload: vec![0; 5000],
        };
        send(&too_big.encode_to_vec());

        // Gossip still works: a new node joins through `a`.
        let c = start(&rt, 3, vec![a.info.gossip_addr]);
        wait_full_view(&[&a, &b, &c], Duration::from_secs(10));
        assert!(!saw_down(&a, 2) && !saw_down(&b, 1));
        // By now `foreign` has announced to `a` many times, in vain.
        assert!(foreign.gossip.members().is_empty());
        assert!(foreign.events().is_empty());
        for n in [&a, &b, &c] {
            assert!(!n.member_ids().contains(&9));
        }
        for n in [&a, &b, &c, &foreign] {
            n.gossip.leave();
        }
        rt.shutdown_timeout(Duration::from_secs(1));
    }

    /// Metadata of a fake node gossiping on loopback `port`.
    fn info(node_id: NodeId, port: u16) -> NodeInfo {
        NodeInfo {
            node_id,
            raft_addr: SocketAddr::from(([127, 0, 0, 1], port + 1)),
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            datacenter: "dc".to_owned(),
        }
    }

    /// Renewed and restarted identities win address conflicts; ties cannot happen.
    #[test]
    fn renewed_identity_wins_the_conflict() {
        let id = GossipIdentity::new(info(1, 7000));
        let renewed = id.renew().unwrap();
        assert_eq!(renewed.addr(), id.addr());
        assert!(renewed.win_addr_conflict(&id));
        assert!(!id.win_addr_conflict(&renewed));
        // A restart (fresh identity) wins over the previous life.
        let restarted = GossipIdentity::new(info(1, 7000));
        assert!(restarted.win_addr_conflict(&renewed.renew().unwrap()));
        // Same bump, different node: exactly one wins.
        let other = GossipIdentity {
            info: info(2, 7000),
            bump: id.bump,
        };
        assert_ne!(other.win_addr_conflict(&id), id.win_addr_conflict(&other));
    }

    /// The view is per node id: renewals are `Up`, `Down` only when no identity is left.
    #[test]
    fn view_reports_per_node_id() {
        let old = GossipIdentity {
            info: info(3, 7000),
            bump: 10,
        };
        let renewed = old.renew().unwrap();
        let moved = GossipIdentity {
            info: info(3, 7100),
            bump: 20,
        };
        let me_elsewhere = GossipIdentity {
            info: info(1, 7200),
            bump: 5,
        };

        let (view, events) = diff_view(&HashMap::new(), [&old, &me_elsewhere].into_iter(), 1);
        assert_eq!(events, vec![MembershipEvent::Up(old.info.clone())]);

        // Renewed identity of the same node: Up again (new identity).
        let (view, events) = diff_view(&view, [&renewed].into_iter(), 1);
        assert_eq!(events, vec![MembershipEvent::Up(renewed.info.clone())]);

        // Restarted elsewhere while the old life is still alive: Up with the
        // new info; then the old life dies: nothing.
        let (view, events) = diff_view(&view, [&renewed, &moved].into_iter(), 1);
        assert_eq!(events, vec![MembershipEvent::Up(moved.info.clone())]);
        let (view, events) = diff_view(&view, [&moved].into_iter(), 1);
        assert!(events.is_empty());

        // No identity left: Down.
        let (view, events) = diff_view(&view, std::iter::empty(), 1);
        assert_eq!(events, vec![MembershipEvent::Down(3)]);
        assert!(view.is_empty());
    }

    /// The foca config respects foca's constraints and the datagram size budget.
    #[test]
    fn config_is_valid() {
        let config = foca_config(CLUSTER);
        assert!(config.probe_rtt < config.probe_period);
        assert!(config.probe_rtt * 2 <= config.probe_period);
        assert!(config.suspect_to_down_after >= config.probe_period);
        assert!(config.notify_down_members);
        assert!(config.remove_down_after.is_some());
        let overhead = envelope_overhead(CLUSTER);
        assert!(config.max_packet_size.get() + overhead <= MAX_DATAGRAM);
        let envelope = GossipPacket {
            version: PROTOCOL_VERSION,
            cluster: CLUSTER.to_owned(),
            payload: vec![0; config.max_packet_size.get()],
        };
        assert!(envelope.encoded_len() <= MAX_DATAGRAM);
        assert_eq!(
            foca_config(&"x".repeat(5000)).max_packet_size.get(),
            MIN_FOCA_PACKET
        );
    }
}
