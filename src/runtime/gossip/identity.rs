//! The identity foca gossips (node metadata plus a bump counter) and the foca
//! configuration.

use super::*;

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
    pub(super) fn new(info: NodeInfo) -> Self {
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
    pub(super) fn placeholder(addr: SocketAddr) -> Self {
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
    pub(super) fn conflict_key(&self) -> (u64, NodeId, SocketAddr, SocketAddr, &str) {
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
///   cluster name) and the seal, so wrapped datagrams stay under the MTU (the seal is
///   counted even when gossip is plaintext: every node then agrees on the size).
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

/// Bytes the [`GossipPacket`] envelope and the seal add around a foca packet of up to
/// [`MAX_DATAGRAM`] bytes.
pub(super) fn envelope_overhead(cluster: &str) -> usize {
    let header = GossipPacket {
        version: PROTOCOL_VERSION,
        cluster: cluster.to_owned(),
        payload: Vec::new(),
    };
    // Payload field: one tag byte plus its length prefix.
    header.encoded_len() + 1 + prost::length_delimiter_len(MAX_DATAGRAM) + SEAL_OVERHEAD
}
