//! The sled implementation of [`LogStore`].
use super::*;

/// sled-backed store.
pub struct SledStore;
