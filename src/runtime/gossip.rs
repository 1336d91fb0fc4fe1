//! SWIM gossip membership over UDP, built on `foca` and run as one tokio task.
//!
//! One task owns the [`Foca`] instance and multiplexes, in a `select!` loop:
//! datagrams from the socket, foca's timers (kept in a local min-heap and
//! awaited with `sleep_until`), a periodic re-announce tick, commands from
//! the [`Gossip`] handle and, with TLS, the probes proving identities. Every datagram is wrapped in a prost-encoded
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
//! info, and is only reported `Down` once none of its identities is alive (with TLS:
//! alive and proved, or being proved for the first time).
//!
//! With TLS on the transport, a node id is bound to its raft address: an identity enters
//! the view (as a new member, or as new addresses of a known one) only once a TLS probe of
//! its raft address met a certificate for its node id (`gossip/verify.rs`,
//! `gossip/view.rs`), so an insider holding the gossip key can neither reroute a member's
//! traffic with a higher bump nor make up members. Without TLS every identity is admitted
//! (the cluster is open anyway).

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
use crate::runtime::tls::TransportTls;

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
    /// The transport's TLS: with it, an identity is admitted only once a probe proved
    /// that the server at its raft address holds a certificate for its node id
    /// (`gossip/verify.rs`); `None` (plaintext transport) admits every identity.
    pub tls: Option<Arc<TransportTls>>,
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
            tls,
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
            verifier: tls.map(|tls| Verifier::new(tls, logger.clone())),
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

mod verify;
mod view;
mod worker;

use verify::Verifier;
use view::{diff_view, Verification};
pub(crate) use worker::unwrap_datagram;
use worker::Worker;

#[cfg(test)]
mod tests;
