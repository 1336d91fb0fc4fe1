//! Sealing of gossip datagrams: XChaCha20-Poly1305 under the node's live keyring.
//!
//! A sealed datagram is `MARKER | nonce (24 bytes) | ciphertext | tag (16 bytes)`; the
//! ciphertext is the whole plaintext envelope (version, cluster name, foca's packet), and
//! the associated data is the marker and the cluster name, so a datagram sealed for
//! another cluster under the same key does not open either. The nonce is random per
//! datagram: XChaCha's 192-bit nonces make random nonces safe for any number of datagrams
//! under one key (with ChaCha20-Poly1305's 96 bits, a collision becomes likely after about
//! 2^32 datagrams).
//!
//! The keyring changes while the node runs (rotation): the gossip task reads it for every
//! datagram, the public API writes it. Both take a short lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::security::Keyring;

/// First byte of every sealed datagram: tells a sealed datagram from a plaintext envelope
/// (whose first byte is a protobuf tag, 0x08) in logs, and leaves room for another format.
const MARKER: u8 = 0xC5;
/// Bytes of an XChaCha20-Poly1305 nonce.
const NONCE_BYTES: usize = 24;
/// Bytes of a Poly1305 tag.
const TAG_BYTES: usize = 16;
/// Bytes sealing adds to a datagram.
pub(crate) const SEAL_OVERHEAD: usize = 1 + NONCE_BYTES + TAG_BYTES;

/// Why a datagram did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Shorter than the seal's overhead.
    #[error("too short to be sealed ({0} bytes)")]
    TooShort(usize),
    /// Does not start with the marker: a plaintext peer, or junk.
    #[error("not sealed (first byte {0:#04x}): a peer without gossip encryption?")]
    NotSealed(u8),
    /// No key of the keyring opens it: another key, another cluster, or tampered with.
    #[error("opens under no key of the keyring (another key or cluster, or tampered with)")]
    NoKey,
}

/// A node's live gossip keyring and what seals and opens with it.
pub(crate) struct GossipSeal {
    /// Associated data of every datagram: the marker, then the cluster name.
    aad: Vec<u8>,
    /// The keys; changed by the keyring operations of the public API.
    keyring: RwLock<Keyring>,
    /// Datagrams that opened.
    opened: AtomicU64,
    /// Datagrams dropped because they did not open.
    rejected: AtomicU64,
}

impl GossipSeal {
    /// Seals and opens for `cluster` with `keyring`.
    pub(crate) fn new(cluster: &str, keyring: Keyring) -> GossipSeal {
        let mut aad = Vec::with_capacity(1 + cluster.len());
        aad.push(MARKER);
        aad.extend_from_slice(cluster.as_bytes());
        GossipSeal {
            aad,
            keyring: RwLock::new(keyring),
            opened: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Reads the keyring (never poisoned for good: a keyring is always consistent).
    pub(crate) fn keyring(&self) -> RwLockReadGuard<'_, Keyring> {
        self.keyring.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the keyring.
    pub(crate) fn keyring_mut(&self) -> RwLockWriteGuard<'_, Keyring> {
        self.keyring.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `plaintext` sealed under the primary key into `out` (cleared first).
    pub(crate) fn seal(&self, plaintext: &[u8], out: &mut Vec<u8>) {
        let mut nonce = XNonce::default();
        rand::thread_rng().fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new(self.keyring().primary().as_bytes().into());
        let payload = Payload {
            msg: plaintext,
            aad: &self.aad,
        };
        out.clear();
        out.push(MARKER);
        out.extend_from_slice(&nonce);
        // Encryption fails only past the AEAD's length limit (256 GiB), not for a datagram.
        if let Ok(sealed) = cipher.encrypt(&nonce, payload) {
            out.extend_from_slice(&sealed);
        }
    }

    /// The plaintext of a sealed `datagram`, trying every key (primary first); counts a
    /// datagram that opens and one that does not.
    pub(crate) fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, OpenError> {
        let opened = self.try_open(datagram);
        let counter = match opened {
            Ok(_) => &self.opened,
            Err(_) => &self.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        opened
    }

    /// [`GossipSeal::open`] without the counting.
    fn try_open(&self, datagram: &[u8]) -> Result<Vec<u8>, OpenError> {
        if datagram.len() < SEAL_OVERHEAD {
            return Err(OpenError::TooShort(datagram.len()));
        }
        if datagram[0] != MARKER {
            return Err(OpenError::NotSealed(datagram[0]));
        }
        let nonce = XNonce::from_slice(&datagram[1..1 + NONCE_BYTES]);
        let sealed = &datagram[1 + NONCE_BYTES..];
        let keyring = self.keyring();
        for key in keyring.keys() {
            let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
            let payload = Payload {
                msg: sealed,
                aad: &self.aad,
            };
            if let Ok(plaintext) = cipher.decrypt(nonce, payload) {
                return Ok(plaintext);
            }
        }
        Err(OpenError::NoKey)
    }

    /// How many datagrams opened so far.
    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// How many datagrams did not open so far.
    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{GossipKey, GOSSIP_KEY_BYTES};

    fn key(byte: u8) -> GossipKey {
        GossipKey::from_bytes([byte; GOSSIP_KEY_BYTES])
    }

    fn sealed(seal: &GossipSeal, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        seal.seal(plaintext, &mut out);
        out
    }

    #[test]
    fn seals_and_opens_with_a_fresh_nonce_each_time() {
        let seal = GossipSeal::new("c", Keyring::new(key(1)));
        let a = sealed(&seal, b"hello");
        let b = sealed(&seal, b"hello");
        assert_eq!(a.len(), b"hello".len() + SEAL_OVERHEAD);
        assert_ne!(a, b, "random nonces");
        assert_eq!(seal.open(&a).unwrap(), b"hello");
        assert_eq!(seal.open(&b).unwrap(), b"hello");
        assert_eq!(seal.rejected(), 0);
    }

    #[test]
    fn wrong_key_or_cluster_is_rejected_and_counted() {
        let seal = GossipSeal::new("c", Keyring::new(key(1)));
        let other_key = GossipSeal::new("c", Keyring::new(key(2)));
        let other_cluster = GossipSeal::new("d", Keyring::new(key(1)));
        assert_eq!(other_key.open(&sealed(&seal, b"x")), Err(OpenError::NoKey));
        assert_eq!(
            other_cluster.open(&sealed(&seal, b"x")),
            Err(OpenError::NoKey)
        );
        assert_eq!(other_key.rejected(), 1);
        assert_eq!(other_cluster.rejected(), 1);
    }

    #[test]
    fn truncated_tampered_or_plaintext_datagrams_are_rejected() {
        let seal = GossipSeal::new("c", Keyring::new(key(1)));
        let good = sealed(&seal, b"some gossip");
        assert_eq!(seal.open(&good[..10]), Err(OpenError::TooShort(10)));
        assert_eq!(seal.open(&good[..good.len() - 1]), Err(OpenError::NoKey));
        for at in [0, 1, 30, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert!(seal.open(&bad).is_err(), "flipped byte {at}");
        }
        let plaintext = [0x08u8; 64];
        assert_eq!(seal.open(&plaintext), Err(OpenError::NotSealed(0x08)));
        assert_eq!(seal.rejected(), 7);
        assert_eq!(seal.open(&good).unwrap(), b"some gossip");
    }

    #[test]
    fn rotation_keeps_old_datagrams_open_until_the_old_key_is_removed() {
        let seal = GossipSeal::new("c", Keyring::new(key(1)));
        let old = sealed(&seal, b"old");
        seal.keyring_mut().install(key(2));
        assert_eq!(seal.open(&old).unwrap(), b"old");
        seal.keyring_mut().use_key(&key(2)).unwrap();
        let new = sealed(&seal, b"new");
        assert_eq!(seal.open(&old).unwrap(), b"old", "old key still installed");
        // A node that only installed the new key (not yet using it) opens both.
        let laggard = GossipSeal::new("c", Keyring::new(key(1)));
        laggard.keyring_mut().install(key(2));
        assert_eq!(laggard.open(&new).unwrap(), b"new");
        seal.keyring_mut().remove(&key(1)).unwrap();
        assert_eq!(seal.open(&old), Err(OpenError::NoKey));
        assert_eq!(seal.open(&new).unwrap(), b"new");
    }
}
