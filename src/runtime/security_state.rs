//! What the public API reaches of a running node's security: the live gossip keyring and
//! the counters of refused traffic.

use std::sync::Arc;

use slog::{info, Logger};

use crate::error::{Error, Result};
use crate::runtime::gossip_seal::GossipSeal;
use crate::runtime::tls::TransportTls;
use crate::security::{Keyring, SecurityStats};

/// A running node's security edges, shared by its handles.
#[derive(Clone)]
pub(crate) struct SecurityState {
    /// The gossip seal, if gossip is encrypted.
    pub(crate) seal: Option<Arc<GossipSeal>>,
    /// The transport's TLS, if configured.
    pub(crate) tls: Option<Arc<TransportTls>>,
    /// Where keyring changes are logged.
    pub(crate) logger: Logger,
}

impl SecurityState {
    /// The keyring as it is now; `None` when gossip is plaintext.
    pub(crate) fn keyring(&self) -> Option<Keyring> {
        self.seal.as_ref().map(|seal| seal.keyring().clone())
    }

    /// Applies `change` (named `what` in the log) to the live keyring; the next datagram
    /// sent or received already uses the result.
    ///
    /// Fails with [`Error::GossipKey`] when gossip is plaintext, or with `change`'s error
    /// (then nothing changed).
    pub(crate) fn update_keyring(
        &self,
        what: &str,
        change: impl FnOnce(&mut Keyring) -> Result<()>,
    ) -> Result<()> {
        let Some(seal) = &self.seal else {
            return Err(Error::GossipKey(
                "gossip is not encrypted on this node (Config::security.gossip_keys is None)"
                    .to_string(),
            ));
        };
        let mut keyring = seal.keyring_mut();
        change(&mut keyring)?;
        info!(self.logger, "gossip keyring changed"; "operation" => what,
            "primary" => keyring.primary().fingerprint(), "keys" => keyring.keys().count());
        Ok(())
    }

    /// The counters of traffic refused so far.
    pub(crate) fn stats(&self) -> SecurityStats {
        SecurityStats {
            gossip_opened: self.seal.as_ref().map_or(0, |seal| seal.opened()),
            gossip_rejected: self.seal.as_ref().map_or(0, |seal| seal.rejected()),
            connections_refused: self.tls.as_ref().map_or(0, |tls| tls.refused()),
            gossip_identities_refused: self.tls.as_ref().map_or(0, |tls| tls.probes_failed()),
        }
    }
}
