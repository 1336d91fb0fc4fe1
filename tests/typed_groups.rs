//! One process serves 1,000 replicated state machines without a thread (or a task) per
//! machine: a typed handle applies commits when it is called, not on a loop of its own.
//! Alone in its test binary, so the thread count is this test's.

use std::time::Duration;

use copycat::ReplicatedMap;
use copycat_testkit::in_process::Cluster;

const GROUPS: usize = 1_000;

/// Threads of this process, from /proc (Linux), except sled's I/O pool, which grows on
/// demand with the writes (up to its own bound) whatever serves the groups.
fn threads() -> usize {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| !name.starts_with("sled-io"))
        .count()
}

#[test]
fn a_thousand_groups_on_a_handful_of_threads() {
    let cluster = Cluster::start(1);
    let node = cluster.node(0);
    let before = threads();
    let maps: Vec<ReplicatedMap<u32, u32>> = (0..GROUPS)
        .map(|_| {
            ReplicatedMap::open(node, copycat::new_data_structure_id())
                .expect("open")
                .with_timeout(Duration::from_secs(60))
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, map) in maps.iter().enumerate() {
            let map = map.clone();
            tasks.spawn(async move { map.insert(i as u32, i as u32).await });
        }
        while let Some(done) = tasks.join_next().await {
            assert_eq!(done.expect("task").expect("insert"), None);
        }
    });
    for (i, map) in maps.iter().enumerate() {
        assert_eq!(map.get(&(i as u32)).expect("read"), Some(i as u32));
    }
    let during = threads();
    // The tokio runtime above adds its 2 workers (and maybe a blocking thread); the
    // thousand machines add nothing.
    assert!(
        during <= before + 4,
        "{GROUPS} groups took threads: {before} before, {during} with them"
    );
    eprintln!("threads: {before} before, {during} with {GROUPS} groups served");
}
