//! The node core: deterministic, no I/O.

pub mod member;
