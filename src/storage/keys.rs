//! Key layout and value codecs of the sled store.
//!
//! Everything lives in sled's default tree. Keys start with one tag byte; per-group keys follow
//! it with the 16-byte big-endian group id ([`DataStructureId::to_bytes`]), and run keys add the
//! 8-byte big-endian index of the run's first entry, so sled's lexicographic order is
//! (tag, group, index) order:
//!
//! | key                                  | value                                        |
//! |--------------------------------------|----------------------------------------------|
//! | `'r'` group first-index              | a run of consecutive entries (`runs.rs`)     |
//! | `'h'` group                          | encoded `HardState`                          |
//! | `'c'` group                          | encoded `ConfState`                          |
//! | `'s'` group                          | encoded `SnapshotMetadata`                   |
//! | `'d'` group                          | snapshot data (raw bytes)                    |
//! | `'a'` group                          | applied index (8 bytes BE)                   |
//! | `'m'` key (UTF-8)                    | node-level metadata value                    |
//!
//! Snapshot data is kept apart from its metadata so that `load_groups` only reads small values.
//! Tag `'e'` held one entry per key before runs; a data dir with such keys is refused.

use protobuf::Message;

use super::{Result, StorageError};
use crate::id::DataStructureId;

/// Runs of log entries.
pub(super) const TAG_RUN: u8 = b'r';
/// One log entry per key: the format before runs, no longer read.
pub(super) const TAG_LEGACY_ENTRY: u8 = b'e';
/// Hard state.
pub(super) const TAG_HARD_STATE: u8 = b'h';
/// Conf state.
pub(super) const TAG_CONF_STATE: u8 = b'c';
/// Snapshot metadata.
pub(super) const TAG_SNAP_META: u8 = b's';
/// Snapshot data.
pub(super) const TAG_SNAP_DATA: u8 = b'd';
/// Applied index.
pub(super) const TAG_APPLIED: u8 = b'a';
/// Node-level metadata.
pub(super) const TAG_META: u8 = b'm';

/// Length of a per-group key: tag + group id.
pub(super) const GROUP_KEY_LEN: usize = 17;
/// Length of a run key: tag + group id + index.
pub(super) const RUN_KEY_LEN: usize = 25;

/// `tag` + group.
pub(super) fn group_key(tag: u8, group: DataStructureId) -> [u8; GROUP_KEY_LEN] {
    let mut key = [0u8; GROUP_KEY_LEN];
    key[0] = tag;
    key[1..].copy_from_slice(&group.to_bytes());
    key
}

/// `'r'` + group + index of the run's first entry.
pub(super) fn run_key(group: DataStructureId, index: u64) -> [u8; RUN_KEY_LEN] {
    let mut key = [0u8; RUN_KEY_LEN];
    key[0] = TAG_RUN;
    key[1..GROUP_KEY_LEN].copy_from_slice(&group.to_bytes());
    key[GROUP_KEY_LEN..].copy_from_slice(&index.to_be_bytes());
    key
}

/// `'m'` + key.
pub(super) fn meta_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(TAG_META);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The group of a per-group key with tag `tag`.
pub(super) fn parse_group_key(tag: u8, key: &[u8]) -> Result<DataStructureId> {
    if key.len() != GROUP_KEY_LEN || key[0] != tag {
        return Err(bad_key(key));
    }
    DataStructureId::from_bytes(&key[1..]).ok_or_else(|| bad_key(key))
}

/// The group and first index of a run key.
pub(super) fn parse_run_key(key: &[u8]) -> Result<(DataStructureId, u64)> {
    if key.len() != RUN_KEY_LEN || key[0] != TAG_RUN {
        return Err(bad_key(key));
    }
    let group = DataStructureId::from_bytes(&key[1..GROUP_KEY_LEN]).ok_or_else(|| bad_key(key))?;
    let index = decode_u64(&key[GROUP_KEY_LEN..], "run key index")?;
    Ok((group, index))
}

fn bad_key(key: &[u8]) -> StorageError {
    StorageError::Corrupted {
        what: format!("key {key:02x?}"),
        detail: "unexpected key length or tag".to_string(),
    }
}

/// Encodes a protobuf message. Fails only if the message cannot be serialized at all (never for
/// raft's proto3 messages), reported as an invalid-input I/O error since nothing was stored.
pub(super) fn encode_msg<M: Message>(msg: &M, what: &str) -> Result<Vec<u8>> {
    msg.write_to_bytes().map_err(|e| {
        StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot encode {what}: {e}"),
        ))
    })
}

/// Decodes a protobuf message read from disk (merged into a default value).
pub(super) fn decode_msg<M: Message + Default>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<M> {
    let mut msg = M::default();
    msg.merge_from_bytes(bytes)
        .map_err(|e| StorageError::Corrupted {
            what: what(),
            detail: e.to_string(),
        })?;
    Ok(msg)
}

/// An 8-byte big-endian number.
pub(super) fn decode_u64(bytes: &[u8], what: &str) -> Result<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StorageError::Corrupted {
        what: what.to_string(),
        detail: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_log_order() {
        let g = DataStructureId::from_u128(7);
        assert!(run_key(g, 255) < run_key(g, 256));
        assert!(run_key(g, u64::MAX) < run_key(DataStructureId::from_u128(8), 0));
        let (pg, pi) = parse_run_key(&run_key(g, 300)).unwrap();
        assert_eq!((pg, pi), (g, 300));
        assert_eq!(
            parse_group_key(TAG_HARD_STATE, &group_key(TAG_HARD_STATE, g)).unwrap(),
            g
        );
        assert!(parse_group_key(TAG_CONF_STATE, &group_key(TAG_HARD_STATE, g)).is_err());
        assert!(parse_run_key(&[TAG_RUN, 1, 2]).is_err());
    }
}
