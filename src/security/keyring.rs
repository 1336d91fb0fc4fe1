//! The gossip keyring: the keys gossip datagrams are sealed and opened with.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::error::{Error, Result};

/// Length of a gossip key: 256 bits.
pub const GOSSIP_KEY_BYTES: usize = 32;

/// Associated data of the fingerprint computation, so a fingerprint never equals a tag of
/// a real datagram.
const FINGERPRINT_CONTEXT: &[u8] = b"copycat gossip key fingerprint";

/// A 256-bit key that seals gossip datagrams (XChaCha20-Poly1305).
///
/// Its text form (files, [`GossipKey::to_hex`], [`FromStr`]) is 64 hex digits. `Debug`
/// shows only its fingerprint, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct GossipKey([u8; GOSSIP_KEY_BYTES]);

impl GossipKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> GossipKey {
        let mut bytes = [0u8; GOSSIP_KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        GossipKey(bytes)
    }

    /// The key with these bytes.
    pub fn from_bytes(bytes: [u8; GOSSIP_KEY_BYTES]) -> GossipKey {
        GossipKey(bytes)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; GOSSIP_KEY_BYTES] {
        &self.0
    }

    /// The key as 64 lowercase hex digits (the file format).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a key file: 64 hex digits, surrounding whitespace ignored.
    ///
    /// Fails with [`Error::GossipKey`] naming the file: missing, unreadable, or not a key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<GossipKey> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::GossipKey(format!("cannot read key file {}: {e}", path.display()))
        })?;
        text.parse().map_err(|e: Error| {
            Error::GossipKey(format!("key file {}: {}", path.display(), inner(&e)))
        })
    }

    /// A short public name for the key (8 hex digits), for logs and operators: derived
    /// from the key by the AEAD itself, it reveals nothing about the key.
    pub fn fingerprint(&self) -> String {
        let cipher = XChaCha20Poly1305::new(&self.0.into());
        let payload = Payload {
            msg: &[],
            aad: FINGERPRINT_CONTEXT,
        };
        match cipher.encrypt(&XNonce::default(), payload) {
            Ok(tag) => tag.iter().take(4).map(|b| format!("{b:02x}")).collect(),
            // Not reachable: an empty message is within every AEAD limit.
            Err(_) => "????????".to_string(),
        }
    }
}

/// The message of a [`Error::GossipKey`], without its prefix.
fn inner(e: &Error) -> String {
    match e {
        Error::GossipKey(msg) => msg.clone(),
        other => other.to_string(),
    }
}

impl FromStr for GossipKey {
    type Err = Error;

    /// Parses 64 hex digits (surrounding whitespace ignored).
    fn from_str(text: &str) -> Result<GossipKey> {
        let text = text.trim();
        let bad = || {
            Error::GossipKey(format!(
                "a gossip key is {} hex digits; got {} characters",
                GOSSIP_KEY_BYTES * 2,
                text.chars().count()
            ))
        };
        if text.len() != GOSSIP_KEY_BYTES * 2 || !text.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; GOSSIP_KEY_BYTES];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(GossipKey(bytes))
    }
}

impl fmt::Debug for GossipKey {
    /// The fingerprint only: keys never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GossipKey({})", self.fingerprint())
    }
}

/// The keys of the gossip layer: one primary key seals every datagram sent, and every key
/// (primary and secondary) is tried to open a datagram received.
///
/// Rotation on a running cluster, memberlist-style, one step at a time on every node
/// before the next step starts anywhere: [`Keyring::install`] the new key (every node
/// can now open datagrams sealed under it), [`Keyring::use_key`] it (nodes seal with it;
/// the others still open it), then [`Keyring::remove`] the old key. Membership holds
/// throughout, since at every moment every node can open what every other node seals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    /// Seals outgoing datagrams; also opens.
    primary: GossipKey,
    /// Only open incoming datagrams; never contains `primary`.
    secondary: Vec<GossipKey>,
}

impl Keyring {
    /// A keyring whose only key is `primary`.
    pub fn new(primary: GossipKey) -> Keyring {
        Keyring {
            primary,
            secondary: Vec::new(),
        }
    }

    /// The key datagrams are sealed with.
    pub fn primary(&self) -> &GossipKey {
        &self.primary
    }

    /// Every key, primary first: the order datagrams are opened in.
    pub fn keys(&self) -> impl Iterator<Item = &GossipKey> {
        std::iter::once(&self.primary).chain(self.secondary.iter())
    }

    /// Whether `key` is in the keyring.
    pub fn contains(&self, key: &GossipKey) -> bool {
        self.keys().any(|k| k == key)
    }

    /// Adds `key` as a secondary key (it opens datagrams, it does not seal them). Installing
    /// a key already there changes nothing.
    pub fn install(&mut self, key: GossipKey) {
        if !self.contains(&key) {
            self.secondary.push(key);
        }
    }

    /// Makes the installed `key` the primary; the former primary stays as a secondary key.
    ///
    /// Fails with [`Error::GossipKey`] if `key` is not installed (nothing changes):
    /// install it first, on every node.
    pub fn use_key(&mut self, key: &GossipKey) -> Result<()> {
        if *key == self.primary {
            return Ok(());
        }
        let Some(at) = self.secondary.iter().position(|k| k == key) else {
            return Err(Error::GossipKey(format!(
                "key {} is not installed: install it (on every node) before using it",
                key.fingerprint()
            )));
        };
        let former = std::mem::replace(&mut self.primary, self.secondary.remove(at));
        self.secondary.push(former);
        Ok(())
    }

    /// Removes the secondary `key`; removing a key that is not there changes nothing.
    ///
    /// Fails with [`Error::GossipKey`] if `key` is the primary (nothing changes): use
    /// another key first.
    pub fn remove(&mut self, key: &GossipKey) -> Result<()> {
        if *key == self.primary {
            return Err(Error::GossipKey(format!(
                "key {} is the primary key: use another key before removing it",
                key.fingerprint()
            )));
        }
        self.secondary.retain(|k| k != key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> GossipKey {
        GossipKey::from_bytes([byte; GOSSIP_KEY_BYTES])
    }

    #[test]
    fn hex_round_trips_and_bad_text_is_refused() {
        let k = GossipKey::generate();
        assert_eq!(k.to_hex().parse::<GossipKey>().unwrap(), k);
        assert_eq!(
            format!("  {}\n", k.to_hex()).parse::<GossipKey>().unwrap(),
            k
        );
        assert!("abcd".parse::<GossipKey>().is_err());
        assert!("zz".repeat(32).parse::<GossipKey>().is_err());
        assert!("é".repeat(32).parse::<GossipKey>().is_err());
    }

    #[test]
    fn debug_shows_the_fingerprint_not_the_key() {
        let k = key(7);
        let shown = format!("{k:?}");
        assert!(!shown.contains(&k.to_hex()[..16]), "{shown}");
        assert!(shown.contains(&k.fingerprint()));
        assert_ne!(key(7).fingerprint(), key(8).fingerprint());
    }

    #[test]
    fn key_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.key");
        let err = GossipKey::from_file(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.key"), "{err}");
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "not a key").unwrap();
        let err = GossipKey::from_file(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.key") && err.contains("64 hex digits"),
            "{err}"
        );
    }

    #[test]
    fn rotation_steps() {
        let mut ring = Keyring::new(key(1));
        assert!(ring.use_key(&key(2)).is_err(), "not installed yet");
        ring.install(key(2));
        ring.install(key(2));
        assert_eq!(ring.keys().count(), 2);
        assert_eq!(ring.primary(), &key(1));
        ring.use_key(&key(2)).unwrap();
        assert_eq!(ring.primary(), &key(2));
        assert!(ring.contains(&key(1)));
        assert!(ring.remove(&key(2)).is_err(), "the primary stays");
        ring.remove(&key(1)).unwrap();
        ring.remove(&key(1)).unwrap();
        assert_eq!(ring.keys().cloned().collect::<Vec<_>>(), vec![key(2)]);
    }
}
