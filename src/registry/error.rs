//! The registry's error type.

use super::state::Revision;

/// What can go wrong in the service registry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The name, endpoint or settings given to `publish` or `subscribe` are unusable; nothing
    /// changed.
    #[error("invalid publication: {0}")]
    InvalidPublication(String),
    /// No option of the subscription has a visible publication.
    #[error("no visible publication for {0}")]
    NoPublication(String),
    /// Every lease of the chosen publications is out and their queue is full.
    #[error("service {name} is over capacity: {queued} callers already wait")]
    Overcapacity {
        /// The service name.
        name: String,
        /// Callers waiting (the summed queue size).
        queued: usize,
    },
    /// The deadline passed before the operation completed.
    #[error("timed out")]
    Timeout,
    /// A watch asked to resume from a revision whose changes were dropped from the history;
    /// start a new watch from the current state.
    #[error("revision {asked} is too old: the oldest change kept is {oldest}")]
    RevisionCompacted {
        /// The revision asked for.
        asked: Revision,
        /// The oldest revision still kept.
        oldest: Revision,
    },
    /// Another registry instance of this node started later; this one no longer publishes.
    /// Run one registry per node.
    #[error("a newer registry instance on this node replaced this one")]
    Superseded,
    /// The underlying copycat node failed or shut down.
    #[error(transparent)]
    CopyCat(#[from] crate::Error),
}

/// Result with the registry's [`RegistryError`].
pub type RegistryResult<T> = std::result::Result<T, RegistryError>;
