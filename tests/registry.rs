//! The service registry across real nodes on loopback.
mod common;

use std::time::Duration;

use common::Cluster;
use copycat::registry::{PublishSettings, Registry, RegistryConfig};

#[test]
fn start_and_publish_on_one_node() {
    let cluster = Cluster::start(1);
    let registry = Registry::start(cluster.node(0), RegistryConfig::default()).expect("registry");
    let _p = registry
        .publish("svc", "ep", PublishSettings::default())
        .expect("publish");
}

#[test]
fn barrier_on_fresh_group() {
    let cluster = Cluster::start(1);
    let ds = cluster
        .node(0)
        .subscribe(copycat::registry::REGISTRY_ID, common::no_snapshot)
        .unwrap();
    ds.read_barrier(Duration::from_secs(10)).expect("barrier");
}
