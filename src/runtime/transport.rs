//! The TCP transport between nodes: raft traffic of all groups, batched per peer.
//!
//! Each node dials every peer it sends to; connections are one-way (the dialer only
//! writes, the acceptor only reads), so two nodes talking to each other use two
//! connections. Every connection starts with a `Hello` frame (protocol version, cluster
//! name, node id) that the acceptor checks; then each frame carries one `Batch`.
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
    effective_max, encode_frame, read_frame, write_encoded, write_frame, FrameError,
};

/// First delay before reconnecting to a peer after a failure.
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// Longest delay between two connection attempts to a peer.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// A connection that stayed up this long resets the backoff when it goes down.
const HEALTHY_AFTER: Duration = MAX_BACKOFF;
/// Longest wait for a TCP connect (and the `Hello` write) to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one frame to be written; a peer that stops reading is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the `Hello` frame on an accepted connection.
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
    /// Address the listener is bound to.
    #[cfg_attr(not(test), allow(dead_code))]
    local_addr: SocketAddr,
    /// What outgoing peer tasks need.
    outbound: Arc<Outbound>,
    /// Peers, tasks and the shut-down flag.
    state: Mutex<State>,
    /// Set to `true` to stop every task.
    shutdown_tx: watch::Sender<bool>,
    /// Set to `true` once a `shutdown` call has finished waiting for the tasks.
    done_tx: watch::Sender<bool>,
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
        });
        let inbound = Arc::new(Inbound {
            cluster: config.cluster,
            max_frame_bytes: config.max_frame_bytes,
            logger: logger.clone(),
            on_batch,
        });
        let shared = Arc::new(Shared {
            handle: handle.clone(),
            local_addr,
            outbound,
            state: Mutex::new(State {
                peers: HashMap::new(),
                tasks: Some(JoinSet::new()),
                shut_down: false,
            }),
            shutdown_tx,
            done_tx,
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

    /// The address the transport accepts connections on (the runtime knows it from the
    /// listener, so only tests read it here).
    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
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

// ---------------------------------------------------------------------------------------
// Outgoing side
// ---------------------------------------------------------------------------------------

/// Batches waiting to be written to one peer, merged into as few frames as fit the limit.
///
/// Bounded: when more than one frame's worth is queued (the peer is slow), the oldest
/// frames are dropped; a single batch too large for any frame is dropped on arrival.
struct OutQueue {
    /// Frames to write, oldest first, each with its batch's encoded size.
    frames: VecDeque<(Batch, usize)>,
    /// Sum of the sizes in `frames`.
    bytes: usize,
    /// Largest encoded batch that fits a frame.
    max_batch: usize,
}

impl OutQueue {
    /// An empty queue for frames of at most `max_frame_bytes`.
    fn new(max_frame_bytes: usize) -> Self {
        OutQueue {
            frames: VecDeque::new(),
            bytes: 0,
            max_batch: effective_max(max_frame_bytes).saturating_sub(FRAME_OVERHEAD),
        }
    }

    /// Queues `batch`, merged into the last frame if it fits.
    fn push(&mut self, batch: Batch, log: &Logger) {
        // Repeated message fields encode additively, so merged sizes are exact.
        let len = batch.encoded_len();
        if len > self.max_batch {
            warn!(log, "dropping a batch larger than the frame limit";
                "bytes" => len, "max" => self.max_batch);
            return;
        }
        match self.frames.back_mut() {
            Some((last, last_len)) if *last_len + len <= self.max_batch => {
                last.messages.extend(batch.messages);
                last.joins.extend(batch.joins);
                *last_len += len;
            }
            _ => self.frames.push_back((batch, len)),
        }
        self.bytes += len;
        let mut dropped = 0;
        while self.bytes > self.max_batch && self.frames.len() > 1 {
            if let Some((_, len)) = self.frames.pop_front() {
                self.bytes -= len;
                dropped += 1;
            }
        }
        if dropped > 0 {
            debug!(log, "peer is slow, dropped queued frames"; "frames" => dropped);
        }
    }

    /// Takes the oldest frame's batch.
    fn pop(&mut self) -> Option<Batch> {
        let (batch, len) = self.frames.pop_front()?;
        self.bytes -= len;
        Some(batch)
    }

    /// Whether nothing is queued.
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Drops everything queued; returns how many frames were dropped.
    fn clear(&mut self) -> usize {
        let n = self.frames.len();
        self.frames.clear();
        self.bytes = 0;
        n
    }
}

/// How a connection to a peer ended.
enum Ended {
    /// Shutdown, or the peer's task was replaced: the task must stop.
    Stopped,
    /// The connection failed (the reason is logged); reconnect.
    Down(String),
}

/// The outgoing task of one peer: connects, writes queued batches, reconnects with
/// backoff, until shutdown or until `rx`'s sender is dropped (the peer was replaced).
async fn run_peer(
    ctx: Arc<Outbound>,
    peer: NodeId,
    addr: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<Batch>,
    mut shutdown: watch::Receiver<bool>,
) {
    let log = ctx
        .logger
        .new(o!("peer" => peer, "peer_addr" => addr.to_string()));
    let mut queue = OutQueue::new(ctx.max_frame_bytes);
    let mut backoff = INITIAL_BACKOFF;
    // Whether the last connection was healthy (so the next failure is worth a warning).
    let mut healthy = true;
    loop {
        // Connect; batches queued meanwhile are kept for the new connection.
        let attempt = connect(&ctx, addr);
        tokio::pin!(attempt);
        let connected = loop {
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => return,
                res = &mut attempt => break res,
                msg = rx.recv() => match msg {
                    Some(batch) => queue.push(batch, &log),
                    None => return,
                },
            }
        };
        match connected {
            Ok(stream) => {
                debug!(log, "connected to peer");
                let since = Instant::now();
                match run_connection(&ctx, &log, stream, &mut rx, &mut queue, &mut shutdown).await {
                    Ended::Stopped => return,
                    Ended::Down(reason) => {
                        let lasted = since.elapsed() >= HEALTHY_AFTER;
                        if lasted {
                            backoff = INITIAL_BACKOFF;
                        }
                        if lasted || healthy {
                            warn!(log, "connection to peer lost"; "error" => reason);
                        } else {
                            debug!(log, "connection to peer lost"; "error" => reason);
                        }
                        healthy = lasted;
                    }
                }
            }
            Err(e) => {
                if healthy {
                    warn!(log, "cannot connect to peer"; "error" => %e);
                } else {
                    debug!(log, "cannot connect to peer"; "error" => %e);
                }
                healthy = false;
            }
        }

        // Down: drop what is queued (raft retransmits) and report the peer once.
        let mut dropped = queue.clear();
        loop {
            match rx.try_recv() {
                Ok(_) => dropped += 1,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        if dropped > 0 {
            debug!(log, "dropped batches for unreachable peer"; "count" => dropped);
        }
        (ctx.on_unreachable)(peer);

        // Back off, dropping what arrives meanwhile so the queue stays empty.
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => return,
                _ = &mut pause => break,
                msg = rx.recv() => if msg.is_none() { return },
            }
        }
        // Whatever is still queued predates the next attempt: drop it too.
        loop {
            match rx.try_recv() {
                Ok(_) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Connects to `addr` and sends our `Hello`.
async fn connect(ctx: &Outbound, addr: SocketAddr) -> Result<TcpStream, FrameError> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())??;
    stream.set_nodelay(true)?;
    let hello = Frame {
        body: Some(Body::Hello(Hello {
            version: PROTOCOL_VERSION,
            cluster: ctx.cluster.clone(),
            node_id: ctx.node_id,
        })),
    };
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        write_frame(&mut stream, &hello, ctx.max_frame_bytes),
    )
    .await
    .map_err(|_| timed_out())??;
    Ok(stream)
}

/// Writes queued batches to a connected peer until the connection fails, shutdown, or
/// the peer's task is replaced. While idle, also watches for the peer closing the
/// connection (the acceptor never writes, so end of stream means it is gone).
async fn run_connection(
    ctx: &Outbound,
    log: &Logger,
    stream: TcpStream,
    rx: &mut mpsc::UnboundedReceiver<Batch>,
    queue: &mut OutQueue,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let (mut rd, mut wr) = stream.into_split();
    let mut scratch = [0u8; 256];
    loop {
        if queue.is_empty() {
            tokio::select! {
                biased;
                _ = stopped(shutdown) => return Ended::Stopped,
                msg = rx.recv() => match msg {
                    Some(batch) => queue.push(batch, log),
                    None => return Ended::Stopped,
                },
                res = rd.read(&mut scratch) => match res {
                    Ok(0) => return Ended::Down("peer closed the connection".into()),
                    Ok(_) => continue, // Unexpected but harmless.
                    Err(e) => return Ended::Down(format!("read failed: {e}")),
                },
            }
            // Coalesce everything already queued.
            loop {
                match rx.try_recv() {
                    Ok(batch) => queue.push(batch, log),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ended::Stopped,
                }
            }
        }
        let Some(batch) = queue.pop() else { continue };
        let frame = Frame {
            body: Some(Body::Batch(batch)),
        };
        let encoded = match encode_frame(&frame, ctx.max_frame_bytes) {
            Ok(encoded) => encoded,
            Err(e) => {
                // Not expected: the queue only builds frames that fit.
                warn!(log, "dropping a batch that cannot be framed"; "error" => %e);
                continue;
            }
        };
        drop(frame);
        let write = tokio::time::timeout(WRITE_TIMEOUT, write_encoded(&mut wr, &encoded));
        tokio::pin!(write);
        // Keep receiving while writing, so the next frame coalesces what arrives.
        loop {
            tokio::select! {
                biased;
                _ = stopped(shutdown) => return Ended::Stopped,
                res = &mut write => match res {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => return Ended::Down(format!("write failed: {e}")),
                    Err(_) => return Ended::Down("write timed out".into()),
                },
                msg = rx.recv() => match msg {
                    Some(batch) => queue.push(batch, log),
                    None => return Ended::Stopped,
                },
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Incoming side
// ---------------------------------------------------------------------------------------

/// Why an accepted connection was closed.
#[derive(Debug, thiserror::Error)]
enum InboundError {
    /// Framing failed: oversized, truncated or undecodable frame, or a socket error.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// No `Hello` within the deadline.
    #[error("no hello within {0:?}")]
    HelloTimeout(Duration),
    /// The peer closed the connection before sending `Hello`.
    #[error("connection closed before hello")]
    ClosedBeforeHello,
    /// The first frame was not a `Hello`.
    #[error("first frame is not a hello")]
    MissingHello,
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: peer has {theirs}, we have {ours}")]
    VersionMismatch {
        /// The peer's version.
        theirs: u32,
        /// Ours.
        ours: u32,
    },
    /// The peer belongs to another cluster.
    #[error("cluster mismatch: peer is in {theirs:?}, we are in {ours:?}")]
    ClusterMismatch {
        /// The peer's cluster name.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// A second `Hello` on the same connection.
    #[error("unexpected second hello")]
    UnexpectedHello,
    /// A frame without a body.
    #[error("frame without a body")]
    EmptyFrame,
}

/// Accepts connections until shutdown, spawning a reader for each.
async fn accept_loop(
    shared: Weak<Shared>,
    listener: TcpListener,
    inbound: Arc<Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    let log = inbound.logger.clone();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            res = listener.accept() => match res {
                Ok((stream, remote)) => {
                    let Some(shared) = shared.upgrade() else { break };
                    let reader = serve_inbound(inbound.clone(), stream, remote, shutdown.clone());
                    if !shared.spawn(reader) {
                        break;
                    }
                }
                Err(e) => {
                    warn!(log, "accept failed"; "error" => %e);
                    tokio::select! {
                        biased;
                        _ = stopped(&mut shutdown) => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
        }
    }
    debug!(log, "stopped accepting");
}

/// Reads one accepted connection until it ends, fails, or shutdown.
async fn serve_inbound(
    ctx: Arc<Inbound>,
    stream: TcpStream,
    remote: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let log = ctx.logger.new(o!("remote" => remote.to_string()));
    if let Err(e) = stream.set_nodelay(true) {
        debug!(log, "cannot set TCP_NODELAY"; "error" => %e);
    }
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let mut peer = None;
    let res = tokio::select! {
        biased;
        _ = stopped(&mut shutdown) => return,
        res = read_inbound(&ctx, &log, &mut reader, &mut peer) => res,
    };
    let peer = peer.map_or_else(|| "unknown".to_string(), |p: NodeId| p.to_string());
    match res {
        Ok(()) => debug!(log, "peer closed its connection"; "peer" => peer),
        Err(InboundError::ClosedBeforeHello) => {
            debug!(log, "connection closed before hello")
        }
        Err(e) => warn!(log, "closing inbound connection"; "peer" => peer, "error" => %e),
    }
}

/// Checks the `Hello`, then passes every batch to `on_batch`; `Ok` on a clean end of
/// stream. Sets `peer` once the `Hello` is accepted.
async fn read_inbound<R: AsyncRead + Unpin>(
    ctx: &Inbound,
    log: &Logger,
    reader: &mut R,
    peer: &mut Option<NodeId>,
) -> Result<(), InboundError> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, read_frame(reader, ctx.max_frame_bytes))
        .await
        .map_err(|_| InboundError::HelloTimeout(HELLO_TIMEOUT))??;
    let hello = match first {
        None => return Err(InboundError::ClosedBeforeHello),
        Some(Frame {
            body: Some(Body::Hello(hello)),
        }) => hello,
        Some(_) => return Err(InboundError::MissingHello),
    };
    if hello.version != PROTOCOL_VERSION {
        return Err(InboundError::VersionMismatch {
            theirs: hello.version,
            ours: PROTOCOL_VERSION,
        });
    }
    if hello.cluster != ctx.cluster {
        return Err(InboundError::ClusterMismatch {
            theirs: hello.cluster,
            ours: ctx.cluster.clone(),
        });
    }
    let from = hello.node_id;
    *peer = Some(from);
    debug!(log, "accepted connection from peer"; "peer" => from);
    loop {
        match read_frame(reader, ctx.max_frame_bytes).await? {
            None => return Ok(()),
            Some(Frame {
                body: Some(Body::Batch(batch)),
            }) => (ctx.on_batch)(from, batch),
            Some(Frame {
                body: Some(Body::Hello(_)),
            }) => return Err(InboundError::UnexpectedHello),
            Some(Frame { body: None }) => return Err(InboundError::EmptyFrame),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::mpsc as std_mpsc;

    use super::*;
    use crate::proto::{GroupMessage, JoinRequest};

    /// Deadline for every awaited condition.
    const WAIT: Duration = Duration::from_secs(10);

    /// A multi-threaded runtime of its own for one test.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Log drain keeping "LEVEL message key=value..." lines for assertions.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<String>>>);

    /// Collects the key-values of one record.
    struct KvLine(String);

    impl slog::Serializer for KvLine {
        fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
            self.0.push_str(&format!(" {key}={val}"));
            Ok(())
        }
    }

    impl slog::Drain for Capture {
        type Ok = ();
        type Err = slog::Never;

        fn log(
            &self,
            record: &slog::Record,
            values: &slog::OwnedKVList,
        ) -> Result<(), slog::Never> {
            use slog::KV;
            let mut line = KvLine(format!(
                "{} {}",
                record.level().as_short_str(),
                record.msg()
            ));
            let _ = record.kv().serialize(record, &mut line);
            let _ = values.serialize(record, &mut line);
            self.0.lock().unwrap().push(line.0);
            Ok(())
        }
    }

    impl Capture {
        /// Whether some line contains every one of `parts`.
        fn has(&self, parts: &[&str]) -> bool {
            self.0
                .lock()
                .unwrap()
                .iter()
                .any(|l| parts.iter().all(|p| l.contains(p)))
        }
    }

    /// One transport under test, with what its callbacks saw.
    struct Node {
        transport: Transport,
        addr: SocketAddr,
        batches: std_mpsc::Receiver<(NodeId, Batch)>,
        unreachable: std_mpsc::Receiver<NodeId>,
        logs: Capture,
    }

    fn start_on(
        rt: &tokio::runtime::Runtime,
        listener: std::net::TcpListener,
        cluster: &str,
        id: NodeId,
        max_frame_bytes: usize,
    ) -> Node {
        let (batch_tx, batches) = std_mpsc::channel();
        let (unreachable_tx, unreachable) = std_mpsc::channel();
        let logs = Capture::default();
        let config = TransportConfig {
            cluster: cluster.to_string(),
            node_id: id,
            max_frame_bytes,
            logger: Logger::root(logs.clone(), o!()),
        };
        let on_batch: OnBatch = Arc::new(move |from, batch| {
            let _ = batch_tx.send((from, batch));
        });
        let on_unreachable: OnUnreachable = Arc::new(move |peer| {
            let _ = unreachable_tx.send(peer);
        });
        let transport =
            Transport::start(rt.handle(), listener, config, on_batch, on_unreachable).unwrap();
        let addr = transport.local_addr();
        Node {
            transport,
            addr,
            batches,
            unreachable,
            logs,
        }
    }

    fn start(rt: &tokio::runtime::Runtime, cluster: &str, id: NodeId) -> Node {
        start_on(rt, bind_any(), cluster, id, 1 << 20)
    }

    fn bind_any() -> std::net::TcpListener {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    }

    /// A batch of one message carrying `n`, and one join.
    fn batch(n: u32) -> Batch {
        Batch {
            messages: vec![GroupMessage {
                group: vec![7; 16],
                message: n.to_be_bytes().to_vec(),
            }],
            joins: vec![JoinRequest {
                group: vec![8; 16],
                node_id: u64::from(n),
            }],
        }
    }

    /// The numbers carried by a batch's messages.
    fn numbers(batch: &Batch) -> Vec<u32> {
        batch
            .messages
            .iter()
            .map(|m| u32::from_be_bytes(m.message.as_slice().try_into().unwrap()))
            .collect()
    }

    fn remaining(deadline: Instant) -> Duration {
        deadline.saturating_duration_since(Instant::now())
    }

    /// Waits (bounded) until `cond` holds.
    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (bounded) until the raw connection is closed by the other side.
    fn assert_closed_by_peer(stream: &mut std::net::TcpStream) {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 64];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("connection was not closed: {e}")
                }
                Err(_) => return, // Reset: closed too.
            }
        }
    }

    fn hello_bytes(cluster: &str, version: u32, node_id: NodeId) -> Vec<u8> {
        let frame = Frame {
            body: Some(Body::Hello(Hello {
                version,
                cluster: cluster.to_string(),
                node_id,
            })),
        };
        encode_frame(&frame, 1 << 20).unwrap()
    }

    /// Checks that `from` can still deliver to `to` (sending batch `n`).
    fn assert_delivers(from: &Node, from_id: NodeId, to: &Node, to_id: NodeId, n: u32) {
        from.transport.send(to_id, to.addr, batch(n));
        let (peer, got) = to.batches.recv_timeout(WAIT).expect("batch delivered");
        assert_eq!(peer, from_id);
        assert_eq!(got, batch(n));
    }

    #[test]
    fn exchanges_batches_both_ways() {
        let rt = runtime();
        let a = start(&rt, "c", 1);
        let b = start(&rt, "c", 2);
        a.transport.send(2, b.addr, batch(10));
        b.transport.send(1, a.addr, batch(20));
        let (from, got) = b.batches.recv_timeout(WAIT).unwrap();
        assert_eq!((from, got), (1, batch(10)));
        let (from, got) = a.batches.recv_timeout(WAIT).unwrap();
        assert_eq!((from, got), (2, batch(20)));
        // And again over the established connections.
        assert_delivers(&a, 1, &b, 2, 11);
        assert_delivers(&b, 2, &a, 1, 21);
        assert!(a.unreachable.try_recv().is_err());
        assert!(b.unreachable.try_recv().is_err());
        a.transport.shutdown();
        b.transport.shutdown();
    }

    #[test]
    fn many_batches_arrive_in_order_and_coalesced() {
        let rt = runtime();
        let a = start(&rt, "c", 1);
        let b = start(&rt, "c", 2);
        const N: u32 = 5000;
        // From a plain thread, as the raft loop does.
        for n in 0..N {
            a.transport.send(2, b.addr, batch(n));
        }
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        let mut joins = Vec::new();
        let mut frames = 0;
        while seen.len() < N as usize {
            let (from, got) = b
                .batches
                .recv_timeout(remaining(deadline))
                .expect("all batches delivered");
            assert_eq!(from, 1);
            assert!(!got.messages.is_empty());
            frames += 1;
            seen.extend(numbers(&got));
            joins.extend(got.joins.iter().map(|j| j.node_id));
        }
        assert_eq!(seen, (0..N).collect::<Vec<_>>());
        assert_eq!(joins, (0..u64::from(N)).collect::<Vec<_>>());
        // The first batch may travel alone while the connection is set up; the rest
        // is coalesced.
        assert!(frames < N as usize, "{frames} frames for {N} batches");
        a.transport.shutdown();
        b.transport.shutdown();
    }

    #[test]
    fn reconnects_to_a_peer_that_starts_later() {
        let rt = runtime();
        let a = start(&rt, "c", 1);
        // Reserve a port, then free it: nothing listens there for now.
        let b_addr = bind_any().local_addr().unwrap();
        a.transport.send(2, b_addr, batch(0));
        assert_eq!(a.unreachable.recv_timeout(WAIT), Ok(2));
        assert!(a.logs.has(&["WARN", "cannot connect to peer"]));
        // Sends while down are dropped, never queued without bound.
        for n in 1..100 {
            a.transport.send(2, b_addr, batch(n));
        }
        let b = start_on(
            &rt,
            std::net::TcpListener::bind(b_addr).unwrap(),
            "c",
            2,
            1 << 20,
        );
        // Keep sending (as raft retransmits) until one gets through after reconnecting.
        let deadline = Instant::now() + WAIT;
        let (from, got) = loop {
            a.transport.send(2, b_addr, batch(1000));
            match b.batches.recv_timeout(Duration::from_millis(20)) {
                Ok(x) => break x,
                Err(_) => assert!(Instant::now() < deadline, "never reconnected"),
            }
        };
        assert_eq!(from, 1);
        assert!(
            numbers(&got).iter().all(|&n| n == 1000),
            "stale batch delivered"
        );
        // Failed attempts were reported, but not in a hot loop (backoff).
        let reports = a.unreachable.try_iter().count() + 1;
        assert!(reports < 100, "{reports} unreachable reports");
        a.transport.shutdown();
        b.transport.shutdown();
    }

    #[test]
    fn bad_clients_are_dropped_without_disturbing_peers() {
        let rt = runtime();
        let a = start(&rt, "c", 1);
        let b = start(&rt, "c", 2);
        assert_delivers(&b, 2, &a, 1, 1);

        // Garbage instead of a hello.
        let mut garbage = std::net::TcpStream::connect(a.addr).unwrap();
        garbage
            .write_all(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
            .unwrap();
        assert_closed_by_peer(&mut garbage);
        wait_until("undecodable frame log", || {
            a.logs
                .has(&["WARN", "closing inbound connection", "undecodable"])
        });

        // An oversized length prefix.
        let mut oversized = std::net::TcpStream::connect(a.addr).unwrap();
        oversized.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
        assert_closed_by_peer(&mut oversized);
        wait_until("oversized frame log", || {
            a.logs
                .has(&["WARN", "closing inbound connection", "over the limit"])
        });

        // A proper hello, then HTTP (its first 4 bytes read as a huge length).
        let mut http = std::net::TcpStream::connect(a.addr).unwrap();
        http.write_all(&hello_bytes("c", PROTOCOL_VERSION, 9))
            .unwrap();
        http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_closed_by_peer(&mut http);
        wait_until("oversized frame log from peer 9", || {
            a.logs
                .has(&["closing inbound connection", "over the limit", "peer=9"])
        });

        // A batch frame without a hello.
        let mut no_hello = std::net::TcpStream::connect(a.addr).unwrap();
        let frame = Frame {
            body: Some(Body::Batch(batch(5))),
        };
        no_hello
            .write_all(&encode_frame(&frame, 1 << 20).unwrap())
            .unwrap();
        assert_closed_by_peer(&mut no_hello);
        wait_until("missing hello log", || {
            a.logs.has(&["closing inbound connection", "not a hello"])
        });

        // A hello, then a frame cut short by end of stream.
        let mut truncated = std::net::TcpStream::connect(a.addr).unwrap();
        truncated
            .write_all(&hello_bytes("c", PROTOCOL_VERSION, 8))
            .unwrap();
        truncated.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
        truncated.shutdown(std::net::Shutdown::Write).unwrap();
        assert_closed_by_peer(&mut truncated);
        wait_until("truncated frame log", || {
            a.logs
                .has(&["closing inbound connection", "mid-frame", "peer=8"])
        });

        // A client spewing garbage continuously, while the peer keeps talking.
        let mut spewer = std::net::TcpStream::connect(a.addr).unwrap();
        let spew = std::thread::spawn(move || {
            let junk: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
            while spewer.write_all(&junk).is_ok() {}
        });
        for n in 2..50 {
            assert_delivers(&b, 2, &a, 1, n);
        }
        spew.join().unwrap();

        // None of this reached the application, and the proper peer never broke.
        assert!(a.batches.try_recv().is_err());
        assert!(b.unreachable.try_recv().is_err());
        a.transport.shutdown();
        b.transport.shutdown();
    }

    #[test]
    fn refuses_other_clusters_and_versions() {
        let rt = runtime();
        let a = start(&rt, "alpha", 1);
        let c = start(&rt, "beta", 3);
        c.transport.send(1, a.addr, batch(1));
        wait_until("cluster mismatch log", || {
            a.logs.has(&[
                "WARN",
                "closing inbound connection",
                "cluster mismatch",
                "beta",
            ])
        });
        // The refused dialer notices the closed connection and reports the peer.
        assert_eq!(c.unreachable.recv_timeout(WAIT), Ok(1));

        let mut old = std::net::TcpStream::connect(a.addr).unwrap();
        old.write_all(&hello_bytes("alpha", PROTOCOL_VERSION + 1, 4))
            .unwrap();
        assert_closed_by_peer(&mut old);
        wait_until("version mismatch log", || {
            a.logs
                .has(&["WARN", "closing inbound connection", "version mismatch"])
        });

        assert!(a.batches.try_recv().is_err());
        a.transport.shutdown();
        c.transport.shutdown();
    }

    #[test]
    fn address_change_replaces_the_connection() {
        let rt = runtime();
        let a = start(&rt, "c", 1);
        let old = start(&rt, "c", 2);
        let new = start(&rt, "c", 2);
        assert_delivers(&a, 1, &old, 2, 1);
        assert_delivers(&a, 1, &new, 2, 2);
        for n in 3..20 {
            assert_delivers(&a, 1, &new, 2, n);
        }
        assert!(old.batches.try_recv().is_err());
        // The old connection was closed by its task (a clean end of stream).
        wait_until("old connection closed", || {
            old.logs.has(&["peer closed its connection", "peer=1"])
        });
        for node in [a, old, new] {
            node.transport.shutdown();
        }
    }

    #[test]
    fn drops_batches_too_large_for_a_frame() {
        let rt = runtime();
        let a = start_on(&rt, bind_any(), "c", 1, 64 * 1024);
        let b = start_on(&rt, bind_any(), "c", 2, 64 * 1024);
        let mut huge = batch(1);
        huge.messages[0].message = vec![0; 100 * 1024];
        a.transport.send(2, b.addr, huge);
        assert_delivers(&a, 1, &b, 2, 2);
        assert!(a.logs.has(&["WARN", "larger than the frame limit"]));
        a.transport.shutdown();
        b.transport.shutdown();
    }

    #[test]
    fn shutdown_stops_everything() {
        let rt = runtime();
        let a = start(&rt, "c", 1);
        let b = start(&rt, "c", 2);
        assert_delivers(&a, 1, &b, 2, 1);
        assert_delivers(&b, 2, &a, 1, 2);
        // An idle accepted connection.
        let mut idle = std::net::TcpStream::connect(a.addr).unwrap();
        idle.write_all(&hello_bytes("c", PROTOCOL_VERSION, 5))
            .unwrap();
        wait_until("idle connection accepted", || {
            a.logs.has(&["accepted connection from peer", "peer=5"])
        });

        let started = Instant::now();
        a.transport.shutdown();
        b.transport.shutdown();
        assert!(
            started.elapsed() < SHUTDOWN_TIMEOUT,
            "tasks had to be aborted"
        );
        assert!(!a.logs.has(&["did not stop in time"]));
        assert!(!b.logs.has(&["did not stop in time"]));
        // Idempotent, and sending afterwards does nothing.
        a.transport.shutdown();
        a.transport.send(2, b.addr, batch(3));

        // The accepted connection was closed, the listener is gone: connects fail and
        // the port can be bound again.
        assert_closed_by_peer(&mut idle);
        assert!(std::net::TcpStream::connect(a.addr).is_err());
        let rebound = std::net::TcpListener::bind(a.addr).unwrap();
        drop(rebound);
        assert!(a.batches.try_recv().is_err());
        assert!(b.batches.try_recv().is_err());
        assert!(a.unreachable.try_recv().is_err());
        drop(a);
        drop(b);
        rt.shutdown_timeout(WAIT);
    }

    #[test]
    fn shutdown_async_inside_the_runtime() {
        let rt = runtime();
        let a = start(&rt, "c", 1);
        let b = start(&rt, "c", 2);
        assert_delivers(&a, 1, &b, 2, 1);
        rt.block_on(async {
            a.transport.shutdown_async().await;
            b.transport.shutdown_async().await;
            // A second, concurrent-safe call returns at once.
            a.transport.shutdown_async().await;
        });
        assert!(std::net::TcpStream::connect(a.addr).is_err());
    }

    #[test]
    fn out_queue_merges_splits_and_stays_bounded() {
        let log = Logger::root(slog::Discard, o!());
        // Batches 1..=127 all have the same size.
        let one = batch(1).encoded_len();
        // Room for exactly three batches per frame.
        let mut q = OutQueue::new(3 * one + FRAME_OVERHEAD);
        for n in 1..=3 {
            q.push(batch(n), &log);
        }
        assert_eq!(q.frames.len(), 1);
        q.push(batch(4), &log);
        // Over one frame's worth: the oldest frame was dropped.
        assert_eq!(q.frames.len(), 1);
        assert_eq!(numbers(&q.pop().unwrap()), vec![4]);
        assert!(q.is_empty());
        for n in 1..=3 {
            q.push(batch(n), &log);
        }
        let merged = q.pop().unwrap();
        assert_eq!(numbers(&merged), vec![1, 2, 3]);
        assert_eq!(merged.encoded_len(), 3 * one);
        assert!(encode_frame(
            &Frame {
                body: Some(Body::Batch(merged))
            },
            3 * one + FRAME_OVERHEAD
        )
        .is_ok());
        q.push(batch(9), &log);
        assert_eq!(q.clear(), 1);
        assert_eq!(q.bytes, 0);
    }

    #[test]
    fn transport_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Transport>();
    }
}
