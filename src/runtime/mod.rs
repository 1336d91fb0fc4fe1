//! The runtime: the only place with sockets, threads and clocks.
//!
//! One core thread owns the [`NodeCore`] and reads one event queue; after each drained
//! burst of events it runs a round and performs the output. It keeps what the core only
//! names: the closures waiting for calls (by waiter id), the subscriptions' snapshot
//! providers (by subscription id) and the handover's completion.
//!
//! # Threads
//! | thread | does | fed by |
//! |---|---|---|
//! | `copycat-core-<node>` | the core: events in, rounds out, ticks | the event queue |
//! | `copycat-storage` | writes each round's batch (merging what queued), fsyncs | the core |
//! | `copycat-snapshot` | calls snapshot providers, stores the files | the core |
//! | `copycat-snap-io` | snapshot streams' file work: opens, chunk reads (sent from there), chunk writes | the core |
//! | `copycat-pump` | moves fire-and-forget proposals into the event queue | applications |
//! | `copycat-io-<node>` (2) | tokio: TCP transport, UDP gossip | sockets |
//! | sled's I/O pool | sled's own flushes | the storage thread |
//!
//! # Shutdown
//! Each step waits for the completion of the one before, never for a fixed time: the
//! core reports leaderships handed over (at most [`HANDOVER_TIMEOUT`]), gossip reports the
//! leave sent, the core thread is joined after it failed every waiter and the storage
//! thread wrote its last batch (the snapshot threads end when their queues close), then
//! the pump is joined, connections close and the tokio runtime stops (its blocking tasks
//! get at most [`IO_SHUTDOWN_TIMEOUT`]).
//!
//! # Queues and what happens when they fill
//! | queue | bound | when full |
//! |---|---|---|
//! | core events | [`INPUT_CAPACITY`] | peer batches dropped (raft retransmits); proposals and read barriers fail with `Error::Overloaded`; the node's own threads wait |
//! | a subscription's proposals | `PROPOSALS_CAPACITY` | `send` waits, `try_send` fails (backpressure) |
//! | a subscription's commits | 4,096 (`subscriber_sink.rs`) | delivery pauses and resumes from the log; nothing dropped |
//! | a subscription's errors | 1,024 | errors dropped and logged |
//! | frames to one peer | one frame's worth (`max_frame_bytes`) | the oldest frames dropped |
//! | storage batches | unbounded, fed only by the core (a batch per round) | n/a |
//! | snapshot requests | unbounded, at most one per group in flight | n/a |
//! | stream file work | unbounded, fed by the core: per outgoing stream one window (8 MiB) of reads; received chunks up to `MAX_UNSTORED_BYTES` (32 MiB) over all streams | the core drops further chunks; senders resend after 2 s |
//! | pump control | unbounded; at most one pending doorbell ring per subscription | n/a |

mod core_thread;
pub(crate) mod frame;
pub(crate) mod gossip;
pub(crate) mod gossip_seal;
mod node_id;
mod pump;
mod security_state;
mod snapshot_thread;
mod storage_side;
mod storage_thread;
pub(crate) mod tls;
pub(crate) mod transport;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::group::RaftSettings;
use crate::id::{DataStructureId, NodeId};
use crate::node::subscription::{SubId, SubscriberSink};
use crate::node::{
    CoreConfig, Input, MembershipEvent, NodeCore, NodeInfo, Waiter, KNOWN_PEERS_KEY,
};
use crate::proto;
use crate::snapshot_provider::SnapshotProvider;
use crate::storage::LogStore;

use core_thread::CoreThread;
pub use core_thread::{EXIT_CORE_PANIC, EXIT_STORAGE_FAILED};
use gossip::{Gossip, GossipConfig};
use gossip_seal::GossipSeal;
pub(crate) use pump::{Doorbell, PumpControl};
pub(crate) use security_state::SecurityState;
use storage_side::{StorageSide, StoreOpener};
use tls::TransportTls;
use transport::{Transport, TransportConfig};

/// A multi-thread runtime of its own for one test.
#[cfg(test)]
pub(crate) fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// How long a graceful shutdown waits for the core to report its leaderships handed over;
/// a handover that cannot finish (peers unreachable) does not hold the shutdown longer.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the tokio runtime may take to finish its blocking tasks at shutdown (its async
/// tasks are dropped at once).
const IO_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Inputs are drained in bursts of at most this many before a round runs, so a flood of
/// inputs cannot starve ticks and output.
const MAX_INPUTS_PER_ROUND: usize = 4096;

/// Capacity of the core thread's event queue. When it is full: peers' batches are dropped
/// (raft retransmits, forwarded proposals are retried), applications' proposals and read
/// barriers fail at once with [`Error::Overloaded`], and the node's own threads (storage,
/// snapshots, gossip, the proposal pump) wait for room, which holds them back in turn.
pub(crate) const INPUT_CAPACITY: usize = 16_384;

/// Offers a peer's event to the core; a full queue drops it, logging the first drop and
/// then every 1,024th.
fn offer_from_peer(tx: &Sender<Event>, event: Event, dropped: &AtomicU64, logger: &slog::Logger) {
    if let Err(TrySendError::Full(_)) = tx.try_send(event) {
        let count = dropped.fetch_add(1, Ordering::Relaxed);
        if count % 1024 == 0 {
            slog::warn!(logger, "core input queue full: dropping peer traffic";
                "dropped_so_far" => count + 1);
        }
    }
}

/// A query answered on the core thread (status pages, tests): with the core, or why there
/// is none to ask (its storage is waiting for space).
pub(crate) type Query = Box<dyn FnOnce(Result<&NodeCore>) + Send>;

/// Completion of an acknowledged proposal or read barrier: the index, or why it failed.
pub(crate) type Ack = Box<dyn FnOnce(Result<u64>) + Send>;

/// Builds a core input around the waiter id the core thread gives the call.
pub(crate) type CallInput = Box<dyn FnOnce(Waiter) -> Input + Send>;

/// Everything the core thread reacts to: the core's own inputs, and the runtime's
/// requests that carry closures (which the core never sees).
pub(crate) enum Event {
    /// An input for the core, as it is.
    Core(Input),
    /// An input with a waiter: `ack` hears its completion.
    Call(Ack, CallInput),
    /// A new subscription: the core gets its sink, the core thread keeps its snapshot
    /// provider for the snapshot requests that name it.
    Subscribe {
        sub: SubId,
        group: DataStructureId,
        sink: Box<dyn SubscriberSink>,
        provider: Arc<dyn SnapshotProvider>,
    },
    /// The application dropped its handle: the core ends the subscription, the core thread
    /// forgets its snapshot provider.
    Unsubscribe(SubId),
    /// Runs on the core thread with read access to the core.
    Query(Query),
    /// Hands leaderships over, then runs the closure (a graceful shutdown's first step).
    Handover(Box<dyn FnOnce() + Send>),
}

impl From<Input> for Event {
    fn from(input: Input) -> Self {
        Event::Core(input)
    }
}

/// A running node's threads and tasks.
pub(crate) struct NodeRuntime {
    pub node_id: NodeId,
    pub data_dir: std::path::PathBuf,
    pub raft_addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    pub input: Sender<Event>,
    pub pump: Sender<PumpControl>,
    tokio: Option<tokio::runtime::Runtime>,
    gossip: Gossip,
    /// The live gossip keyring and the transport's TLS.
    pub security: SecurityState,
    transport: Arc<Transport>,
    core_thread: Option<JoinHandle<()>>,
    pump_thread: Option<JoinHandle<()>>,
}

impl NodeRuntime {
    /// Opens storage, binds sockets and starts every thread and task.
    pub(crate) fn start(config: Config) -> Result<NodeRuntime> {
        config.validate()?;
        crate::telemetry::describe();
        let logger = config.logger.clone();
        std::fs::create_dir_all(&config.data_dir)?;
        let opener = StoreOpener {
            data_dir: config.data_dir.clone(),
            logger: logger.clone(),
        };
        let store = opener.open()?;
        let tls_identity = config.security.tls.as_ref();
        let certified = tls_identity.map(|tls| tls.node_id());
        let node_id = node_id::load_or_create_node_id(store.as_ref(), certified, &config.data_dir)?;
        let tls = tls_identity
            .map(TransportTls::new)
            .transpose()?
            .map(Arc::new);
        let seal = config
            .security
            .gossip_keys
            .clone()
            .map(|keyring| Arc::new(GossipSeal::new(&config.cluster_name, keyring)));
        let listener = TcpListener::bind((config.hostname.as_str(), config.port))?;
        let udp = UdpSocket::bind((config.hostname.as_str(), config.gossip_port))?;
        let raft_addr = listener.local_addr()?;
        let gossip_addr = udp.local_addr()?;
        let me = NodeInfo {
            node_id,
            raft_addr,
            gossip_addr,
            datacenter: config.datacenter.clone(),
        };
        let logger = logger.new(slog::o!("node" => node_id));
        warn_if_open(&logger, &config, raft_addr, gossip_addr);
        let seed = config.rng_seed.unwrap_or_else(rand::random);
        let core = NodeCore::open(
            core_config(&config, me.clone(), seed, logger.clone()),
            store.clone(),
        )?;
        let seeds = gossip_seeds(&config, store.as_ref())?;

        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("copycat-io-{node_id}"))
            .enable_all()
            .build()?;
        let (input_tx, input_rx) = crossbeam_channel::bounded(INPUT_CAPACITY);
        let transport = Arc::new(start_transport(
            &tokio,
            listener,
            &config,
            (node_id, tls.clone()),
            &input_tx,
            &logger,
        )?);
        let gossip_config = GossipConfig {
            cluster: config.cluster_name.clone(),
            me,
            seeds,
            rng_seed: seed ^ 0x5DEE_CE66_D1CE_4E5B,
            logger: logger.clone(),
            seal: seal.clone(),
            tls: tls.clone(),
        };
        let membership_tx = input_tx.clone();
        let on_membership = Arc::new(move |event: MembershipEvent| {
            let _ = membership_tx.send(Input::Membership(event).into());
        });
        let gossip = Gossip::start(tokio.handle(), udp, gossip_config, on_membership)?;

        let side = StorageSide::start(store, &input_tx, &transport, &logger)?;
        let thread = CoreThread {
            input: input_rx,
            events: input_tx.clone(),
            transport: transport.clone(),
            opener: StoreOpener {
                logger: logger.clone(),
                ..opener
            },
            tick: config.tick_interval,
            on_fatal: config.on_fatal_error,
            logger: logger.clone(),
        };
        let core_thread = std::thread::Builder::new()
            .name(format!("copycat-core-{node_id}"))
            .spawn(move || core_thread::run(core, side, thread))?;
        let (pump_tx, pump_thread) = pump::spawn(input_tx.clone())?;
        Ok(NodeRuntime {
            node_id,
            data_dir: config.data_dir.clone(),
            raft_addr,
            gossip_addr,
            input: input_tx,
            pump: pump_tx,
            tokio: Some(tokio),
            gossip,
            security: SecurityState {
                seal,
                tls,
                logger: logger.clone(),
            },
            transport,
            core_thread: Some(core_thread),
            pump_thread: Some(pump_thread),
        })
    }

    /// Graceful stop: leave gossip, stop the core (which fails every waiter and writes its
    /// last batch), wait for storage to flush, close connections.
    pub(crate) fn shutdown(&mut self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            // A runtime's worker may not block on another runtime (the transport's
            // shutdown waits for its tasks): the waits happen on a plain thread instead,
            // while this one waits for it.
            std::thread::scope(|s| {
                let _ = s.spawn(|| self.stop()).join();
            });
            return;
        }
        self.stop();
    }

    /// The steps of [`NodeRuntime::shutdown`], on a thread outside any tokio runtime.
    fn stop(&mut self) {
        let Some(core_thread) = self.core_thread.take() else {
            return;
        };
        // Leaderships move first, while this node is still a member everywhere; then it
        // leaves gossip, then the core stops.
        let (handed_over, wait) = crossbeam_channel::bounded::<()>(1);
        let handover = Event::Handover(Box::new(move || {
            let _ = handed_over.send(());
        }));
        if self.input.send(handover).is_ok() {
            let _ = wait.recv_timeout(HANDOVER_TIMEOUT);
        }
        self.gossip.leave();
        let _ = self.input.send(Input::Shutdown.into());
        let _ = core_thread.join();
        let _ = self.pump.send(PumpControl::Stop);
        if let Some(pump) = self.pump_thread.take() {
            let _ = pump.join();
        }
        self.transport.shutdown();
        if let Some(tokio) = self.tokio.take() {
            // Dropping a runtime inside async code panics; shutting it down from a plain
            // thread works from anywhere.
            let _ = std::thread::spawn(move || tokio.shutdown_timeout(IO_SHUTDOWN_TIMEOUT)).join();
        }
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn core_config(config: &Config, me: NodeInfo, seed: u64, logger: slog::Logger) -> CoreConfig {
    CoreConfig {
        me,
        replication_factor: config.replication_factor,
        raft: RaftSettings {
            election_ticks: config.election_ticks,
            heartbeat_ticks: config.heartbeat_ticks,
            logger: logger.clone(),
        },
        max_proposal_bytes: config.max_proposal_bytes,
        proposal_timeout_ms: config.proposal_timeout.as_millis() as u64,
        rng_seed: seed,
        logger,
        founder: config.peers.is_empty(),
        bootstrap_expect: config.bootstrap_expect,
        dead_node_grace_ms: config.dead_node_grace.as_millis() as u64,
        snapshot_interval: config.snapshot_interval,
        snapshot_max_log_bytes: config.snapshot_max_log_bytes,
        snapshot_log_percent: config.snapshot_log_percent,
    }
}

/// Logs a warning for each edge left in plaintext: anyone who can reach the port can then
/// join, read or speak for any node.
fn warn_if_open(logger: &slog::Logger, config: &Config, raft: SocketAddr, gossip: SocketAddr) {
    let security = &config.security;
    if security.tls.is_none() {
        slog::warn!(logger, "TLS is not configured: raft traffic is plaintext and unauthenticated, \
            and the cluster is open to anyone who can reach its TCP port"; "raft_addr" => %raft);
    }
    if security.gossip_keys.is_none() {
        slog::warn!(logger, "no gossip key: gossip is plaintext and unauthenticated, and the \
            cluster is open to anyone who can reach its UDP port"; "gossip_addr" => %gossip);
    }
}

/// Configured peers plus the peers this node knew before a restart.
fn gossip_seeds(config: &Config, store: &dyn LogStore) -> Result<Vec<SocketAddr>> {
    let mut seeds = Vec::new();
    for peer in &config.peers {
        let addrs = peer
            .to_socket_addrs()
            .map_err(|e| Error::Config(format!("peer {peer:?}: {e}")))?;
        seeds.extend(addrs);
    }
    if let Some(known) = store.get_meta(KNOWN_PEERS_KEY)? {
        let known = String::from_utf8_lossy(&known).into_owned();
        seeds.extend(
            known
                .split(',')
                .filter_map(|a| a.parse::<SocketAddr>().ok()),
        );
    }
    seeds.sort();
    seeds.dedup();
    Ok(seeds)
}

fn start_transport(
    tokio: &tokio::runtime::Runtime,
    listener: TcpListener,
    config: &Config,
    (node_id, tls): (NodeId, Option<Arc<TransportTls>>),
    input: &Sender<Event>,
    logger: &slog::Logger,
) -> Result<Transport> {
    let batch_tx = input.clone();
    let unreachable_tx = input.clone();
    let dropped = Arc::new(AtomicU64::new(0));
    let (batch_dropped, batch_logger) = (dropped.clone(), logger.clone());
    let unreachable_logger = logger.clone();
    let transport = Transport::start(
        tokio.handle(),
        listener,
        TransportConfig {
            cluster: config.cluster_name.clone(),
            node_id,
            max_frame_bytes: config.max_frame_bytes,
            logger: logger.clone(),
            tls,
            limits: transport::TransportLimits::default(),
        },
        Arc::new(move |from, batch: proto::Batch| {
            let event = Input::Batch(from, batch).into();
            offer_from_peer(&batch_tx, event, &batch_dropped, &batch_logger);
        }),
        Arc::new(move |node| {
            let event = Input::Unreachable(node).into();
            offer_from_peer(&unreachable_tx, event, &dropped, &unreachable_logger);
        }),
    )?;
    Ok(transport)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_traffic_is_dropped_and_counted_when_the_core_queue_is_full() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let dropped = AtomicU64::new(0);
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        offer_from_peer(&tx, Input::Unreachable(7).into(), &dropped, &logger);
        offer_from_peer(&tx, Input::Unreachable(8).into(), &dropped, &logger);
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        assert!(matches!(
            rx.try_recv(),
            Ok(Event::Core(Input::Unreachable(7)))
        ));
    }
}
