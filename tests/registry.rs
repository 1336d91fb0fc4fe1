//! The service registry across real nodes on loopback: 3 nodes, 2 datacenters (nodes 0 and
//! 1 in `east`, node 2 in `west`), one registry per node.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use copycat::registry::{
    Change, Distance, PublishSettings, Registry, RegistryConfig, RegistryError, RemovalReason,
    SubscribeOptions, WatchEvent,
};
use copycat::Config;
use copycat_testkit::in_process::{wait_until, Cluster};

const WAIT: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(3);

fn registry_config() -> RegistryConfig {
    RegistryConfig {
        owner_grace: GRACE,
        maintenance_interval: Duration::from_millis(100),
        rng_seed: Some(7),
        ..RegistryConfig::default()
    }
}

/// The cluster and one registry per node.
fn start(tweak: fn(Config) -> Config) -> (Cluster, Vec<Registry>) {
    let cluster = Cluster::start_in_datacenters(&["east", "east", "west"], tweak);
    let registries = (0..3)
        .map(|i| Registry::start(cluster.node(i), registry_config()).expect("registry starts"))
        .collect();
    (cluster, registries)
}

fn settings(f: impl FnOnce(&mut PublishSettings)) -> PublishSettings {
    let mut s = PublishSettings::default();
    f(&mut s);
    s
}

/// The endpoint `registry` resolves `options` to, or `None`.
fn resolved(registry: &Registry, options: SubscribeOptions) -> Option<String> {
    let subscription = registry.subscribe(options).expect("valid options");
    subscription.resolve().ok().map(|p| p.endpoint)
}

fn wait_resolves(registry: &Registry, options: SubscribeOptions, endpoint: Option<&str>) {
    wait_until(&format!("resolving to {endpoint:?}"), WAIT, || {
        resolved(registry, options.clone()).as_deref() == endpoint
    });
}

fn next_event(watch: &mut copycat::registry::Watch) -> WatchEvent {
    watch
        .next_timeout(WAIT)
        .expect("watch works")
        .expect("an event before the deadline")
}

#[test]
fn distance_rules_and_bare_name_fallback() {
    let (_cluster, r) = start(|c| c);
    let near_only = settings(|s| s.max_distance = Distance::SameDatacenter);
    let east = r[0].publish("svc", "east-0", near_only).expect("publish");
    r[1].read_barrier(WAIT).expect("barrier");
    r[2].read_barrier(WAIT).expect("barrier");

    let bare = SubscribeOptions::name("svc");
    let same_node = SubscribeOptions::new().then("svc", Distance::SameNode, Distance::SameNode);
    assert_eq!(resolved(&r[1], bare.clone()).as_deref(), Some("east-0"));
    assert_eq!(
        resolved(&r[0], same_node.clone()).as_deref(),
        Some("east-0")
    );
    assert_eq!(resolved(&r[1], same_node), None);
    assert_eq!(r[2].publications("svc").len(), 1, "replicated everywhere");
    assert_eq!(
        resolved(&r[2], bare.clone()),
        None,
        "beyond its max distance"
    );

    let _west = r[2]
        .publish("svc", "west-2", PublishSettings::default())
        .expect("publish");
    r[1].read_barrier(WAIT).expect("barrier");
    for _ in 0..20 {
        assert_eq!(resolved(&r[1], bare.clone()).as_deref(), Some("east-0"));
    }
    assert_eq!(resolved(&r[2], bare.clone()).as_deref(), Some("west-2"));
    // r[0] sees west-2 only once it has applied it (publish returned on r[2]).
    r[0].read_barrier(WAIT).expect("barrier");
    let far =
        SubscribeOptions::new().then("svc", Distance::OtherDatacenter, Distance::OtherDatacenter);
    assert_eq!(resolved(&r[0], far).as_deref(), Some("west-2"));

    east.unpublish().expect("unpublish");
    wait_resolves(&r[1], bare, Some("west-2"));
}

#[test]
fn a_hot_standby_serves_only_while_every_primary_is_gone() {
    let (_cluster, r) = start(|c| c);
    let anywhere =
        || SubscribeOptions::new().then("db", Distance::SameNode, Distance::OtherDatacenter);
    let primary = |i: usize| {
        r[i].publish("db", &format!("primary-{i}"), PublishSettings::default())
            .expect("publish")
    };
    let (first, second) = (primary(0), primary(1));
    let standby = settings(|s| s.priority = 1);
    let _standby = r[2].publish("db", "standby", standby).expect("publish");
    r[2].read_barrier(WAIT).expect("barrier");
    let is_primary = |e: Option<String>| e.is_some_and(|e| e.starts_with("primary"));
    for _ in 0..50 {
        assert!(is_primary(resolved(&r[2], anywhere())));
    }

    drop(first);
    wait_until("the dropped primary is withdrawn", WAIT, || {
        r[2].publications("db").len() == 2
    });
    for _ in 0..50 {
        assert_eq!(resolved(&r[2], anywhere()).as_deref(), Some("primary-1"));
    }

    drop(second);
    wait_resolves(&r[2], anywhere(), Some("standby"));

    let _back = primary(0);
    r[2].read_barrier(WAIT).expect("barrier");
    assert_eq!(resolved(&r[2], anywhere()).as_deref(), Some("primary-0"));
}

#[test]
fn equal_publications_share_the_load_by_concurrency() {
    let (_cluster, r) = start(|c| c);
    let _light = r[0]
        .publish("w", "light", settings(|s| s.concurrency = 1))
        .expect("publish");
    let _heavy = r[1]
        .publish("w", "heavy", settings(|s| s.concurrency = 3))
        .expect("publish");
    r[2].read_barrier(WAIT).expect("barrier");
    let subscription = r[2]
        .subscribe(SubscribeOptions::new().then("w", Distance::SameNode, Distance::OtherDatacenter))
        .expect("subscribe");
    let mut counts: HashMap<String, usize> = HashMap::new();
    let picks = 4_000;
    for _ in 0..picks {
        let chosen = subscription.resolve().expect("resolves");
        *counts.entry(chosen.endpoint).or_default() += 1;
    }
    // Expected 3,000 heavy; 6 standard deviations of a binomial(4000, 0.75) is ±164.
    let heavy = counts.get("heavy").copied().unwrap_or(0);
    assert!(
        (2_836..=3_164).contains(&heavy),
        "heavy picked {heavy} of {picks}"
    );

    // Leases spread the same way while each is returned at once.
    let mut leased: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let lease = subscription.acquire(WAIT).expect("a free slot");
        *leased.entry(lease.endpoint().to_string()).or_default() += 1;
    }
    let heavy = leased.get("heavy").copied().unwrap_or(0);
    assert!((240..=360).contains(&heavy), "heavy leased {heavy} of 400");
}

#[test]
fn capacity_fifo_queue_overcapacity_and_fall_through() {
    let (_cluster, r) = start(|c| c);
    let limited = settings(|s| {
        s.concurrency = 2;
        s.queue_size = 2;
    });
    let p = r[0].publish("cap", "cap-0", limited).expect("publish");
    let _spare = r[2]
        .publish("spare", "spare-2", PublishSettings::default())
        .expect("publish");
    r[1].read_barrier(WAIT).expect("barrier");
    let any = |name: &str| {
        SubscribeOptions::new().then(name, Distance::SameNode, Distance::OtherDatacenter)
    };
    let subscription = r[1].subscribe(any("cap")).expect("subscribe");

    let first = subscription.acquire(WAIT).expect("slot 1");
    let _second = subscription.acquire(WAIT).expect("slot 2");
    assert_eq!(r[1].leases_out(p.id()), 2);
    assert_eq!(r[0].leases_out(p.id()), 0, "leases are local to a node");

    let (order_tx, order_rx) = crossbeam_channel::unbounded();
    std::thread::scope(|scope| {
        for waiter in 0..2 {
            let tx = order_tx.clone();
            let subscription = &subscription;
            let registry = &r[1];
            wait_until("earlier waiters queued", WAIT, || {
                registry.waiting("cap") == waiter
            });
            scope.spawn(move || {
                let lease = subscription.acquire(WAIT).expect("a slot after waiting");
                tx.send(waiter).expect("record order");
                drop(lease);
            });
        }
        wait_until("both waiters queued", WAIT, || r[1].waiting("cap") == 2);
        match subscription.acquire(WAIT) {
            Err(RegistryError::Overcapacity { queued: 2, .. }) => {}
            other => panic!("expected overcapacity, got {other:?}"),
        }
        let falls_through = r[1]
            .subscribe(
                any("cap")
                    .then("spare", Distance::SameNode, Distance::OtherDatacenter)
                    .fall_through_on_overcapacity(true),
            )
            .expect("subscribe");
        assert_eq!(
            falls_through.acquire(WAIT).expect("next option").endpoint(),
            "spare-2"
        );
        drop(first);
    });
    let order: Vec<usize> = order_rx.try_iter().collect();
    assert_eq!(order, vec![0, 1], "waiters are served in FIFO order");
    assert_eq!(r[1].waiting("cap"), 0);
}

#[test]
fn a_cancelled_async_acquire_leaves_the_queue() {
    let (_cluster, r) = start(|c| c);
    let _p = r[0]
        .publish("one", "one-0", PublishSettings::default())
        .expect("publish");
    let subscription = r[0]
        .subscribe(SubscribeOptions::name("one"))
        .expect("subscribe");
    let held = subscription.acquire(WAIT).expect("the slot");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let waited =
            tokio::time::timeout(Duration::from_millis(200), subscription.acquire_async()).await;
        assert!(waited.is_err(), "the only slot is held");
    });
    assert_eq!(r[0].waiting("one"), 0);
    drop(held);
    let again = runtime
        .block_on(subscription.acquire_async())
        .expect("the slot is free again");
    assert_eq!(again.endpoint(), "one-0");
}

#[test]
fn watches_see_exact_diffs_and_resume_from_a_revision() {
    let (_cluster, r) = start(|c| c);
    let _before = r[0]
        .publish("w", "before", PublishSettings::default())
        .expect("publish");
    r[1].read_barrier(WAIT).expect("barrier");
    let mut watch = r[1].watch(&["w"], None).expect("watch");
    let initial = next_event(&mut watch);
    assert_eq!(
        (initial.change, initial.publication.endpoint.as_str()),
        (Change::Added, "before")
    );

    let mut p = r[0]
        .publish("w", "v1", PublishSettings::default())
        .expect("publish");
    let _noise = r[2]
        .publish("other", "x", PublishSettings::default())
        .expect("publish");
    p.update("v2", PublishSettings::default()).expect("update");
    p.unpublish().expect("unpublish");

    let added = next_event(&mut watch);
    assert_eq!(
        (added.change, added.publication.endpoint.as_str()),
        (Change::Added, "v1")
    );
    let changed = next_event(&mut watch);
    assert_eq!(
        (changed.change, changed.publication.endpoint.as_str()),
        (Change::Changed, "v2")
    );
    let removed = next_event(&mut watch);
    assert_eq!(removed.change, Change::Removed(RemovalReason::Unpublished));
    assert!(added.revision < changed.revision && changed.revision < removed.revision);
    assert_eq!(
        watch
            .next_timeout(Duration::from_millis(300))
            .expect("watch works"),
        None
    );

    // Resumed on another node after the first change: exactly the rest, once.
    r[2].read_barrier(WAIT).expect("barrier");
    let mut resumed = r[2].watch(&["w"], Some(added.revision)).expect("resume");
    assert_eq!(next_event(&mut resumed), changed);
    assert_eq!(next_event(&mut resumed), removed);
    assert_eq!(
        resumed
            .next_timeout(Duration::from_millis(300))
            .expect("watch works"),
        None
    );

    // Resumed ahead of a replica (as on a node still catching up): only the changes after
    // the revision asked, even those the replica applies later.
    let ahead = r[2].revision() + 1;
    let mut early = r[2].watch(&["w"], Some(ahead)).expect("resume ahead");
    let _first = r[0]
        .publish("w", "a1", PublishSettings::default())
        .expect("publish");
    let _second = r[0]
        .publish("w", "a2", PublishSettings::default())
        .expect("publish");
    let event = next_event(&mut early);
    assert!(event.revision > ahead, "{event:?} is not after {ahead}");

    // A subscription's watch covers its names.
    let subscription = r[2]
        .subscribe(SubscribeOptions::name("other"))
        .expect("subscribe");
    let mut by_subscription = subscription.watch(None).expect("watch");
    assert_eq!(next_event(&mut by_subscription).publication.endpoint, "x");
}

#[test]
fn await_ready_waits_for_every_named_service() {
    let (_cluster, r) = start(|c| c);
    match r[1].await_ready(&["a", "b"], Duration::from_millis(200)) {
        Err(RegistryError::Timeout) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| r[1].await_ready(&["a", "b"], WAIT));
        let _a = r[0]
            .publish("a", "a-0", PublishSettings::default())
            .expect("publish");
        r[1].read_barrier(WAIT).expect("barrier");
        let half = r[1].await_ready(&["a", "b"], Duration::from_millis(200));
        assert!(
            matches!(half, Err(RegistryError::Timeout)),
            "b is still missing"
        );
        let _b = r[2]
            .publish("b", "b-2", PublishSettings::default())
            .expect("publish");
        waiter.join().expect("no panic").expect("ready");
    });
}

#[test]
fn an_owner_dead_past_the_grace_period_loses_its_publications_once() {
    let (mut cluster, r) = start(|c| c);
    let _p = r[2]
        .publish("svc", "west-2", PublishSettings::default())
        .expect("publish");
    r[0].read_barrier(WAIT).expect("barrier");
    let mut watch = r[0].watch(&["svc"], None).expect("watch");
    assert_eq!(next_event(&mut watch).change, Change::Added);

    let stopped = Instant::now();
    cluster.stop(2);
    let bare = SubscribeOptions::name("svc");
    wait_resolves(&r[0], bare, None);
    assert_eq!(
        r[0].publications("svc").len(),
        1,
        "kept during the grace period"
    );

    let removed = next_event(&mut watch);
    assert_eq!(removed.change, Change::Removed(RemovalReason::OwnerDead));
    assert!(
        stopped.elapsed() >= GRACE,
        "removed after {:?}",
        stopped.elapsed()
    );
    assert!(r[0].publications("svc").is_empty());
    r[1].read_barrier(WAIT).expect("barrier");
    assert!(r[1].publications("svc").is_empty());
    assert_eq!(
        watch
            .next_timeout(Duration::from_secs(1))
            .expect("watch works"),
        None,
        "removed exactly once"
    );
}

#[test]
fn a_restarted_node_replaces_its_old_publications() {
    let (mut cluster, mut r) = start(|c| c);
    let old = r[1]
        .publish("svc", "old-1", PublishSettings::default())
        .expect("publish");
    let old_id = old.id();
    // The node dies with the handle still held, as when its process is killed.
    cluster.stop(1);
    drop(old);
    drop(r.remove(1));
    cluster.restart(1);
    let restarted = Registry::start(cluster.node(1), registry_config()).expect("registry");
    let new = restarted
        .publish("svc", "new-1", PublishSettings::default())
        .expect("publish");
    assert!(new.id().epoch > old_id.epoch);
    r[0].read_barrier(WAIT).expect("barrier");
    let endpoints: Vec<String> = r[0]
        .publications("svc")
        .into_iter()
        .map(|p| p.endpoint)
        .collect();
    assert_eq!(endpoints, vec!["new-1".to_string()]);
}

#[test]
fn invalid_publications_and_options_are_refused() {
    let (_cluster, r) = start(|c| c);
    let zero = settings(|s| s.concurrency = 0);
    assert!(matches!(
        r[0].publish("svc", "ep", zero),
        Err(RegistryError::InvalidPublication(_))
    ));
    assert!(matches!(
        r[0].publish("", "ep", PublishSettings::default()),
        Err(RegistryError::InvalidPublication(_))
    ));
    assert!(matches!(
        r[0].subscribe(SubscribeOptions::new()),
        Err(RegistryError::InvalidPublication(_))
    ));
    let nothing = r[0]
        .subscribe(SubscribeOptions::name("nobody"))
        .expect("subscribe");
    assert!(matches!(
        nothing.acquire(Duration::from_millis(100)),
        Err(RegistryError::NoPublication(_))
    ));
}

#[test]
fn a_new_node_catches_up_from_the_registry_snapshot() {
    let (mut cluster, r) = start(|c| Config {
        snapshot_interval: 20,
        ..c
    });
    for i in 0..30 {
        let p = r[0]
            .publish("churn", &format!("c{i}"), PublishSettings::default())
            .expect("publish");
        p.unpublish().expect("unpublish");
    }
    let _kept = r[0]
        .publish("kept", "k", PublishSettings::default())
        .expect("publish");
    let id = copycat::registry::REGISTRY_ID;
    wait_until("the registry's log is compacted", WAIT, || {
        cluster
            .node(0)
            .group_status_blocking(id)
            .ok()
            .flatten()
            .is_some_and(|g| g.snapshot_index > 20)
    });
    let new = cluster.add_node();
    cluster.wait_members(4);
    let late = Registry::start(cluster.node(new), registry_config()).expect("registry");
    let kept: Vec<String> = late
        .publications("kept")
        .into_iter()
        .map(|p| p.endpoint)
        .collect();
    assert_eq!(kept, vec!["k".to_string()]);
    assert!(late.publications("churn").is_empty());
    assert!(late.revision() >= r[0].revision());
    let mut resumed = late
        .watch(&["churn"], Some(late.revision() - 3))
        .expect("history came with the snapshot");
    assert!(resumed
        .next_timeout(Duration::from_secs(1))
        .expect("works")
        .is_some());
}
