//! The typed state-machine API: write a [`StateMachine`] (apply a command, snapshot,
//! restore) and get a replicated handle, [`Replicated`], whose `propose` returns *your*
//! command's response from this replica's apply, with linearizable reads and snapshots
//! handled for you. [`ReplicatedMap`] is one, ready made.
//!
//! Underneath it is the channel API ([`crate::DataStructure`]): commands are proposed as
//! entries tagged with the proposing node and a number, and applied in log order on every
//! replica. Applying is pulled, not pushed: the calls on a handle (and the snapshot
//! machinery) apply whatever the commit channel holds before they answer, so a process
//! serves thousands of replicated state machines without a thread, or a task, per
//! machine. While nobody calls, commits wait in the channel (4,096 at most; delivery then
//! pauses and resumes from the log, nothing is lost).

pub(crate) mod applier;
mod map;
mod replicated;

pub use map::{MapCommand, MapMachine, MapResponse, ReplicatedMap};
pub use replicated::Replicated;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A deterministic state machine: every replica applies the same commands in the same
/// order and must reach the same state.
///
/// ```
/// use copycat::StateMachine;
///
/// /// A counter that refuses to go below zero.
/// #[derive(Default)]
/// struct Counter(u64);
///
/// impl StateMachine for Counter {
///     type Command = i64;
///     type Response = Result<u64, String>;
///
///     fn apply(&mut self, delta: i64) -> Self::Response {
///         let next = self.0 as i64 + delta;
///         if next < 0 {
///             return Err(format!("would go to {next}"));
///         }
///         self.0 = next as u64;
///         Ok(self.0)
///     }
///
///     fn snapshot(&self) -> Vec<u8> {
///         self.0.to_be_bytes().to_vec()
///     }
///
///     fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
///         let bytes = snapshot.try_into().map_err(|_| "not 8 bytes".to_string())?;
///         self.0 = u64::from_be_bytes(bytes);
///         Ok(())
///     }
/// }
/// ```
pub trait StateMachine: Send + 'static {
    /// What `apply` takes: encoded into the log with the handle's [`Codec`].
    type Command: Serialize + DeserializeOwned + Send + 'static;
    /// What `apply` returns to the proposer on the same node (never encoded or sent).
    type Response: Send + 'static;

    /// Applies one command. Must be deterministic: the same state and command give the
    /// same new state on every replica (no clocks, randomness or I/O).
    fn apply(&mut self, command: Self::Command) -> Self::Response;

    /// The whole state, as bytes [`StateMachine::restore`] reads back.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state with a snapshot's. An error stops this handle: its calls fail
    /// with [`crate::Error::Corrupted`] from then on.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

/// How commands are encoded into the log.
pub trait Codec: Send + Sync + 'static {
    /// Encodes a value.
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String>;
    /// Decodes a value.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String>;
}

/// The default [`Codec`]: bincode 2 through serde, compact and fast.
///
/// Decoding is bounded: what the decoded value's strings and byte buffers may allocate
/// ahead of reading their contents is limited in proportion to the input (at most 32
/// bytes per input byte, the crate's rule for every record peers can write: see
/// [`crate::bounded_bincode_decode`]), so a corrupt or forged entry whose length prefix
/// claims gigabytes fails with an error (bincode's "limit exceeded") instead of
/// allocating, or aborting the process. Commands are at most `Config::max_proposal_bytes`
/// long, so a command cannot make a replica allocate more than 32 times that; no genuine
/// value is refused (it claims at most its own encoded length).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

impl Codec for Bincode {
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| e.to_string())
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        crate::bounded_decode::bounded_serde_decode(bytes)
            .map(|(value, _)| value)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A varint length of 2^40 (bincode's standard config: 0xfd, then a little-endian u64).
    const HUGE_LENGTH: [u8; 9] = [0xfd, 0, 0, 0, 0, 0, 1, 0, 0];

    #[test]
    fn a_forged_length_is_refused_with_an_error_not_an_allocation() {
        // Unbounded, bincode allocates the whole string (1 TiB) before reading it: the
        // allocation fails and the process aborts.
        let refused = Bincode::decode::<String>(&HUGE_LENGTH);
        let error = refused.expect_err("refused");
        assert!(error.contains("LimitExceeded"), "{error}");
        // Inside a command, after genuine fields.
        let mut command = Bincode::encode(&7u64).expect("encode");
        command.extend_from_slice(&HUGE_LENGTH);
        assert!(Bincode::decode::<(u64, String)>(&command).is_err());
        // Sequences and maps preallocate cautiously and fail at the end of the input.
        assert!(Bincode::decode::<Vec<u64>>(&HUGE_LENGTH).is_err());
        assert!(Bincode::decode::<BTreeMap<u64, u64>>(&HUGE_LENGTH).is_err());
    }

    #[test]
    fn genuine_values_decode_as_before() {
        let mut map = BTreeMap::new();
        map.insert("big".to_string(), "x".repeat(1 << 20));
        map.insert(String::new(), String::new());
        let bytes = Bincode::encode(&map).expect("encode");
        assert_eq!(Bincode::decode::<BTreeMap<String, String>>(&bytes), Ok(map));
        let empty = Bincode::encode(&String::new()).expect("encode");
        assert_eq!(Bincode::decode::<String>(&empty), Ok(String::new()));
    }
}
