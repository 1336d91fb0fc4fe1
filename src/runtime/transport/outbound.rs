//! The outgoing side of the transport: one task per peer that connects, writes queued
//! batches as frames and reconnects with backoff.

use super::*;

/// Batches waiting to be written to one peer, merged into as few frames as fit the limit.
///
/// Bounded: when more than one frame's worth is queued (the peer is slow), the oldest
/// frames are dropped; a single batch too large for any frame is dropped on arrival.
pub(super) struct OutQueue {
    /// Frames to write, oldest first, each with its batch's encoded size.
    pub(super) frames: VecDeque<(Batch, usize)>,
    /// Sum of the sizes in `frames`.
    pub(super) bytes: usize,
    /// Largest encoded batch that fits a frame.
    pub(super) max_batch: usize,
}

impl OutQueue {
    /// An empty queue for frames of at most `max_frame_bytes`.
    pub(super) fn new(max_frame_bytes: usize) -> Self {
        OutQueue {
            frames: VecDeque::new(),
            bytes: 0,
            max_batch: effective_max(max_frame_bytes).saturating_sub(FRAME_OVERHEAD),
        }
    }

    /// Queues `batch`, merged into the last frame if it fits.
    pub(super) fn push(&mut self, batch: Batch, log: &Logger) {
        // Repeated message fields encode additively, so merged sizes are exact.
        let len = batch.encoded_len();
        if len > self.max_batch {
            warn!(log, "dropping a batch larger than the frame limit";
                "bytes" => len, "max" => self.max_batch);
            return;
        }
        match self.frames.back_mut() {
            Some((last, last_len)) if *last_len + len <= self.max_batch => {
                last.absorb(batch);
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
    pub(super) fn pop(&mut self) -> Option<Batch> {
        let (batch, len) = self.frames.pop_front()?;
        self.bytes -= len;
        Some(batch)
    }

    /// Whether nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Drops everything queued; returns how many frames were dropped.
    pub(super) fn clear(&mut self) -> usize {
        let n = self.frames.len();
        self.frames.clear();
        self.bytes = 0;
        n
    }
}

/// How a connection to a peer ended.
pub(super) enum Ended {
    /// Shutdown, or the peer's task was replaced: the task must stop.
    Stopped,
    /// The connection failed (the reason is logged); reconnect.
    Down(String),
    /// Nothing was sent for `idle_close`: closed, to be opened again on demand.
    Idle,
}

/// The outgoing task of one peer: connects, writes queued batches, reconnects with
/// backoff, until shutdown or until `rx`'s sender is dropped (the peer was replaced).
/// It dials only when it has something to send: a dead peer that nothing is sent to any
/// more is not redialed, and an idle connection is closed.
pub(super) async fn run_peer(
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
        let attempt = connect(&ctx, peer, addr);
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
                info!(log, "connected to peer");
                let since = Instant::now();
                match run_connection(&ctx, &log, stream, &mut rx, &mut queue, &mut shutdown).await {
                    Ended::Stopped => return,
                    Ended::Idle => {
                        debug!(log, "closed an idle connection");
                        backoff = INITIAL_BACKOFF;
                        healthy = true;
                        if !next_batch(&mut rx, &mut queue, &mut shutdown, &log).await {
                            return;
                        }
                        continue;
                    }
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
        if !next_batch(&mut rx, &mut queue, &mut shutdown, &log).await {
            return;
        }
    }
}

/// Waits for the next batch to send and queues it; false when the task must stop.
async fn next_batch(
    rx: &mut mpsc::UnboundedReceiver<Batch>,
    queue: &mut OutQueue,
    shutdown: &mut watch::Receiver<bool>,
    log: &Logger,
) -> bool {
    tokio::select! {
        biased;
        _ = stopped(shutdown) => false,
        msg = rx.recv() => match msg {
            Some(batch) => {
                queue.push(batch, log);
                true
            }
            None => false,
        },
    }
}

/// Connects to `peer` at `addr` (with TLS, proving the server is `peer`) and sends our
/// `Hello`.
pub(super) async fn connect(
    ctx: &Outbound,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<BoxedStream, FrameError> {
    let timed_out =
        |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"));
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("connect"))??;
    tcp.set_nodelay(true)?;
    let mut stream: BoxedStream = match &ctx.tls {
        None => Box::new(tcp),
        Some(tls) => tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(tcp, peer))
            .await
            .map_err(|_| timed_out("TLS handshake"))??,
    };
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
    .map_err(|_| timed_out("hello"))??;
    crate::telemetry::connected();
    Ok(stream)
}

/// Writes queued batches to a connected peer until the connection fails, shutdown, or
/// the peer's task is replaced. While idle, also watches for the peer closing the
/// connection (the acceptor never writes, so end of stream means it is gone).
pub(super) async fn run_connection(
    ctx: &Outbound,
    log: &Logger,
    stream: BoxedStream,
    rx: &mut mpsc::UnboundedReceiver<Batch>,
    queue: &mut OutQueue,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let (mut rd, mut wr) = tokio::io::split(stream);
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
                // Before the peer's own limit on silent connections closes it.
                _ = tokio::time::sleep(ctx.idle_close) => return Ended::Idle,
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
                    Ok(Ok(())) => {
                        crate::telemetry::frame_sent(encoded.len());
                        break;
                    }
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
