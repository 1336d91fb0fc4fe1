//! The incoming side of the transport: the accept loop and one reader per accepted
//! connection, which checks the `Hello` and passes batches on, within the bounds of
//! `limits.rs`.

use super::limits::MAX_HELLO_BYTES;
use super::*;

/// Why an accepted connection was closed.
#[derive(Debug, thiserror::Error)]
pub(super) enum InboundError {
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
    /// The TLS handshake failed, or the certificate names no node id.
    #[error(transparent)]
    Tls(#[from] AcceptError),
    /// The peer already holds the most connections it may.
    #[error("peer already holds {0} connections")]
    TooManyFromPeer(usize),
    /// No whole frame within the deadline: an idle connection, or a frame never finished.
    #[error("no whole frame within {0:?}")]
    FrameTimeout(Duration),
    /// The `Hello` claims another node id than the peer's certificate names.
    #[error("hello claims node id {claimed}, but the peer's certificate names {certified}")]
    ClaimMismatch {
        /// The id in the `Hello`.
        claimed: NodeId,
        /// The id in the certificate.
        certified: NodeId,
    },
}

/// Accepts connections until shutdown, spawning a reader for each.
pub(super) async fn accept_loop(
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
                    let Some(slot) = inbound.limits.admit() else {
                        if let Some(held_back) = inbound.limits.log.admit() {
                            warn!(log, "too many inbound connections, closing a new one";
                                "remote" => remote.to_string(), "lines_held_back" => held_back);
                        }
                        continue;
                    };
                    let reader = serve_inbound(inbound.clone(), stream, remote, shutdown.clone());
                    let reader = async move {
                        reader.await;
                        drop(slot);
                    };
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
pub(super) async fn serve_inbound(
    ctx: Arc<Inbound>,
    stream: TcpStream,
    remote: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let log = ctx.logger.new(o!("remote" => remote.to_string()));
    if let Err(e) = stream.set_nodelay(true) {
        debug!(log, "cannot set TCP_NODELAY"; "error" => %e);
    }
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let mut peer = None;
    let serve = async {
        let (stream, certified) = handshake(&ctx, stream, deadline).await?;
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        read_inbound(&ctx, &log, &mut reader, &mut peer, certified, deadline).await
    };
    let res = tokio::select! {
        biased;
        _ = stopped(&mut shutdown) => return,
        res = serve => res,
    };
    if let (Some(tls), Err(InboundError::Tls(_) | InboundError::ClaimMismatch { .. })) =
        (&ctx.tls, &res)
    {
        tls.count_refused();
    }
    let peer = peer.map_or_else(|| "unknown".to_string(), |p: NodeId| p.to_string());
    match res {
        // Dialers close idle connections: routine.
        Ok(()) => debug!(log, "peer closed its connection"; "peer" => peer),
        Err(InboundError::ClosedBeforeHello) => {
            debug!(log, "connection closed before hello")
        }
        Err(e) => {
            if let Some(held_back) = ctx.limits.log.admit() {
                warn!(log, "closing inbound connection"; "peer" => peer, "error" => %e,
                    "lines_held_back" => held_back);
            }
        }
    }
}

/// Runs the TLS handshake, if configured, before `deadline`; returns the stream and the
/// node id the peer's certificate names (`None` without TLS).
async fn handshake(
    ctx: &Inbound,
    stream: TcpStream,
    deadline: tokio::time::Instant,
) -> Result<(BoxedStream, Option<NodeId>), InboundError> {
    let Some(tls) = &ctx.tls else {
        return Ok((Box::new(stream), None));
    };
    let (stream, node_id) = tokio::time::timeout_at(deadline, tls.accept(stream))
        .await
        .map_err(|_| AcceptError::TimedOut(HELLO_TIMEOUT))??;
    Ok((stream, Some(node_id)))
}

/// Checks the `Hello` (received before `deadline`; with TLS, it must claim `certified`,
/// the id of the peer's certificate), then passes every batch to `on_batch`; `Ok` on a
/// clean end of stream. Sets `peer` once the `Hello` is accepted.
pub(super) async fn read_inbound<R: AsyncRead + Unpin>(
    ctx: &Inbound,
    log: &Logger,
    reader: &mut R,
    peer: &mut Option<NodeId>,
    certified: Option<NodeId>,
    deadline: tokio::time::Instant,
) -> Result<(), InboundError> {
    let first = tokio::time::timeout_at(deadline, read_frame(reader, MAX_HELLO_BYTES))
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
    if let Some(certified) = certified {
        if from != certified {
            return Err(InboundError::ClaimMismatch {
                claimed: from,
                certified,
            });
        }
    }
    *peer = Some(from);
    let _slot = ctx
        .limits
        .admit_peer(from)
        .ok_or(InboundError::TooManyFromPeer(ctx.limits.bounds.per_peer))?;
    info!(log, "accepted connection from peer"; "peer" => from);
    let budget = Some(&ctx.limits.frame_budget);
    loop {
        let next = read_frame_within(reader, ctx.max_frame_bytes, budget);
        let frame_timeout = ctx.limits.bounds.frame_timeout;
        match tokio::time::timeout(frame_timeout, next)
            .await
            .map_err(|_| InboundError::FrameTimeout(frame_timeout))??
        {
            None => return Ok(()),
            Some(Frame {
                body: Some(Body::Batch(batch)),
            }) => {
                crate::telemetry::frame_received(batch.encoded_len());
                (ctx.on_batch)(from, batch)
            }
            Some(Frame {
                body: Some(Body::Hello(_)),
            }) => return Err(InboundError::UnexpectedHello),
            Some(Frame { body: None }) => return Err(InboundError::EmptyFrame),
        }
    }
}
