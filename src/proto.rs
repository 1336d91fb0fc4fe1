//! Wire messages generated from `proto/copycat.proto`.
#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/copycat.rs"));

/// Version of the wire protocol, sent in every `Hello` and gossip packet.
pub const PROTOCOL_VERSION: u32 = 1;

impl Batch {
    /// Appends every field of `other` (repeated fields encode additively, so the merged
    /// batch's encoded length is the sum of both).
    pub fn absorb(&mut self, other: Batch) {
        // Destructured so that a field added to `Batch` cannot be forgotten here.
        let Batch {
            messages,
            joins,
            chunks,
            acks,
            snapshots_needed,
            gone,
            wake,
        } = other;
        self.messages.extend(messages);
        self.joins.extend(joins);
        self.chunks.extend(chunks);
        self.acks.extend(acks);
        self.snapshots_needed.extend(snapshots_needed);
        self.gone.extend(gone);
        self.wake.extend(wake);
    }
}
