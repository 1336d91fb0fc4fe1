//! A forged gossip member for the attack tests: a real foca 2.0 member holding the
//! cluster's gossip key, run on its own thread, that gossips whatever identity an attacker
//! wants (any node id, any raft address, any bump).
//!
//! Built from the wire format independently of the library's own gossip code: the
//! identity mirrors copycat's (`NodeInfo` and a bump, postcard-encoded by foca's codec),
//! the envelope is `proto/copycat.proto`'s `GossipPacket`, and the seal is
//! `MARKER | nonce | XChaCha20-Poly1305(envelope)` with the marker and cluster name as
//! associated data (`src/runtime/gossip_seal.rs`).

use std::net::{SocketAddr, UdpSocket};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use copycat::GossipKey;
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, PostcardCodec, Timer};
use prost::Message as _;
use rand::RngCore;
use rand_foca::rngs::SmallRng;
use rand_foca::SeedableRng;
use serde::{Deserialize, Serialize};

/// First byte of a sealed datagram.
const MARKER: u8 = 0xC5;
/// The protocol version of the envelope.
const PROTOCOL_VERSION: u32 = 1;
/// How often the forger announces itself while it knows no member.
const REANNOUNCE_EVERY: Duration = Duration::from_millis(500);

/// copycat's `NodeInfo`, field for field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ForgedInfo {
    /// The node id claimed.
    pub node_id: u64,
    /// The raft address claimed.
    pub raft_addr: SocketAddr,
    /// The gossip address claimed (the forger's own socket, so it answers probes).
    pub gossip_addr: SocketAddr,
    /// A datacenter label.
    pub datacenter: String,
}

/// copycat's gossip identity: the metadata and a bump (the higher bump wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ForgedIdentity {
    info: ForgedInfo,
    bump: u64,
}

impl foca::Identity for ForgedIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(ForgedIdentity {
            info: self.info.clone(),
            bump: self.bump.wrapping_add(1),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.info.gossip_addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct GossipPacket {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(string, tag = "2")]
    cluster: String,
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
}

/// A running forged member; dropping it stops its thread (without leaving: the cluster
/// then declares it down).
pub struct ForgedMember {
    /// Tells the thread to stop.
    stop: Arc<AtomicBool>,
    /// How many members foca knows.
    members: Arc<AtomicUsize>,
    /// The thread.
    thread: Option<JoinHandle<()>>,
}

impl ForgedMember {
    /// Starts a member on `socket` (bound on loopback; `info.gossip_addr` should be its
    /// address) that gossips `info` with `bump`, sealed under `key` for `cluster`, and
    /// announces itself to `seed`.
    pub fn start(
        socket: UdpSocket,
        cluster: &str,
        key: &GossipKey,
        info: ForgedInfo,
        bump: u64,
        seed: SocketAddr,
    ) -> std::io::Result<ForgedMember> {
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let members = Arc::new(AtomicUsize::new(0));
        let seal = Seal::new(cluster, key);
        let mut config = foca::Config::new_lan(NonZeroU32::new(32).expect("non-zero"));
        config.max_packet_size = NonZeroUsize::new(1200).expect("non-zero");
        let foca = Foca::new(
            ForgedIdentity { info, bump },
            config,
            SmallRng::seed_from_u64(bump),
            PostcardCodec,
        );
        let mut run = Run {
            foca,
            runtime: AccumulatingRuntime::new(),
            socket,
            seal,
            timers: Vec::new(),
            seed,
            members: members.clone(),
        };
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("forged-gossip".into())
            .spawn(move || run.run(&flag))?;
        Ok(ForgedMember {
            stop,
            members,
            thread: Some(thread),
        })
    }

    /// How many members the forger's foca knows (it is in the cluster once above 0).
    pub fn members(&self) -> usize {
        self.members.load(Ordering::Relaxed)
    }
}

impl Drop for ForgedMember {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Seals and opens datagrams under one key for one cluster.
struct Seal {
    cipher: XChaCha20Poly1305,
    aad: Vec<u8>,
    cluster: String,
}

impl Seal {
    fn new(cluster: &str, key: &GossipKey) -> Seal {
        let mut aad = vec![MARKER];
        aad.extend_from_slice(cluster.as_bytes());
        Seal {
            cipher: XChaCha20Poly1305::new(key.as_bytes().into()),
            aad,
            cluster: cluster.to_string(),
        }
    }

    /// The sealed envelope of foca's `payload`.
    fn seal(&self, payload: &[u8]) -> Vec<u8> {
        let envelope = GossipPacket {
            version: PROTOCOL_VERSION,
            cluster: self.cluster.clone(),
            payload: payload.to_vec(),
        }
        .encode_to_vec();
        let mut nonce = XNonce::default();
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &envelope,
                    aad: &self.aad,
                },
            )
            .expect("a datagram seals");
        let mut out = vec![MARKER];
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// foca's payload of a sealed datagram, if it opens.
    fn open(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        if datagram.len() < 1 + 24 + 16 || datagram[0] != MARKER {
            return None;
        }
        let nonce = XNonce::from_slice(&datagram[1..25]);
        let envelope = self
            .cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &datagram[25..],
                    aad: &self.aad,
                },
            )
            .ok()?;
        let packet = GossipPacket::decode(envelope.as_slice()).ok()?;
        Some(packet.payload)
    }
}

/// The forger's thread state.
struct Run {
    foca: Foca<ForgedIdentity, PostcardCodec, SmallRng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<ForgedIdentity>,
    socket: UdpSocket,
    seal: Seal,
    timers: Vec<(Instant, Timer<ForgedIdentity>)>,
    seed: SocketAddr,
    members: Arc<AtomicUsize>,
}

impl Run {
    fn run(&mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; 65_536];
        let mut last_announce: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            if self.foca.num_members() == 0
                && last_announce.is_none_or(|at| at.elapsed() >= REANNOUNCE_EVERY)
            {
                let seed = ForgedIdentity {
                    info: ForgedInfo {
                        node_id: 0,
                        raft_addr: self.seed,
                        gossip_addr: self.seed,
                        datacenter: String::new(),
                    },
                    bump: 0,
                };
                let _ = self.foca.announce(seed, &mut self.runtime);
                last_announce = Some(Instant::now());
            }
            if let Ok((len, _)) = self.socket.recv_from(&mut buf) {
                if let Some(payload) = self.seal.open(&buf[..len]) {
                    let _ = self.foca.handle_data(&payload, &mut self.runtime);
                }
            }
            let now = Instant::now();
            self.timers.sort_by_key(|(at, _)| *at);
            while self.timers.first().is_some_and(|(at, _)| *at <= now) {
                let (_, timer) = self.timers.remove(0);
                let _ = self.foca.handle_timer(timer, &mut self.runtime);
            }
            self.drain();
            self.members
                .store(self.foca.num_members(), Ordering::Relaxed);
        }
    }

    /// Sends what foca wants sent and keeps the timers it asks for.
    fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            let _ = self
                .socket
                .send_to(&self.seal.seal(&data), to.info.gossip_addr);
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timers.push((Instant::now() + after, timer));
        }
        while self.runtime.to_notify().is_some() {}
    }
}
