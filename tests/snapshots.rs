//! Snapshots and log compaction: bounded logs, restart from a snapshot, catch-up of a new
//! replica from a snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use copycat::{Commit, Config, CopyCat, DataStructure, DataStructureId};
use copycat_testkit::in_process::{wait_until, Cluster};

/// Generous: the 100 MiB test writes and streams a lot on a loaded 2-core machine.
const T: Duration = Duration::from_secs(120);
const INTERVAL: u64 = 200;

fn small_snapshots(config: Config) -> Config {
    Config {
        snapshot_interval: INTERVAL,
        ..config
    }
}

/// A replicated map of u8 keys, as an application would keep one: state plus the index of
/// the last commit applied, behind one lock (so the snapshot provider reads both at once).
#[derive(Default)]
struct MapState {
    applied: u64,
    map: BTreeMap<u8, Vec<u8>>,
    snapshots_loaded: usize,
}

fn encode(map: &BTreeMap<u8, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in map {
        out.push(*k);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

fn decode(mut bytes: &[u8]) -> BTreeMap<u8, Vec<u8>> {
    let mut map = BTreeMap::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        map.insert(bytes[0], bytes[5..5 + len].to_vec());
        bytes = &bytes[5 + len..];
    }
    map
}

/// A subscriber that applies commits on its own thread.
struct App {
    ds: Arc<DataStructure>,
    state: Arc<Mutex<MapState>>,
}

impl App {
    fn subscribe(node: &CopyCat, id: DataStructureId) -> App {
        let state = Arc::new(Mutex::new(MapState::default()));
        let provider = {
            let state = state.clone();
            move || {
                let s = state.lock().unwrap();
                Some((s.applied, encode(&s.map)))
            }
        };
        let ds = Arc::new(node.subscribe(id, provider).unwrap());
        let (ds2, state2) = (ds.clone(), state.clone());
        std::thread::spawn(move || {
            while let Ok(commit) = ds2.commits().recv() {
                let mut s = state2.lock().unwrap();
                match commit {
                    Commit::Entry { index, data } => {
                        s.map.insert(data[0], data[1..].to_vec());
                        s.applied = index;
                    }
                    Commit::Snapshot { index } => {
                        let bytes = ds2.load_snapshot(index).expect("announced snapshot loads");
                        s.map = decode(&bytes);
                        s.applied = index;
                        s.snapshots_loaded += 1;
                    }
                    other => panic!("unexpected commit {other:?}"),
                }
            }
        });
        App { ds, state }
    }

    fn put(&self, key: u8, value: &[u8]) -> u64 {
        let mut data = vec![key];
        data.extend_from_slice(value);
        self.ds.propose_blocking(data, T).expect("acknowledged")
    }

    fn map_at(&self, index: u64) -> BTreeMap<u8, Vec<u8>> {
        wait_until("the app applied the index", T, || {
            self.state.lock().unwrap().applied >= index
        });
        self.state.lock().unwrap().map.clone()
    }
}

fn write_stream(app: &App, count: u32) -> u64 {
    let mut last = 0;
    for i in 0..count {
        last = app.put((i % 8) as u8, format!("value-{i}").as_bytes());
    }
    last
}

fn stored_entries(dir: &std::path::Path, id: DataStructureId) -> u64 {
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let store = copycat::internals::SledStore::open(dir, log).unwrap();
    store.count_entries(id).unwrap()
}

#[test]
fn overwriting_a_small_key_set_keeps_the_log_bounded() {
    let mut cluster = Cluster::start_tweaked(3, small_snapshots);
    let id = copycat::new_data_structure_id();
    let apps: Vec<_> = (0..3)
        .map(|i| App::subscribe(cluster.node(i), id))
        .collect();
    // 3,000 overwrites of 4 KiB values under 8 keys: 12 MiB of log, 32 KiB of state.
    let value = vec![9u8; 4096];
    let mut last = 0;
    for i in 0..3_000u32 {
        last = apps[0].put((i % 8) as u8, &value);
    }
    let expected = apps[0].map_at(last);
    for app in &apps[1..] {
        assert_eq!(app.map_at(last), expected);
    }
    for i in 0..3 {
        cluster.stop(i);
    }
    drop(apps);
    for i in 0..3 {
        let entries = stored_entries(&cluster.dir(i), id);
        // Each replica compacts every INTERVAL applied entries.
        assert!(
            entries <= 3 * INTERVAL,
            "node {i} keeps {entries} entries of 3,000 in its log"
        );
        let bytes = dir_size(&cluster.dir(i));
        assert!(
            bytes < 12 << 20,
            "node {i}'s data dir holds {bytes} bytes, as much as the whole log"
        );
    }
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[test]
fn restart_from_snapshot_and_log_tail_gives_the_same_state() {
    let mut cluster = Cluster::start_tweaked(3, small_snapshots);
    let id = copycat::new_data_structure_id();
    let writer = App::subscribe(cluster.node(0), id);
    let reader = App::subscribe(cluster.node(2), id);
    let last = write_stream(&writer, 1_000);
    reader.map_at(last);
    drop(reader);
    cluster.stop(2);
    let last = write_stream(&writer, 150).max(last);
    let expected = writer.map_at(last);
    cluster.restart(2);
    let again = App::subscribe(cluster.node(2), id);
    assert_eq!(again.map_at(last), expected);
    assert!(
        again.state.lock().unwrap().snapshots_loaded >= 1,
        "the restarted subscriber started from a snapshot"
    );
}

#[test]
fn a_new_node_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start_tweaked(3, small_snapshots);
    let id = copycat::new_data_structure_id();
    let apps: Vec<_> = (0..3)
        .map(|i| App::subscribe(cluster.node(i), id))
        .collect();
    // About 1 MiB of state, far past the compaction point.
    let big = vec![7u8; 4096];
    let mut last = 0;
    for i in 0..600u32 {
        last = apps[(i % 3) as usize].put((i % 250) as u8, &big);
    }
    let expected = apps[0].map_at(last);
    let fourth = cluster.add_node();
    cluster.wait_members(4);
    let late = App::subscribe(cluster.node(fourth), id);
    assert_eq!(late.map_at(last), expected);
    assert!(late.state.lock().unwrap().snapshots_loaded >= 1);
    let more = late.put(1, b"from the new node");
    assert_eq!(
        apps[0].map_at(more).get(&1),
        Some(&b"from the new node".to_vec())
    );
}

#[test]
fn a_new_node_catches_up_from_a_100_mib_snapshot_streamed_in_chunks() {
    fn big_state(config: Config) -> Config {
        Config {
            snapshot_interval: 50,
            ..config
        }
    }
    let mut cluster = Cluster::start_tweaked(3, big_state);
    let id = copycat::new_data_structure_id();
    // Subscribers everywhere: every replica (the leader included) snapshots and compacts.
    let apps: Vec<_> = (0..3)
        .map(|i| App::subscribe(cluster.node(i), id))
        .collect();
    let writer = &apps[0];
    // 105 values of 1,000 KiB: a snapshot of about 103 MiB, beyond one transport frame.
    let value = vec![3u8; 1000 * 1024];
    let mut last = 0;
    for key in 0..105u8 {
        last = writer.put(key, &value);
    }
    // Compact past the big writes.
    for i in 0..60u32 {
        last = writer.put(200 + (i % 8) as u8, b"small");
    }
    let expected = writer.map_at(last);
    let fourth = cluster.add_node();
    cluster.wait_members(4);
    let late = App::subscribe(cluster.node(fourth), id);
    let got = late.map_at(last);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the new node holds the same state");
    assert!(late.state.lock().unwrap().snapshots_loaded >= 1);
}

#[test]
fn replicas_without_a_subscriber_compact_under_offered_snapshots() {
    let mut cluster = Cluster::start_tweaked(3, small_snapshots);
    let id = copycat::new_data_structure_id();
    // One subscriber, on node 0: nodes 1 and 2 hold detached replicas.
    let app = App::subscribe(cluster.node(0), id);
    let last = write_stream(&app, 2_000);
    app.map_at(last);
    wait_until("the detached replicas applied everything", T, || {
        (1..3).all(|i| {
            cluster
                .node(i)
                .group_status_blocking(id)
                .ok()
                .flatten()
                .is_some_and(|s| s.applied_index >= last)
        })
    });
    // Offers travel after each snapshot: wait until every replica compacted under one.
    wait_until("every replica's log is bounded", T, || {
        (0..3).all(|i| {
            cluster
                .node(i)
                .group_status_blocking(id)
                .ok()
                .flatten()
                .is_some_and(|s| s.applied_index - s.snapshot_index <= 3 * INTERVAL)
        })
    });
    for i in 0..3 {
        cluster.stop(i);
    }
    drop(app);
    for i in 0..3 {
        let entries = stored_entries(&cluster.dir(i), id);
        assert!(
            entries <= 3 * INTERVAL,
            "node {i} keeps {entries} entries of 2,000 in its log"
        );
    }
}

#[test]
fn a_leader_without_a_subscriber_serves_a_new_replica_a_fresh_snapshot() {
    let mut cluster = Cluster::start_tweaked(3, small_snapshots);
    // A group whose leader is not node 0, the only node with a subscriber.
    let (id, app) = loop {
        let id = copycat::new_data_structure_id();
        let app = App::subscribe(cluster.node(0), id);
        app.put(0, b"first");
        let leader = cluster
            .node(0)
            .group_status_blocking(id)
            .unwrap()
            .unwrap()
            .leader;
        if leader.is_some() && leader != Some(cluster.node(0).node_id()) {
            break (id, app);
        }
    };
    let last = write_stream(&app, 600);
    let expected = app.map_at(last);
    // The new node's learner joins after every snapshot so far: the detached leader must
    // get a fresh one from node 0 before it can serve it.
    let fourth = cluster.add_node();
    cluster.wait_members(4);
    let late = App::subscribe(cluster.node(fourth), id);
    assert_eq!(late.map_at(last), expected);
    assert!(late.state.lock().unwrap().snapshots_loaded >= 1);
}

/// A replica whose state is far larger than its entries: the state is snapshotted only
/// once the log since the last snapshot is half as large as that snapshot (the default
/// `snapshot_log_percent`), not every `snapshot_interval` entries (which would rewrite
/// 256 KiB for every 2 KiB of log).
#[test]
fn a_large_state_is_snapshotted_only_when_the_log_grows_as_large() {
    const STATE: usize = 256 << 10;
    let cluster = Cluster::start_tweaked(1, |config| Config {
        snapshot_interval: 20,
        ..config
    });
    let id = copycat::new_data_structure_id();
    let taken = Arc::new(Mutex::new(0usize));
    let applied = Arc::new(Mutex::new(0u64));
    let provider = {
        let (taken, applied) = (taken.clone(), applied.clone());
        move || {
            *taken.lock().unwrap() += 1;
            Some((*applied.lock().unwrap(), vec![7u8; STATE]))
        }
    };
    let ds = Arc::new(cluster.node(0).subscribe(id, provider).unwrap());
    // Ends when the node shuts down at the end of the test (its commit channel closes).
    {
        let (ds, applied) = (ds.clone(), applied.clone());
        std::thread::spawn(move || {
            while let Ok(Commit::Entry { index, .. }) = ds.commits().recv() {
                *applied.lock().unwrap() = index;
            }
        });
    }
    let put = |len: usize| ds.propose_blocking(vec![1; len], T).expect("acknowledged");
    // 400 small entries, 40 KiB: twenty intervals, but far less than the state's size.
    let mut last = 0;
    for _ in 0..400 {
        last = put(100);
    }
    wait_until("the app applied everything", T, || {
        *applied.lock().unwrap() >= last
    });
    let small = *taken.lock().unwrap();
    assert!(
        small <= 1,
        "{small} snapshots of a 256 KiB state for 40 KiB of log"
    );
    // 1 MiB of log: half the state's size eight times over.
    for _ in 0..256 {
        put(4096);
    }
    wait_until("snapshots follow the log's growth", T, || {
        *taken.lock().unwrap() >= small + 2
    });
    let large = *taken.lock().unwrap() - small;
    assert!(large <= 9, "{large} snapshots for 1 MiB of log");
}
