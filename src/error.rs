//! The public error type.

use std::path::PathBuf;
use std::sync::Arc;

use crate::storage::StorageError;

/// Everything that can go wrong in copycat, as seen by an application.
///
/// Errors are `Clone` because one failure may be reported both to the caller of an
/// acknowledged proposal and on the subscription's error channel.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A data structure id string is not a valid ULID; nothing changed.
    #[error("invalid data structure id {0}")]
    InvalidId(String),
    /// The configuration is unusable (a message says which field and why).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Another process uses the data dir; this node did not start.
    #[error("data dir {0} is in use by another copycat process")]
    DataDirLocked(PathBuf),
    /// Data in the data dir is damaged (the message names the record or file); the node
    /// does not start on it rather than serve a state it cannot trust.
    #[error("stored data is corrupted: {0}")]
    Corrupted(String),
    /// The storage layer failed; writes are not acknowledged while this persists.
    #[error("storage failure: {0}")]
    Storage(Arc<StorageError>),
    /// A socket or thread could not be set up.
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    /// The proposal is larger than `Config::max_proposal_bytes`; it was not proposed.
    #[error("proposal of {size} bytes is over the limit of {limit} bytes")]
    ProposalTooLarge {
        /// The proposal's size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Raft dropped the proposal (no leader known, leadership changing); it was not
    /// committed and may be retried.
    #[error("proposal dropped: {0}")]
    ProposalDropped(String),
    /// No commit was seen before the deadline. The proposal may still commit later.
    #[error("timed out waiting for the proposal to commit (it may still commit)")]
    Timeout,
    /// A read barrier timed out: no leader confirmed its leadership and commit index in
    /// time (no quorum reachable, or an election in progress).
    #[error(
        "timed out waiting for the read barrier: no leader confirmed the commit index in time"
    )]
    ReadTimeout,
    /// The command committed at `index` but was not applied on this node in time.
    #[error("committed at index {index}, but not applied on this node in time")]
    ApplyTimeout {
        /// Where it committed (or the index waited for).
        index: u64,
    },
    /// The command committed at `index`, but this replica restored a snapshot past it
    /// before applying it, so its response is unknown here (its effect is in the state).
    #[error("the command committed at index {index}, but its response is unknown: this replica restored a snapshot past it")]
    ResponseUnknown {
        /// Where it committed.
        index: u64,
    },
    /// A command could not be encoded with the handle's codec.
    #[error("cannot encode the command: {0}")]
    Codec(String),
    /// The group no longer has a replica here.
    #[error("the data structure's replica was removed from this node")]
    GroupRemoved,
    /// The snapshot asked for is not available (not taken yet, or superseded).
    #[error("snapshot unavailable: {0}")]
    SnapshotUnavailable(String),
    /// The node's input queue is full (see the runtime's `INPUT_CAPACITY`): the call was
    /// not made; retry after a pause.
    #[error("the copycat node is overloaded: its input queue is full; retry later")]
    Overloaded,
    /// TLS credentials are unusable (the message names the file or input and the problem:
    /// missing file, bad PEM, key not matching the certificate, certificate not signed by
    /// the CA or naming no node id); the node did not start.
    #[error("unusable TLS credentials: {0}")]
    Credentials(String),
    /// A gossip key or keyring operation was refused (bad key file, using a key that is not
    /// installed, removing the primary key, keyring operations on a node whose gossip is not
    /// sealed); nothing changed.
    #[error("gossip key: {0}")]
    GossipKey(String),
    /// The data dir belongs to another node id than the one the TLS certificate names; the
    /// node did not start. Use the data dir with a certificate for its id, or a fresh data
    /// dir with this certificate.
    #[error("the data dir {} holds node id {stored}, but the TLS certificate names node id {certificate}", data_dir.display())]
    NodeIdMismatch {
        /// The id stored in the data dir at its first start.
        stored: crate::id::NodeId,
        /// The id the certificate names.
        certificate: crate::id::NodeId,
        /// The data dir.
        data_dir: PathBuf,
    },
    /// The node cannot write its data for want of a resource: its disk is full (no space
    /// left, or a file size or disk quota limit) or the process is out of file
    /// descriptors. The call was not made. The node acknowledges nothing until it can
    /// write again, then resumes by itself (its replicas catch up from their peers); retry
    /// later.
    #[error(
        "the copycat node cannot write its data (disk full, or out of file descriptors): \
         it acknowledges nothing until it can"
    )]
    StorageExhausted,
    /// The node is shutting down or stopped; nothing more is accepted.
    #[error("the copycat node is shut down")]
    Shutdown,
}

impl Error {
    /// Whether this is a storage failure that ends once the resource it lacked returns.
    pub(crate) fn is_exhausted(&self) -> bool {
        match self {
            Error::Storage(e) => e.is_exhausted(),
            Error::StorageExhausted => true,
            _ => false,
        }
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Locked { path } => Error::DataDirLocked(path),
            corrupted @ StorageError::Corrupted { .. } => Error::Corrupted(corrupted.to_string()),
            other => Error::Storage(Arc::new(other)),
        }
    }
}

impl From<crate::id::InvalidId> for Error {
    fn from(e: crate::id::InvalidId) -> Self {
        Error::InvalidId(e.0)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

/// Result with copycat's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
