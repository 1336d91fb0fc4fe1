//! Helpers shared by copycat's integration tests (`tests/`) and examples (`examples/`).
//!
//! A dev-only crate of the copycat workspace (`publish = false`), taken by copycat as a
//! dev-dependency, so tests and examples `use copycat_testkit::...` instead of including
//! shared source files into each of them.
//!
//! - [`in_process`]: clusters of [`copycat::CopyCat`] nodes inside the test process, on
//!   loopback with temp dirs.
//! - [`cluster`]: clusters of real `hashmap` example processes (start, kill -9, restart).
//! - [`http`]: a tiny blocking HTTP/1.1 client to drive those processes.
//! - [`chaos`]: writers and the fault-injection driver run against a process cluster.
//! - [`forge`]: hand-encoded peer frames for attack tests.
//! - [`gossip_forge`]: a real foca member with the gossip key that gossips a forged
//!   identity, for attack tests.
//! - [`credentials`]: development CA, node certificates and gossip keys (rcgen).
#![deny(missing_docs)]

pub mod chaos;
pub mod cluster;
pub mod credentials;
pub mod forge;
pub mod gossip_forge;
pub mod http;
pub mod in_process;
