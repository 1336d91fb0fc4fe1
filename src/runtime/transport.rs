//! The TCP transport between nodes: raft traffic of all groups, batched per peer.
//!
//! Each node dials every peer it sends to; connections are one-way (the dialer only
//! writes, the acceptor only reads), so two nodes talking to each other use two
//! connections. Every connection starts with a `Hello` frame (protocol version, cluster
//! name, node id) that the acceptor checks; then each frame carries one `Batch`.
//!
//! With TLS ([`TransportTls`]) every connection is TLS 1.3 with mutual authentication
//! first: the dialer checks that the server's certificate names the node it dials, the
//! acceptor takes the peer's node id from its certificate and refuses a `Hello` claiming
//! another. The handshake and the `Hello` share one deadline, [`HELLO_TIMEOUT`].
//!
//! Outgoing traffic to one peer goes through one task fed by an unbounded channel. The
//! task merges everything queued into as few frames as the frame limit allows (usually
//! one), writes them, and loops. While the peer is unreachable the task drops what is
//! queued (raft retransmits), reports the peer with `on_unreachable` once per failed
//! attempt and retries with exponential backoff.
//!
//! Network data is never trusted: oversized, truncated or undecodable frames, a missing
//! or mismatching `Hello` close that one connection with a log line and disturb nothing
//! else.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use prost::Message;
use slog::{debug, info, o, warn, Logger};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::id::NodeId;
use crate::proto::{frame::Body, Batch, Frame, Hello, PROTOCOL_VERSION};
use crate::runtime::frame::{
    effective_max, encode_frame, read_frame, read_frame_within, write_encoded, write_frame,
    FrameError,
};
use crate::runtime::tls::{AcceptError, BoxedStream, TransportTls};

/// First delay before reconnecting to a peer after a failure.
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// Longest delay between two connection attempts to a peer.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// A connection that stayed up this long resets the backoff when it goes down.
const HEALTHY_AFTER: Duration = MAX_BACKOFF;
/// Longest wait for a TCP connect, and again for the TLS handshake, and again for the
/// `Hello` write, to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one frame to be written; a peer that stops reading is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the TLS handshake and the `Hello` frame on an accepted connection: a
/// peer that finishes neither in time is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next one.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long `shutdown` waits for the tasks to stop before aborting them (and again after).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes a `Frame` adds around its `Batch`: one tag byte and a length varint (≤ 5 bytes
/// for frames whose length fits the 4-byte prefix).
const FRAME_OVERHEAD: usize = 6;
/// Buffer size of the reader of an accepted connection.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Settings of a [`Transport`].
pub(crate) struct TransportConfig {
    /// Cluster name sent in `Hello`; connections from other clusters are refused.
    pub cluster: String,
    /// This node's id, sent in `Hello`.
    pub node_id: NodeId,
    /// Largest frame accepted from peers and sent to them (without the 4-byte prefix).
    pub max_frame_bytes: usize,
    /// Logger for connection events and refused peers.
    pub logger: Logger,
    /// TLS on every connection; `None` is plaintext.
    pub tls: Option<Arc<TransportTls>>,
    /// Bounds on accepted connections.
    pub limits: TransportLimits,
}

/// Receives every batch from a peer, with the peer's node id (from its `Hello`).
/// Called from tokio tasks; must not block.
pub(crate) type OnBatch = Arc<dyn Fn(NodeId, Batch) + Send + Sync>;

/// Told when a peer could not be reached (connect failure or lost connection), at most
/// once per failed attempt. Called from tokio tasks; must not block.
pub(crate) type OnUnreachable = Arc<dyn Fn(NodeId) + Send + Sync>;

/// The TCP transport of one node: accepts peers' connections and keeps one outgoing
/// connection per peer. Stop it with [`Transport::shutdown`]; dropping it also signals
/// every task to stop, without waiting.
pub(crate) struct Transport {
    /// State shared with the accept loop (weakly) and the public methods.
    shared: Arc<Shared>,
}

/// State of a transport shared between its handle and its tasks.
struct Shared {
    /// Runtime every task runs on.
    handle: Handle,
    /// What outgoing peer tasks need.
    outbound: Arc<Outbound>,
    /// Peers, tasks and the shut-down flag.
    state: Mutex<State>,
    /// Set to `true` to stop every task.
    shutdown_tx: watch::Sender<bool>,
    /// Set to `true` once a `shutdown` call has finished waiting for the tasks.
    done_tx: watch::Sender<bool>,
    /// The accepted connections' limits, for tests to look into.
    #[cfg(test)]
    limits: Arc<InboundLimits>,
}

/// Mutable part of [`Shared`].
struct State {
    /// The outgoing task of each peer, with the address it dials.
    peers: HashMap<NodeId, PeerHandle>,
    /// Every task: accept loop, accepted connections, outgoing peers; `None` once a
    /// `shutdown` call took them to wait for them.
    tasks: Option<JoinSet<()>>,
    /// Set by the first `shutdown` (or drop); no task is started afterwards.
    shut_down: bool,
}

/// How `send` reaches the outgoing task of one peer.
struct PeerHandle {
    /// Address the task dials.
    addr: SocketAddr,
    /// Queue of the task; dropping it stops the task.
    tx: mpsc::UnboundedSender<Batch>,
}

/// What the outgoing peer tasks need.
struct Outbound {
    /// Our cluster name, for `Hello`.
    cluster: String,
    /// Our node id, for `Hello`.
    node_id: NodeId,
    /// Frame limit (peers use the same configuration).
    max_frame_bytes: usize,
    /// Logger.
    logger: Logger,
    /// Reports an unreachable peer.
    on_unreachable: OnUnreachable,
    /// TLS, if configured.
    tls: Option<Arc<TransportTls>>,
    /// When an idle connection is closed (`TransportLimits::idle_close`).
    idle_close: Duration,
}

/// What the readers of accepted connections need.
struct Inbound {
    /// Our cluster name; peers must send the same.
    cluster: String,
    /// Frame limit.
    max_frame_bytes: usize,
    /// Logger.
    logger: Logger,
    /// Receives the batches.
    on_batch: OnBatch,
    /// TLS, if configured.
    tls: Option<Arc<TransportTls>>,
    /// Bounds on connections, silence, frame memory and log lines.
    limits: Arc<InboundLimits>,
}

impl Transport {
    /// Starts accepting on `listener` (already bound; made nonblocking here) on `handle`.
    ///
    /// Fails only if the listener cannot be registered with the runtime.
    pub(crate) fn start(
        handle: &Handle,
        listener: std::net::TcpListener,
        config: TransportConfig,
        on_batch: OnBatch,
        on_unreachable: OnUnreachable,
    ) -> std::io::Result<Transport> {
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let listener = {
            let _guard = handle.enter();
            TcpListener::from_std(listener)?
        };
        let logger = config.logger.new(o!("component" => "transport"));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (done_tx, _) = watch::channel(false);
        let outbound = Arc::new(Outbound {
            cluster: config.cluster.clone(),
            node_id: config.node_id,
            max_frame_bytes: config.max_frame_bytes,
            logger: logger.clone(),
            on_unreachable,
            tls: config.tls.clone(),
            idle_close: config.limits.idle_close,
        });
        let inbound = Arc::new(Inbound {
            cluster: config.cluster,
            max_frame_bytes: config.max_frame_bytes,
            logger: logger.clone(),
            on_batch,
            tls: config.tls,
            limits: Arc::new(InboundLimits::new(config.limits, config.max_frame_bytes)),
        });
        let shared = Arc::new(Shared {
            handle: handle.clone(),
            outbound,
            state: Mutex::new(State {
                peers: HashMap::new(),
                tasks: Some(JoinSet::new()),
                shut_down: false,
            }),
            shutdown_tx,
            done_tx,
            #[cfg(test)]
            limits: inbound.limits.clone(),
        });
        shared.spawn(accept_loop(
            Arc::downgrade(&shared),
            listener,
            inbound,
            shutdown_rx,
        ));
        info!(logger, "transport listening"; "addr" => local_addr.to_string());
        Ok(Transport { shared })
    }

    /// Queues `batch` for node `to` at `addr`; never blocks (callable from any thread).
    ///
    /// Starts the peer's outgoing task on first use; if `addr` differs from the address
    /// the task dials, the old task and its connection are replaced. Does nothing after
    /// shutdown. Delivery is best effort: batches queued while the peer is unreachable
    /// are dropped.
    pub(crate) fn send(&self, to: NodeId, addr: SocketAddr, batch: Batch) {
        let shared = &self.shared;
        let mut state = shared.lock();
        if state.shut_down {
            return;
        }
        let mut batch = batch;
        if let Some(peer) = state.peers.get(&to) {
            if peer.addr == addr {
                match peer.tx.send(batch) {
                    Ok(()) => return,
                    // The task is gone (it only stops on shutdown or when replaced, or
                    // if it panicked): start a new one.
                    Err(mpsc::error::SendError(b)) => batch = b,
                }
            } else {
                info!(shared.outbound.logger, "peer address changed, replacing its connection";
                    "peer" => to, "old_addr" => peer.addr.to_string(), "addr" => addr.to_string());
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        // Cannot fail: `rx` is alive.
        let _ = tx.send(batch);
        // Dropping the old sender (if any) stops the old task.
        state.peers.insert(to, PeerHandle { addr, tx });
        let task = run_peer(
            shared.outbound.clone(),
            to,
            addr,
            rx,
            shared.shutdown_tx.subscribe(),
        );
        Shared::spawn_locked(&mut state, &shared.handle, &shared.outbound.logger, task);
    }

    /// Stops every task and closes every connection and the listener; returns once they
    /// are stopped (tasks still running after a bounded wait are aborted).
    ///
    /// Blocks: call it from a plain thread, not from inside the runtime (there, use
    /// [`Transport::shutdown_async`]; if called there anyway, it only signals the tasks
    /// and aborts them without waiting). Call it before the runtime is shut down.
    pub(crate) fn shutdown(&self) {
        if Handle::try_current().is_ok() {
            warn!(
                self.shared.outbound.logger,
                "Transport::shutdown called inside a tokio runtime; aborting tasks without waiting"
            );
            if let Some(tasks) = self.shared.signal_shutdown().tasks.as_mut() {
                tasks.abort_all();
            }
            return;
        }
        self.shared.handle.block_on(self.shutdown_async());
    }

    /// Async form of [`Transport::shutdown`]; safe to call several times and concurrently
    /// (every call returns once the tasks are stopped, or after a bounded wait).
    pub(crate) async fn shutdown_async(&self) {
        let shared = &self.shared;
        let taken = shared.signal_shutdown().tasks.take();
        let log = &shared.outbound.logger;
        let Some(mut tasks) = taken else {
            // Another call took the tasks: wait until it has stopped them.
            let mut done_rx = shared.done_tx.subscribe();
            let _ = tokio::time::timeout(3 * SHUTDOWN_TIMEOUT, done_rx.wait_for(|d| *d)).await;
            return;
        };
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, join_all(&mut tasks, log))
            .await
            .is_err()
        {
            warn!(log, "transport tasks did not stop in time, aborting them"; "left" => tasks.len());
            tasks.abort_all();
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, join_all(&mut tasks, log)).await;
        }
        shared.done_tx.send_replace(true);
        info!(log, "transport stopped");
    }
}

impl Drop for Transport {
    /// Signals every task to stop, without waiting (dropping the task set also aborts
    /// the tasks still running).
    fn drop(&mut self) {
        drop(self.shared.signal_shutdown());
    }
}

impl Shared {
    /// Locks the state, even if a panicking thread poisoned the lock.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the transport shut down, forgets the peers and tells every task to stop;
    /// returns the locked state.
    fn signal_shutdown(&self) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        state.shut_down = true;
        state.peers.clear();
        self.shutdown_tx.send_replace(true);
        state
    }

    /// Spawns `task` in the task set, unless the transport is shut down (then `false`).
    fn spawn<F>(&self, task: F) -> bool
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut state = self.lock();
        if state.shut_down {
            return false;
        }
        Self::spawn_locked(&mut state, &self.handle, &self.outbound.logger, task);
        true
    }

    /// Spawns `task` in the locked task set, reaping finished tasks (drops `task` if the
    /// set was taken by `shutdown`).
    fn spawn_locked<F>(state: &mut State, handle: &Handle, log: &Logger, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let Some(tasks) = state.tasks.as_mut() else {
            return;
        };
        while let Some(res) = tasks.try_join_next() {
            log_join_error(log, res);
        }
        tasks.spawn_on(task, handle);
    }
}

/// Waits for every task of `tasks`.
async fn join_all(tasks: &mut JoinSet<()>, log: &Logger) {
    while let Some(res) = tasks.join_next().await {
        log_join_error(log, res);
    }
}

/// Logs a task that panicked.
fn log_join_error(log: &Logger, res: Result<(), tokio::task::JoinError>) {
    if let Err(e) = res {
        if e.is_panic() {
            warn!(log, "transport task panicked"; "error" => %e);
        }
    }
}

/// Resolves once shutdown is signalled (or the transport is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

mod inbound;
mod limits;
mod outbound;

use inbound::*;
use limits::InboundLimits;
pub(crate) use limits::TransportLimits;
use outbound::*;

#[cfg(test)]
mod tests;
