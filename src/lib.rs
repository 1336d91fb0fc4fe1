//! copycat: replicated data structures.
#![deny(missing_docs)]

pub mod config;
mod copycat;
mod data_structure;
pub mod error;
pub(crate) mod group;
pub mod id;
pub mod node;
pub(crate) mod proto;
pub(crate) mod runtime;
pub mod storage;

pub use config::Config;
pub use copycat::CopyCat;
pub use data_structure::{DataStructure, SnapshotProvider};
pub use error::{Error, Result};
pub use id::{new_data_structure_id, DataStructureId, NodeId};
pub use node::{Commit, GroupStatus, MemberStatus};
