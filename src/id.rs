//! Identifiers: data structure (group) ids and node ids.

use std::fmt;
use std::str::FromStr;

/// Identifies a node for the whole life of its data dir (random, persisted on first start).
/// Node ids fit in 48 bits, so a [`ReplicaId`] can carry one.
pub type NodeId = u64;

/// Bits of a node id.
pub(crate) const NODE_ID_BITS: u32 = 48;

/// Identifies one incarnation of a node's replica in one group: the raft peer id.
///
/// The low 48 bits are the node id and the high 16 bits an incarnation
/// number. A group's initial voters are incarnation 0 (replica id = node id); a replica
/// added later gets an incarnation never used before for that node in that group, so a
/// replica that was removed and wiped never comes back under its old id (re-adding a
/// wiped replica under an old id is a known Raft safety hazard).
pub type ReplicaId = u64;

const NODE_MASK: u64 = (1 << NODE_ID_BITS) - 1;

/// The node a replica lives on.
pub fn node_of(replica: ReplicaId) -> NodeId {
    replica & NODE_MASK
}

/// The incarnation number of a replica.
pub fn incarnation_of(replica: ReplicaId) -> u16 {
    (replica >> NODE_ID_BITS) as u16
}

/// The replica id of `node`'s incarnation `incarnation`.
pub fn replica_id(node: NodeId, incarnation: u16) -> ReplicaId {
    (u64::from(incarnation) << NODE_ID_BITS) | (node & NODE_MASK)
}

/// A random node id: nonzero, [`NODE_ID_BITS`] bits.
pub(crate) fn random_node_id(rng: &mut impl rand::Rng) -> NodeId {
    loop {
        let id = rng.gen::<u64>() & NODE_MASK;
        if id != 0 {
            return id;
        }
    }
}

/// Identifies a data structure, and so its Raft group: a 128-bit ULID.
///
/// Displayed and parsed as the 26-character Crockford base32 form, e.g.
/// `01CFR5R4JJE9KNRAJFFEAQ2SAJ`. Parsing an invalid string is an error, never a panic.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataStructureId(u128);

impl DataStructureId {
    /// The id of copycat's own system group (the directory); never a user data structure.
    pub(crate) const SYSTEM: DataStructureId = DataStructureId(0);

    /// A fresh random id (a ULID: time-ordered, 80 random bits).
    pub fn new() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let millis = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        DataStructureId(ulid::Ulid::from_parts(millis, rand::random::<u128>()).0)
    }

    /// The id as a 128-bit number.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// The id from a 128-bit number.
    pub const fn from_u128(v: u128) -> Self {
        DataStructureId(v)
    }

    /// The 16-byte big-endian form used on the wire and in storage keys.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Parses the 16-byte big-endian form; `None` if `bytes` is not 16 bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 16] = bytes.try_into().ok()?;
        Some(DataStructureId(u128::from_be_bytes(arr)))
    }

    pub(crate) fn is_system(self) -> bool {
        self == Self::SYSTEM
    }
}

impl Default for DataStructureId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for DataStructureId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", ulid::Ulid(self.0))
    }
}

impl fmt::Debug for DataStructureId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataStructureId({self})")
    }
}

/// A string that is not a data structure id (converts into [`crate::Error::InvalidId`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid data structure id {0}")]
pub struct InvalidId(pub String);

impl FromStr for DataStructureId {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, InvalidId> {
        let ulid = ulid::Ulid::from_string(s).map_err(|e| InvalidId(format!("{s:?}: {e}")))?;
        if ulid.0 == 0 {
            return Err(InvalidId(format!("{s:?}: the zero id is reserved")));
        }
        Ok(DataStructureId(ulid.0))
    }
}

/// A fresh random data structure id, as in the original CopyCat's `NewDataStructureID`.
pub fn new_data_structure_id() -> DataStructureId {
    DataStructureId::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_string_and_bytes() {
        let id = new_data_structure_id();
        let parsed: DataStructureId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(DataStructureId::from_bytes(&id.to_bytes()), Some(id));
    }

    #[test]
    fn replica_ids_carry_node_and_incarnation() {
        let node = random_node_id(&mut rand::thread_rng());
        assert_eq!(replica_id(node, 0), node);
        let r = replica_id(node, 7);
        assert_eq!((node_of(r), incarnation_of(r)), (node, 7));
        assert_ne!(r, node);
    }

    #[test]
    fn fresh_ids_are_distinct_and_carry_the_current_time() {
        let (a, b) = (DataStructureId::new(), DataStructureId::new());
        assert_ne!(a, b);
        let millis = |id: DataStructureId| ulid::Ulid(id.as_u128()).timestamp_ms();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(millis(a) <= millis(b) && now.abs_diff(millis(b)) < 60_000);
    }

    #[test]
    fn rejects_garbage() {
        assert!("not-a-ulid".parse::<DataStructureId>().is_err());
        assert!("".parse::<DataStructureId>().is_err());
        assert!("00000000000000000000000000"
            .parse::<DataStructureId>()
            .is_err());
        assert_eq!(DataStructureId::from_bytes(&[1, 2, 3]), None);
    }
}
