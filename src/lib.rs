//! copycat: replicated data structures.
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod id;
pub mod node;
pub(crate) mod proto;
pub(crate) mod runtime;
pub mod storage;

pub use config::Config;
pub use error::{Error, Result};
pub use id::{new_data_structure_id, DataStructureId, NodeId};
pub(crate) mod group;
