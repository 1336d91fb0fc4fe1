//! Limits on what peers can make an accepted connection cost: how many connections, how
//! long a connection may stay silent or take over a frame, how much memory frames being
//! received may hold, and how many log lines refused connections write.
//!
//! A correct peer keeps one connection to this node and sends whole frames; everything
//! else is bounded here so that many connections, idle ones, or ones that start large
//! frames and never finish them cannot exhaust file descriptors, memory or the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::id::NodeId;
use crate::log_pacer::ClockedLogPacer;
use crate::runtime::frame::BUDGET_UNIT_BYTES;

/// Largest first frame (the `Hello`): before a peer is identified it cannot make this
/// node hold more than this for it.
pub(super) const MAX_HELLO_BYTES: usize = 4096;

/// The bounds of one transport's accepted connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TransportLimits {
    /// Accepted connections open at once; beyond, new ones are closed at once (default
    /// 1024: a cluster of that many nodes needs one each).
    pub connections: usize,
    /// Connections one peer node may hold open at once (default 4: it needs one, and a
    /// reconnect may overlap the connection it replaces).
    pub per_peer: usize,
    /// Longest a connection may take to deliver its next whole frame, silence included
    /// (default 120 s): idle connections and peers that never finish a frame are closed;
    /// a peer's dialer reconnects when it has something to send.
    pub frame_timeout: Duration,
    /// Memory that frames being received on all connections may hold together (default
    /// 256 MiB, and never less than two of the largest frames).
    pub frame_budget_bytes: usize,
    /// Interval between two log lines about refused or failed connections (default 1 s).
    pub log_interval: Duration,
    /// A connection this node dialed that sent nothing for this long is closed, and
    /// opened again when there is something to send (default 60 s: well before the
    /// peer's `frame_timeout` would close it).
    pub idle_close: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            connections: 1024,
            per_peer: 4,
            frame_timeout: Duration::from_secs(120),
            frame_budget_bytes: 256 << 20,
            log_interval: Duration::from_secs(1),
            idle_close: Duration::from_secs(60),
        }
    }
}

/// The limits shared by every accepted connection of one transport.
pub(super) struct InboundLimits {
    pub bounds: TransportLimits,
    connections: Arc<Semaphore>,
    per_peer: Mutex<HashMap<NodeId, usize>>,
    /// Permits of [`BUDGET_UNIT_BYTES`] for frames being received.
    pub frame_budget: Semaphore,
    /// Paces the log lines of refused and failed connections.
    pub log: LogPacer,
}

impl InboundLimits {
    /// `bounds` for a transport whose largest frame is `max_frame_bytes`.
    pub(super) fn new(bounds: TransportLimits, max_frame_bytes: usize) -> Self {
        let budget = bounds
            .frame_budget_bytes
            .max(max_frame_bytes.saturating_mul(2));
        InboundLimits {
            bounds,
            connections: Arc::new(Semaphore::new(bounds.connections)),
            per_peer: Mutex::default(),
            frame_budget: Semaphore::new(budget / BUDGET_UNIT_BYTES),
            log: LogPacer::new(bounds.log_interval),
        }
    }

    /// A slot for a newly accepted connection, or `None` when all are taken.
    pub(super) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// A slot for one more connection of `peer`, or `None` when it holds the most it may;
    /// the slot is given back when dropped.
    pub(super) fn admit_peer(self: &Arc<Self>, peer: NodeId) -> Option<PeerSlot> {
        let mut per_peer = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let held = per_peer.entry(peer).or_insert(0);
        if *held >= self.bounds.per_peer {
            return None;
        }
        *held += 1;
        Some(PeerSlot {
            limits: self.clone(),
            peer,
        })
    }
}

/// One connection's place among its peer's (see [`InboundLimits::admit_peer`]).
pub(super) struct PeerSlot {
    limits: Arc<InboundLimits>,
    peer: NodeId,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut per_peer = self
            .limits
            .per_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(held) = per_peer.get_mut(&self.peer) {
            *held -= 1;
            if *held == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}

/// Paces the log lines of refused and failed connections, shared by every connection.
pub(super) struct LogPacer(Mutex<ClockedLogPacer>);

impl LogPacer {
    fn new(interval: Duration) -> Self {
        LogPacer(Mutex::new(ClockedLogPacer::new(interval)))
    }

    /// See [`ClockedLogPacer::admit`].
    pub(super) fn admit(&self) -> Option<u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).admit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_and_peer_slots_are_bounded_and_given_back() {
        let bounds = TransportLimits::default();
        let limits = Arc::new(InboundLimits::new(bounds, 1 << 20));
        let held: Vec<_> = (0..bounds.connections)
            .map(|_| limits.admit().unwrap())
            .collect();
        assert!(limits.admit().is_none());
        drop(held);
        assert!(limits.admit().is_some());

        let slots: Vec<_> = (0..bounds.per_peer)
            .map(|_| limits.admit_peer(7).unwrap())
            .collect();
        assert!(limits.admit_peer(7).is_none());
        assert!(
            limits.admit_peer(8).is_some(),
            "another peer has its own slots"
        );
        drop(slots);
        assert!(limits.admit_peer(7).is_some());
    }

    #[test]
    fn the_frame_budget_covers_two_of_the_largest_frames() {
        let limits = InboundLimits::new(TransportLimits::default(), 512 << 20);
        assert_eq!(
            limits.frame_budget.available_permits(),
            (1024 << 20) / BUDGET_UNIT_BYTES
        );
    }
}
