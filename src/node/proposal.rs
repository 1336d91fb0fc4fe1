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
    pub sub: Option<SubId>,
    pub ack: Option<Ack>,
    pub deadline_ms: u64,
}

/// The context raft carries with an entry: the proposing node and its sequence number, so
/// the proposer recognizes its entry when it is applied.
pub(crate) fn proposal_context(node: NodeId, seq: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&node.to_be_bytes());
    ctx.extend_from_slice(&seq.to_be_bytes());
    ctx
}

/// Parses a context made by [`proposal_context`].
pub(crate) fn parse_context(ctx: &[u8]) -> Option<(NodeId, u64)> {
    let node = u64::from_be_bytes(ctx.get(0..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(ctx.get(8..16)?.try_into().ok()?);
    (ctx.len() == 16).then_some((node, seq))
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
        assert_eq!(parse_context(&proposal_context(7, 9)), Some((7, 9)));
        assert_eq!(parse_context(&[]), None);
        assert_eq!(parse_context(&[0; 17]), None);
    }
}
