//! Checks on a peer's raft message before raft-rs sees it.
//!
//! raft-rs trusts its peers: some values make it panic (a term it cannot increment, a
//! heartbeat committing past the end of the log, entries that do not follow the index they
//! claim to follow), and a message from a replica outside the group can force an election.
//! A forged or corrupted message must cost a log line, never the core, so every message
//! passes [`check`] against what the local replica knows. The checks hold for every message
//! a correct peer sends; they are limits on what a message may claim, not a protocol of
//! their own.

use raft::eraftpb::{Message, MessageType};

use crate::id::ReplicaId;
use crate::log_pacer::LogPacer;

/// Largest term a message may carry at all: far beyond any real group (an election a
/// millisecond for 8,000 years), and far enough from `u64::MAX` that raft's `term + 1`
/// never overflows.
pub(super) const MAX_TERM: u64 = 1 << 48;
/// Largest step above the local replica's term a message may claim. Terms grow by one per
/// election, and pre-vote keeps a partitioned replica from inflating its own.
pub(super) const MAX_TERM_STEP: u64 = 1 << 24;
/// Largest log index a message may name: indexes count entries, and raft adds to them.
pub(super) const MAX_INDEX: u64 = 1 << 62;

/// What the local replica knows, against which a message is checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalView {
    /// The replica's current term.
    pub term: u64,
    /// Index of the last entry in its log.
    pub last_index: u64,
    /// The leader it follows, or 0.
    pub leader: ReplicaId,
    /// Whether the replica has a configuration (false until its first snapshot or entries).
    pub initialized: bool,
}

/// Why a message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Invalid {
    #[error("term {term} is out of range (above {ceiling})")]
    Term { term: u64, ceiling: u64 },
    #[error("an index ({index}) is out of range")]
    Index { index: u64 },
    #[error("a log term ({log_term}) is above the message's term ({term})")]
    LogTerm { log_term: u64, term: u64 },
    #[error("entries do not follow index {index} one by one with non-decreasing terms")]
    Entries { index: u64 },
    #[error("heartbeat commits index {commit} beyond the local log (last index {last})")]
    CommitBeyondLog { commit: u64, last: u64 },
    #[error("acknowledges index {index} beyond the local log (last index {last})")]
    AckBeyondLog { index: u64, last: u64 },
    #[error("{kind:?} from a replica outside the group's configuration")]
    NotAMember { kind: MessageType },
    #[error("leadership transfer from a replica that is not the leader")]
    TimeoutNowNotFromLeader,
}

/// Both checks, as the core makes them: [`check_shape`], then [`check_against`].
pub(crate) fn check(
    msg: &Message,
    local: LocalView,
    is_member: impl Fn(ReplicaId) -> bool,
) -> Result<(), Invalid> {
    check_shape(msg)?;
    check_against(msg, local, is_member)
}

/// What holds of a message whatever replica it is for: made before the message has any
/// effect (before a replica is created for it).
pub(crate) fn check_shape(msg: &Message) -> Result<(), Invalid> {
    check_term(msg, MAX_TERM)?;
    check_indexes(msg)?;
    check_terms_within(msg)
}

/// `msg` against the local replica it is for; `is_member` says whether a replica is in
/// that replica's current configuration.
pub(crate) fn check_against(
    msg: &Message,
    local: LocalView,
    is_member: impl Fn(ReplicaId) -> bool,
) -> Result<(), Invalid> {
    check_term(msg, local.term.saturating_add(MAX_TERM_STEP))?;
    check_against_log(msg, local)?;
    check_sender(msg, local, is_member)
}

/// The term is at most `ceiling`, and never above [`MAX_TERM`].
fn check_term(msg: &Message, ceiling: u64) -> Result<(), Invalid> {
    let ceiling = ceiling.min(MAX_TERM);
    if msg.term > ceiling {
        return Err(Invalid::Term {
            term: msg.term,
            ceiling,
        });
    }
    Ok(())
}

/// Every index the message names is at most [`MAX_INDEX`], and its entries follow
/// `msg.index` one by one.
fn check_indexes(msg: &Message) -> Result<(), Invalid> {
    let snapshot_index = msg.get_snapshot().get_metadata().index;
    let named = [msg.index, msg.commit, msg.reject_hint, snapshot_index];
    if let Some(&index) = named.iter().find(|&&i| i > MAX_INDEX) {
        return Err(Invalid::Index { index });
    }
    let follows = msg
        .entries
        .iter()
        .zip(msg.index + 1..)
        .all(|(entry, expected)| entry.index == expected);
    // A forwarded proposal's entries have no index yet, and a read index request and its
    // response carry their context as an entry without one (all 0).
    let carries_unindexed = matches!(
        msg.get_msg_type(),
        MessageType::MsgPropose | MessageType::MsgReadIndex | MessageType::MsgReadIndexResp
    );
    let unindexed = carries_unindexed && msg.entries.iter().all(|e| e.index == 0);
    if !(follows || unindexed) {
        return Err(Invalid::Entries { index: msg.index });
    }
    Ok(())
}

/// Log terms, entry terms and the snapshot's term are at most the message's term, and the
/// entries' terms do not decrease.
fn check_terms_within(msg: &Message) -> Result<(), Invalid> {
    let snapshot_term = msg.get_snapshot().get_metadata().term;
    let highest = msg
        .entries
        .iter()
        .map(|e| e.term)
        .chain([msg.log_term, snapshot_term])
        .max()
        .unwrap_or(0);
    if highest > msg.term {
        return Err(Invalid::LogTerm {
            log_term: highest,
            term: msg.term,
        });
    }
    let ordered = msg.entries.windows(2).all(|w| w[0].term <= w[1].term)
        && msg
            .entries
            .first()
            .is_none_or(|first| msg.log_term <= first.term);
    if !ordered {
        return Err(Invalid::Entries { index: msg.index });
    }
    Ok(())
}

/// A heartbeat commits nothing past the local log (raft-rs panics), and an append response
/// acknowledges nothing past it (a leader cannot have sent it).
fn check_against_log(msg: &Message, local: LocalView) -> Result<(), Invalid> {
    match msg.get_msg_type() {
        MessageType::MsgHeartbeat if msg.commit > local.last_index => {
            Err(Invalid::CommitBeyondLog {
                commit: msg.commit,
                last: local.last_index,
            })
        }
        MessageType::MsgAppendResponse if !msg.reject && msg.index > local.last_index => {
            Err(Invalid::AckBeyondLog {
                index: msg.index,
                last: local.last_index,
            })
        }
        _ => Ok(()),
    }
}

/// Messages that start elections or enter the log come from members of the group, and a
/// leadership transfer only from the leader.
fn check_sender(
    msg: &Message,
    local: LocalView,
    is_member: impl Fn(ReplicaId) -> bool,
) -> Result<(), Invalid> {
    let kind = msg.get_msg_type();
    if kind == MessageType::MsgTimeoutNow && (msg.from != local.leader || msg.term != local.term) {
        return Err(Invalid::TimeoutNowNotFromLeader);
    }
    let members_only = matches!(
        kind,
        MessageType::MsgPropose
            | MessageType::MsgReadIndex
            | MessageType::MsgRequestVote
            | MessageType::MsgRequestPreVote
    );
    // An uninitialized replica has no configuration to check against yet.
    if members_only && local.initialized && !is_member(msg.from) {
        return Err(Invalid::NotAMember { kind });
    }
    Ok(())
}

/// Interval between two log lines about refused peer traffic.
const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Counts refused peer traffic and paces its log lines.
#[derive(Debug)]
pub(super) struct Refusals {
    /// Refusals since the node started.
    pub total: u64,
    log: LogPacer,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            total: 0,
            log: LogPacer::new(REFUSAL_LOG_INTERVAL),
        }
    }
}

impl Refusals {
    /// Counts a refusal at `now_ms`; `Some(n)` when it should be logged, with the `n`
    /// refusals left unlogged before it.
    pub(super) fn note(&mut self, now_ms: u64) -> Option<u64> {
        self.total += 1;
        self.log.admit(now_ms)
    }
}

#[cfg(test)]
mod tests;
