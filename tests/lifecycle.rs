//! Starting and stopping nodes from async code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use copycat::{Config, CopyCat, ReplicatedMap};

/// A logger that keeps every record at warning level or above.
fn warnings() -> (slog::Logger, Arc<Mutex<Vec<String>>>) {
    struct Keep(Arc<Mutex<Vec<String>>>);
    impl slog::Drain for Keep {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
            if record.level().is_at_least(slog::Level::Warning) {
                let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
                kept.push(format!("{}", record.msg()));
            }
            Ok(())
        }
    }
    let kept = Arc::new(Mutex::new(Vec::new()));
    let logger = slog::Logger::root(Keep(kept.clone()), slog::o!());
    (logger, kept)
}

fn config(dir: &std::path::Path, logger: slog::Logger) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        port: 0,
        gossip_port: 0,
        logger,
        ..Config::default()
    }
}

#[test]
fn a_node_started_and_stopped_inside_tokio_stops_cleanly_both_ways() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for use_async in [true, false] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (logger, warned) = warnings();
        rt.block_on(async {
            let node = CopyCat::start(config(dir.path(), logger)).expect("start");
            let map: ReplicatedMap<u8, u8> =
                ReplicatedMap::open(&node, node.new_data_structure_id()).expect("open");
            assert_eq!(map.insert(1, 2).await.expect("insert"), None);
            // Status calls have async forms that do not block the executor.
            let members = node.members().await.expect("members");
            assert_eq!(members.len(), 1);
            assert!(node.has_joined().await.expect("joined"));
            let id = map.replicated().id();
            let status = node.group_status(id).await.expect("status");
            assert!(status.is_some_and(|s| s.applied_index > 0));
            assert_eq!(
                node.hosted_data_structures().await.expect("hosted"),
                vec![id]
            );
            // The plaintext warnings of the start are not the shutdown's.
            warned.lock().unwrap().clear();
            let stopped = async {
                if use_async {
                    node.shutdown_async().await;
                } else {
                    // The blocking form, called on a runtime worker.
                    node.shutdown();
                }
            };
            tokio::time::timeout(Duration::from_secs(30), stopped)
                .await
                .expect("shutdown returns");
            assert!(map.insert(3, 4).await.is_err(), "the node is down");
        });
        let warned = warned.lock().unwrap().clone();
        assert!(
            warned.is_empty(),
            "shutdown (async: {use_async}) logged warnings: {warned:?}"
        );
    }
}

#[test]
fn a_data_structure_clone_keeps_the_subscription_after_the_original_is_dropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = CopyCat::start(config(
        dir.path(),
        slog::Logger::root(slog::Discard, slog::o!()),
    ))
    .expect("start");
    let ds = node
        .subscribe(node.new_data_structure_id(), copycat::no_snapshots)
        .expect("subscribe");
    let clone = ds.clone();
    drop(ds);
    let index = clone
        .propose_blocking(b"still subscribed".to_vec(), Duration::from_secs(30))
        .expect("acknowledged through the clone");
    let commit = clone
        .commits()
        .recv_timeout(Duration::from_secs(30))
        .expect("delivered to the clone");
    assert_eq!(
        commit,
        copycat::Commit::Entry {
            index,
            data: b"still subscribed".to_vec()
        }
    );
    node.shutdown();
}
