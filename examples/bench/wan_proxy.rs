//! The `wan` scenario's stand-in for a wide-area network (there is no netem on these
//! machines): one front per node, a TCP listener and a UDP socket, which every other node
//! is told to reach that node at (`Config::advertised_*_addr`). Whatever arrives at a front
//! goes on to the node after the one-way delay, ±10 % jitter; TCP keeps each stream's byte
//! order (a chunk never leaves before the one read before it), UDP datagrams may reorder,
//! as on a real path. Both directions of a TCP connection are delayed, so a round trip
//! between two nodes costs about twice the one-way delay.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::args::BoxResult;

/// Largest chunk read from a TCP stream or UDP socket at once.
const CHUNK_BYTES: usize = 64 * 1024;

/// The delaying fronts of a cluster's nodes, on a runtime of their own.
pub struct WanProxy {
    runtime: tokio::runtime::Runtime,
    one_way: Duration,
}

/// One node's front: where the others reach it, and where its traffic goes once known.
pub struct Front {
    pub raft: SocketAddr,
    pub gossip: SocketAddr,
    targets: Arc<Mutex<Option<(SocketAddr, SocketAddr)>>>,
}

impl Front {
    /// The node's bound raft and gossip addresses: traffic flows from now on (before,
    /// connections are closed and datagrams dropped, as for a node not up yet).
    pub fn connect_to(&self, raft: SocketAddr, gossip: SocketAddr) {
        if let Ok(mut targets) = self.targets.lock() {
            *targets = Some((raft, gossip));
        }
    }
}

impl WanProxy {
    /// A proxy adding `one_way` (±10 %) to everything it forwards.
    pub fn start(one_way: Duration) -> BoxResult<WanProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wan-proxy")
            .enable_all()
            .build()?;
        Ok(WanProxy { runtime, one_way })
    }

    /// A new front on loopback, forwarding nowhere until [`Front::connect_to`].
    pub fn front(&self) -> BoxResult<Front> {
        let (tcp, udp) = self.runtime.block_on(async {
            let tcp = TcpListener::bind("127.0.0.1:0").await?;
            let udp = UdpSocket::bind("127.0.0.1:0").await?;
            Ok::<_, std::io::Error>((tcp, udp))
        })?;
        let front = Front {
            raft: tcp.local_addr()?,
            gossip: udp.local_addr()?,
            targets: Arc::new(Mutex::new(None)),
        };
        let one_way = self.one_way;
        let targets = front.targets.clone();
        self.runtime.spawn(accept(tcp, targets.clone(), one_way));
        self.runtime.spawn(forward_datagrams(udp, targets, one_way));
        Ok(front)
    }
}

/// `one_way` with ±10 % jitter.
fn delay(one_way: Duration) -> Duration {
    one_way.mul_f64(rand::thread_rng().gen_range(0.9..1.1))
}

fn target(targets: &Mutex<Option<(SocketAddr, SocketAddr)>>) -> Option<(SocketAddr, SocketAddr)> {
    targets.lock().ok().and_then(|t| *t)
}

/// Accepts connections at a front and pipes each to the node, delayed both ways.
async fn accept(
    listener: TcpListener,
    targets: Arc<Mutex<Option<(SocketAddr, SocketAddr)>>>,
    one_way: Duration,
) {
    while let Ok((inbound, _)) = listener.accept().await {
        let Some((raft, _)) = target(&targets) else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(raft).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::join!(
                pipe(in_read, out_write, one_way),
                pipe(out_read, in_write, one_way)
            );
        });
    }
}

/// Copies `from` to `to`, each chunk leaving `one_way` (jittered) after it was read but
/// never before the chunk read before it.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    one_way: Duration,
) {
    // Unbounded: a bench-only proxy holds at most a delay's worth of a stream's bytes.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut last = Instant::now();
        let mut buf = vec![0u8; CHUNK_BYTES];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            last = last.max(Instant::now() + delay(one_way));
            if tx.send((last, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Forwards the datagrams arriving at a front to the node's gossip socket, each after its
/// own delay.
async fn forward_datagrams(
    socket: UdpSocket,
    targets: Arc<Mutex<Option<(SocketAddr, SocketAddr)>>>,
    one_way: Duration,
) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; CHUNK_BYTES];
    while let Ok((n, _)) = socket.recv_from(&mut buf).await {
        let Some((_, gossip)) = target(&targets) else {
            continue;
        };
        let (socket, datagram) = (socket.clone(), buf[..n].to_vec());
        tokio::spawn(async move {
            tokio::time::sleep(delay(one_way)).await;
            let _ = socket.send_to(&datagram, gossip).await;
        });
    }
}
