//! The runtime: the only place with sockets, threads and clocks.
//!
//! One core thread owns the [`NodeCore`] and reads one input channel; after each drained
//! burst of inputs it runs a round and performs the output. A storage thread writes the
//! rounds' batches (merging whatever queued up into one write and one fsync) and reports
//! them durable. A tokio runtime runs the TCP transport and UDP gossip. A proposal pump
//! thread moves fire-and-forget proposals from subscriptions' channels into the core.

pub(crate) mod frame;
pub(crate) mod gossip;
mod pump;
pub(crate) mod snapshot_stream;
pub(crate) mod snapshot_thread;
mod storage_thread;
pub(crate) mod transport;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::group::RaftSettings;
use crate::id::{DataStructureId, NodeId};
use crate::node::proposal::Ack;
use crate::node::subscription::{SubId, SubscriberChannels};
use crate::node::{CoreConfig, MembershipEvent, NodeCore, NodeInfo, KNOWN_PEERS_KEY};
use crate::proto;
use crate::storage::{LogStore, SledStore, WriteBatch};

use gossip::{Gossip, GossipConfig};
pub(crate) use pump::PumpControl;
use snapshot_stream::SnapshotStreams;
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

/// Metadata key of the persistent node id.
const NODE_ID_KEY: &str = "node_id";

/// Inputs are drained in bursts of at most this many before a round runs, so a flood of
/// inputs cannot starve ticks and output.
const MAX_INPUTS_PER_ROUND: usize = 4096;

/// A query answered on the core thread (status pages, tests).
pub(crate) type Query = Box<dyn FnOnce(&NodeCore) + Send>;

/// Everything the core thread reacts to.
pub(crate) enum Input {
    Batch(NodeId, proto::Batch),
    Membership(MembershipEvent),
    Unreachable(NodeId),
    /// Batch `seq` (and every earlier one) is written; `synced`: it was fsync'ed.
    Persisted {
        seq: u64,
        synced: bool,
    },
    StorageFailed(u64, Error),
    Subscribe {
        sub: SubId,
        group: DataStructureId,
        channels: SubscriberChannels,
    },
    Unsubscribe(SubId),
    Propose {
        group: DataStructureId,
        data: Vec<u8>,
        sub: Option<SubId>,
        ack: Option<Ack>,
        timeout: Option<Duration>,
    },
    ReadBarrier {
        group: DataStructureId,
        sub: SubId,
        ack: Ack,
        timeout: Duration,
    },
    SnapshotTaken {
        group: DataStructureId,
        index: u64,
    },
    /// Another replica offered its snapshot (file installed, metadata encoded).
    SnapshotOffered {
        group: DataStructureId,
        metadata: Vec<u8>,
    },
    /// A snapshot stream to `replica` ended.
    SnapshotSent {
        group: DataStructureId,
        replica: u64,
        ok: bool,
    },
    /// No snapshot: declined by the provider (`None`), or failed (why).
    SnapshotFailed {
        group: DataStructureId,
        reason: Option<String>,
    },
    Query(Query),
    /// Hand leaderships over, then call the closure (first step of a graceful shutdown).
    Handover(Box<dyn FnOnce() + Send>),
    Shutdown,
}

/// A running node's threads and tasks.
pub(crate) struct NodeRuntime {
    pub node_id: NodeId,
    pub data_dir: std::path::PathBuf,
    pub raft_addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    pub input: Sender<Input>,
    pub pump: Sender<PumpControl>,
    tokio: Option<tokio::runtime::Runtime>,
    gossip: Gossip,
    transport: Arc<Transport>,
    core_thread: Option<JoinHandle<()>>,
    pump_thread: Option<JoinHandle<()>>,
}

impl NodeRuntime {
    /// Opens storage, binds sockets and starts every thread and task.
    pub(crate) fn start(config: Config) -> Result<NodeRuntime> {
        config.validate()?;
        let logger = config.logger.clone();
        std::fs::create_dir_all(&config.data_dir)?;
        let store = Arc::new(SledStore::open(&config.data_dir, logger.clone())?);
        let node_id = load_or_create_node_id(store.as_ref())?;
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
        let (input_tx, input_rx) = crossbeam_channel::unbounded();
        let streams = SnapshotStreams::start(store.clone(), input_tx.clone(), logger.clone())?;
        let transport = Arc::new(start_transport(
            &tokio, listener, &config, node_id, &input_tx, &streams, &logger,
        )?);
        streams.set_transport(&transport);
        let gossip_config = GossipConfig {
            cluster: config.cluster_name.clone(),
            me,
            seeds,
            rng_seed: seed ^ 0x5DEE_CE66_D1CE_4E5B,
            logger: logger.clone(),
        };
        let membership_tx = input_tx.clone();
        let membership_streams = streams.clone();
        let on_membership = Arc::new(move |event: MembershipEvent| {
            if let MembershipEvent::Up(info) = &event {
                membership_streams.note_address(info.node_id, info.raft_addr);
            }
            let _ = membership_tx.send(Input::Membership(event));
        });
        let gossip = Gossip::start(tokio.handle(), udp, gossip_config, on_membership)?;

        let snapshot_tx = snapshot_thread::spawn(store.clone(), input_tx.clone(), logger.clone())?;
        let (storage_tx, storage_thread) =
            storage_thread::spawn(store, input_tx.clone(), logger.clone())?;
        let tick = config.tick_interval;
        let core_thread = std::thread::Builder::new()
            .name(format!("copycat-core-{node_id}"))
            .spawn({
                let transport_handle = transport.clone();
                move || {
                    let out = CoreOutputs {
                        storage: storage_tx,
                        transport: transport_handle,
                        snapshots: snapshot_tx,
                        streams,
                    };
                    run_core(core, input_rx, out, tick);
                    // The storage sender is gone: wait for the queued writes to finish.
                    let _ = storage_thread.join();
                }
            })?;
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
            transport,
            core_thread: Some(core_thread),
            pump_thread: Some(pump_thread),
        })
    }

    /// Graceful stop: leave gossip, stop the core (which fails every waiter and writes its
    /// last batch), wait for storage to flush, close connections.
    pub(crate) fn shutdown(&mut self) {
        let Some(core_thread) = self.core_thread.take() else {
            return;
        };
        // Leaderships move first, while this node is still a member everywhere; then it
        // leaves gossip, then the core stops.
        let (handed_over, wait) = crossbeam_channel::bounded::<()>(1);
        let handover = Input::Handover(Box::new(move || {
            let _ = handed_over.send(());
        }));
        if self.input.send(handover).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
        self.gossip.leave();
        let _ = self.input.send(Input::Shutdown);
        let _ = core_thread.join();
        let _ = self.pump.send(PumpControl::Stop);
        if let Some(pump) = self.pump_thread.take() {
            let _ = pump.join();
        }
        self.transport.shutdown();
        if let Some(tokio) = self.tokio.take() {
            // Dropping a runtime inside async code panics; shutting it down from a plain
            // thread works from anywhere.
            let _ =
                std::thread::spawn(move || tokio.shutdown_timeout(Duration::from_secs(2))).join();
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
    }
}

fn load_or_create_node_id(store: &dyn LogStore) -> Result<NodeId> {
    if let Some(bytes) = store.get_meta(NODE_ID_KEY)? {
        let arr: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
            Error::Config("the stored node id is corrupted (not 8 bytes)".to_string())
        })?;
        let id = u64::from_be_bytes(arr);
        if id == 0 || crate::id::node_of(id) != id {
            return Err(Error::Config(format!(
                "the stored node id {id} is out of range"
            )));
        }
        return Ok(id);
    }
    let id = crate::id::random_node_id(&mut rand::thread_rng());
    let batch = WriteBatch {
        groups: Vec::new(),
        meta: vec![(NODE_ID_KEY.to_string(), Some(id.to_be_bytes().to_vec()))],
    };
    store.write(&batch)?;
    Ok(id)
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
    node_id: NodeId,
    input: &Sender<Input>,
    streams: &Arc<SnapshotStreams>,
    logger: &slog::Logger,
) -> Result<Transport> {
    let batch_tx = input.clone();
    let streams = streams.clone();
    let unreachable_tx = input.clone();
    let transport = Transport::start(
        tokio.handle(),
        listener,
        TransportConfig {
            cluster: config.cluster_name.clone(),
            node_id,
            max_frame_bytes: config.max_frame_bytes,
            logger: logger.clone(),
        },
        Arc::new(move |from, mut batch: proto::Batch| {
            // Snapshot streams bypass the core: files are the runtime's business.
            if !batch.chunks.is_empty() {
                streams.on_chunks(from, std::mem::take(&mut batch.chunks));
            }
            if !batch.acks.is_empty() {
                streams.on_acks(from, std::mem::take(&mut batch.acks));
            }
            if batch.has_core_traffic() {
                let _ = batch_tx.send(Input::Batch(from, batch));
            }
        }),
        Arc::new(move |node| {
            let _ = unreachable_tx.send(Input::Unreachable(node));
        }),
    )?;
    Ok(transport)
}

/// The core thread: inputs in, rounds out, ticks on time.
/// Where the core thread sends its output.
struct CoreOutputs {
    storage: Sender<(u64, WriteBatch)>,
    transport: Arc<Transport>,
    snapshots: Sender<crate::node::SnapshotRequest>,
    streams: Arc<SnapshotStreams>,
}

fn run_core(mut core: NodeCore, input: Receiver<Input>, out: CoreOutputs, tick: Duration) {
    let start = Instant::now();
    let now_ms = || start.elapsed().as_millis() as u64;
    let mut next_tick = Instant::now() + tick;
    let mut stopping = false;
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match input.recv_timeout(wait) {
            Ok(first) => {
                stopping |= handle_input(&mut core, now_ms(), first);
                for next in input.try_iter().take(MAX_INPUTS_PER_ROUND) {
                    stopping |= handle_input(&mut core, now_ms(), next);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => stopping = true,
        }
        if Instant::now() >= next_tick {
            core.handle_tick(now_ms());
            next_tick += tick;
            if next_tick < Instant::now() {
                next_tick = Instant::now() + tick;
            }
        }
        core.poll_handover();
        let output = core.poll_output();
        for (node, addr, batch) in output.sends {
            out.transport.send(node, addr, batch);
        }
        if let Some(write) = output.write {
            let _ = out.storage.send(write);
        }
        for request in output.snapshots {
            let _ = out.snapshots.send(request);
        }
        for send in output.snapshot_sends {
            out.streams.send(send);
        }
        if stopping {
            break;
        }
    }
}

/// Applies one input; true when it asks the core to stop.
pub(crate) fn handle_input(core: &mut NodeCore, now_ms: u64, input: Input) -> bool {
    match input {
        Input::Batch(from, batch) => core.handle_batch(now_ms, from, batch),
        Input::Membership(event) => core.handle_membership(now_ms, event),
        Input::Unreachable(node) => core.handle_unreachable(node),
        Input::Persisted { seq, synced } => core.handle_persisted(seq, synced),
        Input::StorageFailed(seq, error) => core.handle_storage_failed(seq, error),
        Input::Subscribe {
            sub,
            group,
            channels,
        } => core.subscribe(now_ms, sub, group, channels),
        Input::Unsubscribe(sub) => core.unsubscribe(sub),
        Input::Propose {
            group,
            data,
            sub,
            ack,
            timeout,
        } => {
            let timeout_ms = timeout.map(|t| t.as_millis() as u64);
            core.propose(now_ms, group, data, sub, ack, timeout_ms)
        }
        Input::ReadBarrier {
            group,
            sub,
            ack,
            timeout,
        } => core.read_barrier(now_ms, group, Some(sub), ack, timeout.as_millis() as u64),
        Input::SnapshotTaken { group, index } => core.handle_snapshot_taken(group, index),
        Input::SnapshotSent { group, replica, ok } => core.handle_snapshot_sent(group, replica, ok),
        Input::SnapshotOffered { group, metadata } => {
            core.handle_snapshot_offered(group, &metadata)
        }
        Input::SnapshotFailed { group, reason } => core.handle_snapshot_failed(group, reason),
        Input::Query(query) => query(core),
        Input::Handover(done) => core.begin_handover(now_ms, done),
        Input::Shutdown => {
            core.shutdown();
            return true;
        }
    }
    false
}
