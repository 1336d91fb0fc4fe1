//! What a publication is: a named endpoint with Copper's settings, owned by one registry
//! instance on one node.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};

use super::error::RegistryError;
use crate::NodeId;

/// Longest accepted service name or endpoint, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// How far a publication is from a subscriber: its owner is the subscriber's node (0), in
/// the same datacenter (1) or in another one (2). Datacenters come from each node's gossip
/// metadata ([`crate::Config::datacenter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub enum Distance {
    /// The subscriber's own node.
    SameNode = 0,
    /// Another node in the subscriber's datacenter.
    SameDatacenter = 1,
    /// A node in another datacenter.
    OtherDatacenter = 2,
}

/// How a publication may be used; [`PublishSettings::default`] gives Copper's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PublishSettings {
    /// Leases one node may hold on this publication at once (default 1; must be ≥ 1).
    pub concurrency: u32,
    /// Callers that may wait for a lease, FIFO, before further ones get an overcapacity
    /// error (default 64).
    pub queue_size: u32,
    /// Subscribers farther than this do not see the publication (default
    /// [`Distance::OtherDatacenter`]: everyone).
    pub max_distance: Distance,
    /// Lower is preferred; 0 (the default) is the highest priority. Higher values are
    /// standbys, used only while no lower value is visible.
    pub priority: u32,
    /// Free-form labels.
    pub tags: Vec<String>,
    /// Free-form key/value metadata.
    pub metadata: BTreeMap<String, String>,
}

impl Default for PublishSettings {
    fn default() -> Self {
        PublishSettings {
            concurrency: 1,
            queue_size: 64,
            max_distance: Distance::OtherDatacenter,
            priority: 0,
            tags: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }
}

/// Identifies a publication: the owner node, its registry instance (epoch) and a number
/// that instance gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct PublicationId {
    /// The owner node.
    pub node: NodeId,
    /// The owner's registry instance; a restarted node has a larger one.
    pub epoch: u64,
    /// Number within the instance.
    pub seq: u64,
}

/// A published service endpoint, as every node's registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Publication {
    /// Who published it.
    pub id: PublicationId,
    /// The service name subscribers resolve.
    pub name: String,
    /// Where to reach it (free-form, e.g. `http://127.0.0.1:8080`).
    pub endpoint: String,
    /// The owner's datacenter.
    pub datacenter: String,
    /// Its settings.
    pub settings: PublishSettings,
}

impl Publication {
    /// Its distance from a subscriber on `node` in `datacenter`.
    pub fn distance_from(&self, node: NodeId, datacenter: &str) -> Distance {
        if self.id.node == node {
            Distance::SameNode
        } else if self.datacenter == datacenter {
            Distance::SameDatacenter
        } else {
            Distance::OtherDatacenter
        }
    }
}

/// Checks what `publish` is given; the error says what is wrong.
pub(crate) fn validate(
    name: &str,
    endpoint: &str,
    settings: &PublishSettings,
) -> Result<(), RegistryError> {
    validate_name(name)?;
    if endpoint.len() > MAX_NAME_BYTES {
        return Err(RegistryError::InvalidPublication(format!(
            "endpoint is {} bytes, over the limit of {MAX_NAME_BYTES}",
            endpoint.len()
        )));
    }
    if settings.concurrency == 0 {
        return Err(RegistryError::InvalidPublication(
            "concurrency must be at least 1".to_string(),
        ));
    }
    Ok(())
}

/// Checks a service name given to publish or subscribe.
pub(crate) fn validate_name(name: &str) -> Result<(), RegistryError> {
    if name.is_empty() {
        return Err(RegistryError::InvalidPublication(
            "the service name is empty".to_string(),
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(RegistryError::InvalidPublication(format!(
            "the service name is {} bytes, over the limit of {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_concurrency_empty_and_oversized_names_are_refused() {
        let ok = PublishSettings::default();
        assert!(validate("svc", "ep", &ok).is_ok());
        assert!(validate("", "ep", &ok).is_err());
        assert!(validate(&"x".repeat(MAX_NAME_BYTES + 1), "ep", &ok).is_err());
        assert!(validate("svc", &"x".repeat(MAX_NAME_BYTES + 1), &ok).is_err());
        let zero = PublishSettings {
            concurrency: 0,
            ..ok
        };
        let err = validate("svc", "ep", &zero).unwrap_err();
        assert!(err.to_string().contains("concurrency"), "{err}");
    }

    #[test]
    fn distance_is_node_then_datacenter() {
        let p = Publication {
            id: PublicationId {
                node: 7,
                epoch: 1,
                seq: 1,
            },
            name: "svc".to_string(),
            endpoint: String::new(),
            datacenter: "east".to_string(),
            settings: PublishSettings::default(),
        };
        assert_eq!(p.distance_from(7, "west"), Distance::SameNode);
        assert_eq!(p.distance_from(8, "east"), Distance::SameDatacenter);
        assert_eq!(p.distance_from(8, "west"), Distance::OtherDatacenter);
    }
}
