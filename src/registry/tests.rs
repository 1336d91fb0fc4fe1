//! Registry behaviour that needs its internal operations: a live instance whose
//! publications were removed as if its node had died.

use std::time::Duration;

use super::state::Op;
use super::*;
use crate::Config;

#[test]
fn a_live_instance_republishes_what_a_dead_owner_removal_took() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = CopyCat::start(Config {
        data_dir: dir.path().to_path_buf(),
        port: 0,
        gossip_port: 0,
        tick_interval: Duration::from_millis(50),
        ..Config::default()
    })
    .expect("node");
    let config = RegistryConfig {
        maintenance_interval: Duration::from_millis(50),
        ..RegistryConfig::default()
    };
    let registry = Registry::start(&node, config).expect("registry");
    let handle = registry
        .publish("svc", "ep", PublishSettings::default())
        .expect("publish");
    let shared = &registry.core.shared;
    let removal = Op::OwnerDead {
        node: shared.me,
        epoch: shared.epoch(),
    };
    shared
        .propose_and_apply(&removal, Duration::from_secs(10))
        .expect("removal applied");
    let mut watch = registry
        .watch(&["svc"], Some(registry.revision()))
        .expect("watch");
    let event = watch
        .next_timeout(Duration::from_secs(20))
        .expect("watch works")
        .expect("republished");
    assert_eq!(event.change, Change::Added);
    assert_eq!(event.publication.id, handle.id());
    drop(handle);
    let event = watch
        .next_timeout(Duration::from_secs(20))
        .expect("watch works")
        .expect("withdrawn");
    assert_eq!(event.change, Change::Removed(RemovalReason::Unpublished));
    drop(registry);
    node.shutdown();
}
