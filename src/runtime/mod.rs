//! The runtime: the only place with sockets, threads and clocks.

pub(crate) mod gossip;
pub(crate) mod transport;
