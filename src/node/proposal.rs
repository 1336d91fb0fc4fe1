//! Proposals waiting to be proposed (no replica or leader yet) or to commit.

use crate::error::{Error, Result};
use crate::id::{DataStructureId, NodeId};
use crate::node::subscription::SubId;

/// Completion of an acknowledged proposal: the commit index, or why it failed.
pub(crate) type Ack = Box<dyn FnOnce(Result<u64>) + Send>;

/// A proposal and who waits for it.
pub(crate) struct Proposal {
    pub group: DataStructureId,
    pub data: Vec<u8>,
    pub sub: Option<SubId>,
    pub ack: Option<Ack>,
    pub deadline_ms: u64,
}

/// A proposal handed to raft, waiting to be applied.
pub(crate) struct InFlight {
    pub group: DataStructureId,
    /// Kept to propose again if the leader changes before it is applied.
    pub data: Vec<u8>,
    pub sub: Option<SubId>,
    pub ack: Option<Ack>,
    pub deadline_ms: u64,
}

/// The context raft carries with an entry: the proposing node and its sequence number, so
/// the proposer recognizes its entry when it is applied.
///
/// A proposal forwarded to a leader that then fails is lost without a trace, so when a
/// group's leader changes its proposer proposes it again as a *retry*, which also carries
/// `after`: the proposer's applied index at that moment. Any earlier copy of the same
/// proposal must have an index above `after` (otherwise the proposer would have applied
/// it and not retried), so whoever applies the retry finds out whether it is a duplicate
/// by scanning the log between `after` and the retry: a deterministic function of the log,
/// the same on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProposalContext {
    pub node: NodeId,
    pub seq: u64,
    /// For a retry, the proposer's applied index when it retried.
    pub retry_after: Option<u64>,
}

impl ProposalContext {
    /// Encodes the context: 16 bytes, or 24 for a retry.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(24);
        ctx.extend_from_slice(&self.node.to_be_bytes());
        ctx.extend_from_slice(&self.seq.to_be_bytes());
        if let Some(after) = self.retry_after {
            ctx.extend_from_slice(&after.to_be_bytes());
        }
        ctx
    }

    /// Parses an entry's context; `None` for entries that are not proposals.
    pub(crate) fn decode(ctx: &[u8]) -> Option<Self> {
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(ctx.get(i..i + 8)?.try_into().ok()?))
        };
        let retry_after = match ctx.len() {
            16 => None,
            24 => Some(word(16)?),
            _ => return None,
        };
        Some(ProposalContext {
            node: word(0)?,
            seq: word(8)?,
            retry_after,
        })
    }

    /// Whether two contexts name the same proposal.
    pub(crate) fn same_proposal(&self, other: &ProposalContext) -> bool {
        self.node == other.node && self.seq == other.seq
    }
}

/// Completes an ack, if there is one.
pub(crate) fn complete(ack: Option<Ack>, result: Result<u64>) {
    if let Some(ack) = ack {
        ack(result);
    }
}

/// A failure for `ack`'s waiter.
pub(crate) fn fail(ack: Option<Ack>, error: Error) {
    complete(ack, Err(error));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_round_trips_and_rejects_other_lengths() {
        let first = ProposalContext {
            node: 7,
            seq: 9,
            retry_after: None,
        };
        let retry = ProposalContext {
            retry_after: Some(40),
            ..first
        };
        assert_eq!(ProposalContext::decode(&first.encode()), Some(first));
        assert_eq!(ProposalContext::decode(&retry.encode()), Some(retry));
        assert!(first.same_proposal(&retry));
        assert_eq!(ProposalContext::decode(&[]), None);
        assert_eq!(ProposalContext::decode(&[0; 17]), None);
    }
}
