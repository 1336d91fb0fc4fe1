//! The metrics a node emits, through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! copycat installs no recorder and no exporter: an application that wants the figures
//! installs one (for example `metrics-exporter-prometheus`) before it starts its nodes;
//! without one every emission is a no-op. Names follow Prometheus conventions; labels are
//! few and bounded (no per-group label), so a node with thousands of groups exports a
//! handful of series.
//!
//! | name | kind | what |
//! |---|---|---|
//! | `copycat_groups_hosted` | gauge | replicas on this node |
//! | `copycat_groups_led` | gauge | replicas on this node that lead their group |
//! | `copycat_groups_hibernating` | gauge | replicas hibernating (not ticked) |
//! | `copycat_leader_changes_total` | counter | leader changes seen by local replicas |
//! | `copycat_proposals_committed_total` | counter | local proposals committed |
//! | `copycat_proposals_failed_total` | counter | local proposals failed, by `reason` |
//! | `copycat_proposal_commit_seconds` | histogram | from proposal to its commit |
//! | `copycat_storage_write_seconds` | histogram | one storage round: write (and fsync) |
//! | `copycat_storage_entries_per_write` | histogram | log entries in one storage round |
//! | `copycat_fsyncs_total` | counter | storage rounds made durable with fsync |
//! | `copycat_transport_sent_bytes_total` | counter | raft frames' bytes sent to peers |
//! | `copycat_transport_received_bytes_total` | counter | raft frames' bytes received |
//! | `copycat_transport_connects_total` | counter | connections dialed to peers (reconnects included) |
//! | `copycat_snapshots_sent_total` | counter | snapshot files streamed to peers |
//! | `copycat_snapshots_received_total` | counter | snapshot files received and installed |
//!
//! `reason` is one of `timeout`, `dropped`, `too_large`, `overloaded`, `storage_exhausted`,
//! `storage`, `shutdown`, `other`.

use std::time::Duration;

use crate::error::Error;

/// Replicas on this node (gauge).
pub const GROUPS_HOSTED: &str = "copycat_groups_hosted";
/// Replicas on this node leading their group (gauge).
pub const GROUPS_LED: &str = "copycat_groups_led";
/// Replicas hibernating (gauge).
pub const GROUPS_HIBERNATING: &str = "copycat_groups_hibernating";
/// Leader changes seen by local replicas (counter).
pub const LEADER_CHANGES: &str = "copycat_leader_changes_total";
/// Local proposals committed (counter).
pub const PROPOSALS_COMMITTED: &str = "copycat_proposals_committed_total";
/// Local proposals failed, labelled by `reason` (counter).
pub const PROPOSALS_FAILED: &str = "copycat_proposals_failed_total";
/// Time from a proposal to its commit, in seconds (histogram).
pub const PROPOSAL_COMMIT_SECONDS: &str = "copycat_proposal_commit_seconds";
/// Time of one storage round (write and, when needed, fsync), in seconds (histogram).
pub const STORAGE_WRITE_SECONDS: &str = "copycat_storage_write_seconds";
/// Log entries written by one storage round (histogram).
pub const STORAGE_ENTRIES_PER_WRITE: &str = "copycat_storage_entries_per_write";
/// Storage rounds made durable with fsync (counter).
pub const FSYNCS: &str = "copycat_fsyncs_total";
/// Bytes of raft frames sent to peers (counter).
pub const TRANSPORT_SENT_BYTES: &str = "copycat_transport_sent_bytes_total";
/// Bytes of raft frames received from peers (counter).
pub const TRANSPORT_RECEIVED_BYTES: &str = "copycat_transport_received_bytes_total";
/// Connections dialed to peers, reconnects included (counter).
pub const TRANSPORT_CONNECTS: &str = "copycat_transport_connects_total";
/// Snapshot files streamed to peers (counter).
pub const SNAPSHOTS_SENT: &str = "copycat_snapshots_sent_total";
/// Snapshot files received and installed (counter).
pub const SNAPSHOTS_RECEIVED: &str = "copycat_snapshots_received_total";

/// Registers every metric's description and unit with the installed recorder. A node
/// calls it when it starts; an application that installs its recorder later may call it
/// again.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(GROUPS_HOSTED, "replicas on this node");
    describe_gauge!(GROUPS_LED, "replicas on this node that lead their group");
    describe_gauge!(GROUPS_HIBERNATING, "replicas hibernating");
    describe_counter!(LEADER_CHANGES, "leader changes seen by local replicas");
    describe_counter!(PROPOSALS_COMMITTED, "local proposals committed");
    describe_counter!(PROPOSALS_FAILED, "local proposals failed, by reason");
    describe_histogram!(
        PROPOSAL_COMMIT_SECONDS,
        Unit::Seconds,
        "from a proposal to its commit"
    );
    describe_histogram!(
        STORAGE_WRITE_SECONDS,
        Unit::Seconds,
        "one storage round: write and fsync"
    );
    describe_histogram!(
        STORAGE_ENTRIES_PER_WRITE,
        Unit::Count,
        "log entries in one storage round"
    );
    describe_counter!(FSYNCS, "storage rounds made durable with fsync");
    describe_counter!(
        TRANSPORT_SENT_BYTES,
        Unit::Bytes,
        "raft frames' bytes sent to peers"
    );
    describe_counter!(
        TRANSPORT_RECEIVED_BYTES,
        Unit::Bytes,
        "raft frames' bytes received from peers"
    );
    describe_counter!(TRANSPORT_CONNECTS, "connections dialed to peers");
    describe_counter!(SNAPSHOTS_SENT, "snapshot files streamed to peers");
    describe_counter!(SNAPSHOTS_RECEIVED, "snapshot files received and installed");
}

/// A local proposal committed `latency_ms` after it was proposed.
pub(crate) fn proposal_committed(latency_ms: u64) {
    metrics::counter!(PROPOSALS_COMMITTED).increment(1);
    metrics::histogram!(PROPOSAL_COMMIT_SECONDS).record(latency_ms as f64 / 1_000.0);
}

/// A local proposal failed with `error`.
pub(crate) fn proposal_failed(error: &Error) {
    metrics::counter!(PROPOSALS_FAILED, "reason" => failure_reason(error)).increment(1);
}

/// The `reason` label of a failed proposal.
fn failure_reason(error: &Error) -> &'static str {
    match error {
        Error::Timeout | Error::ApplyTimeout { .. } => "timeout",
        Error::ProposalDropped(_) | Error::GroupRemoved => "dropped",
        Error::ProposalTooLarge { .. } => "too_large",
        Error::Overloaded => "overloaded",
        Error::StorageExhausted => "storage_exhausted",
        Error::Storage(_) | Error::Corrupted(_) => "storage",
        Error::Shutdown => "shutdown",
        _ => "other",
    }
}

/// A local replica saw its group's leader change.
pub(crate) fn leader_changed() {
    metrics::counter!(LEADER_CHANGES).increment(1);
}

/// The node's replicas: hosted, leading, hibernating.
pub(crate) fn groups(hosted: usize, led: usize, hibernating: usize) {
    metrics::gauge!(GROUPS_HOSTED).set(hosted as f64);
    metrics::gauge!(GROUPS_LED).set(led as f64);
    metrics::gauge!(GROUPS_HIBERNATING).set(hibernating as f64);
}

/// One storage round wrote `entries` log entries in `elapsed`, with an fsync if `synced`.
pub(crate) fn storage_write(elapsed: Duration, entries: usize, synced: bool) {
    metrics::histogram!(STORAGE_WRITE_SECONDS).record(elapsed.as_secs_f64());
    metrics::histogram!(STORAGE_ENTRIES_PER_WRITE).record(entries as f64);
    if synced {
        metrics::counter!(FSYNCS).increment(1);
    }
}

/// A frame of `bytes` bytes went to a peer.
pub(crate) fn frame_sent(bytes: usize) {
    metrics::counter!(TRANSPORT_SENT_BYTES).increment(bytes as u64);
}

/// A frame of `bytes` bytes came from a peer.
pub(crate) fn frame_received(bytes: usize) {
    metrics::counter!(TRANSPORT_RECEIVED_BYTES).increment(bytes as u64);
}

/// A connection to a peer was dialed.
pub(crate) fn connected() {
    metrics::counter!(TRANSPORT_CONNECTS).increment(1);
}

/// A snapshot file was streamed to a peer in full.
pub(crate) fn snapshot_sent() {
    metrics::counter!(SNAPSHOTS_SENT).increment(1);
}

/// A snapshot file was received in full and installed.
pub(crate) fn snapshot_received() {
    metrics::counter!(SNAPSHOTS_RECEIVED).increment(1);
}
