//! Security settings: who may join the cluster and what an eavesdropper sees.
//!
//! copycat secures its two network edges; the node core behind them still validates every
//! message it steps.
//!
//! - **TCP (raft traffic)**: TLS 1.3 with mutual authentication ([`TlsIdentity`]). Every
//!   node holds a certificate signed by the cluster's CA; a peer without one cannot finish
//!   the handshake. The certificate names the node's id (a DNS subject alternative name
//!   `<node id>.node.copycat`, see [`node_certificate_name`]): an acceptor takes the sender
//!   of every batch from the verified client certificate and refuses a `Hello` that claims
//!   another id, and a dialer refuses a server whose certificate does not name the node it
//!   meant to reach. So one member cannot speak for another, and gossip that points node
//!   X's address elsewhere cannot receive X's traffic.
//! - **UDP (gossip)**: every datagram is sealed with XChaCha20-Poly1305 under the primary
//!   key of a [`Keyring`], with the cluster name as associated data. A datagram that opens
//!   under none of the keyring's keys is dropped (and counted) before the gossip layer sees
//!   it. Keys rotate on a running cluster without losing membership: install the new key on
//!   every node, make it primary on every node, then remove the old one on every node
//!   (`CopyCat::install_gossip_key`, `use_gossip_key`, `remove_gossip_key`).
//!
//! [`Security::default`] is plaintext on both edges: the cluster is then open to anyone who
//! can reach its ports, and every node logs a warning saying so at start.

mod keyring;
mod tls;

use std::path::Path;

pub use keyring::{GossipKey, Keyring, GOSSIP_KEY_BYTES};
pub use tls::{node_certificate_name, TlsIdentity, NODE_NAME_SUFFIX};

pub(crate) use tls::{node_id_of_certificate, provider as tls_provider};

use crate::error::Result;

/// Counters of traffic a node refused ([`crate::CopyCat::security_stats`]), since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SecurityStats {
    /// Gossip datagrams that opened under a key of the keyring (and went on to the gossip
    /// layer). Always 0 without a keyring.
    pub gossip_opened: u64,
    /// Gossip datagrams dropped because they opened under no key of the keyring (another
    /// key or cluster, plaintext, tampered with, truncated). Always 0 without a keyring.
    pub gossip_rejected: u64,
    /// Inbound TCP connections refused by TLS: failed handshakes (no certificate, one
    /// from another CA, not TLS, too slow) and `Hello`s claiming another node id than the
    /// certificate names. Always 0 without TLS.
    pub connections_refused: u64,
    /// Probes of gossip identities' raft addresses that did not prove the identity's node
    /// id: a forged identity (another node's id at someone else's address, or a made-up
    /// id), or a member that could not be reached over TCP in time. Every failed probe
    /// counts, retries included; such identities never enter the membership view. Always
    /// 0 without TLS.
    pub gossip_identities_refused: u64,
}

/// The security settings of a node ([`crate::Config::security`]).
///
/// Each part is independent; `None` leaves that edge in plaintext. Every node of a cluster
/// needs the same choice: a TLS node and a plaintext node cannot talk, nor can a node that
/// seals gossip and one that does not.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// TLS for the TCP transport: this node's certificate and key, and the cluster's CA.
    /// With it, the node's id is the one its certificate names (see [`TlsIdentity`]).
    pub tls: Option<TlsIdentity>,
    /// The keys gossip datagrams are sealed (primary) and opened (all) with.
    pub gossip_keys: Option<Keyring>,
}

impl Security {
    /// TLS from the PEM files `ca`, `cert` and `key`, and gossip sealed under the key in
    /// `cluster_key` (64 hex digits, see [`GossipKey::from_file`]).
    ///
    /// Fails with [`crate::Error::Credentials`] naming the file and the problem: missing or
    /// unreadable file, no PEM item of the right kind, a key that does not match the
    /// certificate, a certificate not signed by the CA or that names no node id.
    pub fn from_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        cluster_key: impl AsRef<Path>,
    ) -> Result<Security> {
        Ok(Security {
            tls: Some(TlsIdentity::from_files(ca, cert, key)?),
            gossip_keys: Some(Keyring::new(GossipKey::from_file(cluster_key)?)),
        })
    }

    /// Whether both edges are secured.
    pub fn is_complete(&self) -> bool {
        self.tls.is_some() && self.gossip_keys.is_some()
    }
}
