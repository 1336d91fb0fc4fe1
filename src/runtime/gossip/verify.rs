//! Proving that a gossip identity's node id is bound to its raft address: a TLS probe of
//! the address ([`TransportTls::probe`]) must meet a certificate for that node id.
//!
//! The gossip task owns one [`Verifier`] when the transport has TLS. Each binding
//! (node id, raft address) of foca's active identities is tracked while an identity
//! carries it:
//! - a new binding is [`Verification::Pending`] until its first probe; a failed probe
//!   makes it [`Verification::Refuted`] and is retried with backoff
//!   ([`RETRY_FIRST`] doubling up to [`RETRY_MAX`]) while the identity stays alive;
//! - a proved binding is [`Verification::Verified`] and probed again every
//!   [`RECHECK_EVERY`], and at once when another binding of the same node id is proved
//!   (the node moved: its old address may now be anyone's); it is refuted after
//!   [`RECHECK_FAILURES`] failed probes in a row, so a node that is briefly slow to
//!   answer does not drop out of the view.
//!
//! Bounded: at most [`MAX_CONCURRENT_PROBES`] probes at once, each within
//! [`PROBE_TIMEOUT`]; at most [`MAX_TRACKED`] bindings (further ones are refuted untried,
//! with a paced log line), and a binding is forgotten as soon as no alive identity
//! carries it.
//!
//! Open: the gossip address is not proved (a probe cannot tell who answers UDP there), so
//! an insider can keep advertising a proved binding at its own gossip address after the
//! node is gone until the next recheck fails, and can displace a member's identity in
//! foca by gossiping a higher bump at that member's own gossip address (the member then
//! looks `Down`; its traffic is never rerouted). It can also hold a departed member in
//! the view by gossiping ever new unproved bindings for it, each pending until its first
//! probe fails (at most [`PROBE_TIMEOUT`]): failure handling is delayed, never misrouted.

use std::collections::HashSet;

use tokio::task::{Id as TaskId, JoinSet};

use super::view::Verification;
use super::*;
use crate::runtime::tls::{ProbeError, TransportTls};

/// Deadline of one probe: TCP connect and TLS handshake together.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Probes running at once; more due probes wait for a free slot.
pub(super) const MAX_CONCURRENT_PROBES: usize = 8;
/// Bindings tracked at once (a cluster of that many nodes, each with a restart in
/// progress, fits twice over); further ones are refuted untried.
pub(super) const MAX_TRACKED: usize = 1024;
/// First delay before probing a refuted binding again.
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest delay between two probes of a refuted binding.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often a proved binding is probed again.
pub(super) const RECHECK_EVERY: Duration = Duration::from_secs(30);
/// Failed probes in a row that refute a proved binding.
pub(super) const RECHECK_FAILURES: u32 = 3;
/// Minimum interval between two log lines about refuted or untracked bindings.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// A node id and the raft address an identity gives it.
pub(super) type Binding = (NodeId, SocketAddr);

/// What a finished probe reports: its binding and the node id the server proved.
pub(super) type ProbeOutcome = (Binding, std::result::Result<NodeId, ProbeError>);

/// The binding of `identity`.
fn binding_of(identity: &GossipIdentity) -> Binding {
    (identity.info.node_id, identity.info.raft_addr)
}

/// What the verifier knows of one binding.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    /// Proved by the last successful probe, and not refuted since.
    verified: bool,
    /// Failed probes since the last successful one.
    failures: u32,
    /// When to probe next; `None` while a probe runs.
    due: Option<Instant>,
}

/// The bindings of foca's active identities and the probes proving them (see the module
/// docs).
pub(super) struct Verifier {
    /// Probes with our certificate.
    tls: Arc<TransportTls>,
    /// Every tracked binding.
    tracked: HashMap<Binding, Tracked>,
    /// Running probes.
    probes: JoinSet<ProbeOutcome>,
    /// The binding of each running probe, to recover it if the probe task fails.
    running: HashMap<TaskId, Binding>,
    /// Paces the log lines about refused bindings (an insider can cause them at will).
    refused_log: ClockedLogPacer,
    /// Where the verifier logs.
    logger: Logger,
}

impl Verifier {
    /// A verifier probing with `tls`.
    pub(super) fn new(tls: Arc<TransportTls>, logger: Logger) -> Verifier {
        Verifier {
            tls,
            tracked: HashMap::new(),
            probes: JoinSet::new(),
            running: HashMap::new(),
            refused_log: ClockedLogPacer::new(REFUSED_LOG_EVERY),
            logger,
        }
    }

    /// What is known of `identity`'s binding.
    pub(super) fn verification(&self, identity: &GossipIdentity) -> Verification {
        self.tracked
            .get(&binding_of(identity))
            .map_or(Verification::Refuted, Tracked::verification)
    }

    /// Tracks the bindings of `active` (but `me`'s), forgets those no identity carries
    /// any more, and starts the probes that are due.
    pub(super) fn track<'a>(
        &mut self,
        active: impl Iterator<Item = &'a GossipIdentity>,
        me: NodeId,
        now: Instant,
    ) {
        let alive: HashSet<Binding> = active
            .filter(|identity| identity.info.node_id != me)
            .map(binding_of)
            .collect();
        self.tracked.retain(|binding, _| alive.contains(binding));
        let mut untracked = 0usize;
        let mut fresh: Vec<Binding> = alive
            .into_iter()
            .filter(|binding| !self.tracked.contains_key(binding))
            .collect();
        fresh.sort_unstable();
        for binding in fresh {
            if self.tracked.len() >= MAX_TRACKED {
                untracked += 1;
                continue;
            }
            let first = Tracked {
                verified: false,
                failures: 0,
                due: Some(now),
            };
            self.tracked.insert(binding, first);
        }
        if untracked > 0 {
            if let Some(suppressed) = self.refused_log.admit() {
                warn!(self.logger, "too many gossip identities to prove; refusing the others";
                    "untracked" => untracked, "max" => MAX_TRACKED,
                    "suppressed_since_last_log" => suppressed);
            }
        }
        self.start_due(now);
    }

    /// Starts the probes that are due, as many as there are free slots: first bindings
    /// never probed (a member joining or moving waits behind no retry of a forgery), then
    /// rechecks of proved ones, then retries of refuted ones; earliest first in each.
    pub(super) fn start_due(&mut self, now: Instant) {
        let free = MAX_CONCURRENT_PROBES.saturating_sub(self.probes.len());
        if free == 0 {
            return;
        }
        let rank = |t: &Tracked| match t.verification() {
            Verification::Pending => 0u8,
            Verification::Verified => 1,
            Verification::Refuted => 2,
        };
        let mut due: Vec<(u8, Instant, Binding)> = self
            .tracked
            .iter()
            .filter_map(|(binding, t)| match t.due {
                Some(at) if at <= now => Some((rank(t), at, *binding)),
                _ => None,
            })
            .collect();
        due.sort_unstable();
        for (_, _, binding) in due.into_iter().take(free) {
            if let Some(t) = self.tracked.get_mut(&binding) {
                t.due = None;
            }
            let tls = self.tls.clone();
            let (node, addr) = binding;
            let handle = self.probes.spawn(async move {
                let proved = tls.probe(addr, node, PROBE_TIMEOUT).await;
                (binding, proved)
            });
            self.running.insert(handle.id(), binding);
        }
    }

    /// When the next probe is due, if a slot is free for it (else a finishing probe
    /// wakes the caller).
    pub(super) fn next_due(&self) -> Option<Instant> {
        if self.probes.len() >= MAX_CONCURRENT_PROBES {
            return None;
        }
        self.tracked.values().filter_map(|t| t.due).min()
    }

    /// How many probes run now.
    #[cfg(test)]
    pub(super) fn running(&self) -> usize {
        self.probes.len()
    }

    /// How many bindings are tracked.
    #[cfg(test)]
    pub(super) fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// When `identity`'s binding is probed next: `None` if untracked, `Some(None)` while
    /// its probe runs.
    #[cfg(test)]
    pub(super) fn due(&self, identity: &GossipIdentity) -> Option<Option<Instant>> {
        self.tracked.get(&binding_of(identity)).map(|t| t.due)
    }

    /// The next finished probe; never resolves while none runs.
    pub(super) async fn next_outcome(&mut self) -> ProbeOutcome {
        loop {
            match self.probes.join_next_with_id().await {
                None => std::future::pending::<()>().await,
                Some(Ok((id, outcome))) => {
                    self.running.remove(&id);
                    return outcome;
                }
                Some(Err(e)) => {
                    // The probe panicked or was cancelled: count it as a failed probe.
                    if let Some(binding) = self.running.remove(&e.id()) {
                        let failed = std::io::Error::other(format!("probe task failed: {e}"));
                        return (binding, Err(ProbeError::Connect(failed)));
                    }
                }
            }
        }
    }

    /// Records a finished probe at `now` and starts the probes now due; returns whether a
    /// binding's [`Verification`] changed (the view must then be recomputed).
    pub(super) fn on_outcome(&mut self, outcome: ProbeOutcome, now: Instant) -> bool {
        let (binding, proved) = outcome;
        let changed = self.record(binding, proved, now);
        self.start_due(now);
        changed
    }

    /// [`Verifier::on_outcome`] without starting probes.
    fn record(
        &mut self,
        binding: Binding,
        proved: std::result::Result<NodeId, ProbeError>,
        now: Instant,
    ) -> bool {
        // A binding forgotten while its probe ran stays forgotten.
        let Some(t) = self.tracked.get_mut(&binding) else {
            return false;
        };
        let (node, addr) = binding;
        let before = t.verification();
        match proved {
            Ok(_) => {
                t.verified = true;
                t.failures = 0;
                t.due = Some(now + RECHECK_EVERY);
            }
            Err(e) => {
                t.failures = t.failures.saturating_add(1);
                if t.verified && t.failures >= RECHECK_FAILURES {
                    t.verified = false;
                }
                let exponent = t.failures.saturating_sub(1).min(16);
                let backoff = RETRY_FIRST.saturating_mul(1 << exponent).min(RETRY_MAX);
                t.due = Some(now + backoff);
                if !t.verified {
                    if let Some(suppressed) = self.refused_log.admit() {
                        warn!(self.logger, "gossip identity refused: its raft address does not prove its node id";
                            "member" => node, "raft_addr" => %addr, "error" => %e,
                            "failures" => t.failures, "suppressed_since_last_log" => suppressed);
                    }
                }
            }
        }
        let after = t.verification();
        if after == Verification::Verified && before != Verification::Verified {
            info!(self.logger, "gossip identity proved: its raft address holds its certificate";
                "member" => node, "raft_addr" => %addr);
            // The node moved here: recheck its other proved addresses now.
            for (other, t) in self.tracked.iter_mut() {
                if other.0 == node && *other != binding && t.verified && t.due.is_some() {
                    t.due = Some(now);
                }
            }
        }
        before != after
    }
}

impl Tracked {
    /// What this state means for the view.
    fn verification(&self) -> Verification {
        if self.verified {
            Verification::Verified
        } else if self.failures == 0 {
            Verification::Pending
        } else {
            Verification::Refuted
        }
    }
}
