//! Wire messages generated from `proto/copycat.proto`.
#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/copycat.rs"));

/// Version of the wire protocol, sent in every `Hello` and gossip packet.
pub const PROTOCOL_VERSION: u32 = 1;
