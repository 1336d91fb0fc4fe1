//! [`ReplicatedMap`]: a replicated ordered map on the typed API.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Bincode, Codec, Replicated, StateMachine};
use crate::error::Result;
use crate::id::DataStructureId;
use crate::CopyCat;

/// What a key or a value of a [`ReplicatedMap`] must be.
pub trait MapItem: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> MapItem for T {}

/// A change to a [`ReplicatedMap`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MapCommand<K, V> {
    /// Sets `key` to the value.
    Insert(K, V),
    /// Removes `key`.
    Remove(K),
    /// Sets `key` to `new` (removes it if `None`) only if its value is `expected` (absent
    /// if `None`).
    CompareAndSet {
        /// The key.
        key: K,
        /// The value it must have.
        expected: Option<V>,
        /// The value it gets.
        new: Option<V>,
    },
}

/// What a [`MapCommand`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapResponse<V> {
    /// `Insert` and `Remove`: the value before.
    Previous(Option<V>),
    /// `CompareAndSet`: `Ok` if it set the value, else the value the key had.
    Swapped(std::result::Result<(), Option<V>>),
}

/// The state machine of a [`ReplicatedMap`]: an ordered map.
#[derive(Debug, Clone)]
pub struct MapMachine<K, V> {
    map: BTreeMap<K, V>,
}

impl<K, V> Default for MapMachine<K, V> {
    fn default() -> Self {
        MapMachine {
            map: BTreeMap::new(),
        }
    }
}

impl<K: MapItem + Ord, V: MapItem + PartialEq> StateMachine for MapMachine<K, V> {
    type Command = MapCommand<K, V>;
    type Response = MapResponse<V>;

    fn apply(&mut self, command: MapCommand<K, V>) -> MapResponse<V> {
        match command {
            MapCommand::Insert(key, value) => MapResponse::Previous(self.map.insert(key, value)),
            MapCommand::Remove(key) => MapResponse::Previous(self.map.remove(&key)),
            MapCommand::CompareAndSet { key, expected, new } => {
                let current = self.map.get(&key);
                if current != expected.as_ref() {
                    return MapResponse::Swapped(Err(current.cloned()));
                }
                match new {
                    Some(value) => self.map.insert(key, value),
                    None => self.map.remove(&key),
                };
                MapResponse::Swapped(Ok(()))
            }
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        Bincode::encode(&self.map).expect("a map of serializable keys and values encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> std::result::Result<(), String> {
        self.map = Bincode::decode(snapshot)?;
        Ok(())
    }
}

/// A replicated ordered map from `K` to `V`: every replica holds the whole map. Cheap to
/// clone, `Send + Sync`.
///
/// ```
/// use copycat::{Config, CopyCat, ReplicatedMap};
///
/// # fn main() -> copycat::Result<()> {
/// # let dir = tempfile::tempdir()?;
/// let node = CopyCat::start(Config {
///     data_dir: dir.path().to_path_buf(),
///     port: 0,
///     gossip_port: 0,
///     ..Config::default()
/// })?;
/// let map: ReplicatedMap<String, u64> = ReplicatedMap::open(&node, node.new_data_structure_id())?;
/// map.insert_blocking("apples".to_string(), 3)?;
/// assert_eq!(map.compare_and_set_blocking("apples".to_string(), Some(3), Some(2))?, Ok(()));
/// assert_eq!(map.get_linearizable_blocking(&"apples".to_string())?, Some(2));
/// # node.shutdown();
/// # Ok(())
/// # }
/// ```
pub struct ReplicatedMap<K: MapItem + Ord, V: MapItem + PartialEq> {
    inner: Replicated<MapMachine<K, V>>,
}

impl<K: MapItem + Ord, V: MapItem + PartialEq> Clone for ReplicatedMap<K, V> {
    fn clone(&self) -> Self {
        ReplicatedMap {
            inner: self.inner.clone(),
        }
    }
}

impl<K: MapItem + Ord, V: MapItem + PartialEq> std::fmt::Debug for ReplicatedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedMap")
            .field("id", &self.inner.id())
            .finish()
    }
}

fn previous<V>(response: MapResponse<V>) -> Option<V> {
    match response {
        MapResponse::Previous(value) => value,
        MapResponse::Swapped(_) => None,
    }
}

fn swapped<V>(response: MapResponse<V>) -> std::result::Result<(), Option<V>> {
    match response {
        MapResponse::Swapped(result) => result,
        MapResponse::Previous(value) => Err(value),
    }
}

impl<K: MapItem + Ord, V: MapItem + PartialEq> ReplicatedMap<K, V> {
    /// Subscribes to the map `id` on `node`, creating it if it exists nowhere yet.
    pub fn open(node: &CopyCat, id: DataStructureId) -> Result<Self> {
        let inner = Replicated::open(node, id, MapMachine::default())?;
        Ok(ReplicatedMap { inner })
    }

    /// The same map with calls bounded by `timeout` (default 10 s).
    pub fn with_timeout(self, timeout: Duration) -> Self {
        ReplicatedMap {
            inner: self.inner.with_timeout(timeout),
        }
    }

    /// The replicated state machine underneath.
    pub fn replicated(&self) -> &Replicated<MapMachine<K, V>> {
        &self.inner
    }

    /// Sets `key` to `value` once committed; returns the value before.
    pub async fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        let response = self.inner.propose(MapCommand::Insert(key, value)).await?;
        Ok(previous(response))
    }

    /// The blocking form of [`ReplicatedMap::insert`].
    pub fn insert_blocking(&self, key: K, value: V) -> Result<Option<V>> {
        Ok(previous(
            self.inner
                .propose_blocking(MapCommand::Insert(key, value))?,
        ))
    }

    /// Removes `key` once committed; returns the value before.
    pub async fn remove(&self, key: K) -> Result<Option<V>> {
        Ok(previous(self.inner.propose(MapCommand::Remove(key)).await?))
    }

    /// The blocking form of [`ReplicatedMap::remove`].
    pub fn remove_blocking(&self, key: K) -> Result<Option<V>> {
        Ok(previous(
            self.inner.propose_blocking(MapCommand::Remove(key))?,
        ))
    }

    /// Sets `key` to `new` (removes it if `None`) if its value is `expected` (absent if
    /// `None`), atomically; `Err(current)` if it was not.
    pub async fn compare_and_set(
        &self,
        key: K,
        expected: Option<V>,
        new: Option<V>,
    ) -> Result<std::result::Result<(), Option<V>>> {
        let command = MapCommand::CompareAndSet { key, expected, new };
        Ok(swapped(self.inner.propose(command).await?))
    }

    /// The blocking form of [`ReplicatedMap::compare_and_set`].
    pub fn compare_and_set_blocking(
        &self,
        key: K,
        expected: Option<V>,
        new: Option<V>,
    ) -> Result<std::result::Result<(), Option<V>>> {
        let command = MapCommand::CompareAndSet { key, expected, new };
        Ok(swapped(self.inner.propose_blocking(command)?))
    }

    /// The local value of `key` (may lag; see [`ReplicatedMap::get_linearizable`]).
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        self.inner.read(|m| m.map.get(key).cloned())
    }

    /// The value of `key` as of now, cluster-wide.
    pub async fn get_linearizable(&self, key: &K) -> Result<Option<V>> {
        self.inner
            .read_linearizable(|m| m.map.get(key).cloned())
            .await
    }

    /// The blocking form of [`ReplicatedMap::get_linearizable`].
    pub fn get_linearizable_blocking(&self, key: &K) -> Result<Option<V>> {
        self.inner
            .read_linearizable_blocking(|m| m.map.get(key).cloned())
    }

    /// The number of keys (local).
    pub fn len(&self) -> Result<usize> {
        self.inner.read(|m| m.map.len())
    }

    /// Whether the map is empty (local).
    pub fn is_empty(&self) -> Result<bool> {
        self.inner.read(|m| m.map.is_empty())
    }

    /// A copy of the local entries, in key order.
    pub fn entries(&self) -> Result<Vec<(K, V)>> {
        self.inner
            .read(|m| m.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// Reads the local map in place (no copy), under the lock that guards it.
    pub fn read<T>(&self, f: impl FnOnce(&BTreeMap<K, V>) -> T) -> Result<T> {
        self.inner.read(|m| f(&m.map))
    }
}
